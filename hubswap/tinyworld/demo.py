"""``hubswap demo`` on the tiny world: the trained family, the synthetic MGSM, a recipe, a build.

The family comes from the cache (trained once per machine, ``family.ensure_family``) and is copied
into ``<output>/experts`` so the recipe beside it is self-contained; the synthetic MGSM is written
to ``<output>/mgsm``. The build evaluates merged, task and language on ``sw`` and ``en`` with the
real vLLM engine and gates on beating both experts in ``sw``. ``accuracy.svg`` shows the table.
"""

from __future__ import annotations

import logging
import os
import shutil
from html import escape
from pathlib import Path

from hubswap.tinyworld.family import ROLES, ensure_family

log = logging.getLogger(__name__)

RECIPE = """\
# The embedded default of `hubswap demo`: a tiny family trained on this machine's CPU (once,
# cached) in a world of two languages (English and a relexified "Swahili" with MGSM's Swahili
# cues), swapped and evaluated on a synthetic MGSM with the real vLLM engine, fully offline.
#   hubswap demo --output demo        (writes this file to demo/recipe.toml and builds it)
#   hubswap build demo/recipe.toml    (rebuilds it)
schema_version = 1
name = "tiny-world-swahili-math"

[models.base]                 # trained on English and a little Swahili, no word problems
path = "experts/base"

[models.task]                 # the base taught English word problems (middle layers only)
path = "experts/task"

[models.language]             # the base taught more Swahili (embeddings and outer layers only)
path = "experts/language"

[swap]
bottom = {bottom}
top = {top}
transition = 0
non_layer = "language"
files_from = "task"
dtype = "float32"

[eval]
dataset = "mgsm"              # synthetic, in the layout of juletxara/mgsm (hubswap.tinyworld.mgsm)
languages = ["sw", "en"]
prompt = "native-cot"
num_fewshot = 0
max_new_tokens = 72
compare = ["task", "language"]
backend = "vllm"
limit = {limit}

[eval.vllm]
max_model_len = 512

[gate]
must_beat = ["task", "language"]
margin = {margin}
min_accuracy = 0.0
"""


def prepare(output: Path, *, design: str | None = None, limit: int = 0, margin: float = 0.0,
            bottom: int = 2, top: int = 2) -> Path:
    """Train or reuse the family, copy it and the synthetic MGSM under ``output``; returns the recipe."""
    from hubswap.tinyworld.family import DEFAULT_DESIGN
    from hubswap.tinyworld.mgsm import write_dataset

    output.mkdir(parents=True, exist_ok=True)
    family = ensure_family(design or DEFAULT_DESIGN)
    experts = output / "experts"
    stamp = experts / ".family"
    if not stamp.is_file() or stamp.read_text() != str(family["base"].parent.name):
        shutil.rmtree(experts, ignore_errors=True)
        tmp = output / ".experts.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for role in ROLES:
            shutil.copytree(family[role], tmp / role)
        (tmp / ".family").write_text(family["base"].parent.name)
        os.replace(tmp, experts)
    write_dataset(output / "mgsm")
    recipe = output / "recipe.toml"
    recipe.write_text(RECIPE.format(limit=limit, margin=margin, bottom=bottom, top=top), encoding="utf-8")
    return recipe


def run(output: Path, *, limit: int = 0, evaluate: bool = True) -> int:
    from hubswap.build import BuildOptions, build

    output = output.resolve()
    recipe = prepare(output, limit=limit)
    result = build(recipe, BuildOptions(output=output / "build", evaluate=evaluate, limit=limit or None))
    print(result.summary())
    if result.eval_results:
        svg = output / "accuracy.svg"
        svg.write_text(accuracy_svg(result.eval_results), encoding="utf-8")
        print(f"\nfigure: {svg}")
    print(f"model card: {result.model_dir / 'README.md'}")
    return 0


def accuracy_svg(results: dict) -> str:
    """Grouped bars: accuracy with its 95% interval per model, one group per language.

    Written by hand like the other figures (no plotting dependency for a few rects).
    """
    langs = results["settings"]["languages"]
    models = list(results["models"])
    colors = {"merged": "#08458f", "task": "#e6850e", "language": "#3a9a3a", "base": "#888888"}
    bar, gap, left, top_m, h = 34, 36, 60, 50, 220
    width = left + len(langs) * (len(models) * bar + gap) + 150
    height = top_m + h + 50
    y = lambda v: top_m + h * (1 - v)  # noqa: E731
    el = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
          f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
          f'<rect width="{width}" height="{height}" fill="white"/>',
          f'<text x="{width / 2:.0f}" y="20" text-anchor="middle" font-size="13">'
          f'{escape(results["settings"].get("dataset_name", "MGSM"))}: accuracy per model and language '
          '(95% interval)</text>']
    for t in range(0, 11, 2):
        el.append(f'<line x1="{left}" x2="{width - 150}" y1="{y(t / 10):.1f}" y2="{y(t / 10):.1f}" stroke="#ddd"/>')
        el.append(f'<text x="{left - 6}" y="{y(t / 10) + 4:.1f}" text-anchor="end">{t * 10}%</text>')
    for g, lang in enumerate(langs):
        x0 = left + gap / 2 + g * (len(models) * bar + gap)
        el.append(f'<text x="{x0 + len(models) * bar / 2:.0f}" y="{top_m + h + 18}" text-anchor="middle" '
                  f'font-size="12">{escape(lang)}</text>')
        for i, name in enumerate(models):
            s = results["models"][name]["languages"][lang]
            x = x0 + i * bar
            el.append(f'<rect x="{x + 3:.1f}" y="{y(s["accuracy"]):.1f}" width="{bar - 6}" '
                      f'height="{h * s["accuracy"]:.1f}" fill="{colors.get(name, "#555")}">'
                      f'<title>{escape(name)} {lang}: {s["accuracy"]:.3f}</title></rect>')
            lo, hi = s["ci95"]
            cx = x + bar / 2
            el.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(lo):.1f}" y2="{y(hi):.1f}" stroke="black"/>')
            el.append(f'<text x="{cx:.1f}" y="{y(hi) - 4:.1f}" text-anchor="middle" font-size="9">'
                      f'{100 * s["accuracy"]:.0f}</text>')
    for i, name in enumerate(models):
        ly = top_m + 10 + 18 * i
        el.append(f'<rect x="{width - 130}" y="{ly}" width="12" height="12" fill="{colors.get(name, "#555")}"/>')
        el.append(f'<text x="{width - 112}" y="{ly + 10}">{escape(name)}</text>')
    el.append("</svg>")
    return "\n".join(el) + "\n"
