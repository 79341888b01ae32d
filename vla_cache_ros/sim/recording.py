"""Recording simulated episodes as rosbag2 (mcap), with the same topics the sim node publishes.

Uses the generic writer (:mod:`vla_cache_ros.replay.bag_writer`) and message builders
(:mod:`vla_cache_ros.replay.messages`); this module only maps the simulator's state onto the
simulator's topics. Bag time is the episode's simulated time offset by ``start_time_ns``; header
stamps equal bag time.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vla_cache_ros import topics
from vla_cache_ros.geometry import euler_to_rotvec
from vla_cache_ros.replay.bag_writer import LATCHED_QOS, BagWriter
from vla_cache_ros.replay.messages import (
    STRING_TYPE,
    float64_array_message,
    image_message,
    joint_state_message,
    pose_stamped_message,
    string_message,
    twist_stamped_message,
)
from vla_cache_ros.sim.env import EpisodeStatus, TabletopSim
from vla_cache_ros.sim.scene import ARM_JOINTS, BASE_FRAME
from vla_cache_ros.stamps import seconds_to_nanoseconds

FINGER_JOINTS = ("finger_left", "finger_right")
PUBLISHED_JOINTS = ARM_JOINTS + FINGER_JOINTS
DEFAULT_START_TIME_NS = 1_700_000_000 * 1_000_000_000


def published_joint_state(sim: TabletopSim) -> tuple[list[float], list[float]]:
    """Positions (rad, finger opening in m) and velocities of :data:`PUBLISHED_JOINTS` now: the arm
    joints, then both fingers with the same value. The sim node publishes and the recorder
    records exactly this."""
    finger, finger_velocity = float(sim.finger_position()), float(sim.finger_velocity())
    positions = [float(v) for v in sim.joint_positions()] + [finger, finger]
    velocities = [float(v) for v in sim.joint_velocities()] + [finger_velocity, finger_velocity]
    return positions, velocities


class EpisodeBagRecorder:
    """Writes one episode to a new bag directory; use as a context manager."""

    def __init__(self, path: str | Path, start_time_ns: int = DEFAULT_START_TIME_NS) -> None:
        self.path = Path(path)
        self.start_time_ns = start_time_ns
        self._writer = BagWriter(self.path, storage="mcap")

    def __enter__(self) -> "EpisodeBagRecorder":
        self._writer.open()
        self._writer.add_topic(topics.INSTRUCTION_TOPIC, STRING_TYPE, [LATCHED_QOS])
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._writer.close()

    def _stamp(self, sim_time_s: float) -> int:
        return self.start_time_ns + seconds_to_nanoseconds(sim_time_s)

    def instruction(self, sim_time_s: float, text: str) -> None:
        """The task instruction at simulated time ``sim_time_s`` (seconds), on the latched topic."""
        self._writer.write(topics.INSTRUCTION_TOPIC, string_message(text), self._stamp(sim_time_s))

    def camera(self, sim_time_s: float, image: np.ndarray) -> None:
        """One (H, W, 3) uint8 RGB camera frame rendered at ``sim_time_s``, as rgb8."""
        stamp = self._stamp(sim_time_s)
        self._writer.write(topics.CAMERA_TOPIC, image_message(image, stamp, topics.CAMERA_FRAME), stamp)

    def robot_state(self, sim: TabletopSim) -> None:
        """Joint states (arm + both fingers) and the end-effector pose at the sim's current time."""
        stamp = self._stamp(sim.time)
        position, velocity = published_joint_state(sim)
        self._writer.write(topics.JOINT_STATES_TOPIC,
                           joint_state_message(PUBLISHED_JOINTS, position, stamp, velocity), stamp)
        ee_position, ee_quat = sim.ee_pose()
        self._writer.write(topics.EE_POSE_TOPIC, pose_stamped_message(ee_position, ee_quat, stamp, BASE_FRAME), stamp)

    def action(self, sim_time_s: float, action: np.ndarray, period_s: float) -> None:
        """The 7-D action and the commands it becomes (EE twist, gripper opening)."""
        stamp = self._stamp(sim_time_s)
        values = np.asarray(action, float)
        self._writer.write(topics.ACTION_TOPIC, float64_array_message(values), stamp)
        twist = twist_stamped_message(values[:3] / period_s, euler_to_rotvec(values[3:6]) / period_s, stamp, BASE_FRAME)
        self._writer.write(topics.TWIST_TOPIC, twist, stamp)
        self._writer.write(topics.GRIPPER_TOPIC, float64_array_message([values[6]]), stamp)

    def status(self, sim_time_s: float, status: EpisodeStatus) -> None:
        """The episode status as JSON, as the sim node publishes it."""
        self._writer.write(topics.EPISODE_STATUS_TOPIC, string_message(json.dumps(status.to_dict())),
                           self._stamp(sim_time_s))
