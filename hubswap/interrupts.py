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

Around a whole command (:func:`command`, the CLI's), a Ctrl-C is also remembered. Some code turns
the KeyboardInterrupt into another exception (on Python 3.11 a class body's ``__set_name__``
raises RuntimeError; pydantic-core's schema builder raises SchemaError) and some of that is
caught (an optional import's ``except Exception``): the Ctrl-C is lost, and the import it
unwound may have left its module lock taken. Remembered, it still stops the command at the next
:func:`check` and before any thread starts (:func:`deferred` refuses to begin), and the CLI says
"interrupted" for whatever exception it caused (:func:`requested`). Seen: a build whose Ctrl-C
vanished so, and whose hashing thread then waited for ever on the import lock it left.

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
_requested = False  # a Ctrl-C came during command(), raised or not
_in_command = False


def _on_sigint_raise(signum, frame) -> None:
    """command()'s handler: Python's own (raise KeyboardInterrupt), remembering the Ctrl-C."""
    global _requested
    _requested = True
    raise KeyboardInterrupt


def _on_sigint(signum, frame) -> None:
    """deferred()'s handler: the first Ctrl-C waits for a check, a second raises at once."""
    global _pending, _requested
    if _pending:  # the second Ctrl-C: raise now, as Python would
        signal.signal(signal.SIGINT, _on_sigint_raise if _in_command else signal.default_int_handler)
        raise KeyboardInterrupt
    _pending = _requested = True


def _ours_to_take() -> bool:
    """On the main thread, SIGINT raising KeyboardInterrupt (Python's default, or command()'s):
    not ignored by a parent, not the caller's own handler."""
    return (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) in (signal.default_int_handler, _on_sigint_raise))


@contextlib.contextmanager
def command() -> Iterator[None]:
    """Around one command: Ctrl-C raises KeyboardInterrupt as Python's handler does and is
    remembered until the block ends (:func:`requested`, :func:`check`). A no-op where
    :func:`deferred` would be one."""
    global _requested, _in_command
    if _in_command or not _ours_to_take():
        yield
        return
    previous = signal.signal(signal.SIGINT, _on_sigint_raise)
    _requested, _in_command = False, True
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _in_command = False


def requested() -> bool:
    """Whether a Ctrl-C came during the current (or last) :func:`command`, even one that some code
    turned into another exception or swallowed."""
    return _requested


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within, Ctrl-C is raised at :func:`check` only (and when the block ends). Refuses to begin
    (KeyboardInterrupt) once a Ctrl-C came during the command. A no-op off the main thread, inside
    another ``deferred``, or where SIGINT is not Python's handler or command()'s (ignored by a
    parent, or the caller's own)."""
    global _pending, _active
    check()
    if _active or not _ours_to_take():
        yield
        return
    _pending, _active = False, True
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
        check()
    finally:
        signal.signal(signal.SIGINT, previous)
        _pending = _active = False


def check() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C is pending inside :func:`deferred`, or came at any time
    during :func:`command`; else a no-op."""
    global _pending
    if _pending or (_in_command and _requested):
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
