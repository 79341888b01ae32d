"""Write a demo / test rosbag2 from a synthetic scene, without a robot, a camera or ROS.

The bag looks like a short recording on a fixed-camera arm: camera frames from
:class:`vla_cache_ros.synthetic.SyntheticScene` (static textured background, one moving block)
as raw ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage``, ``sensor_msgs/JointState`` at a
higher rate than the camera and offset from it (so frames fall between joint samples), the
task instruction on a ``std_msgs/String`` topic (offered QoS: transient local, as a latched
topic), and optionally the commands a policy sent
(``std_msgs/Float64MultiArray``, one 7-D action per frame shortly after it). Every value is a
deterministic function of the spec, so tests can check what a reader returns.
"""
from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vla_cache_ros import topics
from vla_cache_ros.errors import ConfigurationError
from vla_cache_ros.replay.bag_writer import LATCHED_QOS, BagWriter
from vla_cache_ros.replay.messages import (
    STRING_TYPE,
    compressed_image_message,
    float64_array_message,
    image_message,
    joint_state_message,
    string_message,
)
from vla_cache_ros.synthetic import SyntheticScene

JOINT_NAMES = tuple(f"joint{i}" for i in range(1, 8))
IMAGE_ENCODINGS = ("rgb8", "bgr8", "jpeg", "png")


@dataclass
class SyntheticBagSpec:
    """What :func:`write_synthetic_bag` writes. Times are bag time (the same as header stamps);
    ``start_time_ns`` is the first frame's time, joint samples are spaced ``1/joint_hz`` from
    ``start_time_ns + joint_offset_s``, the instruction comes before everything else, or just
    after frame ``instruction_after_frames - 1`` when that is positive (a live recording that
    started before the instruction was published).

    Raises ConfigurationError for an unknown image encoding or a non-positive frame count, rate
    or image size (values a user gives on the ``synthetic-bag`` command line)."""

    num_frames: int = 30
    camera_hz: float = 10.0
    joint_hz: float = 50.0
    joint_offset_s: float = -0.007
    height: int = 224
    width: int = 224
    image_encoding: str = "rgb8"
    instruction: str | None = "pick up the block"
    joint_states: bool = True
    commands: bool = False
    command_latency_s: float = 0.02
    start_time_ns: int = 1_700_000_000 * 1_000_000_000
    seed: int = 0
    image_topic: str | None = None  # default: /camera/image_raw[/compressed]
    joint_topic: str = topics.JOINT_STATES_TOPIC
    instruction_topic: str = topics.INSTRUCTION_TOPIC
    command_topic: str = topics.ACTION_TOPIC
    instruction_after_frames: int = 0

    def __post_init__(self) -> None:
        if self.image_encoding not in IMAGE_ENCODINGS:
            raise ConfigurationError(
                f"image encoding must be one of {', '.join(IMAGE_ENCODINGS)}, not {self.image_encoding!r}")
        if self.num_frames < 1 or self.camera_hz <= 0 or self.joint_hz <= 0:
            raise ConfigurationError("frames, camera_hz and joint_hz must be positive")
        if self.height < 1 or self.width < 1:
            raise ConfigurationError(f"image size must be positive, got {self.height}x{self.width}")

    @property
    def compressed(self) -> bool:
        return self.image_encoding in ("jpeg", "png")

    @property
    def resolved_image_topic(self) -> str:
        if self.image_topic:
            return self.image_topic
        return f"{topics.CAMERA_TOPIC}/compressed" if self.compressed else topics.CAMERA_TOPIC

    def frame_time_ns(self, index: int) -> int:
        """Bag time of camera frame ``index``."""
        return self.start_time_ns + round(index * 1e9 / self.camera_hz)

    @property
    def end_time_ns(self) -> int:
        """Bag time of the last frame (joint states span the same interval)."""
        return self.frame_time_ns(self.num_frames - 1)

    def joint_times_ns(self) -> list[int]:
        """Bag times of the joint-state samples: from ``joint_offset_s`` after the first frame
        (before it by default, so every frame falls between two samples) until just past the
        last frame."""
        period_ns = 1e9 / self.joint_hz
        times: list[int] = []
        while not times or times[-1] <= self.end_time_ns:
            times.append(self.start_time_ns + round(self.joint_offset_s * 1e9 + len(times) * period_ns))
        return times


def joint_positions(time_s: float) -> np.ndarray:
    """Synthetic joint positions (rad) at ``time_s`` seconds after the bag start: slow sines."""
    phases = np.arange(len(JOINT_NAMES), dtype=np.float64)
    return 0.1 * phases + 0.3 * np.sin(0.8 * time_s + phases)


def joint_velocities(time_s: float) -> np.ndarray:
    """Time derivative of :func:`joint_positions`."""
    phases = np.arange(len(JOINT_NAMES), dtype=np.float64)
    return 0.24 * np.cos(0.8 * time_s + phases)


def synthetic_action(scene: SyntheticScene, index: int) -> np.ndarray:
    """A plausible 7-D action for frame ``index``: follow the block (xy), hold z and rotation,
    gripper open (1) in the first half of its path and closed (0) after."""
    row0, col0 = scene.object_position(index)
    row1, col1 = scene.object_position(index + 1)
    scale = 0.01 / max(scene.speed_px, 1e-6)
    gripper = 1.0 if (index // 20) % 2 == 0 else 0.0
    return np.array([(col1 - col0) * scale, (row1 - row0) * scale, 0.0, 0.0, 0.0, 0.0, gripper])


@dataclass
class SyntheticBagInfo:
    """What was written: where, which topics, and when each frame / joint sample is."""

    path: Path
    storage: str
    spec: SyntheticBagSpec
    topics: dict[str, str] = field(default_factory=dict)
    frame_times_ns: list[int] = field(default_factory=list)
    joint_times_ns: list[int] = field(default_factory=list)


def _events(spec: SyntheticBagSpec) -> Iterator[tuple[int, int, str, int]]:
    """(time, tie-break, kind, index) of every message, in bag-time order, generated lazily."""
    streams: list[Iterator[tuple[int, int, str, int]]] = []
    if spec.instruction is not None:
        first_joint_ns = spec.joint_times_ns()[0] if spec.joint_states else spec.start_time_ns
        at = (min(spec.start_time_ns, first_joint_ns) if spec.instruction_after_frames <= 0
              else spec.frame_time_ns(spec.instruction_after_frames - 1) + 1)
        streams.append(iter([(at, 0, "instruction", 0)]))
    if spec.joint_states:
        streams.append((t, 1, "joints", i) for i, t in enumerate(spec.joint_times_ns()))
    streams.append((spec.frame_time_ns(i), 2, "frame", i) for i in range(spec.num_frames))
    if spec.commands:
        latency = round(spec.command_latency_s * 1e9)
        streams.append((spec.frame_time_ns(i) + latency, 3, "command", i) for i in range(spec.num_frames))
    return heapq.merge(*streams)


def write_synthetic_bag(
    path: str | Path,
    storage: str = "mcap",
    spec: SyntheticBagSpec | None = None,
) -> SyntheticBagInfo:
    """Write the bag described by ``spec`` (defaults: 30 frames at 10 Hz, joints at 50 Hz,
    instruction, no commands) to the new directory ``path`` with ``storage`` mcap or sqlite3."""
    spec = spec or SyntheticBagSpec()
    scene = SyntheticScene(height=spec.height, width=spec.width, seed=spec.seed)
    info = SyntheticBagInfo(path=Path(path), storage=storage, spec=spec)
    image_topic = spec.resolved_image_topic
    with BagWriter(path, storage=storage) as writer:
        if spec.instruction is not None:  # recorded as a latched topic, as a real one would be
            writer.add_topic(spec.instruction_topic, STRING_TYPE, [LATCHED_QOS])
        for time_ns, _, kind, index in _events(spec):
            if kind == "instruction":
                writer.write(spec.instruction_topic, string_message(spec.instruction or ""), time_ns)
            elif kind == "joints":
                time_s = (time_ns - spec.start_time_ns) / 1e9
                message = joint_state_message(JOINT_NAMES, joint_positions(time_s), time_ns, joint_velocities(time_s))
                writer.write(spec.joint_topic, message, time_ns)
                info.joint_times_ns.append(time_ns)
            elif kind == "frame":
                rgb = scene.frame(index)
                if spec.compressed:
                    message = compressed_image_message(rgb, time_ns, fmt=spec.image_encoding)
                else:
                    message = image_message(rgb, time_ns, encoding=spec.image_encoding)
                writer.write(image_topic, message, time_ns)
                info.frame_times_ns.append(time_ns)
            else:
                writer.write(spec.command_topic, float64_array_message(synthetic_action(scene, index)), time_ns)
        info.topics = writer.topics
    return info
