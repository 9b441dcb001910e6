"""The server the evaluation workers are forked from (``worker.py``), one per hubswap process.

A multiprocessing *forkserver*: a clean interpreter started once per parent process that imports
the engine's libraries once (``preload.py``), so each worker starts without paying the 15-30 s a
first vLLM engine costs in a fresh process on a small CPU machine. The server never runs a model
and never touches CUDA, so each worker initialises the device afresh. On a machine without CUDA
the vLLM engine runs inside the worker (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set before the
server starts unless already set). As with any multiprocessing start method but ``fork``, a
script that calls hubswap's evaluation at import time needs ``if __name__ == "__main__":``.

- **Ctrl-C** is the parent's alone: the server starts with SIGINT ignored (and so every worker
  forked from it), and the parent stops the server at exit (``_stop_server``), even while it is
  still importing (it would otherwise finish its preload, ~20 s, as an orphan).
- **Output**: without ``-v`` the server's stdout and stderr, and so its workers' (vLLM's and
  torch's messages, a worker's traceback), go to a log file in ``$TMPDIR``, removed at exit unless
  a worker failed (``engine_log_hint`` names it and keeps it); with ``-v``, to the console.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
from pathlib import Path

log = logging.getLogger(__name__)

_started_with: str | None = None  # the backend whose libraries the server preloaded
_engine_log: Path | None = None  # where the server and the workers write their stdout and stderr
_keep_engine_log = False  # a worker failed: its traceback and the engine's messages are in the log


def server_context(backend: str):
    """The forkserver context, its server started (once per process) with ``backend``'s libraries
    preloaded (``preload.py``)."""
    global _started_with
    ctx = multiprocessing.get_context("forkserver")
    if _started_with is None:
        from multiprocessing import forkserver

        from hubswap.evaluate.backends import has_cuda, prepare_vllm_environment

        cuda = has_cuda()
        if backend == "vllm":
            prepare_vllm_environment(cuda)  # the server and its children inherit it
        # Not "__main__" (multiprocessing's default): the server imports only hubswap's modules.
        ctx.set_forkserver_preload(["hubswap.evaluate.worker", "hubswap.evaluate.preload"])
        # Without -v the engines' and libraries' messages (vLLM, torch: ~8 lines a model) go to a
        # log file, kept and named when a worker fails (``engine_log_hint``); with -v, to stderr.
        global _engine_log
        quiet = logging.getLogger("hubswap").getEffectiveLevel() > logging.DEBUG
        if quiet:
            import tempfile

            fd, name = tempfile.mkstemp(prefix="hubswap-engines-", suffix=".log")
            os.close(fd)
            _engine_log = Path(name)
        with _environ(HUBSWAP_WORKER_BACKEND=backend, HUBSWAP_WORKER_CUDA="1" if cuda else "0",
                      HUBSWAP_WORKER_LOG=str(_engine_log) if quiet else ""), _sigint_ignored():
            forkserver.ensure_running()
        atexit.register(_stop_server)
        _started_with = backend
    elif backend != _started_with and _started_with != "vllm":  # vllm's preload holds transformers'
        log.debug("the worker server preloaded %s: each %s worker imports its engine", _started_with, backend)
    return ctx


@contextlib.contextmanager
def _sigint_ignored():
    """Start processes that ignore SIGINT: an ignored signal stays ignored across exec, so the
    server (Python installs its KeyboardInterrupt handler only where SIGINT is not ignored) and
    every worker forked from it ignore Ctrl-C, from their first instruction. Ctrl-C is the
    parent's: it stops the worker it waits for and the server (``_stop_server``), and exits 130.
    The parent blocks SIGINT meanwhile, so a Ctrl-C in that moment waits and then reaches it (on
    Linux a blocked signal is kept pending even while its action is to ignore it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _stop_server() -> None:
    """Stop the worker server now, at the parent's exit: left alone it exits when it sees the
    parent gone, but only once its preload is done (up to ~20 s of imports when Ctrl-C came while
    it started)."""
    from multiprocessing import forkserver

    server = forkserver._forkserver
    pid = getattr(server, "_forkserver_pid", None)
    if pid is None:
        return
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(OSError):
        server._stop()  # closes its pipes and reaps it
    if _engine_log is not None and not _keep_engine_log:
        _engine_log.unlink(missing_ok=True)


def engine_log_hint() -> str:
    """Where a failed worker's traceback and its engine's messages are (kept at exit)."""
    global _keep_engine_log
    if _engine_log is None:
        return "the worker's traceback is printed above"
    _keep_engine_log = True
    return f"the worker's traceback and its engine's messages are in {_engine_log}"


@contextlib.contextmanager
def _environ(**values: str):
    """Set environment variables for the duration (for the server process to inherit)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
