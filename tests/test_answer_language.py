"""The answer's language (hubswap/evaluate/answer_language.py): lingua, offline, on MGSM's eleven
languages and on answers as short as the answer line each language's prompt asks for."""

from __future__ import annotations

import pytest

from hubswap.evaluate.answer_language import answer_languages, target_share
from hubswap.evaluate.languages import LANGUAGES

pytestmark = pytest.mark.slow  # loading lingua's eleven language models takes 6-7 s


def test_each_languages_own_answer_line_is_read_as_that_language():
    # "Jibu ni 8.", "答案是 8。", "答えは8です。", "La réponse est 8." ...: a few words each
    lines = {code: lang.answer_line.format(8) for code, lang in LANGUAGES.items()}
    assert len(lines) == 11
    assert dict(zip(lines, answer_languages(list(lines.values())), strict=True)) == {code: code for code in lines}


def test_longer_answers_the_wrong_language_and_no_words():
    texts = [
        # written here, not taken from MGSM (the data is read from ../shared/mgsm, never copied)
        "Juma ana machungwa kumi na mbili, kisha ananunua matano zaidi sokoni. Jibu ni 17.",
        "Tom has twelve oranges and buys five more at the market. The answer is 17.",
        " Die Antwort ist 18,00 €.",
        "18", "$18", "",
    ]
    assert answer_languages(texts) == ["sw", "en", "de", None, None, None]


def test_the_share_counts_only_answers_with_words():
    assert target_share(["sw", "sw", "en", None], "sw") == 2 / 3
    assert target_share([None, None], "sw") is None
    assert target_share([], "sw") is None
