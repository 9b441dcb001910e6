"""hubswap/interrupts.py: inside ``deferred()`` a Ctrl-C waits for a check, the first one only."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import Future

import pytest

from hubswap import interrupts


def _ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)  # Python runs the handler at the next bytecode of the main thread


@pytest.fixture(autouse=True)
def _python_default_handler():
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    yield
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back


def test_a_ctrl_c_inside_waits_for_a_check():
    steps = []
    with pytest.raises(KeyboardInterrupt), interrupts.deferred():
        _ctrl_c()
        steps.append("after the signal")
        interrupts.check()
        steps.append("after the check")
    assert steps == ["after the signal"]


def test_a_pending_ctrl_c_is_raised_when_the_block_ends():
    with pytest.raises(KeyboardInterrupt), interrupts.deferred():
        _ctrl_c()
    interrupts.check()  # nothing pending once raised


def test_a_second_ctrl_c_raises_at_once():
    steps = []
    with pytest.raises(KeyboardInterrupt), interrupts.deferred():
        _ctrl_c()
        steps.append("first")
        _ctrl_c()
        steps.append("second")
    assert steps == ["first"]


def test_join_and_result_take_a_pending_ctrl_c_while_they_wait():
    release = threading.Event()
    thread = threading.Thread(target=release.wait, daemon=True)
    thread.start()
    future: Future = Future()
    try:
        for wait in (lambda: interrupts.join([thread]), lambda: interrupts.result(future)):
            with pytest.raises(KeyboardInterrupt), interrupts.deferred():
                _ctrl_c()
                start = time.monotonic()
                wait()
            assert time.monotonic() - start < 1  # taken within a few polls, not when the thread ends
    finally:
        release.set()
    future.set_result(3)
    with interrupts.deferred():
        assert interrupts.result(future) == 3


def test_off_the_main_thread_or_under_another_handler_it_changes_nothing():
    seen = []
    thread = threading.Thread(target=lambda: seen.append(interrupts.deferred().__enter__() is None))
    thread.start()
    thread.join()
    assert seen == [True]
    mine = signal.signal(signal.SIGINT, lambda *_: seen.append("mine"))
    try:
        with interrupts.deferred():
            _ctrl_c()
        assert seen == [True, "mine"]
    finally:
        signal.signal(signal.SIGINT, mine)
