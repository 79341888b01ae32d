"""sim_arm_node in its own process, over real DDS: sensors arrive, commands move the arm, reset works."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rclpy
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_cache_ros import topics
from vla_cache_ros.image_conversion import image_to_rgb
from vla_cache_ros.ros.qos import COMMAND_QOS, LATCHED_QOS, SENSOR_QOS, STATUS_QOS
from vla_cache_ros.subprocesses import ChildProcess, python_module, start_child

REPO = Path(__file__).resolve().parents[2]
ARM = ["waist", "shoulder", "elbow", "wrist_pitch", "wrist_roll"]


class Peer:
    """A test-side node recording what the sim node publishes; spun on a background thread."""

    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node("sim_node_test_peer", context=self.context)
        self.latest: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.instructions: list[str] = []
        self.statuses: list[dict] = []
        self._lock = threading.Lock()
        self.node.create_subscription(Image, topics.CAMERA_TOPIC, self._keep("image"), SENSOR_QOS)
        self.node.create_subscription(JointState, topics.JOINT_STATES_TOPIC, self._keep("joints"),
                                      SENSOR_QOS)
        self.node.create_subscription(PoseStamped, topics.EE_POSE_TOPIC, self._keep("pose"), SENSOR_QOS)
        self.node.create_subscription(String, topics.INSTRUCTION_TOPIC,
                                      lambda m: self.instructions.append(m.data), LATCHED_QOS)
        self.node.create_subscription(String, topics.EPISODE_STATUS_TOPIC,
                                      lambda m: self.statuses.append(json.loads(m.data)), STATUS_QOS)
        self.positions = self.node.create_publisher(Float64MultiArray, topics.JOINT_POSITIONS_TOPIC, COMMAND_QOS)
        self.trajectory = self.node.create_publisher(JointTrajectory, topics.JOINT_TRAJECTORY_TOPIC, COMMAND_QOS)
        self.twist = self.node.create_publisher(TwistStamped, topics.TWIST_TOPIC, COMMAND_QOS)
        self.gripper = self.node.create_publisher(Float64MultiArray, topics.GRIPPER_TOPIC, COMMAND_QOS)
        self.reset_client = self.node.create_client(Trigger, topics.RESET_SERVICE)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def _keep(self, key: str) -> Callable[[Any], None]:
        def callback(msg: Any) -> None:
            with self._lock:
                self.latest[key] = msg
                self.counts[key] = self.counts.get(key, 0) + 1
        return callback

    def joint(self, name: str) -> float:
        msg = self.latest["joints"]
        return msg.position[list(msg.name).index(name)]

    def ee_position(self) -> np.ndarray:
        p = self.latest["pose"].pose.position
        return np.array([p.x, p.y, p.z])

    def close(self) -> None:
        self.executor.shutdown()
        self._thread.join(timeout=5)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (KeyError, IndexError):
            pass  # nothing received yet
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ChildProcess, Peer]]:
    sim = start_child("sim_node", python_module(
        "vla_cache_ros.ros.sim_node", "--ros-args", "-p", "seed:=5", "-p", "task_family:=touch",
        "-p", "camera_rate_hz:=10.0", "-p", "twist_timeout_s:=0.3"), tmp_path_factory.mktemp("sim_node"), cwd=REPO)
    peer = Peer()
    try:
        wait_for(lambda: peer.counts["image"] > 0 and peer.counts["joints"] > 0, 30.0, "first messages")
        yield sim, peer
    finally:
        peer.close()
        sim.interrupt(15)


def test_images_joint_states_pose_and_instruction_arrive(running) -> None:
    sim, peer = running
    image = image_to_rgb(peer.latest["image"])
    assert peer.latest["image"].encoding == "rgb8" and image.shape == (224, 224, 3) and image.std() > 20
    assert list(peer.latest["joints"].name)[:5] == ARM
    assert peer.latest["pose"].header.frame_id == "base_link"
    wait_for(lambda: peer.instructions, what="instruction (transient local)")
    assert peer.instructions[-1].startswith("touch the ")
    # Joint states come much faster than images (>= 50 Hz vs 10 Hz).
    start_images, start_joints = peer.counts["image"], peer.counts["joints"]
    time.sleep(1.0)
    assert peer.counts["joints"] - start_joints > 3 * (peer.counts["image"] - start_images) > 0
    assert sim.alive()


def test_commands_move_the_arm(running) -> None:
    sim, peer = running
    peer.positions.publish(Float64MultiArray(data=[0.5, 0.0, 0.0, 0.0, 0.0]))
    wait_for(lambda: abs(peer.joint("waist") - 0.5) < 0.03, what="waist at 0.5 rad")

    point = JointTrajectoryPoint(positions=[0.4])
    point.time_from_start.sec = 1
    peer.trajectory.publish(JointTrajectory(joint_names=["elbow"], points=[point]))
    wait_for(lambda: abs(peer.joint("elbow") - 0.4) < 0.03, what="elbow at 0.4 rad")

    start = peer.ee_position()
    twist = TwistStamped()
    twist.header.frame_id = "base_link"
    twist.twist.linear.z = 0.05
    peer.twist.publish(twist)
    wait_for(lambda: peer.ee_position()[2] - start[2] > 0.01, what="end effector rising")
    time.sleep(0.8)  # the twist times out after 0.3 s: the motion stops
    stopped = peer.ee_position()
    time.sleep(0.5)
    assert np.linalg.norm(peer.ee_position() - stopped) < 2e-3
    assert 0.01 < stopped[2] - start[2] < 0.05

    peer.gripper.publish(Float64MultiArray(data=[0.0]))
    wait_for(lambda: peer.joint("finger_left") < 0.002, what="gripper closed")

    peer.positions.publish(Float64MultiArray(data=[1.0, 2.0]))  # malformed: ignored, node stays up
    time.sleep(0.3)
    assert sim.alive() and abs(peer.joint("waist") - 0.5) < 0.03


def test_reset_service_starts_a_new_episode(running) -> None:
    sim, peer = running
    assert peer.reset_client.wait_for_service(timeout_sec=10)
    first_episode = max(s["episode"] for s in peer.statuses) if peer.statuses else 0
    future = peer.reset_client.call_async(Trigger.Request())
    wait_for(future.done, what="reset response")
    response = future.result()
    assert response.success, response.message
    summary = json.loads(response.message)
    assert summary["seed"] == 6 and summary["family"] == "touch"  # the next seed after 5
    wait_for(lambda: peer.statuses[-1]["episode"] == first_episode + 1, what="status of the new episode")
    assert peer.statuses[-1]["seed"] == 6 and not peer.statuses[-1]["done"]
    wait_for(lambda: peer.instructions[-1] == summary["instruction"], what="new instruction")
    wait_for(lambda: abs(peer.joint("waist")) < 0.01 and peer.joint("finger_left") > 0.035, what="arm at home")
    assert sim.alive(), sim.log()
