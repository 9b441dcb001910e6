"""The records a build keeps about itself, in ``<build>/model/hubswap/``, and where to find them.

    hubswap/recipe.toml         the recipe as given
    hubswap/lock.json           the build record: inputs pinned and hashed, layer map, outputs, versions
    hubswap/eval_results.json   the evaluation (once evaluated)
"""

from __future__ import annotations

from pathlib import Path

from hubswap.errors import ModelFilesError

RECORDS_DIR = "hubswap"
RECIPE_COPY = f"{RECORDS_DIR}/recipe.toml"
BUILD_RECORD = f"{RECORDS_DIR}/lock.json"
EVAL_RESULTS = f"{RECORDS_DIR}/eval_results.json"


def find_model_dir(path: str | Path) -> Path:
    """The model folder of a build: ``path`` itself or ``path/model``, whichever holds a build record."""
    path = Path(path)
    for candidate in (path, path / "model"):
        if (candidate / BUILD_RECORD).is_file():
            return candidate
    raise ModelFilesError(
        f"{path} is not a hubswap build: no {BUILD_RECORD} in it or in its model/ folder",
        hint="pass the build folder that `hubswap build` wrote (or its model/ folder)",
    )
