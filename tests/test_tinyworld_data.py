"""The tiny world's languages, its synthetic MGSM and its training loop (seconds, no trained family)."""

from __future__ import annotations

import json
import random
import re

import pytest

from hubswap.evaluate.data import load_language
from hubswap.evaluate.languages import get_language
from hubswap.evaluate.prompts import build_prompts
from hubswap.evaluate.scoring import score_response
from hubswap.tinyworld import language as L
from hubswap.tinyworld.mgsm import write_dataset


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("tw") / "mgsm")


def test_relexify_is_word_for_word_and_keeps_the_cues():
    rng = random.Random(7)
    back = {v: k for k, v in L.LEXICON.items()}
    for _ in range(50):
        q, a, num, _ = L.problem(rng)
        en = L.qa_text(q, a)
        sw = L.relexify(en)
        assert sw.startswith("Swali: ") and "\nJibu la Hatua kwa Hatua: " in sw and sw.endswith(f"Jibu ni {num}.")
        assert re.findall(r"\d+", sw) == re.findall(r"\d+", en)
        # Outside the three cue phrases, every word maps back one to one.
        body_en = en.replace("Question: ", "").replace("Step-by-Step Answer: ", "").replace("The answer is", "")
        body_sw = sw.replace("Swali: ", "").replace("Jibu la Hatua kwa Hatua: ", "").replace("Jibu ni", "")
        words_en, words_sw = re.findall(r"[A-Za-z]+", body_en), re.findall(r"[A-Za-z]+", body_sw)
        assert len(words_en) == len(words_sw)
        for e, s in zip(words_en, words_sw, strict=True):
            assert e in L.NAMES and s == e or back[s.lower()] == e.lower()


def test_synthetic_mgsm_loads_and_scores_like_mgsm(synthetic):
    for code in ("sw", "en"):
        data = load_language(str(synthetic), code)
        lang = get_language(code)
        assert len(data.test) == 250 and len(data.train) == 8
        assert data.revision.startswith("sha256:")
        for ex in data.train:
            assert ex.question.startswith(lang.question + " ")
            assert ex.answer.startswith(lang.cot_answer + " ")
            # The exemplar's worked answer earns every verdict, strict-match included.
            v = score_response(ex.answer[lang.exemplar_skip:], code, ex.answer_number)
            assert v.strict_match and v.flexible_extract and v.correct
        prompts = build_prompts(data, "native-cot", num_fewshot=8, limit=3)
        assert prompts[0].text.count(lang.question) == 9 and prompts[0].text.endswith(lang.cot_answer)
        assert prompts[0].stop[0] == lang.question
    en, sw = load_language(str(synthetic), "en"), load_language(str(synthetic), "sw")
    assert [q.answer_number for q in en.test] == [q.answer_number for q in sw.test]
    assert all(L.relexify(e.question) == s.question for e, s in zip(en.test, sw.test, strict=True))
    assert len({q.question for q in en.test}) > 240  # distinct problems
    rows = [json.loads(x) for x in (synthetic / "sw" / "test.jsonl").read_text().splitlines()]
    assert set(rows[0]) == {"question", "answer", "answer_number", "equation_solution"}
    assert rows[0]["answer"] is None and isinstance(rows[0]["answer_number"], int)


def test_synthetic_mgsm_is_the_same_every_time(tmp_path):
    a = write_dataset(tmp_path / "a")
    b = write_dataset(tmp_path / "b")
    for f in ("sw/test.jsonl", "sw/train.jsonl", "en/test.jsonl", "README.md"):
        assert (a / f).read_bytes() == (b / f).read_bytes()


def test_training_freezes_what_it_should_and_repeats_exactly():
    import torch
    from transformers import LlamaForCausalLM

    from hubswap.tinyworld.train import Design, Phase, make_tokenizer, model_config, train_phase

    d = Design("t", phases=(), layers=4, outer_bottom=1, outer_top=1, seq_len=32, batch=2, vocab_size=600)
    tok = make_tokenizer(None, d.vocab_size)
    assert tok.decode(tok.encode("Swali: Tom ana 12 keki.\nJibu la", add_special_tokens=False)) == \
        "Swali: Tom ana 12 keki.\nJibu la"
    torch.manual_seed(0)
    init = LlamaForCausalLM(model_config(d, len(tok))).state_dict()

    def run(which: str) -> dict:
        m = LlamaForCausalLM(model_config(d, len(tok)))
        m.load_state_dict(init)
        curve = train_phase(m, tok, d, Phase("x", {"problem_en": 1.0}, steps=3, lr=1e-2, train=which, seed=5))
        assert len(curve) == 1 and curve[0][0] == 3
        return {k: v.detach().clone() for k, v in m.state_dict().items()}

    middle, outer = run("middle"), run("outer")
    for name, t in init.items():
        in_middle = ".layers.1." in name or ".layers.2." in name
        assert torch.equal(middle[name], t) != in_middle, name
        assert torch.equal(outer[name], t) == in_middle, name
    again = run("middle")
    assert all(torch.equal(again[k], middle[k]) for k in init)


def test_whole_documents_spaced_digits_and_an_answer_only_loss():
    """v3's data path: numbers copied from a question are the same tokens in the answer, documents
    are never cut, and an answer-only loss sees the worked answers and nothing of the questions."""
    from hubswap.tinyworld.train import document, document_rows, make_tokenizer

    tok = make_tokenizer(None, 600, scheme="spaced-digits")
    text = "Swali: Tom ana 12 keki.\nJibu la Hatua kwa Hatua: 3 + 4 = 7."
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    pieces = tok.convert_ids_to_tokens(tok.encode("has 12 apples, so 5 + 7 = 12.", add_special_tokens=False))
    assert pieces.count("Ġ1") == 2 and "Ġ5" in pieces and "Ġ+" in pieces
    q, a = document("problem_sw", random.Random(3))
    assert q.startswith("Swali: ") and q.endswith("Jibu la Hatua kwa Hatua:") and a.endswith(".")
    X, Y = document_rows(tok, {"problem_en": 1.0}, 6, 160, seed=1, loss="answer")
    for ids, labels in zip(X.tolist(), Y.tolist(), strict=True):
        text = tok.decode([i for i in ids if i != tok.pad_token_id], skip_special_tokens=False)
        docs = [d for d in text.split("<s>") if d]
        assert docs and all(d.startswith("Question: ") and d.endswith("</s>") for d in docs)  # whole
        seen = tok.decode([t for t in labels if t != -100], skip_special_tokens=False)
        assert "Question" not in seen and seen.count("The answer is") == len(docs)
