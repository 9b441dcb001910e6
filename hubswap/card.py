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
from typing import TYPE_CHECKING, Any

from hubswap.card_figure import layer_map_svg
from hubswap.card_license import experts, license_section, parent_datasets
from hubswap.errors import ModelFilesError
from hubswap.evaluate.data import TEST_QUESTIONS
from hubswap.evaluate.languages import language_name
from hubswap.evaluate.stats import p_value, pct, points
from hubswap.files import atomic_write, human_size
from hubswap.recipe import LoadedRecipe, parse_recipe
from hubswap.records import (
    CARD_TEMPLATE,
    EVAL_RESULTS,
    RECIPE_COPY,
    BuildRecord,
    ModelEntry,
    find_model_dir,
    read_build_record,
)

if TYPE_CHECKING:
    from hubswap.evaluate.results import EvalResults

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
PICTURE_FILE = "hubswap/layer_map.svg"

# Package data, so an installed wheel renders the same card as a checkout.
TEMPLATE = Path(__file__).resolve().parent / "templates" / "model_card.md.j2"

ROLE_NAMES = {"task": "task expert", "language": "language expert", "base": "base model", "merged": "merged",
              "soup": "soup (experts averaged)"}
_HF = "https://huggingface.co"
# Hub user access tokens; a card must never carry one, whatever ended up in the records.
_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")
PAPERS = ("2410.01335", "2210.03057")  # layer swapping; MGSM: the Hub links a model to them by these tags
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class BuildRecords:
    """What a build wrote about itself under ``<model>/hubswap/``."""

    model_dir: Path
    recipe: LoadedRecipe
    build: BuildRecord
    eval_results: EvalResults | None

    @property
    def evaluated(self) -> bool:
        return self.eval_results is not None and bool(self.eval_results.models)


def read_records(model_dir: str | Path) -> BuildRecords:
    from hubswap.evaluate.results import read_eval_results

    model_dir = find_model_dir(model_dir)
    recipe_path = model_dir / RECIPE_COPY
    if not recipe_path.is_file():
        raise ModelFilesError(f"{recipe_path} is missing: the card shows the recipe verbatim")
    recipe = parse_recipe(recipe_path.read_text(encoding="utf-8"), recipe_path)
    eval_path = model_dir / EVAL_RESULTS
    eval_results = read_eval_results(eval_path) if eval_path.is_file() else None
    return BuildRecords(model_dir, recipe, read_build_record(model_dir), eval_results)


# --- rendering ---------------------------------------------------------------------------------


def render_card(model_dir: str | Path) -> str:
    """The model card (YAML header and Markdown body) of a build, as text.

    The template is the packaged one, or the recipe's (``[publish] card``, kept in the build as
    ``hubswap/card.md.j2``), which extends it through its blocks (``experts``, ``intended_use``).
    Templates render in Jinja's sandbox: a downloaded build's template runs no code."""
    from huggingface_hub import ModelCard
    from jinja2 import FileSystemLoader, TemplateError, TemplateSyntaxError
    from jinja2.sandbox import SandboxedEnvironment

    rec = read_records(model_dir)
    env = SandboxedEnvironment(loader=FileSystemLoader(TEMPLATE.parent))
    own = rec.model_dir / CARD_TEMPLATE
    data = card_data(rec)
    try:
        template = env.from_string(own.read_text(encoding="utf-8")) if own.is_file() else env.get_template(TEMPLATE.name)
        card = ModelCard(template.render(**{**data.to_dict(), "card_data": data.to_yaml(), **_context(rec)}))
    except TemplateError as e:
        where = f"{own}:{e.lineno}" if isinstance(e, TemplateSyntaxError) else str(own)
        raise ModelFilesError(f"{where}: the card template does not render: {e}",
                              hint="fix the recipe's [publish] card template (it extends model_card.md.j2 "
                              "through its blocks; docs/build.md#the-model-card)") from None
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


def _all_questions(ev) -> int:
    """How many test questions "all" was: the merged model's count in the target language (a local
    dataset, such as the demo world's, may hold fewer than MGSM's 250)."""
    mine = ev.scores(ev.reference_model, ev.settings.target_language)
    return mine.n if mine is not None else TEST_QUESTIONS


def write_card(model_dir: str | Path) -> Path:
    """Write README.md and the layer-map picture into the model folder; returns the README's path.

    Each file is written to a temporary sibling and renamed, so a reader never sees half a card.
    """
    model_dir = find_model_dir(model_dir)
    rec = read_records(model_dir)
    atomic_write(model_dir / PICTURE_FILE, layer_map_svg(_layers(rec), _labels(rec)))
    readme = model_dir / CARD_FILE
    atomic_write(readme, render_card(model_dir))
    log.debug("wrote the model card %s", readme)  # the staging folder's, in a build: its caller names the final path
    return readme


# --- the YAML header -----------------------------------------------------------------------------


def card_data(rec: BuildRecords):
    """The card's metadata: what the Hub indexes (model tree, licence, languages, model-index)."""
    from huggingface_hub import ModelCardData

    parents = [m.repo for role, m in _models(rec) if role in ("task", "language") and m.repo]
    fields: dict[str, Any] = {}
    if parents:
        # The experts are the merge's parents; the common base is their ancestor, not a parent.
        # Local folders are not Hub ids and appear only in the provenance section.
        fields.update(base_model=parents, base_model_relation="merge")
    lic = _license_of(rec)
    if lic["id"]:
        fields["license"] = lic["id"]
        if lic["id"] == "other":
            fields.update(license_name=lic["name"], license_link=lic["link"])
    if datasets := parent_datasets(rec.build.license):
        fields["datasets"] = datasets
    return ModelCardData(
        model_name=_model_id(rec),
        language=_languages(rec),
        library_name="transformers",
        pipeline_tag="image-text-to-text" if _multimodal(rec) else "text-generation",
        tags=["merge", "layer-swapping", "hubswap", "mgsm", *(f"arxiv:{p}" for p in PAPERS)],
        eval_results=_eval_results(rec) or None,
        **fields,
    )


def _eval_results(rec: BuildRecords) -> list:
    from huggingface_hub import EvalResult

    ev = rec.eval_results
    if ev is None or not rec.evaluated:
        return []
    st = ev.settings
    hub_dataset = _is_hub_id(st.dataset)
    if not hub_dataset and st.hub_dataset is None:  # other questions than MGSM's: not indexed as MGSM
        return []
    how = ", ".join(x for x in (f"{st.num_fewshot}-shot", st.prompt) if x)
    subset = f", first {st.limit} questions" if st.limit else ""
    out = []
    repo = rec.recipe.recipe.publish.repo if rec.recipe.recipe.publish else None
    source = ({"source_name": "hubswap eval_results.json", "source_url": f"{_HF}/{repo}/blob/main/{EVAL_RESULTS}"}
              if repo else {})
    merged = ev.models.get(ev.reference_model)
    for lang, res in (merged.languages if merged else {}).items():
        for value, metric_type, name in (
            (res.accuracy, "accuracy", "accuracy (hubswap robust answer extraction{})"),
            (res.strict_match, "exact_match", "exact_match (lm-eval strict-match{})"),
            (res.flexible_extract, "exact_match", "exact_match (lm-eval flexible-extract{})"),
        ):
            out.append(EvalResult(
                task_type="text-generation",
                task_name="Multilingual grade-school math (MGSM)",
                dataset_type=st.dataset if hub_dataset else st.hub_dataset,
                dataset_name=f"MGSM ({language_name(lang)})",
                dataset_config=lang,
                dataset_split="test",
                dataset_revision=st.dataset_revision if hub_dataset else None,
                metric_type=metric_type,
                metric_name=name.format(f", {how}{subset}"),
                metric_value=round(float(value), 4),
                **source,
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
        "evaluation": _evaluation(rec.eval_results) if rec.eval_results is not None and rec.evaluated else None,
        "picture": PICTURE_FILE,
        "layer_rows": _layer_rows(layers, rec),
        "non_layer": _non_layer_source(rec),
        "vision": _vision(rec),
        "num_layers": len(layers),
        "inputs": [_input(role, m) for role, m in models.items()],
        "output": _output(rec),
        "recipe_text": rec.recipe.text.rstrip("\n"),
        "local_inputs": [m.path for m in models.values() if m.path],
        "versions": _versions(rec),
        "created": rec.build.created,
        "license": _license_of(rec),
        "built_with": rec.build.license.built_with if rec.build.license else [],
        "experts": _experts(rec),
        "auto_class": "AutoModelForImageTextToText" if _multimodal(rec) else "AutoModelForCausalLM",
        "processor_class": "AutoProcessor" if _multimodal(rec) else "AutoTokenizer",
        "processor_var": "processor" if _multimodal(rec) else "tokenizer",
        "build_command": _build_command(rec),
        "publish_repo": r.publish.repo if r.publish else None,
        "hubswap_version": rec.build.versions.get("hubswap") or rec.build.hubswap_version,
    }


def _build_command(rec: BuildRecords) -> str:
    """The command that rebuilds this model from its records, sharded as it was."""
    shard = rec.build.output.max_shard_size
    return "hubswap build hubswap/recipe.toml --no-push" + (
        f" --max-shard-size {shard}" if shard and shard != 5_000_000_000 else "")


def _multimodal(rec: BuildRecords) -> bool:
    """A merge with a vision side (LLaVA, Gemma 3, Qwen2-VL): it loads with AutoModelForImageTextToText."""
    return rec.build.layer_map.vision is not None


def _license_of(rec: BuildRecords) -> dict:
    section = license_section(rec.build.license, rec.recipe.recipe.publish, dict(_models(rec)))
    return {**section, "parents": [{**p, "role": ROLE_NAMES[p["role"]]} for p in section["parents"]]}


def _experts(rec: BuildRecords) -> list[dict]:
    return [{**e, "role": ROLE_NAMES[e["role"]], "datasets": [d for d in e["datasets"] if _is_hub_id(d)]}
            for e in experts(rec.build.license, dict(_models(rec)))]


def _models(rec: BuildRecords) -> list[tuple[str, ModelEntry]]:
    """(role, recorded input) for task, language and base, in that order."""
    return [(role, rec.build.models[role]) for role in ("task", "language", "base") if role in rec.build.models]


def _model_id(rec: BuildRecords) -> str:
    r = rec.recipe.recipe
    return r.publish.repo if r.publish else r.name


def _languages(rec: BuildRecords) -> list[str]:
    return list(rec.eval_results.settings.languages if rec.eval_results else rec.recipe.recipe.eval.languages)


def _is_hub_id(name: Any) -> bool:
    return isinstance(name, str) and bool(_REPO_ID.match(name)) and not name.startswith(".")


def _layers(rec: BuildRecords) -> list[dict]:
    """The layer map as the build record has it (what was merged)."""
    return [x.model_dump() for x in rec.build.layer_map.layers]


def _non_layer_source(rec: BuildRecords) -> str:
    return rec.build.layer_map.non_layer


def _vision(rec: BuildRecords) -> dict | None:
    """The vision side of a multimodal build as the lock records it: its source and top modules."""
    recorded = rec.build.layer_map
    if not recorded.vision:
        return None
    modules = (recorded.modules or {}).get("vision", [])
    return {"source": recorded.vision, "modules": ", ".join(f"`{m}`" for m in modules)}


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


def _who(role: str, m: ModelEntry) -> str:
    if m.repo:
        return f"the {ROLE_NAMES[role]} [{m.repo}]({_HF}/{m.repo})"
    return f"the {ROLE_NAMES[role]} in the local folder `{m.path}`"


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


def _input(role: str, m: ModelEntry) -> dict:
    return {
        "role": ROLE_NAMES[role],
        "repo": m.repo,
        "path": m.path,
        "revision": m.revision,
        "commit": m.commit,
        "link": f"{_HF}/{m.repo}" if m.repo else None,
        "commit_link": f"{_HF}/{m.repo}/tree/{m.commit}" if m.repo and m.commit else None,
        "files": [{"name": k, "sha256": v.sha256, "size": human_size(v.size)} for k, v in sorted(m.files.items())],
    }


def _output(rec: BuildRecords) -> dict:
    out = rec.build.output
    return {
        "dtype": out.dtype,
        "hashed": any(v.sha256 for v in out.files.values()),
        "files": [{"name": k, "sha256": v.sha256 or "not recorded", "size": human_size(v.size)}
                  for k, v in sorted(out.files.items())],
    }


def _versions(rec: BuildRecords) -> list[dict]:
    """Tool versions of the merge (the build record) and of the evaluation, side by side."""
    built = rec.build.versions
    evaluated = rec.eval_results.versions if rec.eval_results else {}
    names = ["hubswap", "torch", "transformers", "safetensors", "huggingface_hub", "vllm", "datasets"]
    names += sorted((set(built) | set(evaluated)) - set(names))
    return [{"name": k, "build": built.get(k) or "–", "eval": evaluated.get(k) or "–"}
            for k in names if built.get(k) or evaluated.get(k)]


# --- evaluation ----------------------------------------------------------------------------------


def _p(p: float) -> str:
    return ", p < 0.001" if p < 0.001 else f", p = {p_value(p)}"


def _evaluation(ev: EvalResults) -> dict:
    """The card's evaluation section: the comparison table, per-score detail, the gate, the settings."""
    st, ref = ev.settings, ev.reference_model
    others = [k for k in ("task", "language", "base") if k in ev.models] + \
             [k for k in ev.models if k not in (ref, "task", "language", "base")]
    compared = [o for o in others if o in ev.comparisons]

    def cell(model: str, lang: str) -> str:
        res = ev.scores(model, lang)
        return f"{pct(res.accuracy)} [{pct(res.ci95[0])}, {pct(res.ci95[1])}]" if res else "–"

    def diff(other: str, lang: str) -> str:
        c = ev.comparisons[other].get(lang)
        return f"{points(c.diff)} [{points(c.ci95[0])}, {points(c.ci95[1])}]{_p(c.mcnemar_p)}" if c else "–"

    def n(lang: str) -> str:
        res = ev.scores(ref, lang)
        return str(res.n) if res else "–"

    table = {
        "header": ["Language", "n", "merged", *(ROLE_NAMES.get(o, o) for o in others),
                   *(f"merged − {ROLE_NAMES.get(o, o)}" for o in compared)],
        "rows": [[f"{language_name(lang)} (`{lang}`)" + (" ★" if lang == st.target_language else ""),
                  n(lang), cell(ref, lang), *(cell(o, lang) for o in others), *(diff(o, lang) for o in compared)]
                 for lang in st.languages],
    }
    detail = [[ROLE_NAMES.get(model, model), lang, pct(res.strict_match), pct(res.flexible_extract),
               pct(res.truncation_rate), pct(res.no_answer_rate),
               "–" if res.target_language_share is None else pct(res.target_language_share)]
              for model in [ref, *others] for lang in st.languages if (res := ev.scores(model, lang))]
    # The merged model is this folder; where it sat on the build machine is noise.
    sources = [f"{ROLE_NAMES.get(m, m)}: `{ev.models[m].source}`"
               + (" (scores reused from an earlier run with the same settings)" if ev.models[m].cached else "")
               for m in others]

    verdict = None
    if (gate := ev.gate) is not None:
        must_beat = [ROLE_NAMES.get(x, x) for x in gate.must_beat]
        rule = []
        if must_beat and gate.margin:
            rule.append(f"beat the {' and the '.join(must_beat)} by at least {points(gate.margin).lstrip('+')} points")
        elif must_beat:  # a tie passes
            rule.append(f"score at least as high as the {' and the '.join(must_beat)}")
        if gate.min_accuracy or not must_beat:
            rule.append(f"reach an accuracy of at least {pct(gate.min_accuracy)}%")
        if gate.min_target_language_share is not None:
            rule.append(f"write at least {pct(gate.min_target_language_share)}% of its answers in that language")
        # A failed gate lists what failed; a passed one what it checked.
        lines = (gate.checks or gate.reasons) if gate.passed else gate.reasons
        verdict = {"passed": gate.passed, "rule": " and ".join(rule), "lines": list(lines)}
    hw = ev.hardware
    if hw.gpu:
        device = f"{hw.gpu_count} × {hw.gpu}" if hw.gpu_count > 1 else hw.gpu
    else:
        device = f"the CPU ({hw.cpu})"
    hub = _is_hub_id(st.dataset)
    return {
        "table": table,
        "detail": detail,
        "target": f"{language_name(st.target_language)} (`{st.target_language}`)",
        "gate": verdict,
        "sources": sources,
        "dataset": st.dataset,
        "dataset_link": f"{_HF}/datasets/{st.dataset}" if hub else None,
        "hub_dataset": st.hub_dataset,
        "dataset_revision": st.dataset_revision if hub else None,
        # A local copy has no Hub revision; the evaluation records a hash of each language's file.
        "file_hashes": None if hub else ", ".join(f"`{k}` {v}" for k, v in st.dataset_revisions.items()) or None,
        "ci_method": st.scores.ci95,
        "diff_method": st.scores.comparison_ci95,
        "prompt": st.prompt,
        "num_fewshot": st.num_fewshot,
        "max_new_tokens": st.max_new_tokens,
        "backend": st.backend,
        "eval_dtype": st.dtype,
        "seed": st.seed,
        "limit": st.limit,
        "questions": f"the first {st.limit} of {TEST_QUESTIONS}" if st.limit else f"all {_all_questions(ev)}",
        "vllm": json.dumps(st.vllm, sort_keys=True) if st.vllm else None,
        "device": device,
        "platform": hw.platform,
    }


def _labels(rec: BuildRecords) -> dict[str, str]:
    models = dict(_models(rec))
    return {
        role: f"{ROLE_NAMES[role]}: {models[role].repo or models[role].path}"
        for role in ("task", "language")
    } | {"non_layer": _non_layer_source(rec), "title": rec.recipe.recipe.name}
