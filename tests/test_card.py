"""The model card: a golden file for a fixed build, its header read back by huggingface_hub, and the
plain statement on an unevaluated build. The build folder holds the typed records `hubswap build`
writes (BuildRecord, EvalResults), made by their own writers where there is one (paired
comparisons, Wilson intervals, the gate's verdict) from fixed values, so the card is the same on
every machine; tests/test_card_evaluated.py renders the card of a real evaluated build. The golden
test only compares: after a deliberate change
to the card, `python -m tests.update_goldens` rewrites tests/golden (then read its diff).
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

from hubswap.card import PICTURE_FILE, render_card, write_card
from hubswap.cli import main
from hubswap.errors import ModelFilesError
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
from hubswap.recipe import Gate, parse_recipe
from hubswap.records import BuildRecord, FileEntry, LayerMapRecord, ModelEntry, Output, OutputFile, RecipeRef

GOLDEN = Path(__file__).parent / "golden"

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


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _files(*names: str) -> dict[str, FileEntry]:
    return {n: FileEntry(sha256=_sha(n), size=1000 + 7 * len(n)) for n in names}


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
    outputs = {n: OutputFile(size=1000 + 7 * len(n))
               for n in ("config.json", "model.safetensors", "model.safetensors.index.json")}
    return BuildRecord(
        lock_version=1, hubswap_version="0.1.0", created="2026-01-02T03:04:05+00:00",
        recipe=RecipeRef(path="recipes/tiny-swahili-math.toml", name=loaded.recipe.name, sha256=_sha(recipe)),
        models=models,
        layer_map=LayerMapRecord.model_validate(layer_map(loaded.recipe.swap, 8).to_json()),
        output=Output(dtype="bfloat16", num_layers=8, shards=["model.safetensors"], files=outputs),
        versions={"hubswap": "0.1.0", "numpy": "2.3.0", "safetensors": "0.6.2", "huggingface_hub": "2.4.0"},
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
                          mean_generated_tokens=180.5)


def _eval_results(passed: bool = True, local_dataset: bool = False) -> EvalResults:
    """The evaluation of a fixed build as typed records; the comparisons are stats.paired_comparison's
    and the gate's verdict is apply_gate's, as `hubswap build` writes them."""
    dataset = dict(dataset="/data/mgsm", dataset_revision=None,
                   dataset_revisions={"sw": "sha256:f1a2ae4b146f0316", "en": "sha256:5e9abcb4d309f958"}) \
        if local_dataset else dict(dataset="juletxara/mgsm", dataset_revision="b" * 40,
                                   dataset_revisions={"sw": "b" * 40, "en": "b" * 40})
    settings = Settings(
        **dataset, hub_dataset="juletxara/mgsm", languages=["sw", "en"], target_language="sw", prompt="native-cot",
        num_fewshot=8, fewshot_seed=1234, max_new_tokens=512, backend="vllm", dtype="bfloat16", batch_size=None,
        limit=0, questions={"sw": N, "en": N}, seed=0, greedy=True, vllm={"tensor_parallel_size": 1},
        vllm_cpu_defaults=None,
        scores=ScoreMethods(accuracy="robust", strict_match="lm-eval 0.4.13 strict-match",
                            flexible_extract="lm-eval 0.4.13 flexible-extract", ci95="Wilson score interval",
                            comparison_ci95="Newcombe paired score interval; McNemar exact test"),
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
        _eval_results(**eval_kw).write(records / "eval_results.json")
    (root / "model" / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 8}')
    return root


def golden_files(root: Path) -> dict[str, str]:
    """What tests/golden holds, rendered from the fixed build in ``root``: compared by the test below
    and written only by `python -m tests.update_goldens`, never inside a comparison."""
    build = make_build(root / "build")
    readme = write_card(build)
    assert readme == build / "model" / "README.md"
    assert not list((build / "model").rglob("*.tmp")), "a temporary file was left behind"
    return {"card_evaluated.md": readme.read_text(), "layer_map.svg": (build / "model" / PICTURE_FILE).read_text()}


def test_card_matches_golden_file(tmp_path):
    for name, text in golden_files(tmp_path).items():
        path = GOLDEN / name
        assert path.exists(), f"{path} is missing: `python -m tests.update_goldens` writes it"
        assert text == path.read_text(), f"{name} differs from the golden file (`python -m tests.update_goldens` " \
            "rewrites it after a deliberate change)"


def test_update_goldens_writes_what_the_golden_test_compares(tmp_path):
    from tests.update_goldens import main as update

    assert update(["--out", str(tmp_path / "golden")]) == 0
    written = {p.name: p.read_text() for p in (tmp_path / "golden").iterdir()}
    assert written == {p.name: p.read_text() for p in GOLDEN.iterdir()}


def test_header_parses_back_with_every_field(tmp_path):
    from huggingface_hub import ModelCard

    build = make_build(tmp_path / "build")
    card = ModelCard.load(write_card(build))
    data = card.data
    # every field of the header, and nothing else
    assert set(data.to_dict()) == {"base_model", "base_model_relation", "library_name", "license", "language",
                                   "pipeline_tag", "tags", "model-index"}, sorted(data.to_dict())
    assert data.pipeline_tag == "text-generation"
    assert data.base_model == ["hubswap-test/tiny-math", "hubswap-test/tiny-swahili"]  # not the local base
    assert data.base_model_relation == "merge"
    assert data.library_name == "transformers"
    assert data.license == "apache-2.0"
    assert data.language == ["sw", "en"]
    assert data.tags == ["merge", "layer-swapping", "hubswap", "mgsm"]
    assert data.model_name == "hubswap-test/tiny-swahili-math-layerswap"
    results = {(r.dataset_config, r.metric_name): r for r in data.eval_results}
    assert {c for c, _ in results} == {"sw", "en"}
    for r in data.eval_results:
        assert (r.task_type, r.dataset_type, r.dataset_split) == ("text-generation", "juletxara/mgsm", "test")
        assert r.dataset_revision == "b" * 40
        assert r.metric_name and "8-shot" in r.metric_name and "native-cot" in r.metric_name
    sw = [r for (c, _), r in results.items() if c == "sw"]
    assert sorted((r.metric_type, r.metric_value) for r in sw) == [
        ("accuracy", 0.364), ("exact_match", 0.344), ("exact_match", 0.352)]
    assert {r.metric_name.split(" (")[1].split(",")[0] for r in sw} == {
        "hubswap robust answer extraction", "lm-eval strict-match", "lm-eval flexible-extract"}
    # The raw YAML holds exactly what the Hub indexes, in the Hub's key names.
    header = card.content.split("---")[1]
    assert "model-index:" in header and "base_model_relation: merge" in header


def test_card_shows_layers_provenance_and_verdict(tmp_path):
    text = render_card(make_build(tmp_path / "build"))
    body = text.split("\n---\n", 1)[1]
    assert "**Gate: passed**" in body
    assert f"![Layer map: which expert every layer comes from, with the blend weights]({PICTURE_FILE})" in body
    assert "| 2 | transition-bottom | blend | 0.667 | 0.333 |" in body
    assert "| 4–5 | middle | task expert | 0 | 1 |" in body
    assert f"[`{TASK_COMMIT}`](https://huggingface.co/hubswap-test/tiny-math/tree/{TASK_COMMIT})" in body
    assert _sha("model-00002-of-00002.safetensors") in body
    assert RECIPE.rstrip() in body
    assert "NVIDIA H100 80GB HBM3" in body
    assert "| vllm | – | 0.32.0 |" in body
    assert "arXiv" in body and "2410.01335" in body and "2210.03057" in body
    assert "local folder `../experts/base`" in body


def test_unevaluated_build_says_so_plainly(tmp_path):
    from huggingface_hub import ModelCard

    text = render_card(make_build(tmp_path / "build", evaluated=False))
    assert "**This model was not evaluated.**" in text
    assert "**Gate" not in text and "McNemar" not in text
    card = ModelCard(text)
    assert card.data.eval_results is None
    assert card.data.base_model_relation == "merge"


def test_failed_gate_local_experts_and_local_dataset(tmp_path):
    from huggingface_hub import ModelCard

    recipe = RECIPE.replace('repo = "hubswap-test/tiny-swahili"', 'path = "../experts/sw"')
    text = render_card(make_build(tmp_path / "build", recipe=recipe, passed=False, local_dataset=True))
    assert "**Gate: failed**, so this build must not be published" in text
    assert "- merged 0.364 < task 0.296 + margin 0.100 (n=250)" in text  # apply_gate's own words
    card = ModelCard(text)
    assert card.data.base_model == ["hubswap-test/tiny-math"]
    assert {(r.dataset_type, r.dataset_revision) for r in card.data.eval_results} == {("juletxara/mgsm", None)}
    assert "a local copy of [juletxara/mgsm](https://huggingface.co/datasets/juletxara/mgsm) at `/data/mgsm`" in text
    assert "(files `sw` sha256:f1a2ae4b146f0316, `en` sha256:5e9abcb4d309f958)" in text
    assert "95% intervals (Wilson score interval)" in text and "(Newcombe paired score interval; McNemar exact test)" in text


def test_card_never_contains_a_token(tmp_path):
    token = "hf_" + "A1b2C3d4" * 5
    recipe = RECIPE.replace("# hubswap build", f"# made with HF_TOKEN={token}: hubswap build")
    text = render_card(make_build(tmp_path / "build", recipe=recipe))
    assert token not in text and not re.search(r"hf_[A-Za-z0-9]{30,}", text)


def test_card_command_re_renders_from_build_or_model_dir(tmp_path, capsys):
    build = make_build(tmp_path / "build")
    assert main(["card", str(build)]) == 0
    first = (build / "model" / "README.md").read_text()
    assert main(["card", str(build / "model")]) == 0
    assert (build / "model" / "README.md").read_text() == first
    assert "README.md" in capsys.readouterr().out


def test_card_command_rejects_a_folder_that_is_not_a_build(tmp_path, capsys):
    assert main(["card", str(tmp_path)]) == ModelFilesError.exit_code
    assert "not a hubswap build" in capsys.readouterr().err


def test_card_summary_is_the_comparison_table_and_verdict(tmp_path, capsys):
    build = make_build(tmp_path / "build")
    assert main(["card", str(build), "--summary"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## tiny-swahili-math\n")
    assert "| Swahili (`sw`) ★ | 250 | 36.4 [30.7, 42.5] |" in out and "**Gate: passed**" in out
    assert "## How to use" not in out and not (build / "model" / "README.md").exists()


def test_card_of_a_real_tiny_build(tiny_llama, tmp_path):
    """The lock that `hubswap build` writes is the one the card reads."""
    import xml.etree.ElementTree as ET

    from huggingface_hub import ModelCard

    from hubswap.pipeline import BuildOptions, build

    recipe = tmp_path / "tiny.toml"
    recipe.write_text(
        f'schema_version = 1\nname = "tiny"\n[models.task]\npath = "{tiny_llama["task"]}"\n'
        f'[models.language]\npath = "{tiny_llama["language"]}"\n[swap]\nbottom = 2\ntop = 1\ntransition = 1\n'
    )
    result = build(recipe, BuildOptions(output=tmp_path / "build", evaluate=False, progress=False))
    card = ModelCard.load(result.model_dir / "README.md")
    assert "**This model was not evaluated.**" in card.text
    assert card.data.library_name == "transformers" and card.data.base_model is None  # local experts only
    # The recipe gives absolute paths: the card's prose names the folder only (no path of this machine).
    assert "in the local folder `task`" in card.text and f"folder `{tiny_llama['task']}`" not in card.text
    assert "| 3–5 | middle | task expert | 0 | 1 |" in card.text
    svg = (result.model_dir / PICTURE_FILE).read_text()
    ET.fromstring(svg)
    assert svg.count("<title>layer ") == 8
