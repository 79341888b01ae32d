"""The node process's stop path (``ros.process``): a stop signal is a clean exit however rclpy's
C++ code surfaces it."""
from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import signal
    import rclpy
    from rclpy.node import Node
    from vla_cache_ros.ros import process

    signals = process._StopSignals()

    class Interrupted(Node):
        """Its timer callback is where Ctrl-C lands; pybind11 hands it back as {kind}."""

        def __init__(self):
            super().__init__("interrupted_node")
            self.create_timer(0.01, self.tick)

        def tick(self):
            interrupted = False
            try:
                signals(signal.SIGINT, None)  # what the installed handler does on Ctrl-C
            except KeyboardInterrupt:
                interrupted = True
            if interrupted:  # raised outside the except block: no __context__, as pybind11 does
                raise {kind}("Unable to convert call argument '0' to Python object")

    rclpy.init()
    print("exit", process._spin_until_stopped(Interrupted, "interrupted_node", signals))
''')


def run(kind: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT.format(kind=kind)], capture_output=True, text=True,
                          timeout=60)


def test_a_stop_seen_through_rclpy_as_another_error_is_a_clean_stop() -> None:
    """Regression (CI): a node stopped while rclpy took a message ended with a RuntimeError
    traceback and exit 1 (pybind11 turns a KeyboardInterrupt raised inside its conversion into
    "Unable to convert call argument '0' to Python object"); SystemError was handled, RuntimeError
    was not."""
    for kind in ("RuntimeError", "SystemError"):
        result = run(kind)
        assert result.returncode == 0 and result.stdout.strip() == "exit 0", result.stderr[-2000:]
        assert "Traceback" not in result.stderr


def test_the_same_error_without_a_stop_is_still_a_bug() -> None:
    """Without a stop signal a RuntimeError is a bug and keeps its traceback."""
    result = subprocess.run([sys.executable, "-c", SCRIPT.format(kind="RuntimeError").replace(
        "signals(signal.SIGINT, None)", "raise KeyboardInterrupt")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Unable to convert call argument" in result.stderr
