"""Child processes: SIGINT first and kill only a child that ignores it; logs; piped output."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from vla_cache_ros.subprocesses import (
    collect,
    interrupt,
    python_module,
    sigterm_as_keyboard_interrupt,
    start_child,
)

READY = "import sys, time; print('ready', flush=True); time.sleep(60)"
STUBBORN = ("import signal, sys, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)")


def _start(code: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    return process


def test_interrupt_stops_a_well_behaved_child():
    process = _start(READY)
    assert interrupt(process, timeout_s=10) is True
    assert process.returncode != 0  # KeyboardInterrupt


def test_interrupt_kills_a_child_that_ignores_sigint():
    process = _start(STUBBORN)
    assert interrupt(process, timeout_s=0.5) is False
    assert process.returncode == -9
    assert interrupt(process) is True  # already gone


def test_start_child_logs_both_streams_and_stops_on_sigint(tmp_path):
    code = ("import os, sys, time; print('out', os.environ['EXTRA'], flush=True); "
            "print('err', file=sys.stderr, flush=True); time.sleep(60)")
    child = start_child("sleeper", [sys.executable, "-c", code], tmp_path / "logs", env={"EXTRA": "given"})
    deadline = time.monotonic() + 30
    while "err" not in child.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child.alive() and child.exit_code is None
    assert child.log_path == tmp_path / "logs" / "sleeper.log"
    assert child.log_tail(2).splitlines() == ["out given", "err"]
    assert child.interrupt(timeout_s=10) is True
    assert not child.alive() and "KeyboardInterrupt" in child.log()


def test_python_module_runs_in_this_interpreter(tmp_path):
    child = start_child("version", python_module("platform"), tmp_path)
    child.process.wait(timeout=30)
    assert child.exit_code == 0 and child.log().strip()


def test_collect_reads_pipes_and_kills_what_does_not_finish():
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    done = collect(subprocess.Popen([sys.executable, "-c", "print('done')"], **pipes), timeout_s=30)
    assert (done.returncode, done.stdout, done.stderr, done.killed) == (0, "done\n", "", False)  # bytes decoded
    stuck = _start(STUBBORN)
    assert collect(stuck, timeout_s=0.5, interrupt_first=True).killed and stuck.returncode == -9
    process = subprocess.Popen([sys.executable, "-c", READY], text=True, **pipes)
    assert process.stdout.readline().strip() == "ready"
    stopped = collect(process, timeout_s=10, interrupt_first=True)
    assert not stopped.killed and "KeyboardInterrupt" in stopped.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_stop_signal_while_the_child_starts_leaves_no_orphan(signum, tmp_path, monkeypatch):
    """Regression (a demo test's flake): a stop signal while ``Popen`` waited for the child's
    ``exec`` raised inside ``Popen``, after the fork; nobody held the child and it ran on. The
    signal now reaches its handler once the child is held, and a child nobody gets is stopped."""
    started: list[subprocess.Popen] = []
    real_popen = subprocess.Popen

    def popen_then_signal(*args, **kwargs):  # the signal arrives before Popen returns
        started.append(real_popen(*args, **kwargs))
        os.kill(os.getpid(), signum)
        time.sleep(0.5)  # a handler that raises does so here, inside Popen
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", popen_then_signal)
    try:
        with pytest.raises(KeyboardInterrupt), sigterm_as_keyboard_interrupt():
            start_child("sleeper", [sys.executable, "-c", READY], tmp_path)
        assert started and started[0].wait(timeout=30) is not None
    finally:
        for process in started:
            process.kill()


def test_a_signal_whose_handler_does_not_raise_keeps_the_child(tmp_path, monkeypatch):
    """A handler that only records the stop (as ``serve``'s) runs once; the caller keeps the child."""
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda number, frame: seen.append(number))
    real_popen = subprocess.Popen

    def popen_then_signal(*args, **kwargs):
        process = real_popen(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return process

    monkeypatch.setattr(subprocess, "Popen", popen_then_signal)
    try:
        child = start_child("sleeper", [sys.executable, "-c", READY], tmp_path)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [signal.SIGTERM] and child.alive()
    assert child.interrupt(timeout_s=10)


@pytest.mark.parametrize("on_sigint, ours", [
    ("raise", True),  # Python's own KeyboardInterrupt: exit -2, traceback
    ("print('KeyboardInterrupt', file=sys.stderr, flush=True); sys.exit(1)", True),  # as during interpreter start
    ("print('cannot close the bag', file=sys.stderr, flush=True); sys.exit(1)", False),  # a real failure
    ("sys.exit(0)", False),  # a clean stop is no interrupt death
])
def test_ended_by_our_interrupt_tells_a_start_up_death_from_a_failure(on_sigint, ours, tmp_path):
    """Regression (a CI run): a child interrupted while its interpreter still started printed
    "Fatal Python error: init_import_site" and a KeyboardInterrupt traceback and exited 1, not -2,
    and the demo reported it as a failure."""
    code = ("import sys, time\nprint('ready', flush=True)\ntry:\n    time.sleep(60)\n"
            f"except KeyboardInterrupt:\n    {on_sigint}\n")
    child = start_child("child", [sys.executable, "-c", code], tmp_path)
    deadline = time.monotonic() + 30
    while "ready" not in child.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child.ended_by_our_interrupt() is False  # still running
    assert child.interrupt(timeout_s=10)
    assert child.ended_by_our_interrupt() is ours, (child.exit_code, child.log())
