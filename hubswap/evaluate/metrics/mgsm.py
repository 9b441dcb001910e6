"""MGSM scores as an `evaluate` module, loaded from this file (nothing is fetched).

    metric = evaluate.load("hubswap/evaluate/metrics/mgsm.py")
    metric.compute(predictions=["... Jibu ni 18."], references=["18"], lang="sw", mode="native-cot")

``predictions`` are the models' raw responses and ``references`` the gold answers
(``str(answer_number)``). Every verdict comes from ``hubswap.evaluate.scoring.score_response``, the
one implementation of all three; this module only averages them, so the metric and the
per-question records can never disagree.
"""

import datasets
import evaluate

from hubswap.evaluate.scoring import score_response

_DESCRIPTION = (
    "MGSM: lm-eval 0.4.13 strict-match and flexible-extract, and hubswap's robust accuracy, "
    "from raw responses."
)
_KWARGS = """
Args:
    predictions: the raw responses, one string per question.
    references: gold answers as strings (``str(answer_number)``).
    lang: the MGSM language code of the questions (``sw``, ``en``, ...).
    mode: the prompt mode the responses answer: native-cot (default), en-cot, direct or chat.
Returns:
    accuracy, strict_match, flexible_extract: means over questions, in [0, 1] (0 when empty).
    correct: how many questions the robust verdict counts right.
    scores: per question, the verdicts and extractions of ``score_response`` as a dict.
"""


class Mgsm(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, lang="en", mode="native-cot"):
        scores = [score_response(p, lang, r, mode=mode).to_json()
                  for p, r in zip(predictions, references, strict=True)]
        n = len(scores)

        def mean(key):
            return sum(s[key] for s in scores) / n if n else 0.0

        return {
            "accuracy": mean("correct"),
            "strict_match": mean("strict_match"),
            "flexible_extract": mean("flexible_extract"),
            "correct": sum(s["correct"] for s in scores),
            "scores": scores,
        }
