"""Recording simulated episodes as rosbag2 (mcap), with the same topics the sim node publishes.

Uses the generic writer of :mod:`vla_cache_ros.replay.bag_io`; this module only adds the
simulator's topics and the pose / twist message builders. Bag time is the episode's simulated
time offset by ``start_time_ns``; header stamps equal bag time.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

from vla_cache_ros.replay.bag_io import (
    BagWriter, float64_array_message, header_message, image_message, joint_state_message,
    ros2_typestore, string_message,
)
from vla_cache_ros.sim import topics
from vla_cache_ros.sim.env import EpisodeStatus, TabletopSim
from vla_cache_ros.geometry import euler_to_rotvec
from vla_cache_ros.sim.scene import ARM_JOINTS, BASE_FRAME

FINGER_JOINTS = ("finger_left", "finger_right")
PUBLISHED_JOINTS = ARM_JOINTS + FINGER_JOINTS
DEFAULT_START_TIME_NS = 1_700_000_000 * 1_000_000_000

_NO_TIME = QosTime(sec=0, nsec=0)
LATCHED_QOS = Qos(
    history=QosHistory.KEEP_LAST, depth=1, reliability=QosReliability.RELIABLE,
    durability=QosDurability.TRANSIENT_LOCAL, deadline=_NO_TIME, lifespan=_NO_TIME,
    liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=_NO_TIME,
    avoid_ros_namespace_conventions=False)


def _types() -> dict[str, Any]:
    return ros2_typestore().types


def pose_stamped_message(position: np.ndarray, quat_wxyz: np.ndarray, stamp_ns: int,
                         frame_id: str = BASE_FRAME) -> Any:
    """``geometry_msgs/PoseStamped`` (quaternion given as w, x, y, z)."""
    types = _types()
    w, x, y, z = (float(v) for v in quat_wxyz)
    pose = types["geometry_msgs/msg/Pose"](
        position=types["geometry_msgs/msg/Point"](x=float(position[0]), y=float(position[1]), z=float(position[2])),
        orientation=types["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w))
    return types["geometry_msgs/msg/PoseStamped"](header=header_message(stamp_ns, frame_id), pose=pose)


def twist_stamped_message(linear: np.ndarray, angular: np.ndarray, stamp_ns: int,
                          frame_id: str = BASE_FRAME) -> Any:
    """``geometry_msgs/TwistStamped``."""
    types = _types()
    vector = types["geometry_msgs/msg/Vector3"]
    twist = types["geometry_msgs/msg/Twist"](
        linear=vector(x=float(linear[0]), y=float(linear[1]), z=float(linear[2])),
        angular=vector(x=float(angular[0]), y=float(angular[1]), z=float(angular[2])))
    return types["geometry_msgs/msg/TwistStamped"](header=header_message(stamp_ns, frame_id), twist=twist)


class EpisodeBagRecorder:
    """Writes one episode to a new bag directory; use as a context manager."""

    def __init__(self, path: str | Path, start_time_ns: int = DEFAULT_START_TIME_NS) -> None:
        self.path = Path(path)
        self.start_time_ns = start_time_ns
        self._writer = BagWriter(self.path, storage="mcap")

    def __enter__(self) -> "EpisodeBagRecorder":
        self._writer.open()
        self._writer.add_topic(topics.INSTRUCTION_TOPIC, "std_msgs/msg/String", [LATCHED_QOS])
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._writer.close()

    def _stamp(self, sim_time_s: float) -> int:
        return self.start_time_ns + int(round(sim_time_s * 1e9))

    def instruction(self, sim_time_s: float, text: str) -> None:
        self._writer.write(topics.INSTRUCTION_TOPIC, string_message(text), self._stamp(sim_time_s))

    def camera(self, sim_time_s: float, image: np.ndarray) -> None:
        stamp = self._stamp(sim_time_s)
        self._writer.write(topics.CAMERA_TOPIC, image_message(image, stamp, topics.CAMERA_FRAME), stamp)

    def robot_state(self, sim: TabletopSim) -> None:
        """Joint states (arm + both fingers) and the end-effector pose at the sim's current time."""
        stamp = self._stamp(sim.time)
        finger, finger_velocity = sim.finger_position(), sim.finger_velocity()
        position = np.concatenate([sim.joint_positions(), [finger, finger]])
        velocity = np.concatenate([sim.joint_velocities(), [finger_velocity, finger_velocity]])
        self._writer.write(topics.JOINT_STATES_TOPIC,
                           joint_state_message(PUBLISHED_JOINTS, position, stamp, velocity), stamp)
        ee_position, ee_quat = sim.ee_pose()
        self._writer.write(topics.EE_POSE_TOPIC, pose_stamped_message(ee_position, ee_quat, stamp), stamp)

    def action(self, sim_time_s: float, action: np.ndarray, period_s: float) -> None:
        """The 7-D action and the commands it becomes (EE twist, gripper opening)."""
        stamp = self._stamp(sim_time_s)
        values = np.asarray(action, float)
        self._writer.write(topics.ACTION_TOPIC, float64_array_message(values), stamp)
        twist = twist_stamped_message(values[:3] / period_s, euler_to_rotvec(values[3:6]) / period_s, stamp)
        self._writer.write(topics.TWIST_TOPIC, twist, stamp)
        self._writer.write(topics.GRIPPER_TOPIC, float64_array_message([values[6]]), stamp)

    def status(self, sim_time_s: float, status: EpisodeStatus) -> None:
        self._writer.write(topics.EPISODE_STATUS_TOPIC, string_message(json.dumps(status.to_dict())),
                           self._stamp(sim_time_s))
