"""The recipe's lock file, ``<recipe stem>.lock.json`` beside the recipe.

It pins every model of a recipe (Hub repos to a commit SHA, local folders to their files' sha256)
so that a build is repeatable and runs offline once its files are cached. It is a different
document from the build record (``<build>/model/hubswap/lock.json``, written by ``hubswap.build``),
which also records the layer map, the outputs and the tool versions.

    write_recipe_lock(recipe)       ``hubswap lock``: resolve now, write the file
    read_recipe_lock(loaded)        the lock, or None; refuses one that no longer matches the recipe

``hubswap.inputs`` pins a build's Hub models from it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hubswap import __version__
from hubswap.errors import LockMismatchError
from hubswap.files import write_json
from hubswap.hashing import file_sha256, text_sha256
from hubswap.hub.resolve import FileRecord, resolve_model, select_files
from hubswap.recipe import ROLES, LoadedRecipe, ModelSource, load_recipe

log = logging.getLogger(__name__)

LOCK_VERSION = 1


def recipe_lock_path(recipe_path: str | Path) -> Path:
    p = Path(recipe_path)
    return p.with_name(f"{p.stem}.lock.json")


def _local_entry(loaded: LoadedRecipe, role: str, source: ModelSource) -> dict:
    from hubswap.compat import LocalModelFiles

    path = loaded.resolve_path(source)
    files = select_files(LocalModelFiles(role, path, display=source.path))
    return {"repo": None, "revision": None, "commit": None, "path": source.path,
            "files": {n: FileRecord(file_sha256(path / n), (path / n).stat().st_size).to_json() for n in files}}


def resolve_recipe_lock(loaded: LoadedRecipe, *, endpoint: str | None = None, token: str | bool | None = None) -> dict:
    """Resolve every model of a recipe now and return its lock (the shape is in docs/DESIGN.md)."""
    models = {}
    for role, source in loaded.recipe.models.roles().items():
        if source.is_local:
            models[role] = _local_entry(loaded, role, source)
            continue
        m = resolve_model(role, source, endpoint=endpoint, token=token)
        models[role] = {"repo": m.repo, "revision": m.revision, "commit": m.commit, "path": None,
                        "files": {n: r.to_json() for n, r in sorted(m.records.items())}}
    return {
        "lock_version": LOCK_VERSION,
        "hubswap_version": __version__,
        "recipe": {"path": loaded.path.name, "name": loaded.recipe.name, "sha256": text_sha256(loaded.text)},
        "models": models,
    }


def write_recipe_lock(recipe_path: str | Path, *, endpoint: str | None = None,
               token: str | bool | None = None) -> tuple[Path, dict]:
    """``hubswap lock``: resolve the recipe's models and write ``<recipe stem>.lock.json`` beside it."""
    loaded = load_recipe(recipe_path)
    lock = resolve_recipe_lock(loaded, endpoint=endpoint, token=token)
    out = write_json(recipe_lock_path(loaded.path), lock)
    return out, lock


def read_recipe_lock(loaded: LoadedRecipe) -> dict | None:
    """The recipe's lock file, or None when there is none; refuses a lock that no longer matches.

    A lock matches when it pins exactly the recipe's models (same repo and revision, or same local
    path) and the local models' files still have the locked sha256.
    """
    path = recipe_lock_path(loaded.path)
    if not path.is_file():
        return None
    refresh = f"refresh it with `hubswap lock {loaded.path}`"
    try:
        lock = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LockMismatchError(f"{path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}", hint=refresh) from None
    except (OSError, ValueError) as e:
        raise LockMismatchError(f"{path}: cannot read the lock file ({e})", hint=refresh) from None
    version = lock.get("lock_version") if isinstance(lock, dict) else None
    if isinstance(lock, dict) and version != LOCK_VERSION:
        raise LockMismatchError(f"{path}: lock_version {version!r}, this hubswap reads {LOCK_VERSION}", hint=refresh)
    _check_lock_shape(lock, path, refresh)
    models = lock["models"]
    problems = []
    roles = loaded.recipe.models.roles()
    for role in ROLES:
        source, entry = roles.get(role), models.get(role)
        if source is None and entry is None:
            continue
        if source is None:
            problems.append(f"models.{role} is locked but no longer in the recipe")
        elif entry is None:
            problems.append(f"models.{role} ({source.display()}) is not in the lock")
        elif source.is_local:
            if entry.get("path") != source.path:
                problems.append(f"models.{role} is {source.display()}, the lock has {_entry_display(entry)}")
            else:
                problems += _local_changes(loaded, role, source, entry)
        elif (entry.get("repo"), entry.get("revision")) != (source.repo, source.ref) or not entry.get("commit"):
            problems.append(f"models.{role} is {source.display()}, the lock has {_entry_display(entry)}")
    if problems:
        raise LockMismatchError(f"{path} no longer matches {loaded.path}: " + "; ".join(problems), hint=refresh)
    log.info("using %s", path)
    return lock


def _check_lock_shape(lock: Any, path: Path, hint: str) -> None:
    """Refuse, in one line, a lock whose structure or values are not what ``resolve_recipe_lock`` writes."""
    try:
        _LockShape.model_validate(lock)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        first = errors[0]
        where = ".".join(str(p) for p in first["loc"]) or "the document"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise LockMismatchError(f"{path}: not a hubswap lock file: {where}: {first['msg']}{more}", hint=hint) from None


class _LockStrict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class _LockedFile(_LockStrict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class _LockedModel(_LockStrict):
    repo: str | None = None
    revision: str | None = None
    commit: str | None = Field(default=None, pattern=r"^[0-9a-f]{40}$")
    path: str | None = None
    files: dict[str, _LockedFile]

    @field_validator("files")
    @classmethod
    def _inside_the_folder(cls, v: dict) -> dict:
        for name in v:
            if not name or name.startswith("/") or "\\" in name or ".." in name.split("/"):
                raise ValueError(f"{name!r} is not a file inside the model folder")
        return v


class _LockShape(_LockStrict):
    """The structure read_lock and the build rely on (the lock's other keys are informative)."""

    lock_version: int
    models: dict[str, _LockedModel]


def _entry_display(entry: dict) -> str:
    return entry.get("path") or f"{entry.get('repo')}@{entry.get('revision')}"


def _local_changes(loaded: LoadedRecipe, role: str, source: ModelSource, entry: dict) -> list[str]:
    folder = loaded.resolve_path(source)
    changed = []
    for name, rec in entry.get("files", {}).items():
        p = folder / name
        if not p.is_file() or p.stat().st_size != rec["size"] or file_sha256(p) != rec["sha256"]:
            changed.append(name)
    if changed:
        return [f"models.{role} ({source.path}) changed since it was locked: {', '.join(changed[:3])}"]
    return []
