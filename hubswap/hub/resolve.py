"""A Hub model pinned to a commit: which files a build needs, their records, and preflight reads.

    resolve_model(role, source)   -> HubModelFiles: one model_info call; the commit and each needed
                                     file's sha256 and size (the LFS records for weights)
    HubModelFiles                 compat's ``ModelFiles`` for preflight: small files from the cache,
                                  safetensors headers by two ranged reads, no weight downloaded
    read_remote_config(source)    config.json only, for ``hubswap plan``
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

from hubswap import __version__
from hubswap.errors import HubError, ModelFilesError
from hubswap.files import atomic_write
from hubswap.hashing import file_sha256, git_blob_sha1
from hubswap.hub.download import download_model, download_verified, evict, fetch, header_cache
from hubswap.hub.errors import hub_call
from hubswap.recipe import ModelSource
from hubswap.records import FileEntry

log = logging.getLogger(__name__)


# -- which files a build needs -----------------------------------------------------------------


class _Listing:
    """Just enough of compat's ``ModelFiles`` for ``preflight.weight_files``: names and a reader."""

    def __init__(self, role: str, display: str, names: list[str], read_text: Callable[[str], str | None]):
        self.role, self.display, self._names, self.read_text = role, display, names, read_text

    def files(self) -> list[str]:
        return list(self._names)


def select_files(model) -> list[str]:
    """The files of a model (a compat ``ModelFiles``) that a build uses: side files (configs,
    tokenizer, chat template), the safetensors index and shards, the card and licence files. Pickled weights are never
    selected; a model with only pickled weights is refused (``preflight.weight_files``)."""
    from hubswap.licenses import card_files
    from hubswap.preflight import INDEX, SIDE_FILES, weight_files

    names = set(model.files())
    weights = weight_files(model)
    return [f for f in SIDE_FILES if f in names] + ([INDEX] if INDEX in names else []) + weights + card_files(names)


# -- resolving a Hub model to a commit ----------------------------------------------------------


class HubModelFiles:
    """One Hub model pinned to a commit SHA: the ``ModelFiles`` of hubswap.preflight for preflight.

    Small files are downloaded into the huggingface_hub cache (and checked against the lock);
    safetensors headers are read with two ranged GETs (8 bytes, then the header), so the checks
    run before any weight is downloaded. Files already in the cache are read from there, which is
    what lets a locked build run with HF_HUB_OFFLINE=1.
    """

    def __init__(self, role: str, repo: str, revision: str, commit: str, records: dict[str, FileEntry],
                 *, endpoint: str | None = None, token: str | bool | None = None):
        self.role = role
        self.repo = repo
        self.revision = revision
        self.commit = commit
        self.records = dict(records)
        self.endpoint = endpoint
        self.token = token
        self.display = f"{repo}@{revision}" + ("" if revision == commit else f" ({commit[:12]})")
        self.headers_seen: dict[str, dict] = {}
        self._folder: Path | None = None

    def files(self) -> list[str]:
        return sorted(self.records)

    def folder(self) -> Path:
        """The snapshot folder holding every needed file, downloaded (and checked) on first use."""
        if self._folder is None:
            self._folder = download_model(self)
        return self._folder

    def record(self, name: str) -> FileEntry:
        return self.records[name]

    def known_record(self, name: str) -> FileEntry:
        return self.records[name]

    def local_path(self, name: str) -> Path:
        """The file in the cache, downloading it (and checking its sha256) when needed."""
        return download_verified(self, name)

    def read_text(self, name: str) -> str | None:
        if name not in self.records:
            return None
        return self.local_path(name).read_text(encoding="utf-8")

    def safetensors_header(self, name: str) -> dict:
        if name not in self.headers_seen:
            self.headers_seen[name] = self._read_header(name)
        return dict(self.headers_seen[name])

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
        keep = header_cache() / f"{record.sha256}.bin" if record else None
        # The LFS record's size is the file's: the header must describe exactly that many bytes.
        size = record.size if record else None
        if keep is not None and keep.is_file():
            return parse_header(keep.read_bytes(), where=where, file_size=size)
        head = self._range(name, 0, 7)
        n = header_length(head, where=where)
        if size is not None and 8 + n > size:
            return parse_header(head, where=where, file_size=size)  # refuses it, reading no further
        head = head[:8] + self._range(name, 8, 8 + n - 1)
        header = parse_header(head, where=where, file_size=size)
        if keep is not None:
            with contextlib.suppress(OSError):
                atomic_write(keep, head)
        return header

    def read_range(self, name: str, start: int, length: int) -> bytes:
        """``length`` bytes of a file from ``start``: from the cached file, else one ranged GET whose
        bytes are kept by the file's sha256 (like headers), so a locked build reads them offline."""
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(self.repo, name, revision=self.commit)
        if isinstance(cached, str):
            with open(cached, "rb") as f:
                f.seek(start)
                return f.read(length)
        record = self.records.get(name)
        keep = header_cache() / f"{record.sha256}.{start}-{length}.bin" if record else None
        if keep is not None and keep.is_file():
            return keep.read_bytes()
        data = self._range(name, start, start + length - 1, what=f"bytes {start}-{start + length - 1} of {name}")
        if keep is not None and len(data) == length:
            with contextlib.suppress(OSError):
                atomic_write(keep, data)
        return data

    def _range(self, name: str, start: int, end: int, *, what: str | None = None) -> bytes:
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

        return hub_call(get, what or f"the header of {name}", repo=self.repo, revision=self.revision,
                        endpoint=self.endpoint)


def hub_api(endpoint: str | None, token: str | bool | None):
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
    info = hub_call(lambda: hub_api(endpoint, token).model_info(repo, revision=ref, files_metadata=True),
                     "model info", repo=repo, revision=ref, endpoint=endpoint)
    commit = info.sha
    siblings = {s.rfilename: s for s in info.siblings or []}
    model = HubModelFiles(role, repo, ref, commit, {}, endpoint=endpoint, token=token)
    log.info("%s: %s -> commit %s", role, source.display(), commit)

    def small(name: str) -> Path:
        path = fetch(model, name)
        model.records[name] = FileEntry(sha256=file_sha256(path), size=path.stat().st_size)
        return path

    listing = _Listing(role, source.display(), list(siblings),
                       lambda name: small(name).read_text(encoding="utf-8") if name in siblings else None)
    names = select_files(listing)
    for name in names:
        s = siblings[name]
        if s.lfs is not None:
            model.records[name] = FileEntry(sha256=s.lfs.sha256, size=s.lfs.size)
        elif name not in model.records:
            path = small(name)
            if s.blob_id and git_blob_sha1(path) != s.blob_id:
                evict(path)
                raise HubError(f"{role} model {source.display()}: {name} does not match the Hub's git hash",
                               hint="run again; if it persists, a proxy is altering downloads")
    return model


def read_remote_config(source: ModelSource, *, endpoint: str | None = None,
                       token: str | bool | None = None) -> dict:
    """config.json of a Hub model at its revision, for ``hubswap plan`` (one small download)."""
    from huggingface_hub import hf_hub_download

    assert source.repo is not None
    path = hub_call(
        lambda: hf_hub_download(source.repo, "config.json", revision=source.ref, endpoint=endpoint, token=token),
        "config.json", repo=source.repo, revision=source.ref, endpoint=endpoint,
    )
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as e:
        raise ModelFilesError(f"{source.display()}: config.json is not valid JSON ({e})") from None
