"""The model card: README.md and the layer-map picture of a build, rendered from its records.

Everything the card says is read from the model folder's ``hubswap/`` records (``recipe.toml``,
``lock.json`` and, once evaluated, ``eval_results.json``), so ``hubswap card BUILD`` renders the
same card from the same build, and a card never claims more than the build recorded. The Jinja2
template is package data (``hubswap/templates/``); rendering goes through
``huggingface_hub.ModelCard`` and makes no network call (the Hub's YAML validation endpoint is not
used).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from hubswap import svg
from hubswap.errors import ModelFilesError
from hubswap.evaluate.data import HUB_DATASET, TEST_QUESTIONS
from hubswap.evaluate.languages import language_name
from hubswap.files import atomic_write, human_size
from hubswap.recipe import LoadedRecipe, parse_recipe
from hubswap.records import RECORDS_DIR, find_model_dir
from hubswap.svg import escape

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
PICTURE_FILE = "hubswap/layer_map.svg"

# Package data, so an installed wheel renders the same card as a checkout.
TEMPLATE = Path(__file__).resolve().parent / "templates" / "model_card.md.j2"

ROLE_NAMES = {"task": "task expert", "language": "language expert", "base": "base model", "merged": "merged"}
_HF = "https://huggingface.co"
# Hub user access tokens; a card must never carry one, whatever ended up in the records.
_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class BuildRecords:
    """What a build wrote about itself under ``<model>/hubswap/``."""

    model_dir: Path
    recipe: LoadedRecipe
    lock: dict
    eval_results: dict | None

    @property
    def evaluated(self) -> bool:
        return bool(self.eval_results and self.eval_results.get("models"))


def read_records(model_dir: str | Path) -> BuildRecords:
    model_dir = find_model_dir(model_dir)
    records = model_dir / RECORDS_DIR
    recipe_path = records / "recipe.toml"
    if not recipe_path.is_file():
        raise ModelFilesError(f"{recipe_path} is missing: the card shows the recipe verbatim")
    recipe = parse_recipe(recipe_path.read_text(encoding="utf-8"), recipe_path)
    lock = _read_json(records / "lock.json")
    eval_path = records / "eval_results.json"
    eval_results = _read_json(eval_path) if eval_path.is_file() else None
    return BuildRecords(model_dir, recipe, lock, eval_results)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelFilesError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise ModelFilesError(f"{path} does not hold a JSON object")
    return data


# --- rendering ---------------------------------------------------------------------------------


def render_card(model_dir: str | Path) -> str:
    """The model card (YAML header and Markdown body) of a build, as text."""
    from huggingface_hub import ModelCard

    rec = read_records(model_dir)
    card = ModelCard.from_template(card_data(rec), template_path=str(TEMPLATE), **_context(rec))
    text = str(card).rstrip("\n") + "\n"
    return _TOKEN.sub("hf_***", text)


def evaluation_summary(model_dir: str | Path) -> str:
    """The card's evaluation section (comparison table and gate verdict) under the model's name,
    as Markdown for a CI job summary."""
    text = render_card(model_dir)
    start = text.index("\n## Evaluation\n") + len("\n## Evaluation\n")
    end = text.index("\n## ", start)
    name = read_records(model_dir).recipe.recipe.name
    return f"## {name}\n\n{text[start:end].strip()}\n"


def write_card(model_dir: str | Path) -> Path:
    """Write README.md and the layer-map picture into the model folder; returns the README's path.

    Each file is written to a temporary sibling and renamed, so a reader never sees half a card.
    """
    model_dir = find_model_dir(model_dir)
    rec = read_records(model_dir)
    atomic_write(model_dir / PICTURE_FILE, layer_map_svg(_layers(rec), _labels(rec)))
    readme = model_dir / CARD_FILE
    atomic_write(readme, render_card(model_dir))
    log.info("wrote the model card %s", readme)
    return readme




# --- the YAML header -----------------------------------------------------------------------------


def card_data(rec: BuildRecords):
    """The card's metadata: what the Hub indexes (model tree, licence, languages, model-index)."""
    from huggingface_hub import ModelCardData

    r = rec.recipe.recipe
    parents = [m["repo"] for role, m in _models(rec) if role in ("task", "language") and m.get("repo")]
    fields: dict[str, Any] = {}
    if parents:
        # The experts are the merge's parents; the common base is their ancestor, not a parent.
        # Local folders are not Hub ids and appear only in the provenance section.
        fields.update(base_model=parents, base_model_relation="merge")
    if r.publish and r.publish.license:
        fields["license"] = r.publish.license
    return ModelCardData(
        model_name=_model_id(rec),
        language=_languages(rec),
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["merge", "layer-swapping", "hubswap", "mgsm"],
        eval_results=_eval_results(rec) or None,
        **fields,
    )


def _eval_results(rec: BuildRecords) -> list:
    from huggingface_hub import EvalResult

    if not rec.evaluated:
        return []
    settings = rec.eval_results.get("settings") or {}
    hub_dataset = _is_hub_id(settings.get("dataset"))
    limit = settings.get("limit") or 0
    shots = settings.get("num_fewshot")
    how = ", ".join(x for x in (f"{shots}-shot" if shots is not None else "", settings.get("prompt") or "") if x)
    subset = f", first {limit} questions" if limit else ""
    scores = (
        ("accuracy", "accuracy", "accuracy (hubswap robust answer extraction{})"),
        ("strict_match", "exact_match", "exact_match (lm-eval strict-match{})"),
        ("flexible_extract", "exact_match", "exact_match (lm-eval flexible-extract{})"),
    )
    out = []
    ref = rec.eval_results.get("reference_model") or "merged"
    merged = (rec.eval_results.get("models") or {}).get(ref) or {}
    for lang, res in (merged.get("languages") or {}).items():
        for key, metric_type, name in scores:
            if res.get(key) is None:
                continue
            out.append(EvalResult(
                task_type="text-generation",
                task_name="Multilingual grade-school math (MGSM)",
                dataset_type=settings.get("dataset") if hub_dataset else settings.get("hub_dataset") or HUB_DATASET,
                dataset_name=f"MGSM ({language_name(lang)})",
                dataset_config=lang,
                dataset_split="test",
                dataset_revision=settings.get("dataset_revision") if hub_dataset else None,
                metric_type=metric_type,
                metric_name=name.format(f", {how}{subset}" if how or subset else ""),
                metric_value=round(float(res[key]), 4),
            ))
    return out


# --- the body ------------------------------------------------------------------------------------


def _context(rec: BuildRecords) -> dict:
    r = rec.recipe.recipe
    models = dict(_models(rec))
    layers = _layers(rec)
    return {
        "name": r.name,
        "model_id": _model_id(rec),
        "summary": _summary(rec, layers),
        "evaluated": rec.evaluated,
        "evaluation": _evaluation(rec) if rec.evaluated else None,
        "picture": PICTURE_FILE,
        "layer_rows": _layer_rows(layers, rec),
        "non_layer": _non_layer_source(rec),
        "vision": _vision(rec),
        "num_layers": len(layers),
        "inputs": [_input(role, m) for role, m in models.items()],
        "output": _output(rec),
        "recipe_text": rec.recipe.text.rstrip("\n"),
        "local_inputs": [m["path"] for m in models.values() if m.get("path")],
        "versions": _versions(rec),
        "created": str(rec.lock.get("created") or "unknown"),
        "license": r.publish.license if r.publish else None,
        "publish_repo": r.publish.repo if r.publish else None,
        "hubswap_version": (rec.lock.get("versions") or {}).get("hubswap") or rec.lock.get("hubswap_version"),
    }


def _models(rec: BuildRecords) -> list[tuple[str, dict]]:
    """(role, lock entry) for task, language and base, in that order, from the lock or the recipe."""
    locked = rec.lock.get("models") or {}
    out = []
    for role, source in rec.recipe.recipe.models.roles().items():
        entry = dict(locked.get(role) or {})
        entry.setdefault("repo", source.repo)
        entry.setdefault("path", source.path)
        entry.setdefault("revision", source.revision)
        out.append((role, entry))
    order = {"task": 0, "language": 1, "base": 2}
    return sorted(out, key=lambda x: order[x[0]])


def _model_id(rec: BuildRecords) -> str:
    r = rec.recipe.recipe
    return r.publish.repo if r.publish else r.name


def _languages(rec: BuildRecords) -> list[str]:
    settings = (rec.eval_results or {}).get("settings") or {}
    return list(settings.get("languages") or rec.recipe.recipe.eval.languages)


def _is_hub_id(name: Any) -> bool:
    return isinstance(name, str) and bool(_REPO_ID.match(name)) and not name.startswith(".")


def _layers(rec: BuildRecords) -> list[dict]:
    """The layer map as recorded in the lock (what was merged), else recomputed from the recipe."""
    recorded = rec.lock.get("layer_map") or {}
    if recorded.get("layers"):
        return list(recorded["layers"])
    from hubswap.layermap import layer_map

    n = (rec.lock.get("output") or {}).get("num_layers")
    if not n:
        raise ModelFilesError("lock.json records neither the layer map nor output.num_layers")
    return layer_map(rec.recipe.recipe.swap, int(n)).to_json()["layers"]


def _non_layer_source(rec: BuildRecords) -> str:
    return (rec.lock.get("layer_map") or {}).get("non_layer") or rec.recipe.recipe.swap.non_layer


def _vision(rec: BuildRecords) -> dict | None:
    """The vision side of a multimodal build as the lock records it: its source and top modules."""
    recorded = rec.lock.get("layer_map") or {}
    if not recorded.get("vision"):
        return None
    modules = (recorded.get("modules") or {}).get("vision") or []
    return {"source": recorded["vision"], "modules": ", ".join(f"`{m}`" for m in modules)}


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> 'layers 0–2 and 5'; [4] -> 'layer 4'."""
    parts, start = [], None
    for k, i in enumerate(indices):
        if start is None:
            start = i
        if k + 1 == len(indices) or indices[k + 1] != i + 1:
            parts.append(f"{start}" if start == i else f"{start}–{i}")
            start = None
    if len(indices) == 1:
        return f"layer {parts[0]}"
    return "layers " + (parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1])


def _who(role: str, m: dict) -> str:
    if m.get("repo"):
        return f"the {ROLE_NAMES[role]} [{m['repo']}]({_HF}/{m['repo']})"
    return f"the {ROLE_NAMES[role]} in the local folder `{m.get('path')}`"


def _summary(rec: BuildRecords, layers: list[dict]) -> list[str]:
    models = dict(_models(rec))
    n = len(layers)
    by = {s: [x["index"] for x in layers if x["source"] == s] for s in ("task", "language", "blend")}
    first = (
        f"**{rec.recipe.recipe.name}** merges {_who('task', models['task'])} with "
        f"{_who('language', models['language'])} by layer swapping (Bandarkar et al., 2025), built "
        f"with hubswap from the recipe shown below."
    )
    parts = []
    if by["language"]:
        parts.append(f"takes {_ranges(by['language'])} from the language expert")
    if by["task"]:
        parts.append(f"keeps {_ranges(by['task'])} of the task expert")
    if by["blend"]:
        parts.append(f"blends {_ranges(by['blend'])} of both")
    what = ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]
    second = (
        f"Of its {n} transformer layers it {what}; embeddings, final norm and LM head come from the "
        f"{_non_layer_source(rec)} expert"
    )
    vision = _vision(rec)
    second += f"; the vision tower and projector from the {vision['source']} expert." if vision else "."
    return [first, second]


def _weight(x: float) -> str:
    """An exact-looking weight: 1, 0, 0.5, 0.333."""
    return f"{Fraction(x).limit_denominator(64)}" if x in (0, 1) else f"{x:.3g}"


def _layer_rows(layers: list[dict], rec: BuildRecords) -> list[dict]:
    """Runs of layers with the same region and weights, bottom to top."""
    rows: list[dict] = []
    for x in layers:
        last = rows[-1] if rows else None
        same = last and (last["region"], last["source"], last["lw"]) == (x["region"], x["source"], x["language_weight"])
        if same:
            last["end"] = x["index"]
            continue
        rows.append({"start": x["index"], "end": x["index"], "region": x["region"], "source": x["source"],
                     "lw": x["language_weight"], "tw": x["task_weight"]})
    for row in rows:
        row["layers"] = str(row["start"]) if row["start"] == row["end"] else f"{row['start']}–{row['end']}"
        row["language_weight"] = _weight(row["lw"])
        row["task_weight"] = _weight(row["tw"])
        row["source"] = {"language": "language expert", "task": "task expert", "blend": "blend"}[row["source"]]
    return rows


def _input(role: str, m: dict) -> dict:
    files = m.get("files") or {}
    commit = m.get("commit")
    repo = m.get("repo")
    return {
        "role": ROLE_NAMES[role],
        "repo": repo,
        "path": m.get("path"),
        "revision": m.get("revision"),
        "commit": commit,
        "link": f"{_HF}/{repo}" if repo else None,
        "commit_link": f"{_HF}/{repo}/tree/{commit}" if repo and commit else None,
        "files": [{"name": k, "sha256": v.get("sha256") or "not recorded", "size": _size(v.get("size"))}
                  for k, v in sorted(files.items())],
    }


def _output(rec: BuildRecords) -> dict:
    out = rec.lock.get("output") or {}
    files = out.get("files") or {name: {} for name in out.get("shards") or []}  # names only, no hashes
    return {
        "dtype": out.get("dtype") or rec.recipe.recipe.swap.dtype,
        "hashed": any(v.get("sha256") for v in files.values()),
        "files": [{"name": k, "sha256": v.get("sha256") or "not recorded", "size": _size(v.get("size"))}
                  for k, v in sorted(files.items())],
    }


def _size(n: Any) -> str:
    return human_size(n) if isinstance(n, int) else "?"


def _versions(rec: BuildRecords) -> list[dict]:
    """Tool versions of the merge (lock) and of the evaluation, side by side."""
    built = rec.lock.get("versions") or {}
    evaluated = (rec.eval_results or {}).get("versions") or {}
    names = ["hubswap", "torch", "transformers", "safetensors", "huggingface_hub", "vllm", "datasets"]
    names += sorted((set(built) | set(evaluated)) - set(names))
    return [{"name": k, "build": built.get(k) or "–", "eval": evaluated.get(k) or "–"}
            for k in names if built.get(k) or evaluated.get(k)]


# --- evaluation ----------------------------------------------------------------------------------


def _pct(x: Any) -> str:
    return "–" if x is None else f"{100 * float(x):.1f}"


def _ci(ci: Any) -> str:
    if not ci or len(ci) != 2 or None in ci:
        return ""
    return f" [{_pct(ci[0])}, {_pct(ci[1])}]"


def _pts(x: Any) -> str:
    return "–" if x is None else f"{100 * float(x):+.1f}"


def _p(p: Any) -> str:
    if p is None:
        return ""
    return ", p < 0.001" if p < 0.001 else f", p = {p:.3f}" if p < 0.1 else f", p = {p:.2f}"


def _signed_ci(ci: Any) -> str:
    if not ci or len(ci) != 2 or None in ci:
        return ""
    return f" [{_pts(ci[0])}, {_pts(ci[1])}]"


def _evaluation(rec: BuildRecords) -> dict:
    ev = rec.eval_results or {}
    settings = ev.get("settings") or {}
    models = ev.get("models") or {}
    comparisons = ev.get("comparisons") or {}
    ref = ev.get("reference_model") or "merged"
    others = [k for k in ("task", "language", "base") if k in models] + \
             [k for k in models if k not in (ref, "task", "language", "base")]
    languages = list(settings.get("languages") or (models.get(ref) or {}).get("languages") or [])
    target = settings.get("target_language") or (languages[0] if languages else None)

    def result(model: str, lang: str) -> dict:
        return ((models.get(model) or {}).get("languages") or {}).get(lang) or {}

    def cell(model: str, lang: str) -> str:
        res = result(model, lang)
        return f"{_pct(res.get('accuracy'))}{_ci(res.get('ci95'))}" if res else "–"

    def diff(other: str, lang: str) -> str:
        c = (comparisons.get(other) or {}).get(lang) or {}
        if not c:
            return "–"
        return f"{_pts(c.get('diff'))}{_signed_ci(c.get('ci95'))}{_p(c.get('mcnemar_p'))}"

    compared = [o for o in others if o in comparisons]
    table = {
        "header": ["Language", "n", "merged", *(ROLE_NAMES.get(o, o) for o in others),
                   *(f"merged − {ROLE_NAMES.get(o, o)}" for o in compared)],
        "rows": [[f"{language_name(lang)} (`{lang}`)" + (" ★" if lang == target else ""),
                  str(result(ref, lang).get("n", "–")), cell(ref, lang), *(cell(o, lang) for o in others),
                  *(diff(o, lang) for o in compared)] for lang in languages],
    }
    detail = []
    for model in [ref, *others]:
        for lang in languages:
            if res := result(model, lang):
                detail.append([ROLE_NAMES.get(model, model), lang, _pct(res.get("strict_match")),
                               _pct(res.get("flexible_extract")), _pct(res.get("truncation_rate")),
                               _pct(res.get("no_answer_rate"))])
    sources = []
    for model in others:  # the merged model is this folder; where it sat on the build machine is noise
        m = models.get(model) or {}
        if m.get("source"):
            cached = " (scores reused from an earlier run with the same settings)" if m.get("cached") else ""
            sources.append(f"{ROLE_NAMES.get(model, model)}: `{m['source']}`{cached}")

    gate = ev.get("gate")
    verdict = None
    if gate is not None:
        passed = bool(gate.get("passed"))
        must_beat = [ROLE_NAMES.get(x, x) for x in gate.get("must_beat") or []]
        min_acc = float(gate.get("min_accuracy") or 0.0)
        rule = []
        if must_beat:
            rule.append(f"beat the {' and the '.join(must_beat)} by at least "
                        f"{_pts(gate.get('margin') or 0.0).lstrip('+')} points")
        if min_acc or not must_beat:
            rule.append(f"reach an accuracy of at least {_pct(min_acc)}%")
        # A failed gate lists what failed; a passed one what it checked (older records: reasons).
        lines = (gate.get("checks") or gate.get("reasons")) if passed else gate.get("reasons")
        verdict = {"passed": passed, "rule": " and ".join(rule), "lines": [str(x) for x in lines or []]}
    limit = settings.get("limit") or 0
    hardware = ev.get("hardware") or {}
    gpu, count = hardware.get("gpu"), hardware.get("gpu_count") or 0
    if gpu:
        device = f"{count} × {gpu}" if count > 1 else gpu
    else:
        device = f"the CPU ({hardware.get('cpu') or 'unknown'})"
    dataset = settings.get("dataset") or HUB_DATASET
    hub = _is_hub_id(dataset)
    scores = settings.get("scores") or {}
    return {
        "table": table,
        "detail": detail,
        "target": f"{language_name(target)} (`{target}`)" if target else None,
        "gate": verdict,
        "sources": sources,
        "dataset": dataset,
        "dataset_link": f"{_HF}/datasets/{dataset}" if hub else None,
        "hub_dataset": settings.get("hub_dataset") or HUB_DATASET,
        "dataset_revision": settings.get("dataset_revision") if hub else None,
        # A local copy has no Hub revision; the evaluation records a hash of each language's file.
        "file_hashes": None if hub else ", ".join(
            f"`{k}` {v}" for k, v in (settings.get("dataset_revisions") or {}).items()) or None,
        "ci_method": scores.get("ci95"),
        "diff_method": scores.get("comparison_ci95"),
        "prompt": settings.get("prompt"),
        "num_fewshot": settings.get("num_fewshot"),
        "max_new_tokens": settings.get("max_new_tokens"),
        "backend": settings.get("backend"),
        "eval_dtype": settings.get("dtype"),
        "seed": settings.get("seed"),
        "limit": limit,
        "questions": f"the first {limit} of {TEST_QUESTIONS}" if limit else f"all {TEST_QUESTIONS}",
        "vllm": json.dumps(settings["vllm"], sort_keys=True) if settings.get("vllm") else None,
        "device": device,
        "date": ev.get("created") or ev.get("date"),
        "platform": hardware.get("platform"),
    }


# --- the layer-map picture (an SVG, see hubswap.svg) ------------------------------------------

_LANG_COLOUR = "#E69F00"  # Okabe-Ito orange and blue: distinguishable with any colour vision
_TASK_COLOUR = "#0072B2"


def _labels(rec: BuildRecords) -> dict[str, str]:
    models = dict(_models(rec))
    return {
        role: f"{ROLE_NAMES[role]}: {models[role].get('repo') or models[role].get('path')}"
        for role in ("task", "language")
    } | {"non_layer": _non_layer_source(rec), "title": rec.recipe.recipe.name}


def layer_map_svg(layers: list[dict], labels: dict[str, str]) -> str:
    """Every layer bottom (left) to top (right) as a bar split by the two experts' blend weights."""
    n = len(layers)
    cell = 26 if n <= 32 else max(9, 832 // n)
    left, top, bar = 24, 58, 120
    ends, gap = 26, 6  # the embeddings and head columns, apart from the layers
    width = max(left * 2 + cell * n + 2 * (ends + gap), 560)  # at least room for the legend
    height = top + bar + 96
    every = 1 if cell >= 20 else 2 if cell >= 12 else 4
    out = [
        f'<text x="{left}" y="20" font-size="14" font-weight="bold">'
        f"Layer map of {escape(labels['title'])}</text>",
        f'<text x="{left}" y="38" fill="#444444">share of each expert in every layer, '
        f"bottom layer (input side) on the left</text>",
    ]

    def column(x: int, w: int, lang_share: float, label: str, tip: str) -> None:
        h_lang = round(bar * lang_share, 2)
        out.append(f"<g><title>{escape(tip)}</title>")
        if h_lang < bar:
            out.append(f'<rect x="{x}" y="{top}" width="{w - 2}" height="{bar - h_lang:g}" fill="{_TASK_COLOUR}"/>')
        if h_lang > 0:
            out.append(f'<rect x="{x}" y="{top + bar - h_lang:g}" width="{w - 2}" height="{h_lang:g}" '
                       f'fill="{_LANG_COLOUR}"/>')
        out.append("</g>")
        if label:
            out.append(f'<text x="{x + (w - 2) / 2:g}" y="{top + bar + 14}" text-anchor="middle">{label}</text>')

    nl = 1.0 if labels["non_layer"] == "language" else 0.0
    x = left
    column(x, ends, nl, "emb", f"embeddings: {labels['non_layer']} expert")
    x += ends + gap
    for layer in layers:
        i, w = layer["index"], float(layer["language_weight"])
        tip = f"layer {i} ({layer['region']}): language {w:.3g}, task {1 - w:.3g}"
        # The last layer is labelled too, unless that would crowd its labelled neighbour.
        shown = i % every == 0 or (i == n - 1 and i % every >= min(2, every))
        column(x, cell, w, str(i) if shown else "", tip)
        if 0 < w < 1 and cell >= 20:
            out.append(f'<text x="{x + (cell - 2) / 2:g}" y="{top - 4}" text-anchor="middle" '
                       f'font-size="9">{w:.2f}</text>')
        x += cell
    x += gap
    column(x, ends, nl, "head", f"final norm and LM head: {labels['non_layer']} expert")
    y = top + bar + 40
    for colour, text in ((_LANG_COLOUR, labels["language"]), (_TASK_COLOUR, labels["task"])):
        out.append(f'<rect x="{left}" y="{y - 10}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{left + 18}" y="{y}">{escape(text)}</text>')
        y += 20
    out.append(f'<text x="{left}" y="{y}" fill="#444444">numbers above a bar: the language expert\'s weight '
               f"in a blended transition layer</text>")
    return svg.document(width, height, out, font="Helvetica, Arial, sans-serif", background="#ffffff",
                        title=f"Layer map of {labels['title']}")
