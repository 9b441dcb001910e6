"""The result table printed at the end of ``hubswap eval`` and ``hubswap build``."""

from __future__ import annotations

from hubswap.evaluate.results import EvalResults
from hubswap.evaluate.stats import p_value, pct, points


def _pct(x: float) -> str:
    return f"{pct(x):>5}"


def _share(x: float | None) -> str:
    """The share of answers written in the question's language; "-" when none had words."""
    return "-" if x is None else _pct(x)


def format_table(results: EvalResults) -> str:
    """Per model and language: accuracy with its interval, lm-eval scores, and the paired diff."""
    s = results.settings
    ref = results.reference_model
    tags = {name: name + (" (cached)" if model.cached else "") for name, model in results.models.items()}
    w = max([5, *map(len, tags.values())])
    # The paired difference is shown on each compared model's row, from the reference's side.
    compared = [name for name in results.models if results.comparisons.get(name)]
    diff_head = f"{ref} - this row [95% CI]" if compared else ""
    lines = [
        f"MGSM ({s.prompt}, {s.num_fewshot}-shot, backend {s.backend}; accuracy % [95% CI])",
        f"{'model':<{w}} {'lang':<4} {'n':>4}  {'accuracy':>20}  {'strict':>6} {'flex':>6}  "
        f"{'trunc':>5} {'noans':>5} {'inlang':>6}  {diff_head:>28}  {'McNemar p' if compared else '':>9}",
    ]
    for name, model in results.models.items():
        for lang in s.languages:
            sc = model.languages[lang]
            acc = f"{_pct(sc.accuracy)} [{_pct(sc.ci95[0])}, {_pct(sc.ci95[1])}]"
            cmp_ = results.comparisons.get(name, {}).get(lang)
            if cmp_:
                # shown from the merged model's side: merged minus this model
                diff = f"{points(cmp_.diff):>6} [{points(cmp_.ci95[0]):>6}, {points(cmp_.ci95[1]):>6}]"
                p = p_value(cmp_.mcnemar_p)
            else:
                diff, p = "", ""
            lines.append(
                f"{tags[name]:<{w}} {lang:<4} {sc.n:>4}  {acc:>20}  {_pct(sc.strict_match):>6} "
                f"{_pct(sc.flexible_extract):>6}  {_pct(sc.truncation_rate):>5} {_pct(sc.no_answer_rate):>5}"
                f" {_share(sc.target_language_share):>6}  {diff:>28}  {p:>9}"
            )
    gate = results.gate
    if gate:
        lines.append(("gate passed: " if gate.passed else "gate FAILED: ") + "; ".join(gate.reasons or gate.checks))
    return "\n".join(lines)
