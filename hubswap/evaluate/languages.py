"""The eleven MGSM languages: prompt cues, stop strings and answer phrases.

The cues and the strict-match patterns are those of lm-evaluation-harness 0.4.13's generated task
files (``lm_eval/tasks/mgsm/{native_cot,en_cot,direct}/mgsm_*_<lang>.yaml``), including their
quirks: the Bengali strict pattern is the English one, the German one asks for "Die Antwort
lautet" while the German exemplars say "Die Antwort ist", and the Russian cue has no space
("Пошаговоерешение:"). Keeping them exact is what makes the prompt text and the strict-match score
comparable with published lm-eval numbers; the robust score (``scoring.py``) is where hubswap is
forgiving instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# lm-eval's fallback for a regex filter that finds nothing.
INVALID = "[invalid]"
# lm-eval's flexible-extract pattern (group_select -1: the last match).
FLEXIBLE_REGEX = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
ENGLISH_STRICT_REGEX = r"The answer is (\-?[0-9\.\,]+)"
# lm-eval stops at the next question cue and at these two end-of-turn markers; no newline stop.
END_MARKERS = ("</s>", "<|im_end|>")


@dataclass(frozen=True)
class Language:
    code: str
    name: str
    question: str
    """Question cue, e.g. ``Swali:``; the exemplars already start with it, test questions get it
    prepended with a space. It is also the stop string."""
    cot_answer: str
    """Native step-by-step answer cue, e.g. ``Jibu la Hatua kwa Hatua:``."""
    direct_answer: str
    """Answer cue of the direct mode (lm-eval keeps ``Answer:`` for most languages)."""
    strict_regex: str
    """lm-eval's native-cot strict-match pattern."""
    answer_line: str
    """The closing line the exemplars use, ``{}`` standing for the number; the chat prompt asks
    for it and the robust scorer looks for its phrase."""
    answer_phrases: tuple[str, ...]
    """Phrases that introduce the final answer, for the robust score (the English one is added for
    every language)."""

    @property
    def exemplar_skip(self) -> int:
        """lm-eval's ``answer[len(cue)+1:]``: the exemplar answer without its leading cue."""
        return len(self.cot_answer) + 1

    @property
    def chat_regex(self) -> str:
        """Strict pattern of the chat mode: the answer line this language's prompt asks for."""
        head, _, _ = self.answer_line.partition("{}")
        return re.escape(head.rstrip()) + r"\s*(\-?[0-9\.\,]+)"


LANGUAGES: dict[str, Language] = {
    lang.code: lang
    for lang in [
        Language(
            "bn", "Bengali", "প্রশ্ন:", "ধাপে ধাপে উত্তর:", "Answer:", ENGLISH_STRICT_REGEX,
            "উত্তর হল {}।", ("উত্তর হল", "উত্তর হলো", "উত্তর:"),
        ),
        Language(
            "de", "German", "Frage:", "Schritt-für-Schritt-Antwort:", "Antwort:",
            r"Die Antwort lautet (\-?[0-9\.\,]+)",
            "Die Antwort ist {}.", ("Die Antwort ist", "Die Antwort lautet", "Antwort:"),
        ),
        Language(
            "en", "English", "Question:", "Step-by-Step Answer:", "Answer:", ENGLISH_STRICT_REGEX,
            "The answer is {}.", ("Answer:",),
        ),
        Language(
            "es", "Spanish", "Pregunta:", "Respuesta paso a paso:", "Respuesta:",
            r"La respuesta es (\-?[0-9\.\,]+)",
            "La respuesta es {}.", ("La respuesta es", "Respuesta:"),
        ),
        Language(
            "fr", "French", "Question :", "Réponse étape par étape :", "Réponse :",
            r"La réponse est (\-?[0-9\.\,]+)",
            "La réponse est {}.", ("La réponse est", "Réponse :", "Réponse:"),
        ),
        Language(
            "ja", "Japanese", "問題：", "ステップごとの答え:", "Answer:", r"答えは(\-?[0-9\.\,]+)です。",
            "答えは{}です。", ("答えは", "答え：", "答え:"),
        ),
        Language(
            "ru", "Russian", "Задача:", "Пошаговоерешение:", "Answer:", r"Ответ — (\-?[0-9\.\,]+)",
            "Ответ — {}.", ("Ответ —", "Ответ -", "Ответ:", "Ответ"),
        ),
        Language(
            "sw", "Swahili", "Swali:", "Jibu la Hatua kwa Hatua:", "Answer:", r"Jibu ni (\-?[0-9\.\,]+)",
            "Jibu ni {}.", ("Jibu ni", "Jibu:"),
        ),
        Language(
            "te", "Telugu", "ప్రశ్న:", "దశలవారీగా సమాధానం:", "Answer:", r"సమాధానం (\-?[0-9\.\,]+)",
            "సమాధానం {}.", ("సమాధానం",),
        ),
        Language(
            "th", "Thai", "โจทย์:", "คำตอบทีละขั้นตอน:", "Answer:", r"คำตอบคือ (\-?[0-9\.\,]+)",
            "คำตอบคือ {}", ("คำตอบคือ", "คำตอบ:"),
        ),
        Language(
            "zh", "Chinese", "问题：", "逐步解答:", "Answer:", r"答案是 (\-?[0-9\.\,]+)。",
            "答案是 {}。", ("答案是", "答案为", "答案：", "答案:"),
        ),
    ]
}


def get_language(code: str) -> Language:
    from hubswap.errors import EvaluationError

    try:
        return LANGUAGES[code]
    except KeyError:
        raise EvaluationError(
            f"unknown MGSM language {code!r}", hint=f"choose from {', '.join(LANGUAGES)}"
        ) from None


def language_name(code: str) -> str:
    """``Swahili`` for ``sw``; an unknown code as it is."""
    lang = LANGUAGES.get(code)
    return lang.name if lang is not None else code
