"""The node as ROS users set it up, over real DDS: QoS override parameters from a params file,
MoveIt Servo's start service called on activation, the EE pose source on /diagnostics; features
that need a system ROS 2 (control_msgs, tf2_ros, moveit_msgs) fail configure with the reason
where those packages are missing, and run against real servers where they exist.
"""
from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import rclpy
import yaml
from geometry_msgs.msg import PoseStamped
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import ReliabilityPolicy
from std_srvs.srv import Trigger

from test.ros.node_harness import Peer, make_checkpoint, start_node, wait_until
from vla_cache_ros.errors import UserFacingError
from vla_cache_ros.ros import qos
from vla_cache_ros.ros.node import VlaCacheNode

pytestmark = pytest.mark.timeout(120)
COMMON = {"unnorm_key": "tiny_sim", "num_threads": 1}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    peer = Peer("vla_test_peer_integrations")
    yield peer
    peer.close()


def in_process_node(checkpoint: Path, **parameters: Any) -> tuple[Any, Any]:
    """(context, node) with autostart off; the caller destroys both."""
    context = rclpy.Context()
    rclpy.init(context=context)
    values = {"model_path": str(checkpoint), **COMMON, "autostart": False, **parameters}
    try:
        node = VlaCacheNode(context=context, parameter_overrides=[
            Parameter(name, value=value) for name, value in values.items()])
    except BaseException:
        rclpy.shutdown(context=context)
        raise
    return context, node


def test_overrides_servo_start_and_ee_pose_source_in_a_running_node(
        peer: Peer, checkpoint: Path, tmp_path: Path) -> None:
    name = "vla_integrations"
    params = tmp_path / "qos.yaml"  # the form the ROS 2 docs give for QoS overrides
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"qos_overrides": {
        "/image": {"subscription": {"reliability": "reliable", "depth": 2}}}}}}))

    def refuse(request: Any, response: Any) -> Any:
        response.success, response.message = False, "not now"
        return response
    service = peer.node.create_service(Trigger, "/test_servo_node/start_servo", refuse)
    pose_pub = peer.node.create_publisher(PoseStamped, "/ee_pose", qos.SENSOR_QOS)

    def publish_pose() -> None:
        message = PoseStamped()
        message.header.stamp = peer.node.get_clock().now().to_msg()
        message.pose.position.x = 0.4
        pose_pub.publish(message)
    pose_timer = peer.node.create_timer(0.05, publish_pose)
    node = start_node(name, {"model_path": str(checkpoint), **COMMON,
                             "servo_start_service": "/test_servo_node/start_servo",
                             "servo_start_type": "trigger", "servo_start_timeout_s": 30.0},
                      params_files=[params],
                      workdir=tmp_path)
    try:
        status = peer.wait_status(
            name, lambda s, v: v.get("servo_start", "").startswith("FAILED")
            and v.get("ee_pose_age_s", "n/a") != "n/a", 60, "servo start outcome and EE pose age",
            node)
        values = {kv.key: kv.value for kv in status.values}
        assert values["servo_start"] == "FAILED: /test_servo_node/start_servo refused: not now"
        assert values["ee_pose_source"] == "topic ee_pose"
        assert 0.0 <= float(values["ee_pose_age_s"]) < 5.0
        assert "MoveIt Servo start failed" in values["last_error"]

        def reliability(topic: str) -> Any:
            found = [info for info in peer.node.get_subscriptions_info_by_topic(topic)
                     if info.node_name == name]
            return found[0].qos_profile.reliability if found else None
        assert wait_until(lambda: reliability("/image"), 10, "the image subscription",
                          node.log) == ReliabilityPolicy.RELIABLE
        # rclpy writes overrides into the profile it is given: the shared one stays untouched
        assert reliability("/joint_states") == ReliabilityPolicy.BEST_EFFORT
        key = "qos_overrides./image.subscription.reliability"
        assert peer.describe_parameters(name, [key])[key].read_only
        [result] = peer.set_parameters(name, **{key: "best_effort"})
        assert not result.successful  # read-only once the subscription exists
    finally:
        code, log = node.stop()
        peer.node.destroy_timer(pose_timer)
        peer.node.destroy_publisher(pose_pub)
        peer.node.destroy_service(service)
    assert code == 0 and "Traceback" not in log, log[-3000:]
    assert "MoveIt Servo start failed: /test_servo_node/start_servo refused: not now" in log


def test_an_invalid_qos_override_is_a_clear_error(checkpoint: Path) -> None:
    with pytest.raises(UserFacingError) as info:
        in_process_node(checkpoint, **{"qos_overrides./image.subscription.reliability": "often"})
    assert str(info.value).startswith(
        "parameter qos_overrides./image.subscription.reliability: got 'often', expected one of")


def test_an_invalid_servo_service_name_fails_configure_before_loading(checkpoint: Path) -> None:
    context, node = in_process_node(checkpoint, servo_start_service="servo node/start",
                                    servo_start_type="trigger")
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert str(node._configure_error).startswith(
            "parameter servo_start_service: 'servo node/start' is not a valid ROS name (")
        assert node._runtime.policy is None
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)


def test_configure_cleanup_configure_again_with_overrides_and_servo_start(checkpoint: Path) -> None:
    """The adapters close on cleanup; a second configure re-creates them and re-reads the
    already declared QoS override parameters."""
    key = "qos_overrides./image.subscription.reliability"
    context, node = in_process_node(checkpoint, **{
        key: "reliable", "servo_start_service": "/nowhere/start_servo",
        "servo_start_type": "trigger"})
    try:
        for _ in range(2):
            assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
            assert node.get_parameter(key).value == "reliable"
            [image] = [sub for sub in node.subscriptions if sub.topic_name == "/image"]
            assert image.qos_profile.reliability == ReliabilityPolicy.RELIABLE
            assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
            assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
            assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
            assert not [sub for sub in node.subscriptions if sub.topic_name == "/image"]
            assert not list(node.clients) or all(
                client.srv_name != "/nowhere/start_servo" for client in node.clients)
        assert qos.SENSOR_QOS.reliability == ReliabilityPolicy.BEST_EFFORT
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)


MISSING = [
    pytest.param("control_msgs", {"gripper_interface": "gripper_command"},
                 "gripper_interface gripper_command needs the ROS 2 package control_msgs",
                 marks=pytest.mark.skipif(installed("control_msgs"),
                                          reason="control_msgs is installed")),
    pytest.param("control_msgs", {"gripper_interface": "parallel_gripper_command"},
                 "gripper_interface parallel_gripper_command needs the ROS 2 package control_msgs",
                 marks=pytest.mark.skipif(installed("control_msgs"),
                                          reason="control_msgs is installed")),
    pytest.param("tf2_ros", {"ee_pose_source": "tf"},
                 "ee_pose_source tf needs the ROS 2 package tf2_ros",
                 marks=pytest.mark.skipif(installed("tf2_ros"), reason="tf2_ros is installed")),
    pytest.param("moveit_msgs", {"servo_start_service": "/servo_node/switch_command_type"},
                 "servo_start_type switch_command_type (use trigger for Humble's ~/start_servo) "
                 "needs the ROS 2 package moveit_msgs",
                 marks=pytest.mark.skipif(installed("moveit_msgs"),
                                          reason="moveit_msgs is installed")),
]


@pytest.mark.parametrize("package, parameters, fragment", MISSING)
def test_a_feature_without_its_package_fails_configure_with_the_reason(
        package: str, parameters: dict, fragment: str, checkpoint: Path) -> None:
    context, node = in_process_node(checkpoint, **parameters)
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        message = str(node._configure_error)
        assert fragment in message, message
        assert "not on PyPI" in message and f"ros-$ROS_DISTRO-{package.replace('_', '-')}" in message
        assert node._runtime.policy is None  # refused before the model was loaded
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)


class Spun:
    """A node in its own context spun on a thread (the side under test)."""

    def __init__(self, name: str) -> None:
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self.thread.join(timeout=10.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


@pytest.mark.skipif(not installed("tf2_ros"),
                    reason="tf2_ros is not installed (not on PyPI; a system ROS 2 has it)")
def test_ee_position_from_tf(peer: Peer) -> None:
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage

    from vla_cache_ros.ros.tf_pose import TfPose

    tf_pub = peer.node.create_publisher(TFMessage, "/tf", 100)

    def publish_tf() -> None:
        transform = TransformStamped()
        transform.header.stamp = peer.node.get_clock().now().to_msg()
        transform.header.frame_id, transform.child_frame_id = "base_link", "tool0"
        transform.transform.translation.x, transform.transform.translation.z = 0.3, 0.2
        transform.transform.rotation.w = 1.0
        tf_pub.publish(TFMessage(transforms=[transform]))
    timer = peer.node.create_timer(0.05, publish_tf)
    side = Spun("tf_pose_under_test")
    positions: list[tuple[list[float], float]] = []
    problems: list[str] = []
    source = TfPose(side.node, "base_link", "tool0", 0.05,
                    lambda position, stamp: positions.append((list(position), stamp)),
                    problems.append)
    try:
        wait_until(lambda: positions, 20, "a position from TF")
        position, stamp = positions[-1]
        assert position == pytest.approx([0.3, 0.0, 0.2])
        assert abs(time.time() - stamp) < 5.0
        missing = TfPose(side.node, "base_link", "no_such_frame", 0.05, lambda *a: None,
                         problems.append)
        wait_until(lambda: any("no_such_frame" in line for line in problems), 20,
                   "a lookup failure")
        missing.close()
    finally:
        source.close()
        side.close()
        peer.node.destroy_timer(timer)
        peer.node.destroy_publisher(tf_pub)


@pytest.mark.skipif(not installed("control_msgs"),
                    reason="control_msgs is not installed (not on PyPI; a system ROS 2 has it)")
@pytest.mark.parametrize("kind", ["gripper_command", "parallel_gripper_command"])
def test_gripper_goals_go_to_an_action_server_only_on_change(peer: Peer, kind: str) -> None:
    from control_msgs import action
    from rclpy.action import ActionServer

    from vla_cache_ros.ros.gripper_output import ACTION_TYPES, ActionGripper

    action_type = getattr(action, ACTION_TYPES[kind])
    goals: list[Any] = []

    def execute(handle: Any) -> Any:
        goals.append(handle.request)
        handle.succeed()
        result = action_type.Result()
        result.reached_goal = True
        return result
    server = ActionServer(peer.node, action_type, f"/test_{kind}/gripper_cmd", execute)
    side = Spun(f"gripper_under_test_{kind}")
    lines: list[str] = []
    warnings: list[str] = []
    gripper = ActionGripper(side.node, kind, f"/test_{kind}/gripper_cmd", 20.0,
                            {0.04: "open", 0.0: "close"}, lines.append, warnings.append)
    try:
        wait_until(lambda: gripper._client.server_is_ready(), 20, "the action server")
        for value in (0.04, 0.04, 0.04, 0.0, 0.0):  # one decision per control period
            gripper.publish(value, actuate=True)
            time.sleep(0.05)
        wait_until(lambda: len(goals) == 2 and lines[-1].startswith("close (0) succeeded"), 20,
                   "two goals")
        positions = [goal.command.position if kind == "gripper_command"
                     else list(goal.command.position) for goal in goals]
        assert positions == ([0.04, 0.0] if kind == "gripper_command" else [[0.04], [0.0]])
        efforts = [goal.command.max_effort if kind == "gripper_command"
                   else list(goal.command.effort) for goal in goals]
        assert efforts == ([20.0, 20.0] if kind == "gripper_command" else [[20.0], [20.0]])
        assert lines[-1] == "close (0) succeeded (reached goal)" and not warnings
        gripper.publish(0.0, actuate=False)  # dry run: nothing, then the decision again
        gripper.publish(0.0, actuate=True)
        wait_until(lambda: len(goals) == 3, 20, "the decision re-sent after actuation")
    finally:
        gripper.close()
        side.close()
        server.destroy()
