"""huggingface_hub's exceptions as one line and a hint: a table from exception type to message.

``hub_call`` runs one huggingface_hub call, retries transient failures (5xx, 429, timeouts, dropped
connections) and turns what is left into a ``HubswapError`` through ``_TABLE``: the first row
whose exception type matches and whose formatter answers wins, so subclasses come before their
parents (a ``GatedRepoError`` is a ``RepositoryNotFoundError``). Anything no row answers is a bug
and keeps its traceback. Messages never carry a token (``scrub``).

A Hub that cannot answer at all fails fast: before its first call to an endpoint, ``hub_call``
checks that the endpoint's host name resolves and that it accepts a connection
(:func:`check_reachable`). A name that does not resolve or a refused connection will not change
in the next seconds, and huggingface_hub itself would retry each request five times (23 s) before
the retries here: they are one line at once, never retried. A probe that only times out decides
nothing (the call then runs, with its retries); behind a proxy (``HTTPS_PROXY``) there is no probe.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TypeVar

from hubswap.errors import HubError, HubswapError, ModelFilesError, PublishRefusedError

log = logging.getLogger(__name__)
T = TypeVar("T")

ATTEMPTS = 3  # tries of one Hub call on a transient failure (5xx, 429, dropped connection)
TRANSIENT_STATUS = (429, 500, 502, 503, 504)
_RETRY_HINT = "finished files stay in the cache and are not downloaded twice"
WRITE_TOKEN_HINT = ("set HF_TOKEN to a write token (https://huggingface.co/settings/tokens) "
                     "or run `hf auth login`")


@dataclass(frozen=True)
class Call:
    """What was being done when a Hub call failed: the context every message names."""

    what: str
    repo: str | None
    revision: str | None
    write: bool
    endpoint: str


# -- one formatter per kind of failure: (exception, call) -> error, or None to let a later row answer


def _gated(e: BaseException, c: Call) -> HubswapError:
    from huggingface_hub import get_token

    who = "your token has not been granted access to it" if get_token() else "no Hugging Face token is set"
    return HubError(f"{c.repo} is a gated repo and {who}",
                    hint=f"accept its licence at {c.endpoint}/{c.repo} (Llama repos are gated), then set "
                    "HF_TOKEN to a token of that account (or run `hf auth login`)")


def _revision(e: BaseException, c: Call) -> HubswapError:
    if c.revision and len(c.revision) == 40:
        return HubError(f"commit {c.revision} no longer exists in {c.repo}",
                        hint="it was probably removed by a force-push; if a lock file pinned it, "
                        "refresh the lock with `hubswap lock RECIPE`")
    return HubError(f"revision {c.revision!r} not found in {c.repo}",
                    hint=f"use a branch, tag or full commit SHA that exists (see {c.endpoint}/{c.repo}/tree/main)")


def _no_file(e: BaseException, c: Call) -> HubswapError:
    return ModelFilesError(f"{c.repo}@{c.revision}: {c.what}: no such file in the repo")


def _no_repo(e: BaseException, c: Call) -> HubswapError:
    return HubError(f"repo {c.repo} not found on {c.endpoint} (or it is private and your token cannot see it)",
                    hint="check the repo id; for a private repo set HF_TOKEN (or run `hf auth login`) "
                    "with a token that can read it")


def _no_token(e: BaseException, c: Call) -> HubswapError:
    return HubError("no Hugging Face token found: publishing needs a token with write access",
                    hint=WRITE_TOKEN_HINT)


def _offline(e: BaseException, c: Call) -> HubswapError | None:
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    offline = isinstance(e, OfflineModeIsEnabled) or isinstance(e.__cause__, OfflineModeIsEnabled)
    if not (offline or (isinstance(e, LocalEntryNotFoundError) and constants.is_offline_mode())):
        return None
    if c.write:  # publishing: no cache can stand in for the Hub
        return HubError(f"offline mode is on (HF_HUB_OFFLINE=1): publishing to {c.repo} needs the Hub "
                        f"({c.what})", hint="unset HF_HUB_OFFLINE to publish")
    at = f"@{c.revision}" if c.revision else ""
    return HubError(f"offline mode is on (HF_HUB_OFFLINE=1): cannot fetch {c.what} of {c.repo}{at}, "
                    "which is not in the local cache",
                    hint="unset HF_HUB_OFFLINE; a recipe with a lock file builds offline once one online "
                    "build has cached its files")


def _http(e, c: Call) -> HubswapError | None:
    if e.response is None:
        return None
    status = e.response.status_code
    if status == 401:
        return HubError("the Hugging Face token was rejected (invalid or expired)",
                        hint="set HF_TOKEN to a valid token or run `hf auth login`")
    if status == 403 and c.write:
        ns = (c.repo or "").split("/")[0]
        return HubError(f"your token cannot write to {c.repo} (it is read-only or has no access to '{ns}')",
                        hint=f"use a token with write access to '{ns}': set HF_TOKEN or run `hf auth login`")
    if status == 412 and c.write:
        return PublishRefusedError(f"{c.repo} changed while publishing (someone else pushed to it)",
                                   hint="run the push again: it re-checks what the repo holds")
    if status in TRANSIENT_STATUS:
        return HubError(f"{c.endpoint} answered HTTP {status} to {c.what} of {c.repo}, {ATTEMPTS} attempts in a row",
                        hint=f"the Hub may be having trouble (https://status.huggingface.co): run again later; "
                        f"{_RETRY_HINT}")
    return HubError(f"{c.what} of {c.repo} failed: HTTP {status} "
                    f"{e.response.headers.get('X-Error-Message') or ''}".rstrip())


def _unreachable(e: BaseException, c: Call) -> HubswapError:
    cause = e.__cause__ or e
    tries = "" if isinstance(cause, _connect_errors()) else f" after {ATTEMPTS} attempts"  # not retried
    return HubError(f"cannot reach {c.endpoint} for {c.what} of {c.repo}{tries} "
                    f"({type(cause).__name__}: {first_line(cause)})",
                    hint=f"check the connection, proxy (HTTPS_PROXY) and HF_ENDPOINT, then run again: {_RETRY_HINT}")


@cache
def _table() -> tuple[tuple[tuple[type, ...], Callable[[BaseException, Call], HubswapError | None]], ...]:
    """(exception types, formatter), most specific first (built on first use: huggingface_hub and
    its HTTP library load only when the Hub is used)."""
    from huggingface_hub import errors as hf

    return (
        ((hf.GatedRepoError,), _gated),
        ((hf.RevisionNotFoundError,), _revision),
        ((hf.RemoteEntryNotFoundError,), _no_file),
        ((hf.RepositoryNotFoundError,), _no_repo),
        ((hf.LocalTokenNotFoundError,), _no_token),
        ((Exception,), _offline),  # offline mode shows as several types, or as the cause of one
        ((hf.HfHubHTTPError,), _http),
        ((*_transport_errors(), hf.LocalEntryNotFoundError, ConnectionError, TimeoutError), _unreachable),
    )


def map_error(e: BaseException, call: Call) -> HubswapError | None:
    """The user-facing error for an exception of huggingface_hub, or None if it is not one."""
    for types, fmt in _table():
        if isinstance(e, types) and (mapped := fmt(e, call)) is not None:
            return mapped
    return None


PROBE_TIMEOUT = 5.0  # seconds the reachability probe waits for a connection
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
_reachable: set[str] = set()  # endpoints that accepted a connection in this process


def _unreachable_hint(endpoint: str) -> str:
    return f"check the connection, the proxy (HTTPS_PROXY) and HF_ENDPOINT ({endpoint})"


def check_reachable(endpoint: str) -> None:
    """Refuse at once an endpoint whose host name does not resolve or that refuses connections
    (once per endpoint and process; nothing when offline mode is on or a proxy is set)."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if endpoint in _reachable or constants.is_offline_mode() or any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return
    url = urlsplit(endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        raise HubError(f"HF_ENDPOINT {endpoint!r} is not a URL", hint="set HF_ENDPOINT to e.g. https://huggingface.co")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise HubError(f"cannot reach {endpoint}: the name {host} does not resolve ({e.strerror})",
                       hint=_unreachable_hint(endpoint)) from None
    refused: OSError | None = None
    for family, kind, proto, _, address in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(PROBE_TIMEOUT)
                sock.connect(address)
            _reachable.add(endpoint)
            return
        except OSError as e:  # refused, unreachable, or a timeout (which decides nothing)
            if isinstance(e, TimeoutError):
                return
            refused = e
    assert refused is not None
    raise HubError(f"cannot reach {endpoint}: {os.strerror(refused.errno).lower() if refused.errno else refused} "
                   f"({host} port {port})", hint=_unreachable_hint(endpoint))


def transient(e: BaseException) -> bool:
    """A failure worth trying again: 5xx, 429, a timeout or a dropped connection (never offline
    mode, nor a connection that could not be made: a name that does not resolve, a refused port)."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    if isinstance(e, OfflineModeIsEnabled) or isinstance(e.__cause__, OfflineModeIsEnabled):
        return False
    if isinstance(e, HfHubHTTPError) and e.response is not None:
        return e.response.status_code in TRANSIENT_STATUS
    if isinstance(e, LocalEntryNotFoundError):  # hf_hub_download's wrapper of a connection failure
        return e.__cause__ is not None and transient(e.__cause__)
    return isinstance(e, _transport_errors()) and not isinstance(e, _connect_errors())


@cache
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


@cache
def _connect_errors() -> tuple[type[BaseException], ...]:
    """httpx's "the connection could not be made" (refused, no such host), of either version."""
    found = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).ConnectError)
        except ImportError:
            continue
    return tuple(found)


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return scrub(text[0][:200]) if text else ""


def scrub(text: str) -> str:
    """Remove the token from anything shown to a user."""
    from huggingface_hub import get_token

    tok = get_token()
    return text.replace(tok, "***") if tok else text


def hub_call(fn: Callable[[], T], what: str, *, repo: str | None, revision: str | None = None,
             write: bool = False, attempts: int = ATTEMPTS, endpoint: str | None = None) -> T:
    """Run one huggingface_hub call, retrying transient failures, mapping errors to one line; an
    endpoint that cannot be reached at all is refused before the call (:func:`check_reachable`)."""
    from huggingface_hub import constants

    check_reachable((endpoint or constants.ENDPOINT).rstrip("/"))
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except HubswapError:
            raise
        except Exception as e:
            if transient(e) and attempt < attempts:
                wait = 2 ** (attempt - 1)
                log.warning("%s of %s failed (%s); retrying in %ds", what, repo, first_line(e), wait)
                time.sleep(wait)
                continue
            mapped = map_error(e, Call(what, repo, revision, write, endpoint or constants.ENDPOINT))
            if mapped is None:
                raise
            raise mapped from None
    raise AssertionError("unreachable")
