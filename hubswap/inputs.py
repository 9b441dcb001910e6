"""The inputs stage: a recipe's models pinned, checked, downloaded, hashed and keyed, one way for all.

``build``, ``analyze`` and ``sweep`` start the same way, through :func:`prepare_inputs`:

1. **resolve**: each role to something pinned, a Hub repo at a commit SHA (the recipe's lock when
   there is one, which is checked against the recipe) or a local folder as it is;
2. **preflight** (``hubswap.preflight``): configs, tokenizers and safetensors headers compared, no
   weight read; its warnings are logged here;
3. **download** (:meth:`Inputs.folders`): the needed files of the roles asked for, each checked
   against its sha256; local folders are used in place.

Every model, wherever it lives, is an :class:`InputModel`: compat's ``ModelFiles`` for preflight,
plus ``commit`` (None for a local folder), ``folder()`` (its files on disk) and ``record(name)``
(sha256 and size of one file: the Hub's record, or the local file hashed through the hash cache).
:meth:`Inputs.key` is the one key that identifies a model's evaluation in the cache, shared by
builds and sweeps.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hubswap.files import cores, human_size
from hubswap.hashing import cached_sha256, file_sha256, json_sha256
from hubswap.hub.resolve import HubModelFiles, resolve_model
from hubswap.licenses import card_files
from hubswap.preflight import (
    INDEX,
    SIDE_FILES,
    LocalModelFiles,
    ModelFiles,
    Preflight,
    check_compatible,
    weight_files,
)
from hubswap.recipe import LoadedRecipe
from hubswap.records import FileEntry

log = logging.getLogger(__name__)

EXPERTS = ("task", "language")


class InputModel(ModelFiles, Protocol):
    """One input model, Hub or local: what preflight reads, and what a build records and keys."""

    commit: str | None

    def folder(self) -> Path: ...
    def record(self, name: str) -> FileEntry: ...
    def known_record(self, name: str) -> FileEntry | None: ...


class LocalInput(LocalModelFiles):
    """A model folder on disk, used in place. (Its Hub counterpart is ``hub.resolve.HubModelFiles``.)"""

    commit = None

    def folder(self) -> Path:
        return self.path

    def record(self, name: str) -> FileEntry:
        p = self.path / name
        return FileEntry(sha256=file_sha256(p), size=p.stat().st_size)

    def known_record(self, name: str) -> FileEntry | None:
        """The record without reading the file, when the hash cache has it."""
        p = self.path / name
        digest = cached_sha256(p)
        return None if digest is None else FileEntry(sha256=digest, size=p.stat().st_size)


def resolve(loaded: LoadedRecipe, *, endpoint: str | None = None,
            token: str | bool | None = None) -> dict[str, InputModel]:
    """Each role of the recipe pinned, in the recipe's order (base, task, language).

    Hub repos come from the lock file beside the recipe when there is one (no network), else are
    resolved now; a lock that no longer matches the recipe is refused, also for all-local recipes.
    """
    from hubswap.hub.lock import read_recipe_lock

    roles = loaded.recipe.models.roles()
    lock = read_recipe_lock(loaded)
    out: dict[str, InputModel] = {}
    for role, src in roles.items():
        if src.is_local:
            out[role] = LocalInput(role, loaded.resolve_path(src), display=src.path)
        elif lock is not None:
            entry = lock.models[role]
            out[role] = HubModelFiles(role, src.repo, src.ref, entry.commit, entry.files,
                                      endpoint=endpoint, token=token)
        else:
            out[role] = resolve_model(role, src, endpoint=endpoint, token=token)
    hub_roles = [r for r, s in roles.items() if not s.is_local]
    if lock is None and hub_roles:
        log.info("no lock file: resolved %s now; `hubswap lock %s` pins them", ", ".join(hub_roles), loaded.path)
    return out


@dataclass(frozen=True)
class Inputs:
    """A recipe's models, pinned and preflighted."""

    loaded: LoadedRecipe
    models: dict[str, InputModel]
    preflight: Preflight

    def folders(self, roles: list[str] | tuple[str, ...]) -> dict[str, Path]:
        """Local folders of ``roles``, downloading Hub repos' needed files (a no-op for local ones)."""
        return {role: self.models[role].folder() for role in roles}

    def key(self, role: str) -> str:
        """What identifies a model's generations in the evaluation cache: its commit on the Hub, or
        for a local folder the sha256 of its weights, config and tokenizer files (hashes are cached
        by inode, size and mtime, so a folder is read once)."""
        m = self.models[role]
        if m.commit:
            return m.commit
        present = set(m.files())
        names = sorted({*weight_files(m), *(f for f in SIDE_FILES if f in present)})
        return "local-" + json_sha256({f: m.record(f).sha256 for f in names})

    def used_files(self, role: str, *, fetched: bool) -> list[str]:
        """The files of ``role`` a build reads: configs, card and licence files always, the side
        files (tokenizer, chat template) of ``files_from``, and every file of the models it merges
        or evaluates (``fetched``)."""
        m = self.models[role]
        present = set(m.files())
        files_from = self.loaded.recipe.swap.files_from
        small = [f for f in ("config.json", INDEX) if f in present]
        if role == files_from or (fetched and role not in EXPERTS):
            small = [f for f in SIDE_FILES if f in present] + ([INDEX] if INDEX in present else [])
        weights = sorted({t.file for t in self.preflight.tensors[role].values()}) if fetched else []
        return sorted(set(small + weights + card_files(present)))

    def file_records(self, pool: Executor, fetched: list[str] | tuple[str, ...]) -> dict[str, dict[str, Future]]:
        """Futures of the ``FileEntry`` of every file the build reads, per role.

        A Hub file's record is the Hub's LFS sha256 that the download verified; a local file is
        hashed on ``pool`` unless the hash cache knows it, largest file first (the longest hash
        starts at once, the small files fill the other threads).
        """
        out: dict[str, dict[str, Future]] = {}
        todo: list[tuple[int, str, str]] = []  # (size, role, file) of local files not hashed yet
        for role, m in self.models.items():
            out[role] = {}
            for f in self.used_files(role, fetched=role in fetched):
                if (rec := m.known_record(f)) is not None:
                    out[role][f] = _done(rec)
                else:
                    todo.append(((m.folder() / f).stat().st_size, role, f))
        if todo:
            per_role = []
            for role in dict.fromkeys(t[1] for t in todo):
                mine = [t for t in todo if t[1] == role]
                per_role.append(f"{role} {human_size(sum(t[0] for t in mine))} in {len(mine)} file(s) of "
                                f"{self.models[role].folder()}")
            log.info("hashing the local inputs on %d threads while merging (once; cached after): %s",
                     min(len(todo), cores()), "; ".join(per_role))
        for _, role, f in sorted(todo, key=lambda t: -t[0]):
            out[role][f] = pool.submit(self.models[role].record, f)
        return {role: dict(sorted(entries.items())) for role, entries in out.items()}


def _done(value) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


def prepare_inputs(loaded: LoadedRecipe) -> Inputs:
    """Resolve and preflight every model of the recipe; log preflight's warnings. Nothing is downloaded."""
    models = resolve(loaded)
    pre = check_compatible(models)
    for w in pre.warnings:
        log.warning("preflight: %s", w)
    return Inputs(loaded, models, pre)


def published_path(path: str | None) -> str | None:
    """A path as a published record may show it: relative to the recipe as the recipe wrote it, or
    only the folder's name when the recipe gave an absolute one (or a Hub id, unchanged)."""
    if path is None:
        return None
    p = Path(path)
    return p.name if p.is_absolute() or str(path).startswith("~") else str(path)


def published_recipe(loaded: LoadedRecipe) -> str:
    """The recipe's text as the model folder publishes it (``hubswap/recipe.toml``, and the card
    quotes it): verbatim, but for the paths of this machine. A local model's or the dataset's
    absolute path (or ``~/...``) becomes its folder's name (:func:`published_path`), with a
    comment that says so; paths relative to the recipe stay as written."""
    r = loaded.recipe
    paths = [src.path for src in r.models.roles().values() if src.path] + [r.eval.dataset]
    text, shortened = loaded.text, []
    for path in dict.fromkeys(paths):
        short = published_path(path)
        if short == path:
            continue
        for quote in ('"', "'"):
            if f"{quote}{path}{quote}" in text:
                text = text.replace(f"{quote}{path}{quote}", f"{quote}{short}{quote}")
                shortened.append(short)
    if shortened:
        text = (f"# hubswap: absolute paths of the build machine shortened to folder names "
                f"({', '.join(shortened)})\n" + text)
    return text


def dataset_location(loaded: LoadedRecipe) -> str:
    """The eval dataset: a local folder (relative to the recipe) when one exists, else a Hub id."""
    ds = loaded.recipe.eval.dataset
    p = Path(ds).expanduser()
    local = p if p.is_absolute() else loaded.path.parent / p
    return str(local.resolve()) if local.is_dir() else ds
