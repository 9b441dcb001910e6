"""MGSM prompts: lm-eval 0.4.13 compatible few-shot text, and a chat mode.

``native-cot``, ``en-cot`` and ``direct`` render, for the same ``num_fewshot``, the text that
lm-evaluation-harness 0.4.13 sends for ``mgsm_native_cot_<lang>``, ``mgsm_en_cot_<lang>`` and
``mgsm_direct_<lang>`` (pinned in ``tests/test_eval_prompts.py``):

* each exemplar is ``question + "\\n" + cue + delimiter + target`` followed by ``"\\n\\n"``, where
  the exemplar's question already starts with the question cue; the delimiter is ``" "`` for the
  chain-of-thought modes and ``""`` for direct; the target is the exemplar's worked answer without
  its leading native cue (``answer[len(cue)+1:]``, also in en-cot) or, for direct, the number;
* the test question follows as ``question_cue + " " + question + "\\n" + cue``;
* exemplars are drawn from the 8 train rows by one ``random.Random(1234)`` that advances from
  question to question in dataset order, so question ``i`` sees the same exemplars whatever the
  ``limit``;
* generation stops at the language's question cue, ``</s>`` and ``<|im_end|>``.

``chat`` is hubswap's own: one user turn asking to solve the problem and to end with the
language's answer line, rendered by the model's chat template.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hubswap.errors import EvaluationError
from hubswap.evaluate.data import LanguageData
from hubswap.evaluate.languages import END_MARKERS, LANGUAGES, Language, get_language

MODES = ("native-cot", "en-cot", "direct", "chat")
FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed
EN_COT_CUE = LANGUAGES["en"].cot_answer

CHAT_INSTRUCTION = (
    "Solve the following math problem step by step. End your response with a last line of the "
    'form "{line}", where N is the final answer as a number.\n\n{cue} {question}'
)


@dataclass(frozen=True)
class Prompt:
    """One question of one language, ready for a backend."""

    lang: str
    index: int
    gold: int | float
    stop: tuple[str, ...]
    text: str | None = None
    """The completion prompt (``native-cot``, ``en-cot``, ``direct``)."""
    messages: tuple[dict[str, str], ...] | None = None
    """The conversation (``chat``); the backend renders it with the model's chat template."""
    exemplars: tuple[int, ...] = field(default=())
    """Indices of the train exemplars used, in prompt order."""
    doc: dict = field(default_factory=dict, compare=False, repr=False)
    """The test row as the dataset holds it."""


def answer_cue(lang: Language, mode: str) -> str:
    if mode == "native-cot":
        return lang.cot_answer
    if mode == "en-cot":
        return EN_COT_CUE
    if mode == "direct":
        return lang.direct_answer
    raise EvaluationError(f"mode {mode!r} has no answer cue")


def stop_strings(lang: Language) -> tuple[str, ...]:
    return (lang.question, *END_MARKERS)


def build_prompts(data: LanguageData, mode: str, *, num_fewshot: int = 8, limit: int = 0) -> list[Prompt]:
    """The prompts of the first ``limit`` test questions (all when 0) of one language."""
    if mode not in MODES:
        raise EvaluationError(f"unknown prompt mode {mode!r}", hint=f"choose from {', '.join(MODES)}")
    lang = get_language(data.lang)
    docs = data.test[:limit] if limit else data.test
    if mode == "chat":
        line = lang.answer_line.format("N")
        return [
            Prompt(
                lang.code, q.index, q.answer_number, END_MARKERS,
                messages=({"role": "user", "content": CHAT_INSTRUCTION.format(
                    line=line, cue=lang.question, question=q.question)},), doc=q.doc,
            )
            for q in docs
        ]
    if num_fewshot > len(data.train):
        raise EvaluationError(
            f"num_fewshot {num_fewshot} exceeds the {len(data.train)} MGSM exemplars of {lang.code!r}"
        )
    cue = answer_cue(lang, mode)
    delimiter = "" if mode == "direct" else " "
    rnd = random.Random(FEWSHOT_SEED)
    out = []
    for q in docs:
        # random.sample picks positions, so sampling indices equals lm-eval's sampling of the rows.
        order = tuple(rnd.sample(range(len(data.train)), num_fewshot)) if num_fewshot else ()
        shots = []
        for i in order:
            ex = data.train[i]
            target = str(ex.answer_number) if mode == "direct" else ex.answer[lang.exemplar_skip:]
            shots.append(f"{ex.question}\n{cue}{delimiter}{target}\n\n")
        text = "".join(shots) + f"{lang.question} {q.question}\n{cue}"
        out.append(Prompt(lang.code, q.index, q.answer_number, stop_strings(lang), text=text, exemplars=order, doc=q.doc))
    return out
