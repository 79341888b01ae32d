"""interrupt(): SIGINT first, kill only a child that ignores it."""
from __future__ import annotations

import subprocess
import sys

from vla_cache_ros.subprocesses import interrupt

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
