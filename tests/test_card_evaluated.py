"""The card of a real evaluated build: `hubswap build` on scripted experts, MGSM on the real vLLM
engine, and every number of the card's comparison table, lm-eval table and model-index equal to
what eval_results.json holds.

The experts are bigram models (``hubswap.demo.make_scripted_model``) that share one tokenizer and
answer each prompt with one fixed line, chosen so that every model has its own pair of (Swahili,
English) accuracies on the first two MGSM questions (golds 18 and 3): a card that put a number in
the wrong column, language or field shows a different number. The merged model takes embeddings
and LM head from the language expert, so it answers the language expert's script; the language
expert itself answers otherwise, because its own middle layers (which the merge does not take)
add a constant to the residual stream that its LM head maps to another line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hubswap.evaluate.languages import LANGUAGES
from tests.support.recipes import write_recipe

SW, EN = LANGUAGES["sw"].cot_answer, LANGUAGES["en"].cot_answer
SHIFTED = " The answer is 7. Jibu ni 3."  # the language expert's own answer: right in sw (q2), wrong in en
SCRIPTS = {  # what each model's LM head answers after the cue; (sw, en) accuracy on golds [18, 3]
    "language": {SW: " Jibu ni 18.", EN: " The answer is 18."},  # the merged model's: (50, 50)
    "task": {SW: " Jibu ni -18.", EN: " The answer is 3."},      # (0, 50); lm-eval strict-match counts -18
    "base": {SW: " hakuna jibu.", EN: " The answer is 7."},      # (0, 0), no answer in sw
}
EXPECTED = {"merged": (0.5, 0.5), "task": (0.0, 0.5), "language": (0.5, 0.0), "base": (0.0, 0.0)}
VOCAB = tuple(dict.fromkeys([SW, EN, SHIFTED, *(v for s in SCRIPTS.values() for v in s.values())]))
LAYERS = 4  # bottom 1 and top 1 from the language expert, middle 2 from the task expert



def tables(mgsm: Path) -> dict:
    """[eval], [gate] and [publish] of the recipe."""
    return dict(
        eval={"dataset": str(mgsm), "languages": ["sw", "en"], "prompt": "native-cot", "num_fewshot": 0,
              "max_new_tokens": 4, "compare": ["task", "language", "base"], "backend": "vllm", "limit": 2,
              "vllm": {"max_model_len": 1024}},
        gate={"must_beat": ["task"]},
        publish={"repo": "org/scripted-merge"},
    )


def _scripted_experts(root: Path) -> dict[str, Path]:
    import torch
    from safetensors.torch import load_file, save_file

    from hubswap.demo import make_scripted_model

    experts = {role: make_scripted_model(root / role, script, vocab=VOCAB, num_layers=LAYERS, mlp_bias=True)
               for role, script in SCRIPTS.items()}
    # The language expert's middle layers push the residual stream along a dimension no token uses
    # (4 times a token's embedding), and its LM head maps that dimension to SHIFTED.
    shard = experts["language"] / "model.safetensors"
    state = load_file(shard)
    spare = len(VOCAB)
    added = json.loads((experts["language"] / "tokenizer.json").read_text())["added_tokens"]
    (shifted,) = [t["id"] for t in added if t["content"] == SHIFTED]
    for i in range(1, LAYERS - 1):
        state[f"model.layers.{i}.mlp.down_proj.bias"][spare] = 2.0
    state["lm_head.weight"][shifted, spare] = 1.0
    save_file({k: v.contiguous() for k, v in state.items()}, shard, metadata={"format": "pt"})
    assert torch.count_nonzero(state["lm_head.weight"][:, spare]) == 1
    return experts


@pytest.fixture(scope="module")
def scripted_build(vllm_cpu, mgsm_dir, tmp_path_factory):
    from hubswap.cli import main

    root = tmp_path_factory.mktemp("scripted-build")
    experts = _scripted_experts(root / "experts")
    recipe = write_recipe(root / "r.toml", experts, bottom=1, top=1, transition=0, **tables(mgsm_dir))
    assert main(["build", str(recipe), "-o", str(root / "build")]) == 0
    model = root / "build" / "model"
    return model, json.loads((model / "hubswap" / "eval_results.json").read_text())


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _signed(x: float) -> str:
    return f"{100 * x:+.1f}"


def test_the_scripted_experts_score_what_they_were_scripted_to(scripted_build):
    _, results = scripted_build
    for name, (sw, en) in EXPECTED.items():
        langs = results["models"][name]["languages"]
        assert (langs["sw"]["accuracy"], langs["en"]["accuracy"]) == (sw, en), name
    assert results["models"]["task"]["languages"]["sw"]["strict_match"] == 0.5  # lm-eval reads -18 as 18
    assert results["models"]["language"]["languages"]["sw"]["truncation_rate"] == 1.0
    assert results["models"]["base"]["languages"]["sw"]["no_answer_rate"] == 1.0
    assert results["gate"]["passed"] is True


def test_card_table_and_model_index_equal_eval_results(scripted_build):
    from huggingface_hub import ModelCard

    model, results = scripted_build
    card = ModelCard.load(model / "README.md")
    models = results["models"]
    others = ["task", "language", "base"]

    # The comparison table: per language n, each model's accuracy [95% CI], then merged - other.
    rows = {m.group(1): [c.strip() for c in m.group(2).split("|")]
            for m in re.finditer(r"^\| [^|]*\(`(\w\w)`\)[^|]* \|(.*)\|$", card.text, re.M)}
    assert set(rows) == {"sw", "en"}, card.text
    header = next(line for line in card.text.splitlines() if line.startswith("| Language | n |"))
    assert header == ("| Language | n | merged | task expert | language expert | base model | merged − task expert "
                      "| merged − language expert | merged − base model |"), header
    for lang, cells in rows.items():
        assert cells[0] == str(models["merged"]["languages"][lang]["n"])
        for cell, name in zip(cells[1:5], ["merged", *others], strict=True):
            s = models[name]["languages"][lang]
            assert cell == f"{_pct(s['accuracy'])} [{_pct(s['ci95'][0])}, {_pct(s['ci95'][1])}]", (lang, name)
        for cell, name in zip(cells[5:], others, strict=True):
            c = results["comparisons"][name][lang]
            assert cell.startswith(f"{_signed(c['diff'])} [{_signed(c['ci95'][0])}, {_signed(c['ci95'][1])}], p "), \
                (lang, name, cell)

    # The lm-eval-compatible table: strict-match, flexible-extract, truncated, no answer, in %, and
    # the share of answers in the question's language ("–" when no answer had words).
    names = {"merged": "merged", "task": "task expert", "language": "language expert", "base": "base model"}
    for name, label in names.items():
        for lang in ("sw", "en"):
            s = models[name]["languages"][lang]
            share = "–" if s["target_language_share"] is None else _pct(s["target_language_share"])
            row = f"| {label} | {lang} | {_pct(s['strict_match'])} | {_pct(s['flexible_extract'])} | " \
                  f"{_pct(s['truncation_rate'])} | {_pct(s['no_answer_rate'])} | {share} |"
            assert row in card.text, row

    # model-index: the merged model's scores per language, as the Hub indexes them.
    got = {(r.dataset_config, r.metric_name.split(" (")[1].split(",")[0]): r.metric_value
           for r in card.data.eval_results}
    want = {}
    for lang in ("sw", "en"):
        s = models["merged"]["languages"][lang]
        want[lang, "hubswap robust answer extraction"] = s["accuracy"]
        want[lang, "lm-eval strict-match"] = s["strict_match"]
        want[lang, "lm-eval flexible-extract"] = s["flexible_extract"]
    assert got == want
    assert {r.dataset_revision for r in card.data.eval_results} == {None}  # a local copy: no Hub revision
    assert "**Gate: passed**" in card.text
