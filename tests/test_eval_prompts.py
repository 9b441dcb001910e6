"""Prompt texts equal lm-evaluation-harness 0.4.13's, pinned by hash (MGSM text is never committed).

tests/data/lmeval_0.4.13_mgsm.json was written by tests/data/render_lm_eval_mgsm.py running the
real lm_eval 0.4.13 on ../shared/mgsm: sha256 and length of the rendered context, the stop
strings and the exemplar order, for 3 questions x 11 languages x 3 modes x (8, 2, 0) shots.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from hubswap.errors import EvaluationError
from hubswap.evaluate.data import Exemplar, LanguageData, Question, load_language
from hubswap.evaluate.languages import LANGUAGES
from hubswap.evaluate.prompts import build_prompts

REFERENCE = json.loads((Path(__file__).parent / "data" / "lmeval_0.4.13_mgsm.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def mgsm(mgsm_dir):
    return {lang: load_language(mgsm_dir, lang) for lang in LANGUAGES}


def test_reference_covers_every_language_and_mode():
    keys = {tuple(k.split("/")[:2]) for k in REFERENCE["prompts"]}
    assert keys == {(m, lang) for m in ("native-cot", "en-cot", "direct") for lang in LANGUAGES}


@pytest.mark.parametrize("key", sorted(REFERENCE["prompts"]))
def test_prompt_text_equals_lm_eval(mgsm, key):
    mode, lang, shots = key.split("/")
    rows = REFERENCE["prompts"][key]
    prompts = build_prompts(mgsm[lang], mode, num_fewshot=int(shots), limit=len(rows))
    assert [p.index for p in prompts] == [r["doc"] for r in rows]
    for p, r in zip(prompts, rows, strict=True):
        assert list(p.exemplars) == r["exemplars"], f"{key} question {p.index}: exemplar order"
        assert list(p.stop) == r["until"]
        assert len(p.text) == r["chars"]
        assert hashlib.sha256(p.text.encode()).hexdigest() == r["sha256"], f"{key} question {p.index}"


def test_exemplars_do_not_depend_on_limit(mgsm):
    few = build_prompts(mgsm["sw"], "native-cot", limit=3)
    many = build_prompts(mgsm["sw"], "native-cot", limit=10)
    assert [p.text for p in many[:3]] == [p.text for p in few]
    assert len(build_prompts(mgsm["sw"], "native-cot")) == 250


SYNTHETIC = LanguageData(
    "sw",
    test=(Question(0, "Ni ngapi 2 + 2?", 4),),
    train=(
        Exemplar("Swali: Ni ngapi 1 + 1?", "Jibu la Hatua kwa Hatua: 1 + 1 = 2. Jibu ni 2.", 2),
        Exemplar("Swali: Ni ngapi 3 + 3?", "Jibu la Hatua kwa Hatua: 3 + 3 = 6. Jibu ni 6.", 6),
    ),
    revision="test",
)


def test_prompt_layout_spelled_out():
    # random.Random(1234).sample(range(2), 2) == [1, 0]
    (native,) = build_prompts(SYNTHETIC, "native-cot", num_fewshot=2)
    assert native.text == (
        "Swali: Ni ngapi 3 + 3?\nJibu la Hatua kwa Hatua: 3 + 3 = 6. Jibu ni 6.\n\n"
        "Swali: Ni ngapi 1 + 1?\nJibu la Hatua kwa Hatua: 1 + 1 = 2. Jibu ni 2.\n\n"
        "Swali: Ni ngapi 2 + 2?\nJibu la Hatua kwa Hatua:"
    )
    (en,) = build_prompts(SYNTHETIC, "en-cot", num_fewshot=1)
    assert en.text == (
        "Swali: Ni ngapi 3 + 3?\nStep-by-Step Answer: 3 + 3 = 6. Jibu ni 6.\n\n"
        "Swali: Ni ngapi 2 + 2?\nStep-by-Step Answer:"
    )
    (direct,) = build_prompts(SYNTHETIC, "direct", num_fewshot=2)
    assert direct.text == (
        "Swali: Ni ngapi 3 + 3?\nAnswer:6\n\nSwali: Ni ngapi 1 + 1?\nAnswer:2\n\nSwali: Ni ngapi 2 + 2?\nAnswer:"
    )
    assert direct.stop == ("Swali:", "</s>", "<|im_end|>")


def test_chat_prompt_asks_for_the_answer_line():
    (chat,) = build_prompts(SYNTHETIC, "chat")
    assert chat.text is None
    (turn,) = chat.messages
    assert turn["role"] == "user"
    assert '"Jibu ni N."' in turn["content"]
    assert turn["content"].endswith("Swali: Ni ngapi 2 + 2?")


def test_bad_mode_and_language():
    with pytest.raises(EvaluationError, match="unknown prompt mode"):
        build_prompts(SYNTHETIC, "zero-shot")
    with pytest.raises(EvaluationError, match="unknown MGSM language 'xx'"):
        build_prompts(LanguageData("xx", (), (), "x"), "native-cot")
    with pytest.raises(EvaluationError, match="num_fewshot 3 exceeds"):
        build_prompts(SYNTHETIC, "native-cot", num_fewshot=3)


def test_missing_dataset_is_a_user_error(tmp_path, mgsm_dir):
    with pytest.raises(EvaluationError, match="has no sw/ split") as e:
        load_language(tmp_path, "sw")
    assert "juletxara/mgsm" in e.value.hint
    assert load_language(mgsm_dir, "sw").revision.startswith("sha256:")
