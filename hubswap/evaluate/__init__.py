"""MGSM evaluation: lm-eval compatible prompts and scores, the vLLM engine, paired comparison, gate.

The stable API (heavy libraries load only when these run; the modules themselves are imported on
first use, so ``hubswap.evaluate.languages`` stays cheap for the recipe schema):

* ``run_evaluation(models, cfg, eval_dir, dataset=..., cache_keys=..., cache_dir=..., limit=...)``
  evaluates the merged model and the models it is compared with, writes per-question jsonl and
  returns the ``eval_results.json`` content;
* ``apply_gate(results, gate) -> GateVerdict``;
* ``score_response(text, lang, gold, mode="native-cot") -> ResponseScore`` (strict_match,
  flexible_extract, correct);
* ``format_table(results)``: the comparison table as text.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "GateVerdict": "gate", "apply_gate": "gate", "format_table": "report", "run_evaluation": "runner",
    "ResponseScore": "scoring", "score_response": "scoring",
}
__all__ = ["GateVerdict", "ResponseScore", "apply_gate", "format_table", "run_evaluation", "score_response"]

if TYPE_CHECKING:
    from hubswap.evaluate.gate import GateVerdict, apply_gate
    from hubswap.evaluate.report import format_table
    from hubswap.evaluate.runner import run_evaluation
    from hubswap.evaluate.scoring import ResponseScore, score_response


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hubswap.evaluate' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hubswap.evaluate.{_EXPORTS[name]}"), name)
