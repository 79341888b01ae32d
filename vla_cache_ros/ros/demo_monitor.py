"""The demo's ROS side: /diagnostics in, one status line per second out, live parameter sweeps.

``vla-cache demo`` (``vla_cache_ros/demo.py``) starts the robot, the node and the recorder as
child processes; this module is the monitor it runs in its own process: it prints the node's
status once a second in the node's own wording and, with ``--sweep``, changes ``cache_mode`` /
``cache_ratio`` through ``/<node>/set_parameters`` exactly as rqt_reconfigure does, cycling
through the mode registry's default sweep (``off``, ``fixed:0.5``, ``fixed:0.75``, ``vla_cache``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor

from vla_cache_ros.cache.modes import default_sweep, parse_mode
from vla_cache_ros.control.diagnostics import Level, StatusReport, one_line
from vla_cache_ros.errors import DemoError
from vla_cache_ros.topics import VLA_CACHE_NODE as NODE_NAME


class RunningChildren(Protocol):
    """The demo's child processes, as far as the monitor needs them."""

    def check_running(self, waiting_for: str | None = None) -> None:
        """Raise :class:`DemoError` naming the first child that has exited, its log's cause and
        what the demo was ``waiting_for`` (None: the loop was running)."""


FIRST_STEP = "its first inference step"
STALE_STATUS_S = 3.0  # no diagnostics for this long: the status line says STALE
SWEEP_MARGIN_S = 2.0  # no sweep this close to the end, so no change is in flight at shutdown


@dataclass
class LiveOptions:
    """What the monitor loop needs to know."""

    duration_s: float
    startup_timeout_s: float
    sweep_period_s: float | None  # None: no sweep


class Monitor:
    """The demo's ROS side: /diagnostics in, one line per second out, parameter sweeps."""

    def __init__(self, node: Any, target: str = NODE_NAME) -> None:
        self.node = node
        self.target = target
        self.latest: Any = None  # the target's last DiagnosticStatus
        self.latest_at: float | None = None  # monotonic arrival time
        self.instruction: str | None = None
        self.steps = 0  # inference steps the target has reported (its diagnostics' ``steps``)
        self.pending: Any = None  # the future of the last sweep request
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self._client = node.create_client(SetParameters, f"/{target}/set_parameters")
        self.sweep = [parse_mode(spec) for spec in default_sweep()]  # cycled through by sweep_step
        self._sweep_index = 0

    def _on_diagnostics(self, message: Any) -> None:
        for status in message.status:
            if status.name.startswith(f"/{self.target}:"):  # "<fully qualified name>: policy"
                self.latest, self.latest_at = status, time.monotonic()
                steps = next((kv.value for kv in status.values if kv.key == "steps"), "0")
                self.steps = max(self.steps, int(steps) if steps.isdigit() else 0)
                instruction = next((kv.value for kv in status.values if kv.key == "instruction"), None)
                if instruction and instruction != self.instruction:
                    self.instruction = instruction
                    print(f"instruction: {instruction!r}", flush=True)

    def status_line(self) -> str:
        """The latest status as a one-liner (the node's own ``one_line`` wording)."""
        if self.latest is None:
            return f"waiting for {self.target} (loading the model) ..."
        age = time.monotonic() - self.latest_at
        if age > STALE_STATUS_S:
            return f"[STALE] no diagnostics from {self.target} for {age:.0f} s"
        level = self.latest.level
        level = level[0] if isinstance(level, (bytes, bytearray)) else int(level)
        report = StatusReport(Level(min(level, Level.STALE)), self.latest.message,
                              [(kv.key, kv.value) for kv in self.latest.values])
        return one_line(report)

    def sweep_step(self) -> None:
        """Send the next (cache_mode, cache_ratio) of :attr:`sweep` through set_parameters."""
        _, mode, ratio = self.sweep[self._sweep_index % len(self.sweep)]
        self._sweep_index += 1
        wanted = f"cache_mode={mode} cache_ratio={ratio:g}"
        if not self._client.service_is_ready():
            print(f"sweep: {self._client.srv_name} not available yet; skipped {wanted}", flush=True)
            return
        request = SetParameters.Request(parameters=[
            Parameter(name="cache_mode", value=ParameterValue(
                type=ParameterType.PARAMETER_STRING, string_value=mode)),
            Parameter(name="cache_ratio", value=ParameterValue(
                type=ParameterType.PARAMETER_DOUBLE, double_value=float(ratio))),
        ])

        def on_reply(future: Any) -> None:
            results = future.result().results if future.result() is not None else []
            refused = [r.reason for r in results if not r.successful]
            verdict = "refused: " + "; ".join(refused) if refused or not results else "accepted"
            print(f"sweep: {wanted} -> {verdict}", flush=True)

        print(f"sweep: set {wanted} via {self._client.srv_name}", flush=True)
        self.pending = self._client.call_async(request)
        self.pending.add_done_callback(on_reply)


def monitor_loop(node: Any, children: RunningChildren, options: LiveOptions) -> None:
    """Spin the monitor, print one status line per second, sweep; return ``duration_s`` after
    the node's first inference step (the model's loading does not count).

    Raises:
        DemoError: a child exits early (before the first step: naming that, and the cause from
            its log), or the node runs no inference step within ``startup_timeout_s`` (its last
            status in the message).
    """
    monitor = Monitor(node)
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    start = time.monotonic()
    live_since: float | None = None  # the first inference step's report
    next_line = start + 1.0
    next_sweep: float | None = None
    try:
        while True:
            executor.spin_once(timeout_sec=0.1)
            children.check_running(FIRST_STEP if live_since is None else None)
            now = time.monotonic()
            if live_since is None and monitor.steps > 0:
                live_since = now
                if options.sweep_period_s is not None:
                    next_sweep = now + options.sweep_period_s
            if live_since is None and now - start > options.startup_timeout_s:
                raise DemoError(f"{NODE_NAME} ran no inference step within {options.startup_timeout_s:.0f} s; "
                                f"last status: {monitor.status_line()}")
            if now >= next_line:
                print(f"[{now - start:5.1f}s] {monitor.status_line()}", flush=True)
                next_line = max(next_line + 1.0, now + 0.5)  # late: skip, never burst
            end = None if live_since is None else live_since + options.duration_s
            if next_sweep is not None and now >= next_sweep:
                if end - now > SWEEP_MARGIN_S:  # no change in flight when the node stops
                    monitor.sweep_step()
                next_sweep += options.sweep_period_s
            if end is not None and now >= end:
                while monitor.pending is not None and not monitor.pending.done() \
                        and time.monotonic() < end + SWEEP_MARGIN_S:
                    executor.spin_once(timeout_sec=0.1)
                return
    finally:
        executor.remove_node(node)
        executor.shutdown()
