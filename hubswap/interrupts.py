"""Ctrl-C beside threads: taken where the main thread holds nothing the threads need.

Python raises KeyboardInterrupt in the main thread between any two bytecodes. When other threads
run beside it, that can be just after the main thread took a lock they share and before the
``with`` that would release it: the import lock while it imports (a module first used there), a
Future's condition in ``Future.result``, a progress bar's lock. The exception unwinds, the lock
stays taken, and the threads, then the exit that joins them, wait for ever. A build hung so about
one Ctrl-C in fifteen sent mid-merge (seen: the main thread importing while a hashing thread
imported jinja2 and a merge thread ml_dtypes; tests/test_interrupts.py).

Inside :func:`deferred`, SIGINT only sets a flag; the main thread raises KeyboardInterrupt where
it calls :func:`check` (between steps, and every few milliseconds while it waits for threads),
holding no lock. A second Ctrl-C before a check raises at once, as without it.

Written by hand: no library of the stack defers SIGINT to chosen points (``signal`` gives the
handler; this is the handler and its checks).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")

# Seconds between checks while the main thread waits for threads (the bound on how long a Ctrl-C
# waits to be taken, beyond the step the threads are on).
POLL = 0.02

_pending = False  # a Ctrl-C came inside deferred() and was not yet raised
_active = False


def _on_sigint(signum, frame) -> None:
    global _pending
    if _pending:  # the second Ctrl-C: raise now, as Python would
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt
    _pending = True


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within, Ctrl-C is raised at :func:`check` only (and when the block ends). A no-op off the
    main thread, inside another ``deferred``, or where SIGINT is not Python's default handler
    (ignored by a parent, or the caller's own)."""
    global _pending, _active
    if (_active or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    _pending, _active = False, True
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
        check()
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _pending = _active = False


def check() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C is pending (inside :func:`deferred`; else a no-op)."""
    global _pending
    if _pending:
        _pending = False
        raise KeyboardInterrupt


def result(future: Future[T]) -> T:
    """``future.result()``, taking a pending Ctrl-C every :data:`POLL` seconds while it waits."""
    while True:
        try:
            return future.result(POLL)
        except TimeoutError:  # not done yet (concurrent.futures.TimeoutError is TimeoutError)
            check()


def join(threads: list[threading.Thread]) -> None:
    """Wait for ``threads`` to end, taking a pending Ctrl-C every :data:`POLL` seconds."""
    for t in threads:
        while t.is_alive():
            t.join(POLL)
            check()
