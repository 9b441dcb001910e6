"""hubswap: merged LLMs by layer swapping, built from recipes on the Hugging Face Hub.

The public Python API is the names below; everything else may change between releases. They are
imported on first use, so ``import hubswap`` stays light (no torch, vLLM or datasets)::

    from hubswap import BuildOptions, build
    result = build("recipes/tiny-demo.toml", BuildOptions(evaluate=False))
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> the module that defines it. (No import of them here, not even for type checkers:
# every module imports `hubswap` for __version__, and the package would sit in an import circle.)
_API = {
    "load_recipe": "hubswap.recipe",
    "build": "hubswap.pipeline",
    "BuildOptions": "hubswap.pipeline",
    "BuildResult": "hubswap.pipeline",
    "layer_map": "hubswap.layermap",
    "run_evaluation": "hubswap.evaluate.runner",
    "read_eval_results": "hubswap.evaluate.results",
    "EvalResults": "hubswap.evaluate.results",
    "analyze": "hubswap.analysis",
    "sweep": "hubswap.sweeps",
    "publish": "hubswap.hub.publish",
    "HubswapError": "hubswap.errors",
}
__all__ = [
    "__version__", "load_recipe", "build", "BuildOptions", "BuildResult", "layer_map", "run_evaluation",
    "read_eval_results", "EvalResults", "analyze", "sweep", "publish", "HubswapError",
]

def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'hubswap' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
