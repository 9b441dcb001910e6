"""hubswap/interrupts.py: inside ``deferred()`` a Ctrl-C waits for a check, the first one only;
inside ``command()`` (the CLI's) a Ctrl-C is remembered, so one that code swallowed or turned into
another exception still ends the command with "interrupted" and 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future

import pytest

from hubswap import cli, interrupts
from tests.support.cli import hubswap_env


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


def test_a_ctrl_c_swallowed_inside_a_command_still_stops_it():
    """As when a KeyboardInterrupt unwinds an optional import caught by ``except Exception`` (on
    3.11 a class body's __set_name__ turns it into RuntimeError): the import lock it left taken
    hung a build's hashing thread. The next check, and any deferred block, stop the command."""
    steps = []
    with interrupts.command():
        try:
            _ctrl_c()
            steps.append("not raised")
        except KeyboardInterrupt:
            steps.append("swallowed")
        assert interrupts.requested()
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
        with pytest.raises(KeyboardInterrupt), interrupts.deferred():
            steps.append("threads started")
    assert steps == ["swallowed"]
    with interrupts.command():  # the next command starts clean
        assert not interrupts.requested()
        interrupts.check()


def test_the_cli_says_interrupted_for_a_ctrl_c_turned_into_another_exception(monkeypatch, capsys):
    def command(argv):
        try:
            _ctrl_c()
        except KeyboardInterrupt as e:
            raise RuntimeError("Error calling __set_name__ on 'Field' instance") from e

    monkeypatch.setattr(cli, "_run_command", command)
    assert cli.main([]) == 130
    assert capsys.readouterr().err == "interrupted\n"

    def failing(argv):
        raise RuntimeError("a bug, no Ctrl-C")

    monkeypatch.setattr(cli, "_run_command", failing)
    with pytest.raises(RuntimeError, match="a bug"):  # without a Ctrl-C a bug stays a traceback
        cli.main([])


def test_the_cli_says_interrupted_for_a_ctrl_c_swallowed_in_a_command_that_then_finished(monkeypatch, capsys):
    """A Ctrl-C that library code swallowed (CI: a weakref callback's "Exception ignored") and that
    no check took before the command ended: the command asked to stop still ends in 130."""
    def command(argv):
        try:
            _ctrl_c()
        except KeyboardInterrupt:
            pass
        return 0

    monkeypatch.setattr(cli, "_run_command", command)
    assert cli.main([]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_python_m_exits_130_after_a_ctrl_c_caught_in_code_run_from_a_string(tmp_path):
    """CPython's ``python -m`` killed itself with SIGINT at exit after a KeyboardInterrupt had
    left code run from a string (dataclasses make their methods so), though main caught it."""
    (tmp_path / "string_code_interrupted.py").write_text(
        "from hubswap import cli\n"
        "cli._run_command = lambda argv: exec('raise KeyboardInterrupt')\n"
        "cli.run()\n")
    env = hubswap_env()
    env["PYTHONPATH"] = os.pathsep.join((str(tmp_path), env["PYTHONPATH"]))
    done = subprocess.run([sys.executable, "-m", "string_code_interrupted"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert (done.returncode, done.stderr) == (130, "interrupted\n")
