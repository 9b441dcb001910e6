"""The gate (docs/DESIGN.md, "Gate"): may the merged model be published?

The merged model's accuracy in the target language must be at least each ``must_beat`` model's
plus ``margin``, and at least ``min_accuracy``; with ``min_target_language_share``, at least that
share of its target-language answers must be written in the target language. ``apply_gate`` only judges; the build writes every
result first and then raises ``verdict.error()`` (exit code 6) when it failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hubswap.errors import GateFailedError
from hubswap.evaluate.results import EvalResults, GateRecord
from hubswap.evaluate.stats import pct, points


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    reasons: list[str]
    """Why the gate failed (empty when it passed)."""
    checks: list[str] = field(default_factory=list)
    """Every comparison made, passed or not, with its numbers."""
    must_beat: list[str] = field(default_factory=list)
    margin: float = 0.0
    min_accuracy: float = 0.0
    target_language: str | None = None
    accuracy: float | None = None
    min_target_language_share: float | None = None
    target_language_share: float | None = None

    def record(self) -> GateRecord:
        """The verdict as eval_results.json keeps it."""
        return GateRecord(
            passed=self.passed, reasons=list(self.reasons), checks=list(self.checks),
            must_beat=list(self.must_beat), margin=self.margin, min_accuracy=self.min_accuracy,
            target_language=self.target_language, accuracy=self.accuracy,
            min_target_language_share=self.min_target_language_share,
            target_language_share=self.target_language_share,
        )

    def message(self) -> str:
        head = "gate passed" if self.passed else "gate failed"
        return f"{head}: " + "; ".join(self.reasons or self.checks)

    def error(self, results_at: str = "the build's eval/ folder and eval_results.json") -> GateFailedError:
        return GateFailedError(self.message(), hint=f"results are in {results_at}; nothing was published")


def _at_least(acc: float, bound: float) -> bool:
    """``acc >= bound`` where a tie counts as a tie: accuracies are counts over n and margins are
    decimals, so their float sums can miss an exact tie by a rounding error (0.1 + 0.2 > 0.3)."""
    return round(acc - bound, 9) >= 0


def apply_gate(results: EvalResults, gate) -> GateVerdict:
    """Judge ``results`` (``run_evaluation``'s) against a recipe's ``[gate]``."""
    lang = results.settings.target_language
    merged = results.reference_model
    common = dict(must_beat=list(gate.must_beat), margin=gate.margin, min_accuracy=gate.min_accuracy,
                  target_language=lang, min_target_language_share=gate.min_target_language_share)
    mine = results.scores(merged, lang)
    if mine is None:
        reason = f"{merged} was not evaluated in {lang}"
        return GateVerdict(False, [reason], [reason], **common)
    acc, n = mine.accuracy, mine.n
    checks, reasons = [], []
    for other in gate.must_beat:
        theirs = results.scores(other, lang)
        if theirs is None:
            msg = f"{other} was not evaluated in {lang}, so merged cannot be shown to beat it"
            checks.append(msg)
            reasons.append(msg)
            continue
        other_acc = theirs.accuracy
        ok = _at_least(acc, other_acc + gate.margin)
        bound = (f"{other} {pct(other_acc)}%" if not gate.margin
                 else f"{other} {pct(other_acc)}% {points(gate.margin)} points")
        msg = f"merged {pct(acc)}% {'>=' if ok else '<'} {bound} (n={n})"
        checks.append(msg)
        if not ok:
            reasons.append(msg)
    ok = _at_least(acc, gate.min_accuracy)
    msg = f"merged {pct(acc)}% {'>=' if ok else '<'} min_accuracy {pct(gate.min_accuracy)}%"
    checks.append(msg)
    if not ok:
        reasons.append(msg)
    share = mine.target_language_share
    if gate.min_target_language_share is not None:
        bound = gate.min_target_language_share
        if share is None:
            msg = f"merged wrote no {lang} answer with words, so its answers' language cannot be judged"
            ok = False
        else:
            ok = _at_least(share, bound)
            msg = (f"merged answers in {lang}: {pct(share)}% {'>=' if ok else '<'} "
                   f"min_target_language_share {pct(bound)}%")
        checks.append(msg)
        if not ok:
            reasons.append(msg)
    return GateVerdict(not reasons, reasons, checks, accuracy=acc, target_language_share=share, **common)
