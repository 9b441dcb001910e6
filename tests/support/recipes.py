"""The one recipe builder, for every test that needs a recipe but does not test recipe text itself.

Models are local folders (a ``Path``) or Hub repos (a ``str``, ``"org/name"`` or
``"org/name@revision"``), or a mapping written as given; ``[eval]``, ``[gate]`` and ``[publish]``
are mappings (a nested mapping is a sub-table, such as ``[eval.vllm]``), left out when ``None``.

    write_recipe(tmp_path / "r.toml", tiny_llama, dtype="bfloat16", eval={"dataset": str(mgsm_dir)})

Tests of the recipe format itself (tests/test_recipe.py, tests/test_fuzz_inputs.py) and recipes
whose exact text a test compares (the card's fixed build, tests/support/fixed_build.py) keep their
TOML written out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

Models = Mapping[str, "Path | str | Mapping[str, Any]"]


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str | Path):
        return json.dumps(str(v), ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"no TOML value for {v!r}")


def _table(name: str, keys: Mapping[str, Any]) -> str:
    plain = [f"{k} = {_value(v)}\n" for k, v in keys.items() if not isinstance(v, Mapping) and v is not None]
    subs = [_table(f"{name}.{k}", v) for k, v in keys.items() if isinstance(v, Mapping)]
    return f"[{name}]\n" + "".join(plain) + "".join("\n" + s for s in subs)


def _source(model: Path | str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(model, Path):
        return {"path": str(model)}
    if isinstance(model, str):
        repo, _, revision = model.partition("@")
        return {"repo": repo, "revision": revision or None}
    return dict(model)


def recipe_toml(models: Models, *, name: str = "tiny-swap", bottom: int = 2, top: int = 1, transition: int = 1,
                dtype: str | None = "float32", non_layer: str | None = None, files_from: str | None = None,
                swap: Mapping[str, Any] | None = None, eval: Mapping[str, Any] | None = None,
                gate: Mapping[str, Any] | None = None, publish: Mapping[str, Any] | None = None,
                header: str | None = None) -> str:
    """A recipe's text: ``models`` by role (base first when given), ``[swap]`` from the keyword
    arguments plus ``swap`` (e.g. ``transition_bottom``, ``vision``), then the optional tables.
    ``header`` is a comment line put first."""
    parts = [f"# {header}\n" if header else "", f'schema_version = 1\nname = "{name}"\n']
    for role in sorted(models, key=lambda r: ("base", "task", "language").index(r)):
        parts.append(_table(f"models.{role}", _source(models[role])))
    parts.append(_table("swap", {"bottom": bottom, "top": top, "transition": transition, "non_layer": non_layer,
                                 "files_from": files_from, "dtype": dtype, **(swap or {})}))
    for table, keys in (("eval", eval), ("gate", gate), ("publish", publish)):
        if keys is not None:
            parts.append(_table(table, keys))
    return "\n".join(p for p in parts if p)


def write_recipe(path: Path, models: Models, **kw: Any) -> Path:
    """Write :func:`recipe_toml` to ``path``; returns ``path``."""
    path.write_text(recipe_toml(models, **kw))
    return path


def hub_models(org: str = "org", *, task: str | None = None, revision: str | None = None) -> dict[str, str]:
    """base/task/language as the test Hub holds them after ``hub_server.seed`` (``org/base``, ...);
    ``task`` names another task repo, ``revision`` pins the task's."""
    task_repo = task or f"{org}/task"
    return {"base": f"{org}/base", "task": f"{task_repo}@{revision}" if revision else task_repo,
            "language": f"{org}/language"}
