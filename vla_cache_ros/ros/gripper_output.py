"""Where gripper commands go: a Float64MultiArray topic or a control_msgs gripper action.

The command value comes from the ROS-free hysteresis
(:class:`~vla_cache_ros.control.gripper.GripperHysteresis`): ``gripper_command_open`` or
``gripper_command_closed``. Both outputs publish it on ``~/preview/gripper_command`` every
control period (dry run included); with actuation on:

- :class:`TopicGripper` (``gripper_interface: topic``) publishes it on ``gripper_command`` every
  control period (a forward_command_controller, a position controller);
- :class:`ActionGripper` sends it as the position of a goal to a
  ``control_msgs/action/GripperCommand`` server (ros2_controllers' gripper_action_controller,
  Robotiq and Franka drivers: goal ``command.position`` and ``command.max_effort``) or a
  ``control_msgs/action/ParallelGripperCommand`` one (Jazzy's parallel_gripper_action_controller:
  goal ``command`` is a sensor_msgs/JointState with one position, and ``effort`` = max effort
  when ``gripper_max_effort`` > 0), only when the decision changes
  (:class:`~vla_cache_ros.control.gripper.GoalGate`).

Safety: on fault the controller keeps the gripper decision as it was (a grasped object is not
dropped), so no new goal goes out; deactivation, cleanup and shutdown send no gripper command
and cancel no goal: the gripper finishes the last goal and stays there, as it stays at the last
topic command. control_msgs is not on PyPI: the action output needs a system ROS 2.
"""
from __future__ import annotations

from typing import Any, Callable

from action_msgs.msg import GoalStatus
from rclpy.action import ActionClient
from rclpy.node import Node
from std_msgs.msg import Float64MultiArray

from vla_cache_ros import topics
from vla_cache_ros.control.gripper import GoalGate
from vla_cache_ros.ros import qos
from vla_cache_ros.ros.optional_packages import require

ACTION_TYPES = {"gripper_command": "GripperCommand",
                "parallel_gripper_command": "ParallelGripperCommand"}
"""``gripper_interface`` value -> action type in ``control_msgs.action``."""
STATUS_WORDS = {GoalStatus.STATUS_SUCCEEDED: "succeeded", GoalStatus.STATUS_ABORTED: "aborted",
                GoalStatus.STATUS_CANCELED: "canceled"}


def goal_message(action_type: Any, kind: str, position: float, max_effort: float) -> Any:
    """The goal for ``position`` (m or rad) of a GripperCommand or ParallelGripperCommand."""
    goal = action_type.Goal()
    if kind == "parallel_gripper_command":
        goal.command.position = [float(position)]
        if max_effort > 0.0:
            goal.command.effort = [float(max_effort)]
    else:
        goal.command.position = float(position)
        goal.command.max_effort = float(max_effort)
    return goal


class TopicGripper:
    """Float64MultiArray on ``gripper_command`` (actuation on) and its preview, every period."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._command = node.create_publisher(Float64MultiArray, topics.GRIPPER_COMMAND,
                                              qos.COMMAND_QOS)
        self._preview = node.create_publisher(
            Float64MultiArray, f"~/preview/{topics.GRIPPER_COMMAND}", qos.COMMAND_QOS)

    def publish(self, value: float, actuate: bool) -> None:
        """Publish ``value`` on the preview topic, and on the command topic if ``actuate``."""
        message = Float64MultiArray(data=[float(value)])
        self._preview.publish(message)
        if actuate:
            self._command.publish(message)

    def reset(self) -> None:
        """Nothing to forget: every period publishes."""

    def close(self) -> None:
        """Destroy the publishers."""
        self._node.destroy_publisher(self._command)
        self._node.destroy_publisher(self._preview)


class ActionGripper:
    """A control_msgs gripper action client fed only with changed decisions.

    Args:
        node: the node owning the client and the preview publisher.
        kind: ``gripper_command`` or ``parallel_gripper_command``.
        action_name: the action server's name.
        max_effort: ``gripper_max_effort`` (see :func:`goal_message`).
        labels: command value -> word for /diagnostics (``open``, ``close``).
        report: receives the ``gripper_action`` line for /diagnostics.
        warn: receives problems (no server, goal rejected or aborted), throttled by the caller.

    Raises:
        ConfigurationError: control_msgs is not installed.
    """

    def __init__(self, node: Node, kind: str, action_name: str, max_effort: float,
                 labels: dict[float, str], report: Callable[[str], None],
                 warn: Callable[[str], None]) -> None:
        module = require("control_msgs.action", f"gripper_interface {kind}")
        self._node, self._kind, self._max_effort = node, kind, max_effort
        self._type = getattr(module, ACTION_TYPES[kind])
        self._name = action_name
        self._labels, self._report, self._warn = labels, report, warn
        self._client = ActionClient(node, self._type, action_name)
        self._preview = node.create_publisher(
            Float64MultiArray, f"~/preview/{topics.GRIPPER_COMMAND}", qos.COMMAND_QOS)
        self._gate = GoalGate()
        self._report(f"no goal sent yet ({action_name}, control_msgs/action/{ACTION_TYPES[kind]})")

    def publish(self, value: float, actuate: bool) -> None:
        """Preview ``value``; with ``actuate``, send it as a goal if the decision changed."""
        self._preview.publish(Float64MultiArray(data=[float(value)]))
        position = self._gate.take(value, actuate)
        if position is None:
            return
        what = f"{self._labels.get(position, 'move')} ({position:g})"
        if not self._client.server_is_ready():
            self._report(f"waiting for action server {self._name} to send {what}")
            self._warn(f"gripper action server {self._name} not available; {what} not sent")
            return  # not delivered: tried again next period
        future = self._client.send_goal_async(
            goal_message(self._type, self._kind, position, self._max_effort))
        self._gate.delivered(position)
        self._report(f"{what} sent")
        future.add_done_callback(lambda done: self._guarded(self._on_goal_response, done, what))

    def _guarded(self, callback: Callable[[Any, str], None], future: Any, what: str) -> None:
        """Run a done callback; an exception in it would end the executor."""
        try:
            callback(future, what)
        except Exception as error:  # noqa: BLE001 - e.g. the server vanished mid-goal
            self._report(f"{what}: no result ({type(error).__name__}: {error})")
            self._warn(f"gripper goal {what}: {type(error).__name__}: {error}")

    def _on_goal_response(self, future: Any, what: str) -> None:
        handle = future.result()
        if handle is None or not handle.accepted:
            self._report(f"{what} rejected by {self._name}")
            self._warn(f"gripper goal {what} rejected by {self._name}")
            return
        self._report(f"{what} accepted")
        handle.get_result_async().add_done_callback(
            lambda done: self._guarded(self._on_result, done, what))

    def _on_result(self, future: Any, what: str) -> None:
        response = future.result()
        status = STATUS_WORDS.get(response.status, f"status {response.status}")
        result = response.result
        details = [word for word, flag in (("reached goal", result.reached_goal),
                                           ("stalled", result.stalled)) if flag]
        self._report(f"{what} {status}" + (f" ({', '.join(details)})" if details else ""))
        if response.status == GoalStatus.STATUS_ABORTED:
            self._warn(f"gripper goal {what} aborted by {self._name}")

    def reset(self) -> None:
        """Forget the last goal: the next decision goes out (on activation)."""
        self._gate.reset()

    def close(self) -> None:
        """Destroy the action client and the preview publisher (no goal is cancelled)."""
        self._client.destroy()
        self._node.destroy_publisher(self._preview)


def gripper_output(node: Node, interface: Any, gripper: Any, report: Callable[[str], None],
                   warn: Callable[[str], None]) -> TopicGripper | ActionGripper | None:
    """The gripper output the configuration asks for (None with ``publish_gripper: false``).

    Args:
        node: the node that owns it.
        interface: the :class:`~vla_cache_ros.runtime.config.InterfaceConfig`.
        gripper: the :class:`~vla_cache_ros.control.gripper.GripperConfig` (command values).
        report, warn: see :class:`ActionGripper`.

    Raises:
        ConfigurationError: a gripper action without control_msgs.
    """
    if not interface.publish_gripper:
        return None
    if interface.gripper_interface == "topic":
        return TopicGripper(node)
    return ActionGripper(node, interface.gripper_interface, interface.gripper_action_name,
                         interface.gripper_max_effort,
                         {gripper.command_open: "open", gripper.command_closed: "close"},
                         report, warn)
