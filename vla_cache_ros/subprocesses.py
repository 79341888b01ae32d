"""Stopping child processes the way a terminal user would: SIGINT, wait, then kill.

Used wherever this package or its tests run nodes and tools as separate processes (sim-eval, the
demo, the node tests), so that every child gets the chance to send its safety command and close
its bag before it is killed.
"""
from __future__ import annotations

import signal
import subprocess


def interrupt(process: subprocess.Popen, timeout_s: float = 30.0) -> bool:
    """SIGINT ``process`` and wait up to ``timeout_s``; kill it if still running.

    Returns True when it stopped by itself (or had already exited), False when it was killed.
    """
    if process.poll() is not None:
        return True
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=timeout_s)
        return True
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False
