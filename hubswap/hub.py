"""The Hub stage: resolve and lock, preflight reads, verified downloads, and publishing.

Every Hub call goes through ``huggingface_hub`` (``HfApi``, ``hf_hub_download``, ``create_commit``
and its HTTP session for ranged reads), so the token comes from its usual sources (``HF_TOKEN``,
``hf auth login``) and ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and the cache behave as users expect.

    resolve_hub_inputs(loaded, roles)   -> {role: HubModelFiles}   pinned to a commit (the lock's when present)
    HubModelFiles                       configs/tokenizer/index and safetensors headers, no weight download
    download_inputs(model)              -> local folder: needed files only, sha256-checked, resumable
    write_lock(recipe) / read_lock(loaded)   <recipe stem>.lock.json beside the recipe
    publish(model_dir, force=...)       -> one commit; no-op when the same build is already there

Errors from ``huggingface_hub`` become one-line ``HubError``s with a hint in :func:`_hub_call`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hubswap import __version__
from hubswap.errors import (
    HubError,
    HubswapError,
    LockMismatchError,
    ModelFilesError,
    PublishRefusedError,
)
from hubswap.files import atomic_write, human_size, write_json
from hubswap.hashing import json_sha256, text_sha256
from hubswap.recipe import ROLES, LoadedRecipe, ModelSource, load_recipe, parse_recipe
from hubswap.records import find_model_dir

log = logging.getLogger(__name__)
T = TypeVar("T")

LOCK_VERSION = 1
ATTEMPTS = 3  # tries of one Hub call on a transient failure (5xx, 429, dropped connection)


@dataclass(frozen=True)
class FileRecord:
    sha256: str
    size: int

    def to_json(self) -> dict:
        return {"sha256": self.sha256, "size": self.size}


# -- errors: huggingface_hub's exceptions -> one line and a hint ------------------------------


def _token_hint() -> str:
    return "set HF_TOKEN (or run `hf auth login`) with a token that can read it"


def _map_error(e: BaseException, what: str, *, repo: str | None, revision: str | None,
               write: bool = False, endpoint: str | None = None) -> HubswapError | None:
    """The user-facing error for an exception of huggingface_hub, or None if it is not one."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        LocalTokenNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = endpoint or constants.ENDPOINT
    if isinstance(e, GatedRepoError):
        from huggingface_hub import get_token

        who = "your token has not been granted access to it" if get_token() else "no Hugging Face token is set"
        return HubError(
            f"{repo} is a gated repo and {who}",
            hint=f"accept its licence at {endpoint}/{repo} (Llama repos are gated), then set HF_TOKEN "
            "to a token of that account (or run `hf auth login`)",
        )
    if isinstance(e, RevisionNotFoundError):
        if revision and len(revision) == 40:
            return HubError(f"commit {revision} no longer exists in {repo}",
                            hint="it was probably removed by a force-push; if a lock file pinned it, "
                            "refresh the lock with `hubswap lock RECIPE`")
        return HubError(
            f"revision {revision!r} not found in {repo}",
            hint=f"use a branch, tag or full commit SHA that exists (see {endpoint}/{repo}/tree/main)",
        )
    if isinstance(e, RemoteEntryNotFoundError):
        return ModelFilesError(f"{repo}@{revision}: {what}: no such file in the repo")
    if isinstance(e, RepositoryNotFoundError):
        return HubError(
            f"repo {repo} not found on {endpoint} (or it is private and your token cannot see it)",
            hint=f"check the repo id; for a private repo {_token_hint()}",
        )
    if isinstance(e, LocalTokenNotFoundError):
        return HubError("no Hugging Face token found: publishing needs a token with write access",
                        hint="set HF_TOKEN to a write token (https://huggingface.co/settings/tokens) "
                        "or run `hf auth login`")
    offline = isinstance(e, OfflineModeIsEnabled) or isinstance(e.__cause__, OfflineModeIsEnabled)
    if offline or (isinstance(e, LocalEntryNotFoundError) and constants.is_offline_mode()):
        return HubError(
            f"offline mode is on (HF_HUB_OFFLINE=1): cannot fetch {what} of {repo}@{revision}, "
            "which is not in the local cache",
            hint="unset HF_HUB_OFFLINE; a recipe with a lock file builds offline once one online "
            "build has cached its files",
        )
    if isinstance(e, HfHubHTTPError) and e.response is not None:
        status = e.response.status_code
        if status == 401:
            return HubError("the Hugging Face token was rejected (invalid or expired)",
                            hint="set HF_TOKEN to a valid token or run `hf auth login`")
        if status == 403 and write:
            ns = (repo or "").split("/")[0]
            return HubError(
                f"your token cannot write to {repo} (it is read-only or has no access to '{ns}')",
                hint=f"use a token with write access to '{ns}': set HF_TOKEN or run `hf auth login`",
            )
        if status == 412 and write:
            return PublishRefusedError(f"{repo} changed while publishing (someone else pushed to it)",
                                       hint="run the push again: it re-checks what the repo holds")
        if status in (429, 500, 502, 503, 504):
            return HubError(
                f"{endpoint} answered HTTP {status} to {what} of {repo}, {ATTEMPTS} attempts in a row",
                hint="the Hub may be having trouble (https://status.huggingface.co): run again later; "
                "finished files stay in the cache and are not downloaded twice",
            )
        return HubError(f"{what} of {repo} failed: HTTP {status} "
                        f"{e.response.headers.get('X-Error-Message') or ''}".rstrip())
    if isinstance(e, (*_transport_errors(), LocalEntryNotFoundError, ConnectionError, TimeoutError)):
        cause = e.__cause__ or e
        return HubError(
            f"cannot reach {endpoint} for {what} of {repo} after {ATTEMPTS} attempts "
            f"({type(cause).__name__}: {_first_line(cause)})",
            hint="check the connection, proxy (HTTPS_PROXY) and HF_ENDPOINT, then run again: "
            "finished files stay in the cache and are not downloaded twice",
        )
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return _scrub(text[0][:200]) if text else ""


def _scrub(text: str) -> str:
    """Remove the token from anything shown to a user."""
    from huggingface_hub import get_token

    tok = get_token()
    return text.replace(tok, "***") if tok else text


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The connection-failure class of the HTTP library huggingface_hub speaks through: httpx in
    huggingface_hub 1.x, httpx2 in 2.x (both are supported; pyproject allows both)."""
    found = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except ImportError:
            continue
    return tuple(found)


def _transient(e: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    if isinstance(e, OfflineModeIsEnabled) or isinstance(e.__cause__, OfflineModeIsEnabled):
        return False
    if isinstance(e, HfHubHTTPError) and e.response is not None:
        return e.response.status_code in (429, 500, 502, 503, 504)
    if isinstance(e, LocalEntryNotFoundError):  # hf_hub_download's wrapper of a connection failure
        return e.__cause__ is not None and _transient(e.__cause__)
    return isinstance(e, _transport_errors())


def _hub_call(fn: Callable[[], T], what: str, *, repo: str | None, revision: str | None = None,
              write: bool = False, attempts: int = ATTEMPTS, endpoint: str | None = None) -> T:
    """Run one huggingface_hub call, retrying transient failures, mapping errors to one line."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except HubswapError:
            raise
        except Exception as e:
            if _transient(e) and attempt < attempts:
                wait = 2 ** (attempt - 1)
                log.warning("%s of %s failed (%s); retrying in %ds", what, repo, _first_line(e), wait)
                time.sleep(wait)
                continue
            mapped = _map_error(e, what, repo=repo, revision=revision, write=write, endpoint=endpoint)
            if mapped is None:
                raise
            raise mapped from None
    raise AssertionError("unreachable")


# -- which files a build needs -----------------------------------------------------------------


class _Listing:
    """Just enough of compat's ``ModelFiles`` for ``compat.weight_files``: names and a reader."""

    def __init__(self, role: str, display: str, names: list[str], read_text: Callable[[str], str | None]):
        self.role, self.display, self._names, self.read_text = role, display, names, read_text

    def files(self) -> list[str]:
        return list(self._names)


def select_files(model) -> list[str]:
    """The files of a model (a compat ``ModelFiles``) that a build uses: side files (configs,
    tokenizer, chat template), the safetensors index and shards. Pickled weights are never
    selected; a model with only pickled weights is refused (``compat.weight_files``)."""
    from hubswap.compat import INDEX, SIDE_FILES, weight_files

    names = set(model.files())
    weights = weight_files(model)
    return [f for f in SIDE_FILES if f in names] + ([INDEX] if INDEX in names else []) + weights


def is_weight(name: str) -> bool:
    return name.endswith(".safetensors")


# -- resolving a Hub model to a commit ----------------------------------------------------------


class HubModelFiles:
    """One Hub model pinned to a commit SHA: the ``ModelFiles`` of hubswap.compat for preflight.

    Small files are downloaded into the huggingface_hub cache (and checked against the lock);
    safetensors headers are read with two ranged GETs (8 bytes, then the header), so the checks
    run before any weight is downloaded. Files already in the cache are read from there, which is
    what lets a locked build run with HF_HUB_OFFLINE=1.
    """

    def __init__(self, role: str, repo: str, revision: str, commit: str, records: dict[str, FileRecord],
                 *, endpoint: str | None = None, token: str | bool | None = None):
        self.role = role
        self.repo = repo
        self.revision = revision
        self.commit = commit
        self.records = dict(records)
        self.endpoint = endpoint
        self.token = token
        self.display = f"{repo}@{revision}" + ("" if revision == commit else f" ({commit[:12]})")
        self._headers: dict[str, dict] = {}

    def files(self) -> list[str]:
        return sorted(self.records)

    def local_path(self, name: str) -> Path:
        """The file in the cache, downloading it (and checking its sha256) when needed."""
        return _download_verified(self, name)

    def read_text(self, name: str) -> str | None:
        if name not in self.records:
            return None
        return self.local_path(name).read_text(encoding="utf-8")

    def read_json(self, name: str) -> dict | None:
        text = self.read_text(name)
        return None if text is None else json.loads(text)

    def safetensors_header(self, name: str) -> dict:
        if name not in self._headers:
            self._headers[name] = self._read_header(name)
        return dict(self._headers[name])

    def _read_header(self, name: str) -> dict:
        from huggingface_hub import try_to_load_from_cache

        from hubswap.safetensors_format import header_length, parse_header, read_header_file

        cached = try_to_load_from_cache(self.repo, name, revision=self.commit)
        if isinstance(cached, str):
            return read_header_file(Path(cached))
        where = f"{self.role} model {self.display}: {name}"
        # Headers read over the network are kept by the file's sha256 (content-addressed), so a
        # locked build also preflights a base it never downloads with HF_HUB_OFFLINE=1.
        record = self.records.get(name)
        keep = _header_cache() / f"{record.sha256}.bin" if record else None
        if keep is not None and keep.is_file():
            return parse_header(keep.read_bytes(), where=where)
        head = self._range(name, 0, 7)
        n = header_length(head, where=where)
        head = head[:8] + self._range(name, 8, 8 + n - 1)
        header = parse_header(head, where=where)
        if keep is not None:
            with contextlib.suppress(OSError):
                atomic_write(keep, head)
        return header

    def read_range(self, name: str, start: int, length: int) -> bytes:
        """``length`` bytes of a file from ``start``: one ranged GET, or the cached file."""
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(self.repo, name, revision=self.commit)
        if isinstance(cached, str):
            with open(cached, "rb") as f:
                f.seek(start)
                return f.read(length)
        return self._range(name, start, start + length - 1)

    def _range(self, name: str, start: int, end: int) -> bytes:
        """Bytes ``start..end`` (inclusive) of a file, through huggingface_hub's session."""
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_stream_backoff

        url = hf_hub_url(self.repo, name, revision=self.commit, endpoint=self.endpoint)
        headers = build_hf_headers(token=self.token)
        headers.update({"Range": f"bytes={start}-{end}", "Accept-Encoding": "identity"})
        want = end - start + 1

        def get() -> bytes:
            with http_stream_backoff("GET", url, headers=headers) as r:
                hf_raise_for_status(r)
                skip = start if r.status_code == 200 else 0  # Range ignored: the file from byte 0
                out = bytearray()
                for chunk in r.iter_bytes():  # stop reading as soon as the slice is in
                    out += chunk
                    if len(out) >= skip + want:
                        break
                return bytes(out[skip:skip + want])

        return _hub_call(get, f"the header of {name}", repo=self.repo, revision=self.revision,
                         endpoint=self.endpoint)


def _header_cache() -> Path:
    from hubswap.hashing import cache_root

    return cache_root() / "safetensors-headers"


def _api(endpoint: str | None, token: str | bool | None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint, token=token, library_name="hubswap", library_version=__version__)


def resolve_model(role: str, source: ModelSource, *, endpoint: str | None = None,
                  token: str | bool | None = None) -> HubModelFiles:
    """Resolve a Hub model's revision to a commit and record the sha256 and size of each needed file.

    One ``model_info(files_metadata=True)`` call gives the commit and every LFS file's sha256; the
    few small non-LFS files (configs, tokenizer, index) are downloaded and hashed (preflight reads
    them next anyway).
    """
    assert source.repo is not None
    repo, ref = source.repo, source.ref
    info = _hub_call(lambda: _api(endpoint, token).model_info(repo, revision=ref, files_metadata=True),
                     "model info", repo=repo, revision=ref, endpoint=endpoint)
    commit = info.sha
    siblings = {s.rfilename: s for s in info.siblings or []}
    model = HubModelFiles(role, repo, ref, commit, {}, endpoint=endpoint, token=token)
    log.info("%s: %s -> commit %s", role, source.display(), commit)

    def small(name: str) -> Path:
        path = _fetch(model, name)
        model.records[name] = FileRecord(_sha256(path), path.stat().st_size)
        return path

    listing = _Listing(role, source.display(), list(siblings),
                       lambda name: small(name).read_text(encoding="utf-8") if name in siblings else None)
    names = select_files(listing)
    for name in names:
        s = siblings[name]
        if s.lfs is not None:
            model.records[name] = FileRecord(s.lfs.sha256, s.lfs.size)
        elif name not in model.records:
            path = small(name)
            if s.blob_id and _git_sha1(path) != s.blob_id:
                _evict(path)
                raise HubError(f"{role} model {source.display()}: {name} does not match the Hub's git hash",
                               hint="run again; if it persists, a proxy is altering downloads")
    return model


def resolve_hub_inputs(loaded: LoadedRecipe, roles: dict[str, ModelSource] | None = None, *,
                       endpoint: str | None = None, token: str | bool | None = None) -> dict[str, HubModelFiles]:
    """The Hub models of a recipe pinned to commits: from the lock file when there is one (no network),
    else resolved now. A lock that no longer matches the recipe is refused."""
    roles = roles if roles is not None else {r: s for r, s in loaded.recipe.models.roles().items() if not s.is_local}
    lock = read_lock(loaded)
    out = {}
    for role, source in roles.items():
        if lock is not None:
            entry = lock["models"][role]
            records = {n: FileRecord(f["sha256"], f["size"]) for n, f in entry["files"].items()}
            out[role] = HubModelFiles(role, source.repo, source.ref, entry["commit"], records,
                                      endpoint=endpoint, token=token)
        else:
            out[role] = resolve_model(role, source, endpoint=endpoint, token=token)
    if lock is None and roles:
        log.info("no lock file: resolved %s now; `hubswap lock %s` pins them", ", ".join(roles), loaded.path)
    return out


def read_remote_config(source: ModelSource, *, endpoint: str | None = None,
                       token: str | bool | None = None) -> dict:
    """config.json of a Hub model at its revision, for ``hubswap plan`` (one small download)."""
    from huggingface_hub import hf_hub_download

    assert source.repo is not None
    path = _hub_call(
        lambda: hf_hub_download(source.repo, "config.json", revision=source.ref, endpoint=endpoint, token=token),
        "config.json", repo=source.repo, revision=source.ref, endpoint=endpoint,
    )
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as e:
        raise ModelFilesError(f"{source.display()}: config.json is not valid JSON ({e})") from None


# -- downloads ----------------------------------------------------------------------------------


def _fetch(model: HubModelFiles, name: str, *, force: bool = False) -> Path:
    from huggingface_hub import hf_hub_download

    path = _hub_call(
        lambda: hf_hub_download(model.repo, name, revision=model.commit, endpoint=model.endpoint,
                                token=model.token, force_download=force),
        name, repo=model.repo, revision=model.commit, endpoint=model.endpoint,
    )
    return Path(path)


def _download_verified(model: HubModelFiles, name: str) -> Path:
    """Download one file at the pinned commit and check it against its recorded sha256.

    A corrupt copy is removed from the cache and fetched once more before giving up.
    """
    record = model.records.get(name)
    if record is None:
        raise ModelFilesError(f"{model.role} model {model.display}: {name} is not among the locked files")
    for attempt in (1, 2):
        path = _fetch(model, name, force=attempt > 1)
        digest = _sha256(path, fresh=attempt > 1)
        if digest == record.sha256 and path.stat().st_size == record.size:
            return path
        _evict(path)
        log.warning("%s: %s has sha256 %s, expected %s%s", model.role, name, digest[:12], record.sha256[:12],
                    "; downloading it again" if attempt == 1 else "")
    raise HubError(
        f"{model.role} model {model.display}: the downloaded {name} has sha256 {digest[:16]}..., "
        f"but the Hub's record is {record.sha256[:16]}...",
        hint="the corrupt copy was removed from the cache; run again, and if it persists a proxy "
        "or mirror (HF_ENDPOINT) is serving wrong bytes",
    )


def download_inputs(model: HubModelFiles, files_from: bool = True) -> Path:
    """Download the files a build uses (``model.records``: safetensors shards, configs, tokenizer,
    chat template) into the huggingface_hub cache; return the snapshot folder holding them.

    Every file is checked against its sha256 (the Hub's LFS sha256 for weights). A dropped
    connection resumes from the bytes already received (huggingface_hub sends a Range request);
    files completed by an earlier, interrupted run are taken from the cache. ``files_from`` is
    accepted for symmetry with local folders: side files are small and evaluation needs them.

    The merge copies byte ranges found in the headers that preflight read remotely, so each
    downloaded shard's header must be the one preflight saw.
    """
    from hubswap.safetensors_format import read_header_file

    names = model.files()
    total = sum(r.size for r in model.records.values())
    log.info("%s: fetching %d files (%s) of %s", model.role, len(names), human_size(total), model.display)
    folder = None
    for name in sorted(names, key=lambda n: (is_weight(n), n)):
        path = _download_verified(model, name)
        folder = path.parents[len(Path(name).parts) - 1]
        seen = model._headers.get(name)
        if seen is not None and read_header_file(path) != seen:
            with contextlib.suppress(OSError):
                (_header_cache() / f"{model.records[name].sha256}.bin").unlink()
            raise HubError(
                f"{model.role} model {model.display}: the header of {name} read before the download "
                "differs from the downloaded file's",
                hint="run again; if it persists, the server or a proxy answers ranged requests wrongly",
            )
    assert folder is not None
    return folder


def _evict(path: Path) -> None:
    """Remove a cached file: the snapshot link and the blob it points to."""
    with contextlib.suppress(OSError):
        blob = path.resolve()
        path.unlink()
        if blob != path:
            blob.unlink()


def _sha256(path: Path, *, fresh: bool = False) -> str:
    """sha256 of a file; remembered by (path, size, mtime, inode) unless ``fresh``."""
    if fresh:  # a file just rewritten in place may reuse the inode within the mtime's resolution
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(8 << 20):
                h.update(chunk)
        return h.hexdigest()
    from hubswap.hashing import file_sha256

    return file_sha256(path)


def _git_sha1(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# -- the lock file ------------------------------------------------------------------------------


def lock_path(recipe_path: str | Path) -> Path:
    p = Path(recipe_path)
    return p.with_name(f"{p.stem}.lock.json")


def _local_entry(loaded: LoadedRecipe, role: str, source: ModelSource) -> dict:
    from hubswap.compat import LocalModelFiles

    path = loaded.resolve_path(source)
    files = select_files(LocalModelFiles(role, path, display=source.path))
    return {"repo": None, "revision": None, "commit": None, "path": source.path,
            "files": {n: FileRecord(_sha256(path / n), (path / n).stat().st_size).to_json() for n in files}}


def make_lock(loaded: LoadedRecipe, *, endpoint: str | None = None, token: str | bool | None = None) -> dict:
    """Resolve every model of a recipe now and return the lock (see DESIGN.md for the shape)."""
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


def write_lock(recipe_path: str | Path, *, endpoint: str | None = None,
               token: str | bool | None = None) -> tuple[Path, dict]:
    """``hubswap lock``: resolve the recipe's models and write ``<recipe stem>.lock.json`` beside it."""
    loaded = load_recipe(recipe_path)
    lock = make_lock(loaded, endpoint=endpoint, token=token)
    out = write_json(lock_path(loaded.path), lock)
    return out, lock


def read_lock(loaded: LoadedRecipe) -> dict | None:
    """The recipe's lock file, or None when there is none; refuses a lock that no longer matches.

    A lock matches when it pins exactly the recipe's models (same repo and revision, or same local
    path) and the local models' files still have the locked sha256.
    """
    path = lock_path(loaded.path)
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
    """Refuse, in one line, a lock whose structure or values are not what ``make_lock`` writes."""
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
        if not p.is_file() or p.stat().st_size != rec["size"] or _sha256(p) != rec["sha256"]:
            changed.append(name)
    if changed:
        return [f"models.{role} ({source.path}) changed since it was locked: {', '.join(changed[:3])}"]
    return []


# -- publishing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishResult:
    repo: str
    commit: str
    url: str
    action: str  # "created" | "updated" | "unchanged"

    def __str__(self) -> str:
        if self.action == "unchanged":
            return f"{self.url} (already up to date at commit {self.commit[:12]}; nothing pushed)"
        return f"{self.url} (commit {self.commit[:12]})"


@dataclass(frozen=True)
class _LocalFile:
    path: Path
    sha256: str
    size: int
    git_sha1: str | None  # only for files small enough to be regular git blobs


def _manifest(folder: Path) -> dict[str, _LocalFile]:
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if not p.is_file() or rel.startswith((".git/", ".cache/")) or "/.git/" in rel:
            continue
        size = p.stat().st_size
        out[rel] = _LocalFile(p, _sha256(p), size, _git_sha1(p) if size <= (10 << 20) else None)
    return out


def build_identity(lock: dict, recipe_text: str) -> dict:
    """What makes two builds "the same build": the recipe's models and swap, and the exact inputs."""
    try:
        r = parse_recipe(recipe_text, Path("recipe.toml")).recipe
        merge = {"name": r.name, "models": r.models.model_dump(mode="json"), "swap": r.swap.model_dump(mode="json")}
    except HubswapError:  # a recipe of another schema: fall back to its exact text
        merge = {"text": recipe_text}
    inputs = {role: {"repo": m.get("repo"), "commit": m.get("commit"),
                     "files": {n: f.get("sha256") for n, f in sorted((m.get("files") or {}).items())}}
              for role, m in sorted((lock.get("models") or {}).items())}
    return {"recipe": json_sha256(merge), "inputs": json_sha256(inputs), "name": merge.get("name")}


def publish(model_dir: str | Path, *, repo: str | None = None, private: bool | None = None,
            force: bool = False, endpoint: str | None = None, token: str | None = None) -> PublishResult:
    """Publish a build's model folder as ONE commit to ``repo`` (default: the recipe's [publish].repo).

    - the same build already there (same files) -> nothing is pushed;
    - a hubswap build of the same recipe and inputs -> updated (e.g. a new evaluation or card);
    - a build of another recipe or of other inputs, a repo hubswap did not make, or a build that
      failed its gate -> refused unless ``force``;
    - after the commit, the remote files' hashes are compared with the local ones.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    build = _Build(find_model_dir(model_dir))
    pub = build.loaded.recipe.publish
    repo = repo or (pub.repo if pub else None)
    if repo is None:
        raise HubswapError("nothing to publish to: the recipe has no [publish] table",
                           hint='add [publish] repo = "org/name" to the recipe, or pass --repo ORG/NAME')
    private = private if private is not None else (pub.private if pub else True)
    api = _write_api(repo, endpoint, token)
    _check_gate(build.folder, force)

    # What does the repo hold now, and may this build replace it?
    remote = _Remote.read(api, repo, endpoint)
    if remote.info is not None and remote.info.private is False and private:
        log.warning("%s exists and is public although the recipe asks for a private repo; "
                    "its visibility is left as it is", repo)
    if remote.content and _may_replace(build, remote, repo, force) == "same":
        log.info("%s already holds this build (commit %s): nothing to push", repo, remote.head[:12])
        return PublishResult(repo, remote.head, f"{api.endpoint}/{repo}", "unchanged")

    # One commit: every file of the build, and the removal of what an older build left behind.
    if remote.head is None:
        _hub_call(lambda: api.create_repo(repo, private=private, exist_ok=True), "creating the repo",
                  repo=repo, write=True, endpoint=endpoint)
    replace_all = force and not remote.by_hubswap  # --force over a repo hubswap did not make
    stale = sorted(n for n in remote.content - set(build.files) if replace_all or _artifact(n))
    ops: list = [CommitOperationAdd(path_in_repo=n, path_or_fileobj=str(f.path)) for n, f in build.files.items()]
    ops += [CommitOperationDelete(path_in_repo=n) for n in stale]
    log.info("publishing %d files (%s) to %s in one commit", len(build.files),
             human_size(sum(f.size for f in build.files.values())), repo)
    info = _hub_call(
        lambda: api.create_commit(repo, ops, commit_message=build.commit_message(),
                                  commit_description=build.commit_description(), parent_commit=remote.head),
        "publishing", repo=repo, write=True, attempts=1, endpoint=endpoint,
    )

    # Check what the Hub now holds against what was meant to be published.
    after = _hub_call(lambda: api.model_info(repo, revision=info.oid, files_metadata=True),
                      "verifying the commit", repo=repo, revision=info.oid, endpoint=endpoint)
    bad = _differences(build.files, {s.rfilename: s for s in after.siblings or []})
    if bad:
        raise HubError(f"commit {info.oid[:12]} of {repo} does not match the local files: {', '.join(bad[:5])}",
                       hint="run the push again; it replaces the mismatching files")
    log.info("published %s at commit %s, remote hashes verified", repo, info.oid[:12])
    return PublishResult(repo, info.oid, f"{api.endpoint}/{repo}", "created" if remote.head is None else "updated")


class _Build:
    """A build's model folder as publishing sees it: its files' hashes and its identity."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.lock = json.loads((folder / "hubswap" / "lock.json").read_text(encoding="utf-8"))
        self.recipe_text = (folder / "hubswap" / "recipe.toml").read_text(encoding="utf-8")
        self.loaded = parse_recipe(self.recipe_text, folder / "hubswap" / "recipe.toml")
        self.identity = build_identity(self.lock, self.recipe_text)
        self.files = _manifest(folder)

    def commit_message(self) -> str:
        source = Path((self.lock.get("recipe") or {}).get("path") or "recipe.toml").name
        return f"hubswap {__version__}: publish '{self.loaded.recipe.name}' built from {source}"

    def commit_description(self) -> str:
        """Trailers that identify the build; hubswap/lock.json and recipe.toml hold the details."""
        return "\n".join([
            f"Built by hubswap {__version__} by layer swapping; see hubswap/recipe.toml and hubswap/lock.json.",
            "",
            f"hubswap-version: {__version__}",
            f"hubswap-recipe: {self.loaded.recipe.name}",
            f"hubswap-recipe-sha256: {self.identity['recipe']}",
            f"hubswap-inputs-sha256: {self.identity['inputs']}",
            f"hubswap-build-sha256: {json_sha256({n: f.sha256 for n, f in self.files.items()})}",
        ])


class _Remote:
    """What a repo holds at its head: files with their hashes, and the identity of its hubswap build."""

    def __init__(self, info, identity: dict | None):
        self.info = info
        self.head = info.sha if info is not None else None
        self.files = {s.rfilename: s for s in info.siblings or []} if info is not None else {}
        self.content = {n for n in self.files if n != ".gitattributes"}
        self.by_hubswap = "hubswap/lock.json" in self.files
        self.identity = identity

    @classmethod
    def read(cls, api, repo: str, endpoint: str | None) -> _Remote:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import RepositoryNotFoundError

        def current():
            try:
                return api.model_info(repo, files_metadata=True)
            except RepositoryNotFoundError:
                return None

        info = _hub_call(current, "reading the repo", repo=repo, endpoint=endpoint)
        if info is None or "hubswap/lock.json" not in {s.rfilename for s in info.siblings or []}:
            return cls(info, None)

        def text(name: str) -> str:
            path = _hub_call(lambda: hf_hub_download(repo, name, revision=info.sha, endpoint=endpoint,
                                                     token=api.token),
                             name, repo=repo, revision=info.sha, endpoint=endpoint)
            return Path(path).read_text(encoding="utf-8")

        names = {s.rfilename for s in info.siblings or []}
        recipe = text("hubswap/recipe.toml") if "hubswap/recipe.toml" in names else ""
        return cls(info, build_identity(json.loads(text("hubswap/lock.json")), recipe))


def _write_api(repo: str, endpoint: str | None, token: str | None):
    """An HfApi with a token that can write (from huggingface_hub's usual sources), or a HubError."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise HubError("no Hugging Face token found: publishing needs a token with write access",
                       hint="set HF_TOKEN to a write token (https://huggingface.co/settings/tokens) "
                       "or run `hf auth login`")
    api = _api(endpoint, token)
    who = _hub_call(lambda: api.whoami(), "checking the token", repo=repo, write=True, endpoint=endpoint)
    if ((who.get("auth") or {}).get("accessToken") or {}).get("role") == "read":
        raise HubError(f"your token is read-only: it cannot publish to {repo}",
                       hint="set HF_TOKEN to a token with write access (https://huggingface.co/settings/tokens)")
    return api


def _may_replace(build: _Build, remote: _Remote, repo: str, force: bool) -> str:
    """"same" when the repo already holds this very build, "replace" when the build may go there;
    raises PublishRefusedError when it may not (and ``force`` is not given)."""
    if not remote.by_hubswap:
        if not force:
            raise PublishRefusedError(
                f"{repo} already holds {len(remote.content)} file(s) not made by hubswap "
                f"(e.g. {sorted(remote.content)[0]}); refusing to overwrite it",
                hint="publish to another [publish].repo, or pass --force to replace its contents",
            )
        log.warning("--force: replacing the contents of %s, which hubswap did not make", repo)
        return "replace"
    theirs, mine = remote.identity, build.identity
    if theirs["recipe"] != mine["recipe"] or theirs["inputs"] != mine["inputs"]:
        if theirs["recipe"] != mine["recipe"]:
            what = "another recipe" + (f" ('{theirs['name']}')" if theirs["name"] else "")
        else:
            what = "other input models or files"
        if not force:
            raise PublishRefusedError(
                f"{repo} holds a hubswap build of {what}; refusing to replace it with '{mine['name']}'",
                hint="publish to another [publish].repo, or pass --force to replace it",
            )
        log.warning("--force: replacing %s's build of %s", repo, what)
        return "replace"
    kept = {n: s for n, s in remote.files.items() if n in build.files or _artifact(n)}
    return "replace" if _differences(build.files, kept) else "same"


def _artifact(name: str) -> bool:
    """A file that a hubswap build writes (an older build's leftovers of these are removed);
    anything else that the owner added to a hubswap repo by hand is kept."""
    return name.endswith(".safetensors") or name == "model.safetensors.index.json" or name.startswith("hubswap/")


def _check_gate(folder: Path, force: bool) -> None:
    """A build whose evaluation failed its gate is not published (unless forced)."""
    results = folder / "hubswap" / "eval_results.json"
    if not results.is_file():
        log.warning("%s was not evaluated: publishing it without a gate", folder)
        return
    gate = json.loads(results.read_text(encoding="utf-8")).get("gate") or {}
    if gate.get("passed") is False:
        reasons = "; ".join(gate.get("reasons") or []) or "see hubswap/eval_results.json"
        if not force:
            raise PublishRefusedError(f"this build failed its gate ({reasons}); refusing to publish it",
                                      hint="pass --force to publish it anyway")
        log.warning("--force: publishing a build that failed its gate (%s)", reasons)


def _differences(local: dict[str, _LocalFile], remote: dict) -> list[str]:
    """Local files whose remote copy is missing or differs (sha256 of LFS files, git blob id of
    others), and weight files or hubswap records on the remote side that the build does not have."""
    bad = [n for n in remote if n not in local and _artifact(n)]
    for name, f in local.items():
        s = remote.get(name)
        if s is None:
            bad.append(name)
        elif s.lfs is not None:
            if s.lfs.sha256 != f.sha256 or s.lfs.size != f.size:
                bad.append(name)
        elif s.blob_id != f.git_sha1 or (s.size is not None and s.size != f.size):
            bad.append(name)
    return sorted(bad)

