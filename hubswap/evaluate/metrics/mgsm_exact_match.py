"""MGSM exact match as an `evaluate` module, loaded from this file (nothing is fetched).

lm-evaluation-harness's ``exact_match`` with ``ignore_case`` and ``ignore_punctuation``: both
strings lower-cased, ASCII punctuation removed, then compared. hubswap feeds it the strict-match
and flexible-extract extractions, and for the robust score the canonical numbers
(``"1000"``, ``"3.5"``) of the robust extraction and of the gold answer.
"""

import string

import datasets
import evaluate

_DESCRIPTION = "Exact match after lower-casing and removing ASCII punctuation (lm-eval's MGSM metric)."
_KWARGS = """
Args:
    predictions: extracted answers, one string per question.
    references: gold answers as strings (``str(answer_number)``).
Returns:
    exact_match: the mean over questions, in [0, 1].
    scores: the 0/1 verdict of each question.
"""
_PUNCT = str.maketrans("", "", string.punctuation)


class MgsmExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        scores = [
            int(p.lower().translate(_PUNCT) == r.lower().translate(_PUNCT))
            for p, r in zip(predictions, references, strict=True)
        ]
        return {"exact_match": sum(scores) / len(scores) if scores else 0.0, "scores": scores}
