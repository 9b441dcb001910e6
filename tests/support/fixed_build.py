"""A fixed build for the card's tests and its golden files: a build folder as `hubswap build`
leaves it (no weights: the card reads only the records), its records written by their own writers
from fixed values, so the card is the same on every machine. tests/test_card.py compares the card
with tests/golden; `python -m tests.support.update_goldens` is the one place that rewrites them.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from hubswap.card import PICTURE_FILE, write_card
from hubswap.evaluate.gate import apply_gate
from hubswap.evaluate.results import (
    EvalResults,
    Hardware,
    LanguageScores,
    ModelResult,
    ScoreMethods,
    Settings,
)
from hubswap.evaluate.stats import paired_comparison, wilson_interval
from hubswap.files import write_json
from hubswap.layermap import layer_map
from hubswap.licenses import decide_license
from hubswap.recipe import Gate, parse_recipe
from hubswap.records import (
    BuildRecord,
    FileEntry,
    LayerMapRecord,
    ModelEntry,
    Output,
    OutputFile,
    ParentLicense,
    RecipeRef,
)

GOLDEN = Path(__file__).resolve().parent.parent / "golden"

RECIPE = """\
# hubswap build recipes/tiny-swahili-math.toml
schema_version = 1
name = "tiny-swahili-math"

[models.base]
path = "../experts/base"

[models.task]
repo = "hubswap-test/tiny-math"
revision = "v1.0"

[models.language]
repo = "hubswap-test/tiny-swahili"

[swap]
bottom = 2
top = 1
transition = 1
transition_bottom = 2

[eval]
languages = ["sw", "en"]
limit = 0

[publish]
repo = "hubswap-test/tiny-swahili-math-layerswap"
license = "apache-2.0"
"""

TASK_COMMIT = "1" * 40
LANG_COMMIT = "a" * 40


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _files(*names: str) -> dict[str, FileEntry]:
    return {n: FileEntry(sha256=sha(n), size=1000 + 7 * len(n)) for n in names}


def _lock(recipe: str) -> BuildRecord:
    """The build record of a fixed build, in the typed record `hubswap build` writes."""
    loaded = parse_recipe(recipe, Path("recipes/tiny-swahili-math.toml"))
    commits = {"task": TASK_COMMIT, "language": LANG_COMMIT, "base": "c" * 40}
    weights = {"task": ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")}
    models = {
        role: ModelEntry(repo=src.repo, revision=src.ref if src.repo else None,
                         commit=commits[role] if src.repo else None, path=src.path,
                         files=_files("config.json", *weights.get(role, ("model.safetensors",))))
        for role, src in loaded.recipe.models.roles().items()
    }
    # The parents' cards: both experts under apache-2.0 (one with a LICENSE file), the local base with no card.
    parents = {
        "task": ParentLicense(license="apache-2.0", license_name=None, license_link=None,
                              datasets=["hubswap-test/tiny-math-instruct"], files=["LICENSE"]),
        "language": ParentLicense(license="apache-2.0", license_name=None, license_link=None,
                                  datasets=["hubswap-test/tiny-swahili-corpus"], files=[]),
        "base": ParentLicense(license=None, license_name=None, license_link=None, datasets=[], files=[]),
    }
    license = decide_license(parents, {r: s.display() for r, s in loaded.recipe.models.roles().items()},
                             loaded.recipe.publish, model_name="tiny-swahili-math-layerswap")
    license = license.model_copy(update={"files": {"LICENSE": "task:LICENSE"}})
    models["task"] = models["task"].model_copy(update={"files": {**models["task"].files, **_files("LICENSE", "README.md")}})
    outputs = {n: OutputFile(size=1000 + 7 * len(n))
               for n in ("LICENSE", "config.json", "model.safetensors", "model.safetensors.index.json")}
    return BuildRecord(
        lock_version=1, hubswap_version="0.1.0", created="2026-01-02T03:04:05+00:00",
        recipe=RecipeRef(path="recipes/tiny-swahili-math.toml", name=loaded.recipe.name, sha256=sha(recipe)),
        models=models,
        layer_map=LayerMapRecord.model_validate(layer_map(loaded.recipe.swap, 8).to_json()),
        output=Output(dtype="bfloat16", num_layers=8, shards=["model.safetensors"], files=outputs),
        versions={"hubswap": "0.1.0", "numpy": "2.3.0", "safetensors": "0.6.2", "huggingface_hub": "2.4.0"},
        license=license,
    )


N = 250
# Right answers per model and language (the merged model: 36.4% in Swahili). Which questions each
# model gets right is fixed by a seed, so the paired comparisons below are computed, not written.
CORRECT = {"merged": {"sw": 91, "en": 153}, "task": {"sw": 74, "en": 160}, "language": {"sw": 51, "en": 75}}
SOURCES = {"merged": ("model", False), "task": ("hubswap-test/tiny-math@" + TASK_COMMIT, True),
           "language": ("hubswap-test/tiny-swahili@" + LANG_COMMIT, False)}


def _verdicts(model: str, lang: str) -> list[bool]:
    right = set(random.Random(f"{model}/{lang}").sample(range(N), CORRECT[model][lang]))
    return [i in right for i in range(N)]


def _scores(verdicts: list[bool]) -> LanguageScores:
    """A language's scores as the evaluation summarises them: the accuracy's Wilson interval is
    computed; the lm-eval scores and answer rates are fixed a little below the robust accuracy."""
    k = sum(verdicts)
    return LanguageScores(n=N, correct=k, accuracy=k / N, ci95=wilson_interval(k, N), strict_match=(k - 5) / N,
                          flexible_extract=(k - 3) / N, truncation_rate=1 / N, no_answer_rate=3 / N,
                          mean_generated_tokens=180.5, target_language_share=0.98)


def eval_results(passed: bool = True, local_dataset: bool = False, mgsm: bool = True) -> EvalResults:
    """The evaluation of a fixed build as typed records; the comparisons are stats.paired_comparison's
    and the gate's verdict is apply_gate's, as `hubswap build` writes them. ``mgsm=False``: the local
    dataset holds other questions than MGSM's (as the demo world's)."""
    dataset = dict(dataset="/data/mgsm", dataset_revision=None,
                   dataset_revisions={"sw": "sha256:f1a2ae4b146f0316", "en": "sha256:5e9abcb4d309f958"}) \
        if local_dataset else dict(dataset="juletxara/mgsm", dataset_revision="b" * 40,
                                   dataset_revisions={"sw": "b" * 40, "en": "b" * 40})
    settings = Settings(
        **dataset, hub_dataset="juletxara/mgsm" if mgsm else None, languages=["sw", "en"], target_language="sw", prompt="native-cot",
        num_fewshot=8, fewshot_seed=1234, max_new_tokens=512, backend="vllm", dtype="bfloat16", batch_size=None,
        limit=0, questions={"sw": N, "en": N}, seed=0, greedy=True, vllm={"tensor_parallel_size": 1},
        vllm_cpu_defaults=None,
        scores=ScoreMethods(accuracy="robust", strict_match="lm-eval 0.4.13 strict-match",
                            flexible_extract="lm-eval 0.4.13 flexible-extract", ci95="Wilson score interval",
                            comparison_ci95="Newcombe paired score interval; McNemar exact test",
                            target_language_share="lingua among MGSM's eleven languages"),
    )
    verdicts = {m: {lang: _verdicts(m, lang) for lang in ("sw", "en")} for m in CORRECT}
    models = {m: ModelResult(source=SOURCES[m][0], cache_key=None, cached=SOURCES[m][1],
                             cached_languages=["sw", "en"] if SOURCES[m][1] else [], engine=None,
                             languages={lang: _scores(v) for lang, v in verdicts[m].items()})
              for m in CORRECT}
    results = EvalResults(
        settings=settings,
        versions={"hubswap": "0.1.0", "torch": "2.13.0", "transformers": "5.19.0", "vllm": "0.32.0",
                  "datasets": "4.1.0"},
        hardware=Hardware(device="cuda", gpu="NVIDIA H100 80GB HBM3", gpu_count=1, cpu="x86_64", cpu_count=32,
                          platform="Linux-6.8.0-x86_64-with-glibc2.39"),
        models=models, reference_model="merged",
        comparisons={o: {lang: paired_comparison(verdicts["merged"][lang], verdicts[o][lang]) for lang in ("sw", "en")}
                     for o in ("task", "language")},
    )
    # passed: the merged model beats both experts; failed: not by the 10 points the gate asks
    gate = Gate(must_beat=["task", "language"], margin=0.0 if passed else 0.1)
    return results.model_copy(update={"gate": apply_gate(results, gate).record()})


def make_build(root: Path, *, evaluated: bool = True, recipe: str = RECIPE, **eval_kw) -> Path:
    """A build folder as `hubswap build` leaves it (no weights: the card reads only the records),
    its records written by their own writers."""
    records = root / "model" / "hubswap"
    records.mkdir(parents=True)
    (records / "recipe.toml").write_text(recipe)
    write_json(records / "lock.json", _lock(recipe).to_json())
    if evaluated:
        eval_results(**eval_kw).write(records / "eval_results.json")
    (root / "model" / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 8}')
    return root


def golden_files(root: Path) -> dict[str, str]:
    """What tests/golden holds, rendered from the fixed build in ``root``: compared by
    tests/test_card.py and written only by `python -m tests.support.update_goldens`, never inside a comparison."""
    build = make_build(root / "build")
    readme = write_card(build)
    assert readme == build / "model" / "README.md"
    assert not list((build / "model").rglob("*.tmp")), "a temporary file was left behind"
    return {"card_evaluated.md": readme.read_text(), "layer_map.svg": (build / "model" / PICTURE_FILE).read_text()}

