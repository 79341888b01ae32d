"""The live demo's monitor loop (``ros.demo_monitor.monitor_loop``) against diagnostics this test
publishes itself: ``--duration`` counts from the node's first inference step, never from its
first report (it reports while it loads, and while it sits unconfigured after a failed
configure: the demo then ran its duration and exited 0); no step within the start-up timeout,
or a child that exits before it, is a DemoError (exit 2) naming why."""
from __future__ import annotations

import time
from collections.abc import Callable

import pytest

pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue  # noqa: E402

from vla_cache_ros.errors import DemoError  # noqa: E402
from vla_cache_ros.ros.demo_monitor import FIRST_STEP, LiveOptions, monitor_loop  # noqa: E402
from vla_cache_ros.ros.process import ros_session  # noqa: E402
from vla_cache_ros.topics import VLA_CACHE_NODE  # noqa: E402


class Children:
    """Running children; ``exit_after_s``: one exits then (check_running raises as the demo's)."""

    def __init__(self, exit_after_s: float | None = None) -> None:
        self.started = time.monotonic()
        self.exit_after_s = exit_after_s

    def check_running(self, waiting_for: str | None = None) -> None:
        if self.exit_after_s is not None and time.monotonic() - self.started > self.exit_after_s:
            waiting = f" while waiting for {waiting_for}" if waiting_for else ""
            raise DemoError(f"{VLA_CACHE_NODE} exited early{waiting} (code 2): configure failed: the drafter ...")


def _report(node, steps: Callable[[], int]) -> None:
    """Publish the node's diagnostics every 0.2 s, ``steps()`` its step count."""
    publisher = node.create_publisher(DiagnosticArray, "/diagnostics", 10)

    def publish() -> None:
        publisher.publish(DiagnosticArray(status=[DiagnosticStatus(
            level=bytes([1]), name=f"/{VLA_CACHE_NODE}: policy", message="waiting for the first inference step",
            values=[KeyValue(key="state", value="waiting"), KeyValue(key="steps", value=str(steps()))])]))

    node.create_timer(0.2, publish)


def test_reports_without_a_step_end_in_an_error_not_after_the_duration() -> None:
    with ros_session("test_demo_monitor_no_step") as node:
        _report(node, lambda: 0)
        started = time.monotonic()
        with pytest.raises(DemoError, match=f"{VLA_CACHE_NODE} ran no inference step within 3 s; last status: "):
            monitor_loop(node, Children(), LiveOptions(duration_s=0.5, startup_timeout_s=3.0, sweep_period_s=None))
        assert time.monotonic() - started >= 3.0  # the 0.5 s duration never started


def test_the_duration_counts_from_the_first_step() -> None:
    with ros_session("test_demo_monitor_steps") as node:
        started = time.monotonic()
        _report(node, lambda: 0 if time.monotonic() - started < 2.0 else 1)  # "loading" for 2 s
        monitor_loop(node, Children(), LiveOptions(duration_s=1.0, startup_timeout_s=30.0, sweep_period_s=None))
        assert time.monotonic() - started >= 3.0


def test_a_node_that_exits_before_its_first_step_is_named() -> None:
    with ros_session("test_demo_monitor_exit") as node:
        _report(node, lambda: 0)
        with pytest.raises(DemoError, match=f"exited early while waiting for {FIRST_STEP} \\(code 2\\): configure"):
            monitor_loop(node, Children(exit_after_s=1.0),
                         LiveOptions(duration_s=30.0, startup_timeout_s=30.0, sweep_period_s=None))
