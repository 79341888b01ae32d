"""Start MoveIt Servo on activation, with one service call that never blocks the executor.

MoveIt Servo ignores incoming twists until it is told to accept them: from Jazzy on its
``~/switch_command_type`` service (``moveit_msgs/srv/ServoCommandType``) must select TWIST
(``command_type`` 1; JOINT_JOG 0, POSE 2; the response carries ``bool success``); Humble's Servo
needs ``~/start_servo`` (``std_srvs/srv/Trigger``: ``success`` and ``message``). moveit_msgs is
not on PyPI, so the Trigger variant is the only one that works without a system ROS 2.

:class:`ServoStarter` polls from a steady-clock timer: it waits for the service to appear,
sends the request asynchronously and reads the reply, all within ``timeout_s``. Each outcome is
reported as a ``servo_start`` line for /diagnostics; a missing service, a timeout and a refusal
are also logged as errors. Twists published before Servo accepts them are dropped by Servo.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from rclpy.clock import Clock, ClockType
from rclpy.node import Node

from vla_cache_ros.ros.optional_packages import require

POLL_PERIOD_S = 0.05
"""How often (steady clock, seconds) the starter looks at the service and the pending reply."""
TYPE_NAMES = {"switch_command_type": "moveit_msgs/srv/ServoCommandType",
              "trigger": "std_srvs/srv/Trigger"}


def service_type(kind: str) -> Any:
    """The service class for ``servo_start_type`` ``kind``.

    Raises:
        ConfigurationError: ``switch_command_type`` without moveit_msgs installed.
    """
    if kind == "trigger":
        from std_srvs.srv import Trigger

        return Trigger
    return require("moveit_msgs.srv", "servo_start_type switch_command_type").ServoCommandType


def start_request(kind: str, srv_type: Any) -> Any:
    """The request that makes Servo accept twists (Trigger: empty; ServoCommandType: TWIST)."""
    if kind == "trigger":
        return srv_type.Request()
    return srv_type.Request(command_type=srv_type.Request.TWIST)


class ServoStarter:
    """Calls Servo's start service each time :meth:`start` is called (on every activation).

    Args:
        node: the node that owns the client and the polling timer.
        service: the service name (e.g. ``/servo_node/switch_command_type``).
        kind: ``switch_command_type`` or ``trigger`` (see :data:`TYPE_NAMES`).
        timeout_s: how long one start may take in all (waiting for the service and its reply).
        report: receives the one-line status for /diagnostics.
        error: receives failures (missing service, timeout, refusal) to log as errors.
        info: receives the success line.

    Raises:
        ConfigurationError: ``switch_command_type`` without moveit_msgs.
    """

    def __init__(self, node: Node, service: str, kind: str, timeout_s: float,
                 report: Callable[[str], None], error: Callable[[str], None],
                 info: Callable[[str], None]) -> None:
        self._node = node
        self._kind = kind
        self._type = service_type(kind)
        self._service = node.resolve_service_name(service)
        self._timeout_s = timeout_s
        self._report, self._error, self._info = report, error, info
        self._client = node.create_client(self._type, service)
        self._timer: Any = None
        self._future: Any = None
        self._started_at = 0.0
        self._report(f"not called yet ({self._described()})")

    def _described(self) -> str:
        return f"{self._service}, {TYPE_NAMES[self._kind]}"

    def start(self) -> None:
        """Begin one start attempt (an attempt still running is abandoned)."""
        self._stop()
        self._started_at = time.monotonic()
        self._report(f"waiting for {self._described()}")
        self._timer = self._node.create_timer(POLL_PERIOD_S, self._poll,
                                              clock=Clock(clock_type=ClockType.STEADY_TIME))

    def _poll(self) -> None:
        try:
            self._advance(time.monotonic() - self._started_at)
        except Exception as error:  # noqa: BLE001 - a timer callback must not end the executor
            self._finish(False, f"internal error: {type(error).__name__}: {error}")

    def _advance(self, elapsed_s: float) -> None:
        if self._future is None:
            if self._client.service_is_ready():
                self._future = self._client.call_async(start_request(self._kind, self._type))
                self._report(f"calling {self._described()}")
            elif elapsed_s >= self._timeout_s:
                self._finish(False, f"{self._service} not available after {self._timeout_s:g} s "
                                    f"(is MoveIt Servo running, and does it offer this service "
                                    f"as {TYPE_NAMES[self._kind]}?)")
            return
        if self._future.done():
            failure = self._future.exception()
            if failure is not None:
                self._finish(False, f"{self._service} call failed: {failure}")
                return
            response = self._future.result()
            detail = str(getattr(response, "message", "") or "").strip()
            detail = f": {detail}" if detail else ""
            if response.success:
                self._finish(True, f"{self._service} accepted"
                                   + (" TWIST" if self._kind != "trigger" else "") + detail)
            else:
                self._finish(False, f"{self._service} refused{detail}")
        elif elapsed_s >= self._timeout_s:
            forget = getattr(self._client, "remove_pending_request", None)  # not on old rclpy
            if forget is not None:
                forget(self._future)
            self._finish(False, f"no reply from {self._service} within {self._timeout_s:g} s")

    def _finish(self, ok: bool, text: str) -> None:
        self._stop()
        if ok:
            self._report(f"started: {text}")
            self._info(f"MoveIt Servo started: {text}")
        else:
            self._report(f"FAILED: {text}")
            self._error(f"MoveIt Servo start failed: {text}; twists are ignored until Servo "
                        f"accepts them")

    def _stop(self) -> None:
        if self._timer is not None:
            self._node.destroy_timer(self._timer)
            self._timer = None
        self._future = None

    def close(self) -> None:
        """Stop any attempt and destroy the client."""
        self._stop()
        self._node.destroy_client(self._client)
