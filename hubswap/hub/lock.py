"""The recipe's lock file, ``<recipe stem>.lock.json`` beside the recipe.

It pins every model of a recipe (Hub repos to a commit SHA, local folders to their files' sha256)
so that a build is repeatable and runs offline once its files are cached. It is a different
document from the build record (``<build>/model/hubswap/lock.json``, written by ``hubswap.pipeline``),
which also records the layer map, the outputs and the tool versions.

    write_recipe_lock(recipe)       ``hubswap lock``: resolve now, write the file
    read_recipe_lock(loaded)        the lock, or None; refuses one that no longer matches the recipe

``hubswap.inputs`` pins a build's Hub models from it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hubswap import __version__
from hubswap.errors import LockMismatchError
from hubswap.files import check_writable, write_json
from hubswap.hashing import file_sha256, text_sha256
from hubswap.hub.resolve import resolve_model, select_files
from hubswap.recipe import ROLES, LoadedRecipe, ModelSource, load_recipe
from hubswap.records import LOCK_VERSION, FileEntry, ModelEntry, RecipeLock, RecipeRef, load_record

log = logging.getLogger(__name__)

def recipe_lock_path(recipe_path: str | Path) -> Path:
    p = Path(recipe_path)
    return p.with_name(f"{p.stem}.lock.json")


def _local_entry(loaded: LoadedRecipe, role: str, source: ModelSource) -> ModelEntry:
    from hubswap.preflight import LocalModelFiles

    path = loaded.resolve_path(source)
    files = select_files(LocalModelFiles(role, path, display=source.path))
    return ModelEntry(repo=None, revision=None, commit=None, path=source.path,
                      files={n: FileEntry(sha256=file_sha256(path / n), size=(path / n).stat().st_size) for n in files})


def resolve_recipe_lock(loaded: LoadedRecipe, *, endpoint: str | None = None,
                        token: str | bool | None = None) -> RecipeLock:
    """Resolve every model of a recipe now and return its lock.

    Every weight file's safetensors header is checked first (``preflight.tensor_table``): a lock
    never records the hash of a corrupt file as good.
    """
    from hubswap.preflight import LocalModelFiles, tensor_table

    models = {}
    for role, source in loaded.recipe.models.roles().items():
        if source.is_local:
            tensor_table(LocalModelFiles(role, loaded.resolve_path(source), display=source.path))
            models[role] = _local_entry(loaded, role, source)
            continue
        m = resolve_model(role, source, endpoint=endpoint, token=token)
        tensor_table(m)
        models[role] = ModelEntry(repo=m.repo, revision=m.revision, commit=m.commit, path=None,
                                  files=dict(sorted(m.records.items())))
    return RecipeLock(
        lock_version=LOCK_VERSION,
        hubswap_version=__version__,
        recipe=RecipeRef(path=loaded.path.name, name=loaded.recipe.name, sha256=text_sha256(loaded.text)),
        models=models,
    )


def pinned_lock(loaded: LoadedRecipe, models: dict) -> RecipeLock | None:
    """The recipe's lock as a build used it (its Hub models pinned, each needed file's record),
    published as ``hubswap/recipe.lock.json`` beside the recipe's copy so that ``hubswap build
    hubswap/recipe.toml`` and ``hubswap verify`` rebuild from the same commits whatever ``main``
    says later. None when a model is a local folder: nobody else can rebuild from that."""
    if any(m.commit is None for m in models.values()):
        return None
    return RecipeLock(
        lock_version=LOCK_VERSION,
        hubswap_version=__version__,
        recipe=RecipeRef(path=loaded.path.name, name=loaded.recipe.name, sha256=text_sha256(loaded.text)),
        models={role: ModelEntry(repo=m.repo, revision=m.revision, commit=m.commit, path=None,
                                 files=dict(sorted(m.records.items()))) for role, m in models.items()},
    )


def write_recipe_lock(recipe_path: str | Path, *, endpoint: str | None = None,
                      token: str | bool | None = None) -> tuple[Path, RecipeLock]:
    """``hubswap lock``: resolve the recipe's models and write ``<recipe stem>.lock.json`` beside it."""
    loaded = load_recipe(recipe_path)
    # before anything is resolved: the lock goes beside the recipe
    check_writable(recipe_lock_path(loaded.path).parent, hint="copy the recipe (and its lock) to a writable folder")
    lock = resolve_recipe_lock(loaded, endpoint=endpoint, token=token)
    out = write_json(recipe_lock_path(loaded.path), lock.to_json())
    return out, lock


def read_recipe_lock(loaded: LoadedRecipe) -> RecipeLock | None:
    """The recipe's lock file, or None when there is none; refuses a lock that no longer matches.

    A lock matches when it pins exactly the recipe's models (same repo and revision, or same local
    path) and the local models' files still have the locked sha256.
    """
    path = recipe_lock_path(loaded.path)
    if not path.is_file():
        return None
    refresh = f"refresh it with `hubswap lock {loaded.path}`"
    lock = load_record(path, RecipeLock, version_key="lock_version", version=LOCK_VERSION,
                       what="a hubswap lock file", error=LockMismatchError, hint=refresh)
    problems = []
    roles = loaded.recipe.models.roles()
    for role in ROLES:
        source, entry = roles.get(role), lock.models.get(role)
        if source is None and entry is None:
            continue
        if source is None:
            problems.append(f"models.{role} is locked but no longer in the recipe")
        elif entry is None:
            problems.append(f"models.{role} ({source.display()}) is not in the lock")
        elif source.is_local:
            if entry.path != source.path:
                problems.append(f"models.{role} is {source.display()}, the lock has {entry.display}")
            else:
                problems += _local_changes(loaded, role, source, entry)
        elif (entry.repo, entry.revision) != (source.repo, source.ref) or not entry.commit:
            problems.append(f"models.{role} is {source.display()}, the lock has {entry.display}")
    if problems:
        raise LockMismatchError(f"{path} no longer matches {loaded.path}: " + "; ".join(problems), hint=refresh)
    log.info("using %s", path)
    return lock


def _local_changes(loaded: LoadedRecipe, role: str, source: ModelSource, entry: ModelEntry) -> list[str]:
    folder = loaded.resolve_path(source)
    changed = []
    for name, rec in entry.files.items():
        p = folder / name
        if not p.is_file() or p.stat().st_size != rec.size or file_sha256(p) != rec.sha256:
            changed.append(name)
    if changed:
        return [f"models.{role} ({source.path}) changed since it was locked: {', '.join(changed[:3])}"]
    return []
