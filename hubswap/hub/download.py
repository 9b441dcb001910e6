"""Downloads at a pinned commit, each file checked against its recorded sha256.

    download_model(model)   -> the snapshot folder holding every file the build uses
    download_verified(m, f) -> one file; a corrupt copy is evicted and fetched once more

Everything lands in the usual huggingface_hub cache, so a second build (or ``HF_HUB_OFFLINE=1``)
finds it there.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Protocol

from hubswap.durable import check_free_space, disk_full_is_an_error
from hubswap.errors import HubError, ModelFilesError
from hubswap.files import human_size
from hubswap.hashing import cache_root, file_sha256
from hubswap.hub.errors import hub_call
from hubswap.records import FileEntry

log = logging.getLogger(__name__)


class HubModelFiles(Protocol):
    """What a download needs of a model pinned to a commit (``resolve.HubModelFiles`` is one; a
    protocol here keeps this module below ``resolve``, which calls it)."""

    role: str
    repo: str
    commit: str
    endpoint: str | None
    token: str | bool | None
    display: str
    records: dict[str, FileEntry]
    headers_seen: dict[str, dict]  # the safetensors headers preflight read, by file name

    def files(self) -> list[str]: ...


def header_cache() -> Path:
    """Safetensors headers read over the network, kept by the file's sha256 (content-addressed)."""
    return cache_root() / "safetensors-headers"


def hub_cache() -> Path:
    """huggingface_hub's cache folder (``HF_HUB_CACHE``), where downloads land."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _check_cache_space(model: HubModelFiles, names: list[str]) -> None:
    """Refuse, before downloading, files that the Hub cache's filesystem has no room for (their
    sizes are the lock's or the LFS records'; files already in the cache count for nothing)."""
    from huggingface_hub import try_to_load_from_cache

    missing = [n for n in names if not isinstance(try_to_load_from_cache(model.repo, n, revision=model.commit), str)]
    need = sum(model.records[n].size for n in missing if n in model.records)
    if need:
        check_free_space(hub_cache(), need, f"downloading {len(missing)} file(s) of {model.display}")


def fetch(model: HubModelFiles, name: str, *, force: bool = False) -> Path:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    if not force and isinstance(cached := try_to_load_from_cache(model.repo, name, revision=model.commit), str):
        return Path(cached)  # at a commit, a cached file is that file: no request (nor network) needed

    path = hub_call(
        lambda: hf_hub_download(model.repo, name, revision=model.commit, endpoint=model.endpoint,
                                token=model.token, force_download=force),
        name, repo=model.repo, revision=model.commit, endpoint=model.endpoint,
    )
    return Path(path)


def download_verified(model: HubModelFiles, name: str) -> Path:
    """Download one file at the pinned commit and check it against its recorded sha256.

    A corrupt copy is removed from the cache and fetched once more before giving up.
    """
    record = model.records.get(name)
    if record is None:
        raise ModelFilesError(f"{model.role} model {model.display}: {name} is not among the locked files")
    for attempt in (1, 2):
        path = fetch(model, name, force=attempt > 1)
        digest = file_sha256(path, fresh=attempt > 1)
        if digest == record.sha256 and path.stat().st_size == record.size:
            return path
        evict(path)
        log.warning("%s: %s has sha256 %s, expected %s%s", model.role, name, digest[:12], record.sha256[:12],
                    "; downloading it again" if attempt == 1 else "")
    raise HubError(
        f"{model.role} model {model.display}: the downloaded {name} has sha256 {digest[:16]}..., "
        f"but the Hub's record is {record.sha256[:16]}...",
        hint="the corrupt copy was removed from the cache; run again, and if it persists a proxy "
        "or mirror (HF_ENDPOINT) is serving wrong bytes",
    )


def download_model(model: HubModelFiles) -> Path:
    """Download the files a build uses (``model.records``: safetensors shards, configs, tokenizer,
    chat template) into the huggingface_hub cache; return the snapshot folder holding them.

    Every file is checked against its sha256 (the Hub's LFS sha256 for weights). A dropped
    connection resumes from the bytes already received (huggingface_hub sends a Range request);
    files completed by an earlier, interrupted run are taken from the cache.

    The merge copies byte ranges found in the headers that preflight read remotely, so each
    downloaded shard's header must be the one preflight saw.
    """
    from hubswap.safetensors_format import read_header_file

    names = model.files()
    total = sum(r.size for r in model.records.values())
    log.info("%s: fetching %d files (%s) of %s", model.role, len(names), human_size(total), model.display)
    _check_cache_space(model, names)
    folder = None
    for name in sorted(names, key=lambda n: (n.endswith(".safetensors"), n)):  # small files first
        with disk_full_is_an_error(hub_cache(), f"{name} of {model.display}"):
            path = download_verified(model, name)
        folder = path.parents[len(Path(name).parts) - 1]
        seen = model.headers_seen.get(name)
        if seen is not None and read_header_file(path) != seen:
            with contextlib.suppress(OSError):
                (header_cache() / f"{model.records[name].sha256}.bin").unlink()
            raise HubError(
                f"{model.role} model {model.display}: the header of {name} read before the download "
                "differs from the downloaded file's",
                hint="run again; if it persists, the server or a proxy answers ranged requests wrongly",
            )
    assert folder is not None
    return folder


def evict(path: Path) -> None:
    """Remove a cached file: the snapshot link and the blob it points to."""
    with contextlib.suppress(OSError):
        blob = path.resolve()
        path.unlink()
        if blob != path:
            blob.unlink()
