"""A small Hugging Face Hub on 127.0.0.1 for tests, spoken to by the real ``huggingface_hub`` client.

It keeps git-like repos in memory (commits, branches, tags, regular and LFS files) and serves the
parts of the Hub API that downloads and uploads use (see docs ENVIRONMENT.md):

    GET  /api/whoami-v2
    GET  /api/models/{repo}[/revision/{rev}]            model_info (``?blobs=true``: sizes, LFS sha256)
    GET  /api/models/{repo}/tree/{rev}[/{path}]         list_repo_tree
    HEAD /{repo}/resolve/{rev}/{path}                   X-Repo-Commit, ETag, Content-Length
    GET  /{repo}/resolve/{rev}/{path}                   the bytes; ``Range: bytes=a-b`` answers 206
    POST /api/repos/create                              409 (with ``url``) when it exists
    POST /api/validate-yaml                             400 with ``errors`` when ``yaml_errors`` is set
    POST /api/models/{repo}/preupload/{rev}             uploadMode, shouldIgnore, oid
    POST /{repo}.git/info/lfs/objects/batch             LFS batch API ("basic" transfer)
    PUT  /_lfs/{oid}  POST /_lfs/verify                 the upload target of the batch answer
    POST /api/models/{repo}/commit/{rev}                ndjson: header, file, lfsFile, deletedFile/Folder

Errors carry ``X-Error-Code`` (RepoNotFound, GatedRepo, RevisionNotFound, EntryNotFound) like the
Hub. Tokens are ``Authorization: Bearer`` strings registered with :meth:`HubServer.add_user`.
:meth:`HubServer.fault` injects failures: an HTTP status, a connection dropped mid-body, bytes
that do not match the file's sha256, or a commit that keeps other bytes than it was sent; :meth:`HubServer.before` runs another client's action (say,
a commit) just before a request is answered, and a commit whose ``parentCommit`` is no longer the
branch head is answered 412, as on the Hub. Every request is recorded in :attr:`HubServer.requests`.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".model", ".gguf", ".msgpack", ".h5")
REGULAR_MAX = 5 << 20  # larger files must go through LFS, as on the Hub


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class Entry:
    """One file of a commit: regular (``content``) or LFS (``lfs_sha256``, bytes in the LFS store)."""

    size: int
    git_oid: str
    content: bytes | None = None
    lfs_sha256: str | None = None

    @property
    def etag(self) -> str:
        return self.lfs_sha256 or self.git_oid


@dataclass
class Commit:
    sha: str
    parent: str | None
    title: str
    description: str
    files: dict[str, Entry]
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    gated: bool = False
    granted: set[str] = field(default_factory=set)
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit sha

    def resolve(self, rev: str) -> Commit | None:
        sha = self.refs.get(rev, rev)
        return self.commits.get(sha)


@dataclass
class Fault:
    method: str
    pattern: str  # fnmatch on the URL path
    kind: str  # "status" | "drop" | "corrupt" | "norange" | "before" | "alter"
    times: int | None  # None: forever
    status: int = 500
    action: Callable[[], object] | None = None  # "before": run first, then answer as usual
    path: str | None = None  # "alter": the file kept altered (None: the first added, in sorted order)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A client that hung up before the whole body was sent (a download given up, a Ctrl-C)
        is the test's business, not a traceback on the console; anything else is printed."""
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class HubServer:
    """Start with ``HubServer().start()``; ``url`` is the value for HF_ENDPOINT / ``endpoint=``."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.users: dict[str, tuple[str, str, tuple[str, ...]]] = {}  # token -> (user, role, orgs)
        self.faults: list[Fault] = []
        self.yaml_errors: list[str] = []  # what POST /api/validate-yaml answers 400 with, if any
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self._lock = threading.RLock()
        self._clock = 0
        self._salt = os.urandom(8).hex()  # commit SHAs differ between servers: caches never mix them up
        self._httpd: ThreadingHTTPServer | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> HubServer:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- state for tests ------------------------------------------------------------------

    def add_user(self, name: str, token: str, *, role: str = "write", orgs: tuple[str, ...] = ()) -> None:
        self.users[token] = (name, role, tuple(orgs))

    def create_repo(self, repo_id: str, *, private: bool = False, gated: bool = False) -> Repo:
        with self._lock:
            repo = Repo(repo_id, private=private, gated=gated)
            self.repos[repo_id] = repo
            self._commit(repo, "main", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                         (), "initial commit", "")
            return repo

    def upload_folder(self, repo_id: str, folder: str | Path, *, message: str = "upload", branch: str = "main",
                      private: bool = False, gated: bool = False) -> str:
        """Commit every file of ``folder`` (creating the repo); returns the commit SHA."""
        folder = Path(folder)
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        return self.commit_files(repo_id, files, message=message, branch=branch, private=private, gated=gated)

    def commit_files(self, repo_id: str, files: dict[str, bytes], *, delete: tuple[str, ...] = (),
                     message: str = "update", branch: str = "main", private: bool = False,
                     gated: bool = False) -> str:
        with self._lock:
            repo = self.repos.get(repo_id) or self.create_repo(repo_id, private=private, gated=gated)
            return self._commit(repo, branch, files, delete, message, "")

    def tag(self, repo_id: str, name: str, rev: str = "main") -> str:
        repo = self.repos[repo_id]
        commit = repo.resolve(rev)
        assert commit is not None
        repo.refs[name] = commit.sha
        return commit.sha

    def head(self, repo_id: str, rev: str = "main") -> Commit:
        commit = self.repos[repo_id].resolve(rev)
        assert commit is not None
        return commit

    def read(self, repo_id: str, path: str, rev: str = "main") -> bytes:
        return self._bytes(self.head(repo_id, rev).files[path])

    def fault(self, method: str, pattern: str, kind: str = "status", *, times: int | None = 1,
              status: int = 500, path: str | None = None) -> Fault:
        """Make matching requests fail: ``status`` (answer ``status``), ``drop`` (close the
        connection halfway through the body), ``corrupt`` (serve bytes that differ from the file's
        sha256), ``norange`` (ignore the Range header, like some proxies) or, on a commit, ``alter``
        (accept it but keep the added file ``path``, by default the first in sorted order, with its
        last byte flipped: a Hub that stores other bytes than it was sent), ``times`` times
        (``None``: until :meth:`clear_faults`)."""
        f = Fault(method.upper(), pattern, kind, times, status, path=path)
        with self._lock:
            self.faults.append(f)
        return f

    def before(self, method: str, pattern: str, action: Callable[[], object], *, times: int | None = 1) -> Fault:
        """Run ``action`` (e.g. another client's commit) when a matching request arrives, then
        answer that request as usual: a race between a client's read and its write."""
        f = Fault(method.upper(), pattern, "before", times, action=action)
        with self._lock:
            self.faults.append(f)
        return f

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def count(self, method: str, pattern: str) -> int:
        return sum(1 for m, p, _ in self.requests if m == method and fnmatch.fnmatch(p, pattern))

    # -- internals ------------------------------------------------------------------------

    def _entry(self, path: str, data: bytes, lfs: bool | None = None) -> Entry:
        if lfs is None:
            lfs = _wants_lfs(path, data[:512], len(data))
        if lfs and data:
            sha = hashlib.sha256(data).hexdigest()
            self.lfs[sha] = data
            return Entry(len(data), git_blob_sha1(lfs_pointer(sha, len(data))), lfs_sha256=sha)
        return Entry(len(data), git_blob_sha1(data), content=data)

    def _bytes(self, e: Entry) -> bytes:
        return e.content if e.lfs_sha256 is None else self.lfs[e.lfs_sha256]

    def _commit(self, repo: Repo, branch: str, files: dict[str, bytes | Entry], delete, title: str,
                description: str) -> str:
        parent = repo.refs.get(branch)
        tree = dict(repo.commits[parent].files) if parent else {}
        for path in delete:
            tree.pop(path, None)
            for p in [p for p in tree if p.startswith(path.rstrip("/") + "/")]:
                del tree[p]
        for path, data in files.items():
            tree[path] = data if isinstance(data, Entry) else self._entry(path, data)
        self._clock += 1
        digest = hashlib.sha1(json.dumps(
            [self._salt, parent, title, description, self._clock, sorted((p, e.git_oid) for p, e in tree.items())]
        ).encode()).hexdigest()
        date = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        repo.commits[digest] = Commit(digest, parent, title, description, tree, date)
        repo.refs[branch] = digest
        return digest

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.method == method and fnmatch.fnmatch(path, f.pattern) and (f.times is None or f.times > 0):
                    if f.times is not None:
                        f.times -= 1
                    return f
        return None


def _wants_lfs(path: str, sample: bytes, size: int) -> bool:
    return path.endswith(LFS_SUFFIXES) or b"\0" in sample or size > REGULAR_MAX


class _HubHTTPError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


_REPO = r"(?P<repo>[^/]+/[^/]+)"
# Datasets live beside models under the key ``datasets/<id>`` (``HubServer.commit_files(
# "datasets/juletxara/mgsm", ...)``) and are served under /api/datasets/... and /datasets/....
_KIND = r"(?P<kind>models|datasets)"
_ROUTES = [
    ("GET", re.compile(r"^/api/whoami-v2$"), "whoami"),
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("GET", re.compile(rf"^/api/{_KIND}/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"), "tree"),
    ("POST", re.compile(rf"^/api/{_KIND}/{_REPO}/paths-info/(?P<rev>[^/]+)$"), "paths_info"),
    ("GET", re.compile(rf"^/api/{_KIND}/{_REPO}(?:/revision/(?P<rev>[^/]+))?$"), "model_info"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ("POST", re.compile(rf"^/{_REPO}\.git/info/lfs/objects/batch$"), "lfs_batch"),
    ("PUT", re.compile(r"^/_lfs/(?P<oid>[0-9a-f]{64})$"), "lfs_put"),
    ("POST", re.compile(r"^/_lfs/verify$"), "lfs_verify"),
    ("GET", re.compile(rf"^/(?:(?P<kind>datasets)/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
    ("HEAD", re.compile(rf"^/(?:(?P<kind>datasets)/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
]


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet: tests read `hub.requests` instead
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # -- plumbing -------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        path = split.path
        self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        self.hub.requests.append((method, unquote(path), self.headers.get("Range")))
        fault = self.hub._take_fault(method, unquote(path))
        if fault is not None and fault.kind == "status":
            return self._send_json({"error": f"injected HTTP {fault.status}"}, fault.status)
        if fault is not None and fault.kind == "before":
            fault.action()
        self.fault = fault
        for m, rx, name in _ROUTES:
            if m == method and (match := rx.match(path)):
                params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                if params.pop("kind", "models") == "datasets":
                    params["repo"] = "datasets/" + params["repo"]
                try:
                    return getattr(self, f"_{name}")(**params)
                except _HubHTTPError as e:
                    headers = dict(e.headers)
                    if e.code:
                        headers["X-Error-Code"] = e.code
                    headers["X-Error-Message"] = e.message
                    return self._send_json({"error": e.message}, e.status, headers)
        self._send_json({"error": f"no route for {method} {path}"}, 404)

    def _send(self, status: int, body: bytes, headers: dict | None = None, content_type: str = "application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, data, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _user(self) -> tuple[str, str, tuple[str, ...]] | None:
        auth = self.headers.get("Authorization") or ""
        if not auth.lower().startswith("bearer "):
            return None
        user = self.hub.users.get(auth[7:].strip())
        if user is None:
            raise _HubHTTPError(401, "Invalid credentials in Authorization header")
        return user

    def _repo(self, repo_id: str, *, write: bool = False, files: bool = False) -> Repo:
        """The repo if this request may see it (and write to it, or read its files)."""
        user = self._user()
        repo = self.hub.repos.get(repo_id)
        owns = user is not None and repo_id.split("/")[0] in (user[0], *user[2])
        if repo is None or (repo.private and not owns):
            raise _HubHTTPError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        if write:
            if user is None:
                raise _HubHTTPError(401, "You must be authenticated to write to this repo")
            if user[1] != "write" or not owns:
                raise _HubHTTPError(403, f"You don't have the rights to write to {repo_id}")
        if files and repo.gated and not owns and (user is None or user[0] not in repo.granted):
            raise _HubHTTPError(
                403 if user else 401,
                f"Access to model {repo_id} is restricted and you are not in the authorized list. "
                f"Visit {self.hub.url}/{repo_id} to ask for access.",
                "GatedRepo",
            )
        return repo

    def _commit_of(self, repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise _HubHTTPError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    # -- read API -------------------------------------------------------------------------

    def _whoami(self) -> None:
        user = self._user()
        if user is None:
            raise _HubHTTPError(401, "Invalid credentials in Authorization header")
        name, role, orgs = user
        self._send_json({
            "type": "user", "name": name, "fullname": name,
            "orgs": [{"type": "org", "name": o} for o in orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": role}},
        })

    def _model_info(self, repo: str, rev: str = "main") -> None:
        r = self._repo(repo)
        commit = self._commit_of(r, rev)
        blobs = self.query.get("blobs", "").lower() in ("1", "true")
        siblings = []
        for path, e in sorted(commit.files.items()):
            s: dict = {"rfilename": path}
            if blobs:
                s.update(size=e.size, blobId=e.git_oid)
                if e.lfs_sha256:
                    s["lfs"] = {"size": e.size, "sha256": e.lfs_sha256,
                                "pointerSize": len(lfs_pointer(e.lfs_sha256, e.size))}
            siblings.append(s)
        repo = repo.removeprefix("datasets/")
        self._send_json({
            "_id": hashlib.sha1(repo.encode()).hexdigest()[:24], "id": repo, "modelId": repo,
            "author": repo.split("/")[0], "sha": commit.sha, "lastModified": commit.date,
            "private": r.private, "gated": "manual" if r.gated else False, "disabled": False,
            "downloads": 0, "likes": 0, "tags": [], "library_name": "transformers", "siblings": siblings,
            "createdAt": commit.date,
        })

    def _tree(self, repo: str, rev: str, path: str = "") -> None:
        r = self._repo(repo)
        commit = self._commit_of(r, rev)
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        out, dirs = [], set()
        for p, e in sorted(commit.files.items()):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):]
            if "/" in rest:
                parts = rest.split("/")
                for i in range(1, len(parts) if recursive else 2):
                    dirs.add(prefix + "/".join(parts[:i]))
                if not recursive:
                    continue
            item = {"type": "file", "oid": e.git_oid, "size": e.size, "path": p}
            if e.lfs_sha256:
                item["lfs"] = {"oid": e.lfs_sha256, "size": e.size,
                               "pointerSize": len(lfs_pointer(e.lfs_sha256, e.size))}
            out.append(item)
        if prefix and not out and not dirs:
            raise _HubHTTPError(404, f"{path} does not exist on {rev}", "EntryNotFound")
        folders = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                   for d in sorted(dirs)]
        self._send_json(folders + out)

    def _paths_info(self, repo: str, rev: str) -> None:
        """``HfApi.get_paths_info`` (what ``HfFileSystem`` and so ``datasets`` use): the entries of
        the given paths, folders included, unknown paths left out."""
        commit = self._commit_of(self._repo(repo), rev)
        form = parse_qs(self.body.decode()) if self.body and not self.body.startswith(b"{") else {}
        paths = form.get("paths") or (json.loads(self.body).get("paths", []) if self.body.startswith(b"{") else [])
        out = []
        for p in paths:
            p = p.strip("/")
            if (e := commit.files.get(p)) is not None:
                item = {"type": "file", "oid": e.git_oid, "size": e.size, "path": p}
                if e.lfs_sha256:
                    item["lfs"] = {"oid": e.lfs_sha256, "size": e.size,
                                   "pointerSize": len(lfs_pointer(e.lfs_sha256, e.size))}
                out.append(item)
            elif any(f.startswith(p + "/") for f in commit.files):
                out.append({"type": "directory", "oid": hashlib.sha1(p.encode()).hexdigest(), "size": 0,
                            "path": p})
        self._send_json(out)

    def _resolve(self, repo: str, rev: str, path: str) -> None:
        r = self._repo(repo, files=True)
        commit = self._commit_of(r, rev)
        e = commit.files.get(path)
        base = {"X-Repo-Commit": commit.sha}
        if e is None:
            raise _HubHTTPError(404, "Entry not found", "EntryNotFound", base)
        data = self.hub._bytes(e)
        headers = {**base, "ETag": f'"{e.etag}"', "Accept-Ranges": "bytes"}
        if e.lfs_sha256:
            headers["X-Linked-Size"] = str(e.size)
        if self.fault is not None and self.fault.kind == "corrupt" and data:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        status, body = 200, data
        rng = None if self.fault is not None and self.fault.kind == "norange" else self.headers.get("Range")
        if rng and (m := re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())):
            start = int(m.group(1)) if m.group(1) else max(len(data) - int(m.group(2)), 0)
            end = int(m.group(2)) if m.group(1) and m.group(2) else len(data) - 1
            end = min(end, len(data) - 1)
            if start >= len(data):
                return self._send(416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"})
            status, body = 206, data[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        if self.command == "GET" and self.fault is not None and self.fault.kind == "drop" and len(body) > 1:
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(status, body, headers, "application/octet-stream")

    # -- write API ------------------------------------------------------------------------

    def _create_repo(self) -> None:
        payload = json.loads(self.body or b"{}")
        name, org = payload.get("name"), payload.get("organization")
        user = self._user()
        if user is None:
            raise _HubHTTPError(401, "You must be authenticated to create a repo")
        repo_id = f"{org or user[0]}/{name}"
        if user[1] != "write" or (org or user[0]) not in (user[0], *user[2]):
            raise _HubHTTPError(403, f"You don't have the rights to create a model under the namespace {org}")
        url = f"{self.hub.url}/{repo_id}"
        if repo_id in self.hub.repos:
            return self._send_json({"error": "You already created this model repo", "url": url}, 409)
        private = payload.get("private", payload.get("visibility") == "private")
        self.hub.create_repo(repo_id, private=bool(private))
        self._send_json({"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self) -> None:
        if self.hub.yaml_errors:  # as the Hub answers metadata it rejects
            return self._send_json({"errors": [{"message": m} for m in self.hub.yaml_errors], "warnings": []}, 400)
        self._send_json({"errors": [], "warnings": []})

    def _preupload(self, repo: str, rev: str) -> None:
        r = self._repo(repo, write=True)
        commit = r.resolve(rev)
        files = []
        for f in json.loads(self.body)["files"]:
            sample = base64.b64decode(f.get("sample", ""))
            lfs = _wants_lfs(f["path"], sample, int(f.get("size", 0)))
            existing = commit.files.get(f["path"]) if commit else None
            oid = None
            if existing is not None:
                oid = existing.lfs_sha256 or existing.git_oid
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                          "shouldIgnore": False, "oid": oid})
        self._send_json({"files": files, "commitOid": commit.sha if commit else None})

    def _lfs_batch(self, repo: str) -> None:
        self._repo(repo, write=True)
        payload = json.loads(self.body)
        objects = []
        for o in payload.get("objects", []):
            obj = {"oid": o["oid"], "size": o["size"], "authenticated": True}
            if o["oid"] not in self.hub.lfs:
                obj["actions"] = {
                    "upload": {"href": f"{self.hub.url}/_lfs/{o['oid']}", "header": {}},
                    "verify": {"href": f"{self.hub.url}/_lfs/verify", "header": {}},
                }
            objects.append(obj)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(), None,
                   "application/vnd.git-lfs+json")

    def _lfs_put(self, oid: str) -> None:
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise _HubHTTPError(400, "uploaded bytes do not match the announced sha256")
        self.hub.lfs[oid] = self.body
        self._send(200, b"", {"ETag": f'"{oid}"'})

    def _lfs_verify(self) -> None:
        payload = json.loads(self.body)
        if payload.get("oid") not in self.hub.lfs:
            raise _HubHTTPError(404, "object not found")
        self._send_json({})

    def _commit(self, repo: str, rev: str) -> None:
        r = self._repo(repo, write=True)
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        header = next((x["value"] for x in lines if x["key"] == "header"), {})
        with self.hub._lock:
            head = r.refs.get(rev)
            parent = header.get("parentCommit")
            if parent is not None and parent != head:
                raise _HubHTTPError(412, f"A commit has happened since {parent}. Please refresh and try again.")
            adds: dict[str, Entry] = {}
            deletes: list[str] = []
            for item in lines:
                key, v = item["key"], item["value"]
                if key == "file":
                    adds[v["path"]] = self.hub._entry(v["path"], base64.b64decode(v["content"]), lfs=False)
                elif key == "lfsFile":
                    data = self.hub.lfs.get(v["oid"])
                    if data is None:
                        raise _HubHTTPError(400, f"LFS object {v['oid']} of {v['path']} was never uploaded")
                    adds[v["path"]] = self.hub._entry(v["path"], data, lfs=True)
                elif key in ("deletedFile", "deletedFolder"):
                    deletes.append(v["path"])
            if self.fault is not None and self.fault.kind == "alter" and adds:
                path = self.fault.path or min(adds)
                e = adds[path]
                data = bytearray(self.hub._bytes(e))
                data[-1] ^= 0x01
                adds[path] = self.hub._entry(path, bytes(data), lfs=e.lfs_sha256 is not None)
            sha = self.hub._commit(r, rev, adds, deletes, header.get("summary", ""), header.get("description", ""))
        self._send_json({"success": True, "commitOid": sha, "commitUrl": f"{self.hub.url}/{repo}/commit/{sha}",
                         "pullRequestUrl": None})


# -- the users and family most Hub tests start from -------------------------------------------

WRITE, READ = "hf_test_alice_write_token", "hf_test_alice_read_token"


def seed(server: HubServer, family: dict[str, Path]) -> HubServer:
    """The users every Hub test knows, and a tiny family as org/base, org/task, org/language."""
    server.add_user("alice", WRITE, role="write", orgs=("org",))
    server.add_user("alice", READ, role="read", orgs=("org",))
    server.add_user("bob", "hf_test_bob_token", role="write")
    for role, path in family.items():
        server.upload_folder(f"org/{role}", path, message=f"tiny {role}")
    return server
