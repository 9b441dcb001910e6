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
    from hubswap.figures import accuracy_bars

    output = output.resolve()
    recipe = prepare(output, limit=limit)
    result = build(recipe, BuildOptions(output=output / "build", evaluate=evaluate, limit=limit or None))
    print(result.summary())
    if result.eval_results:
        svg = output / "accuracy.svg"
        svg.write_text(accuracy_bars(result.eval_results), encoding="utf-8")
        print(f"\nfigure: {svg}")
    print(f"model card: {result.model_dir / 'README.md'}")
    return 0
