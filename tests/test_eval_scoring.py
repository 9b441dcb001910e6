"""Scorer: tricky responses in all 11 languages; strict/flexible verdicts pinned to lm-eval 0.4.13.

tests/data/scorer_cases.json holds the responses and hubswap's expected robust answer; the
strict-match / flexible-extract extraction and verdict of each were computed by lm-eval 0.4.13's
own filters and exact_match (tests/data/render_lm_eval_mgsm.py) and stored beside the prompts.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from hubswap.errors import EvaluationError
from hubswap.evaluate import score_response
from hubswap.evaluate.languages import LANGUAGES
from hubswap.evaluate.scoring import extract_answer, parse_number

DATA = Path(__file__).parent / "data"
CASES = json.loads((DATA / "scorer_cases.json").read_text(encoding="utf-8"))
LM_EVAL = json.loads((DATA / "lmeval_0.4.13_mgsm.json").read_text(encoding="utf-8"))["scorer_verdicts"]


def test_every_language_scores_a_missing_answer_and_a_thousands_separator():
    """The scorer itself, in each of hubswap's languages: a response without a final number is no
    answer (and wrong), and an answer of 1000 or more written with the language's separators reads
    as that number."""
    for lang in LANGUAGES:
        mine = [c for c in CASES if c["lang"] == lang and c["mode"] == "native-cot"]
        missing = [score_response(c["text"], lang, c["gold"], mode="native-cot") for c in mine if c["answer"] is None]
        assert missing and all(g.answer is None and not g.correct for g in missing), lang
        big = [c for c in mine if c["gold"] >= 1000 and c["correct"]]
        assert big and all(score_response(c["text"], lang, c["gold"], mode="native-cot").answer == str(c["gold"])
                           for c in big), lang


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{c['lang']}-{c['mode']}-{i}" for i, c in enumerate(CASES)])
def test_verdicts(i):
    case, ref = CASES[i], LM_EVAL[i]
    got = score_response(case["text"], case["lang"], case["gold"], mode=case["mode"])
    strict_name = "remove_whitespace" if case["mode"] == "direct" else "strict-match"
    assert (got.strict_answer, got.strict_match) == (ref[strict_name]["extracted"], ref[strict_name]["exact_match"])
    assert (got.flexible_answer, got.flexible_extract) == (
        ref["flexible-extract"]["extracted"], ref["flexible-extract"]["exact_match"],
    )
    assert got.answer == case["answer"]
    assert got.correct is case["correct"]


def test_robust_score_recovers_what_lm_eval_misses():
    robust = sum(score_response(c["text"], c["lang"], c["gold"], mode=c["mode"]).correct for c in CASES)
    strict = sum(r.get("strict-match", r.get("remove_whitespace"))["exact_match"] for r in LM_EVAL)
    flexible = sum(r["flexible-extract"]["exact_match"] for r in LM_EVAL)
    assert robust == sum(c["correct"] for c in CASES)
    assert robust > flexible > strict


@pytest.mark.parametrize(
    ("token", "lang", "value"),
    [
        ("1,000", "en", "1000"), ("1.000", "en", "1.000"), ("1.000", "de", "1000"), ("1.000", "es", "1000"),
        ("3,5", "fr", "3.5"), ("2,50", "de", "2.50"), ("0,125", "en", "0.125"), ("1,234.5", "en", "1234.5"),
        ("1.234,5", "de", "1234.5"), ("1 000 000", "fr", "1000000"), ("1\u00a0000", "ru", "1000"),
        ("১৮", "bn", "18"), ("౧౦౦", "te", "100"), ("๑๒", "th", "12"), ("１，０００", "zh", "1000"),
        ("-7", "en", "-7"), ("18.00", "en", "18.00"),
    ],
)
def test_parse_number(token, lang, value):
    assert parse_number(token, lang) == Decimal(value)


def test_last_answer_phrase_wins_and_needs_its_own_line():
    text = "Jibu ni 5 kwanza. Kisha 7 + 11 = 18. Jibu ni 18."
    assert extract_answer(text, "sw") == 18
    # a phrase with no number on its line falls back to the last number
    assert extract_answer("Jibu ni\n12 + 6 = 18", "sw") == 18
    assert extract_answer("hakuna jibu", "sw") is None


def test_degenerate_outputs():
    # a random model repeats digits far beyond Decimal's 28-digit context
    long = "16" * 40
    got = score_response(f"Jibu ni {long}", "sw", 16)
    assert got.answer == long and not got.correct
    assert score_response("The answer is 3.50", "en", 3.5).answer == "3.5"
    assert score_response("1,2,3,4,5", "en", 5).answer == "12345"


def test_direct_answers_come_first():
    got = score_response(" 18\n\nSwali la 2: 7", "sw", 18, mode="direct")
    assert got.correct and got.answer == "18"
    assert not got.flexible_extract  # lm-eval's flexible-extract takes the last number
    assert score_response(" 7 then 18", "sw", 18).answer == "18"  # cot: the last one


def test_gold_as_float_and_unknown_language():
    assert score_response("The answer is 2.5", "en", 2.5).correct
    assert score_response("The answer is 18", "en", 18.0).correct
    with pytest.raises(EvaluationError):
        score_response("1", "xx", 1)


@pytest.mark.parametrize(
    ("text", "answer", "correct", "lm_eval"),
    [
        ("Jibu ni -18.", "-18", False, True),    # lm-eval drops punctuation: "-18" -> "18"
        ("Jibu ni −18.", "-18", False, False),   # the minus sign; lm-eval's patterns want "-"
        ("Jibu ni -$18.", "-18", False, False),
        ("Jibu ni 1.8.", "1.8", False, True),    # lm-eval: "1.8" -> "18"
        ("Jibu ni 1,8.", "1.8", False, True),
        ("Jibu ni 18.00.", "18", True, False),
        ("Jibu ni 18,0.", "18", True, False),
        ("Jibu ni ১৮.", "18", True, False),
        ("Jibu ni 18 - 0 = 18.", "18", True, True),
    ],
)
def test_signs_and_decimals_are_values(text, answer, correct, lm_eval):
    """The robust verdict compares numbers; strict-match keeps lm-eval's verdict, quirks included."""
    got = score_response(text, "sw", 18)
    assert (got.answer, got.correct, got.strict_match) == (answer, correct, lm_eval)


@pytest.mark.engine  # `evaluate` imports transformers
def test_the_evaluate_metric_is_score_response():
    import evaluate

    from hubswap.evaluate.runner import METRIC_PATH

    metric = evaluate.load(str(METRIC_PATH))
    texts = [c["text"] for c in CASES if c["lang"] == "sw"] + ["Jibu ni -18.", "Jibu ni 1.8.", "Jibu ni 18,00"]
    golds = [str(c["gold"]) for c in CASES if c["lang"] == "sw"] + ["18", "18", "18"]
    for mode in ("native-cot", "direct"):
        got = metric.compute(predictions=texts, references=golds, lang="sw", mode=mode)
        want = [score_response(t, "sw", g, mode=mode) for t, g in zip(texts, golds, strict=True)]
        assert got["scores"] == [w.to_json() for w in want]
        assert got["correct"] == sum(w.correct for w in want) and got["accuracy"] == got["correct"] / len(texts)
        assert got["strict_match"] == sum(w.strict_match for w in want) / len(texts)
        assert got["flexible_extract"] == sum(w.flexible_extract for w in want) / len(texts)
    assert metric.compute(predictions=[], references=[], lang="sw")["accuracy"] == 0.0
