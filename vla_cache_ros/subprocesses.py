"""Process signals as a terminal user expects them: SIGINT first when stopping a child, and
SIGTERM handled like Ctrl-C in our own process.

Used wherever this package or its tests run nodes and tools as separate processes (sim-eval, the
demo, the node tests), so that every child gets the chance to send its safety command and close
its bag before it is killed; and by every entry point that must shut down cleanly when launch or
a supervisor sends SIGTERM.
"""
from __future__ import annotations

import signal
import subprocess
from contextlib import contextmanager
from typing import Any, Iterator


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


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_keyboard_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt in the main thread (one shutdown path
    for Ctrl-C and ``kill``); the previous handler is restored afterwards."""
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
