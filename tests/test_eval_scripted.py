"""`hubswap eval` end to end with the real vLLM engine on a model whose greedy answers are scripted.

``hubswap.demo.make_scripted_model`` makes a bigram Llama that answers every native-cot prompt of
a language with one fixed line: a negative number, a decimal, decimal commas, native and full-width
digits, a minus sign, a dot grouping thousands. The first MGSM question's gold is 18 in every
language, the second one's 3. The verdicts below are written by hand from the rules in
``hubswap/evaluate/scoring.py`` (robust) and lm-eval 0.4.13's filters (strict, flexible).

A second scripted model, compared with it, answers every question in English: the share of answers
written in the question's language is 1 for the first model everywhere and 0 for the second one
except in English.
"""

from __future__ import annotations

import json

import pytest

from hubswap.cli import main
from hubswap.evaluate.languages import LANGUAGES

# Module fixtures that make models with torch: their users are `engine` (tests/conftest.py).
ENGINE_FIXTURES = {"scripted_eval"}

# lang: (scripted answer, robust answer, robust verdict, strict-match, flexible-extract) for gold 18
SCRIPT = {
    "sw": (" Jibu ni -18.", "-18", False, True, True),       # lm-eval drops the "-" as punctuation
    "en": (" The answer is 1.8.", "1.8", False, True, True),  # and the "." of 1.8
    "de": (" Die Antwort ist 18,00 €.", "18", True, False, False),
    "fr": (" La réponse est 18,5.", "18.5", False, False, False),
    "bn": (" উত্তর হল ১৮।", "18", True, False, False),        # Bengali digits
    "zh": ("答案是 １８。", "18", True, False, False),           # full-width digits
    "es": (" La respuesta es 18.000.", "18000", False, False, False),  # "." groups thousands in Spanish
    "ru": (" Ответ — −18.", "-18", False, False, True),       # U+2212 minus; flexible finds "18."
}

ENGLISH = " So she makes 18 dollars. The answer is 18."


@pytest.fixture(scope="module")
def scripted_eval(mgsm_dir, tmp_path_factory):
    from hubswap.demo import make_scripted_model

    root = tmp_path_factory.mktemp("scripted")
    model = make_scripted_model(root / "model", {LANGUAGES[lang].cot_answer: s[0] for lang, s in SCRIPT.items()})
    english = make_scripted_model(root / "english", {LANGUAGES[lang].cot_answer: ENGLISH for lang in SCRIPT})
    out = root / "eval"
    rc = main(["eval", str(model), "--compare", f"english={english}", "--dataset", str(mgsm_dir),
               "--languages", *SCRIPT, "--prompt", "native-cot",
               "--num-fewshot", "0", "--max-new-tokens", "8", "--limit", "2", "--backend", "vllm",
               "--vllm", "max_model_len=4096", "--output", str(out), "--no-progress"])
    return rc, out


def test_every_tricky_answer_gets_its_verdicts(scripted_eval):
    rc, out = scripted_eval
    assert rc == 0
    for lang, (text, answer, correct, strict, flexible) in SCRIPT.items():
        rows = [json.loads(line) for line in (out / f"model.{lang}.jsonl").read_text(encoding="utf-8").splitlines()]
        assert [r["gold"] for r in rows] == [18, 3]
        for r in rows:
            assert r["generation"] == text and r["finish_reason"] == "stop", (lang, r["generation"])
            assert r["answer"] == answer, lang
        first, second = rows
        assert (first["correct"], first["strict_match"], first["flexible_extract"]) == (correct, strict, flexible), lang
        assert (second["correct"], second["strict_match"], second["flexible_extract"]) == (False, False, False), lang


def test_scores_are_the_records_counted(scripted_eval):
    _, out = scripted_eval
    results = json.loads((out / "eval_results.json").read_text(encoding="utf-8"))
    langs = results["models"]["model"]["languages"]
    for lang, (_, _, correct, strict, flexible) in SCRIPT.items():
        s = langs[lang]
        assert (s["n"], s["correct"], s["accuracy"]) == (2, int(correct), correct / 2), lang
        assert (s["strict_match"], s["flexible_extract"]) == (strict / 2, flexible / 2), lang
        assert s["no_answer_rate"] == 0 and s["truncation_rate"] == 0


def test_the_answers_language_is_measured(scripted_eval):
    _, out = scripted_eval
    results = json.loads((out / "eval_results.json").read_text(encoding="utf-8"))
    for lang in SCRIPT:
        rows = [json.loads(line) for line in (out / f"english.{lang}.jsonl").read_text(encoding="utf-8").splitlines()]
        assert [r["language"] for r in rows] == ["en", "en"], lang
        rows = [json.loads(line) for line in (out / f"model.{lang}.jsonl").read_text(encoding="utf-8").splitlines()]
        assert [r["language"] for r in rows] == [lang, lang], lang
        assert results["models"]["model"]["languages"][lang]["target_language_share"] == 1.0, lang
        assert results["models"]["english"]["languages"][lang]["target_language_share"] == (lang == "en"), lang
