"""The model card: a golden file for a fixed build, its header read back by huggingface_hub, and the
plain statement on an unevaluated build. The build folder holds the typed records `hubswap build`
writes (BuildRecord, EvalResults), made by their own writers where there is one (paired
comparisons, Wilson intervals, the gate's verdict) from fixed values, so the card is the same on
every machine; tests/test_card_evaluated.py renders the card of a real evaluated build. The golden
test only compares: after a deliberate change
to the card, `python -m tests.support.update_goldens` rewrites tests/golden (then read its diff).
"""

from __future__ import annotations

import re

import pytest

from hubswap.card import PICTURE_FILE, render_card, write_card
from hubswap.cli import main
from hubswap.errors import HubswapError, ModelFilesError
from tests.support.fixed_build import GOLDEN, RECIPE, TASK_COMMIT, golden_files, make_build, sha
from tests.support.recipes import write_recipe


def test_card_matches_golden_file(tmp_path):
    for name, text in golden_files(tmp_path).items():
        path = GOLDEN / name
        assert path.exists(), f"{path} is missing: `python -m tests.support.update_goldens` writes it"
        assert text == path.read_text(), f"{name} differs from the golden file (`python -m tests.support.update_goldens` " \
            "rewrites it after a deliberate change)"


def test_update_goldens_writes_what_the_golden_test_compares(tmp_path):
    from tests.support.update_goldens import main as update

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
                                   "pipeline_tag", "tags", "datasets", "model-index"}, sorted(data.to_dict())
    assert data.pipeline_tag == "text-generation"
    assert data.base_model == ["hubswap-test/tiny-math", "hubswap-test/tiny-swahili"]  # not the local base
    assert data.base_model_relation == "merge"
    assert data.library_name == "transformers"
    assert data.license == "apache-2.0"
    assert data.language == ["sw", "en"]
    # the Hub links the model to the papers of the method and of MGSM by these tags
    assert data.tags == ["merge", "layer-swapping", "hubswap", "mgsm", "arxiv:2410.01335", "arxiv:2210.03057"]
    # the parents' training data
    assert data.datasets == ["hubswap-test/tiny-math-instruct", "hubswap-test/tiny-swahili-corpus"]
    assert data.model_name == "hubswap-test/tiny-swahili-math-layerswap"
    results = {(r.dataset_config, r.metric_name): r for r in data.eval_results}
    assert {c for c, _ in results} == {"sw", "en"}
    for r in data.eval_results:
        assert (r.task_type, r.dataset_type, r.dataset_split) == ("text-generation", "juletxara/mgsm", "test")
        assert r.dataset_revision == "b" * 40
        assert r.metric_name and "8-shot" in r.metric_name and "native-cot" in r.metric_name
        assert r.source_url == ("https://huggingface.co/hubswap-test/tiny-swahili-math-layerswap/blob/main/"
                                "hubswap/eval_results.json")
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
    assert sha("model-00002-of-00002.safetensors") in body
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
    assert "- merged 36.4% < task 29.6% +10.0 points (n=250)" in text  # apply_gate's own words
    card = ModelCard(text)
    assert card.data.base_model == ["hubswap-test/tiny-math"]
    assert {(r.dataset_type, r.dataset_revision) for r in card.data.eval_results} == {("juletxara/mgsm", None)}
    assert "a local copy of [juletxara/mgsm](https://huggingface.co/datasets/juletxara/mgsm) at `/data/mgsm`" in text
    assert "(files `sw` sha256:f1a2ae4b146f0316, `en` sha256:5e9abcb4d309f958)" in text
    assert "95% intervals (Wilson score interval)" in text and "(Newcombe paired score interval; McNemar exact test)" in text


def test_a_local_dataset_of_other_questions_is_not_indexed_as_mgsm(tmp_path):
    """The demo world's questions are in MGSM's layout but are not MGSM: the card says so and its
    model-index claims no MGSM score (the Hub would list them on MGSM's leaderboards)."""
    from huggingface_hub import ModelCard

    text = render_card(make_build(tmp_path / "build", local_dataset=True, mgsm=False))
    assert "a local dataset at `/data/mgsm` in MGSM's layout but not MGSM's questions" in text
    assert "a local copy of [juletxara/mgsm]" not in text
    assert "(files `sw` sha256:f1a2ae4b146f0316, `en` sha256:5e9abcb4d309f958)" in text
    assert ModelCard(text).data.eval_results is None
    assert "- merged 36.4% >= task 29.6% (n=250)" in text  # the scores stay in the card's own text


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
    assert main(["card", str(tmp_path)]) == HubswapError.exit_code == 1
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

    recipe = write_recipe(tmp_path / "tiny.toml", {"task": tiny_llama["task"], "language": tiny_llama["language"]},
                          name="tiny", dtype=None)
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


# -- the recipe's card template, and the model's kind -------------------------------------------

OWN_CARD = """{% extends "model_card.md.j2" %}
{% block experts %}The math expert learnt from **textbooks**; the language expert from **radio**.{% endblock %}
{% block intended_use %}Only for **counting goats**; it fails on fractions.{% endblock %}
"""


def test_a_recipe_template_extends_the_packaged_one_through_its_blocks(tmp_path):
    default = render_card(make_build(tmp_path / "default"))
    build = make_build(tmp_path / "own")
    (build / "model" / "hubswap" / "card.md.j2").write_text(OWN_CARD)
    own = render_card(build)
    experts = own.split("## The experts\n", 1)[1].split("\n## ", 1)[0]
    assert experts.strip() == "The math expert learnt from **textbooks**; the language expert from **radio**."
    limits = own.split("## Intended use and limitations\n", 1)[1].split("\n## ", 1)[0]
    assert limits.strip() == "Only for **counting goats**; it fails on fractions."
    # everything outside the two blocks is the packaged card's
    strip = lambda t: re.sub(r"## The experts\n.*?\n## Layer map|## Intended use and limitations\n.*?\n## How to use",  # noqa: E731
                             "", t, flags=re.S)
    assert strip(own) == strip(default)


def test_a_template_that_does_not_render_is_one_line_and_runs_no_code(tmp_path):
    build = make_build(tmp_path / "build")
    own = build / "model" / "hubswap" / "card.md.j2"
    own.write_text('{% extends "model_card.md.j2" %}{% block experts %}{{ "".__class__.__mro__[1].__subclasses__() }}'
                   '{% endblock %}')
    with pytest.raises(ModelFilesError, match="the card template does not render: access to attribute"):
        render_card(build)
    own.write_text('{% extends "model_card.md.j2" %}\n{% block experts %}{{ unclosed {% endblock %}')
    with pytest.raises(ModelFilesError, match=r"card\.md\.j2:2: the card template does not render"):
        render_card(build)


def test_a_multimodal_merge_is_image_text_to_text_with_the_auto_class_that_loads_it(tmp_path):
    import json

    from huggingface_hub import ModelCard

    build = make_build(tmp_path / "build")
    lock = build / "model" / "hubswap" / "lock.json"
    record = json.loads(lock.read_text())
    record["layer_map"].update(vision="language", modules={"vision": ["vision_tower", "multi_modal_projector"]})
    lock.write_text(json.dumps(record))
    text = render_card(build)
    assert ModelCard(text).data.pipeline_tag == "image-text-to-text"
    assert "from transformers import AutoModelForImageTextToText, AutoProcessor" in text
    assert 'model = AutoModelForImageTextToText.from_pretrained("hubswap-test/tiny-swahili-math-layerswap"' in text
    assert "AutoModelForCausalLM" not in text
    text_only = render_card(make_build(tmp_path / "text"))
    assert ModelCard(text_only).data.pipeline_tag == "text-generation"
    assert "from transformers import AutoModelForCausalLM, AutoTokenizer" in text_only


def test_a_build_keeps_the_recipes_card_template_and_rebuilds_with_it(tmp_path):
    """[publish] card, relative to the recipe: the build keeps a copy as hubswap/card.md.j2, which
    `hubswap card` renders from and a rebuild from hubswap/recipe.toml finds beside it."""
    from tests.support.cli import run_hubswap
    from tests.support.numpy_family import make_family

    (tmp_path / "tok").mkdir()
    family = make_family(tmp_path / "experts", tmp_path / "tok")
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "goats.md.j2").write_text(OWN_CARD)
    (tmp_path / "recipes").mkdir()
    write_recipe(tmp_path / "recipes" / "r.toml", family, publish={"repo": "org/x", "card": "../cards/goats.md.j2"})
    r = run_hubswap("build", "recipes/r.toml", "--no-eval", "-o", "b", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    model = tmp_path / "b" / "model"
    assert (model / "hubswap" / "card.md.j2").read_text() == OWN_CARD
    assert "Only for **counting goats**" in (model / "README.md").read_text()
    # the copy's ../cards/goats.md.j2 does not exist: hubswap/card.md.j2 beside it stands in
    assert not (model / "cards" / "goats.md.j2").exists()
    # the published copy names local experts by their folder's name only (no path of this machine):
    # whoever rebuilds from it puts the experts there
    for path in family.values():
        (model / "hubswap" / path.name).symlink_to(path)
    r = run_hubswap("build", "b/model/hubswap/recipe.toml", "--no-eval", "-o", "again", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Only for **counting goats**" in (tmp_path / "again" / "model" / "README.md").read_text()
    (tmp_path / "cards" / "goats.md.j2").unlink()
    r = run_hubswap("build", "recipes/r.toml", "--no-eval", "-o", "c", cwd=tmp_path)
    assert r.returncode == 2 and "r.toml:" in r.stderr and "publish.card: no such file" in r.stderr
