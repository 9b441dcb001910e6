"""The result table printed at the end of ``hubswap eval`` and ``hubswap build``."""

from __future__ import annotations


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}"


def format_table(results: dict) -> str:
    """Per model and language: accuracy with its interval, lm-eval scores, and the paired diff."""
    langs = results["settings"]["languages"]
    ref = results.get("reference_model")
    tags = {name: name + (" (cached)" if model.get("cached") else "") for name, model in results["models"].items()}
    w = max([5, *map(len, tags.values())])
    lines = [
        f"MGSM ({results['settings']['prompt']}, {results['settings']['num_fewshot']}-shot, "
        f"backend {results['settings']['backend']}; accuracy % [95% CI])",
        f"{'model':<{w}} {'lang':<4} {'n':>4}  {'accuracy':>20}  {'strict':>6} {'flex':>6}  "
        f"{'trunc':>5} {'noans':>5}  {(ref or 'merged') + ' - model [95% CI]':>28}  {'McNemar p':>9}",
    ]
    for name, model in results["models"].items():
        for lang in langs:
            s = model["languages"][lang]
            acc = f"{_pct(s['accuracy'])} [{_pct(s['ci95'][0])}, {_pct(s['ci95'][1])}]"
            cmp_ = results["comparisons"].get(name, {}).get(lang)
            if cmp_:
                # shown from the merged model's side: merged minus this model
                diff = f"{100 * cmp_['diff']:+6.1f} [{100 * cmp_['ci95'][0]:+6.1f}, {100 * cmp_['ci95'][1]:+6.1f}]"
                p = f"{cmp_['mcnemar_p']:.3g}"
            else:
                diff, p = "", ""
            lines.append(
                f"{tags[name]:<{w}} {lang:<4} {s['n']:>4}  {acc:>20}  {_pct(s['strict_match']):>6} "
                f"{_pct(s['flexible_extract']):>6}  {_pct(s['truncation_rate']):>5} {_pct(s['no_answer_rate']):>5}"
                f"  {diff:>28}  {p:>9}"
            )
    gate = results.get("gate")
    if gate:
        lines.append(("gate passed: " if gate["passed"] else "gate FAILED: ") + "; ".join(gate["reasons"] or gate.get("checks", [])))
    return "\n".join(lines)
