"""Camera frames of a bag, each with the joint state, instruction and command at its instant.

:class:`FrameReader` streams the frames of one image topic (``sensor_msgs/Image`` or
``CompressedImage``) as RGB arrays and pairs each with the joint state aligned to it, the
instruction in force and the recorded command that followed it (the class docstring states the
exact rules); :func:`resolve_frame_topics` picks those topics by name or by type;
:func:`align_joint_state` and :func:`command_values` are the pairing rules on their own.

Alignment uses bag time (integer nanoseconds, the time a message was logged), never header
stamps, because header stamps are often zero or come from different clocks. Input a user
controls (topic names, options, the bag's content) raises a UserFacingError subclass:
:class:`~vla_cache_ros.errors.BagError` or :class:`~vla_cache_ros.errors.ConfigurationError`.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla_cache_ros import topics
from vla_cache_ros.errors import BagError, ConfigurationError, ImageConversionError
from vla_cache_ros.image_conversion import compressed_image_to_rgb, image_to_rgb
from vla_cache_ros.replay.bag_reader import BagReader, RawMessage
from vla_cache_ros.replay.messages import (
    COMPRESSED_IMAGE_TYPE,
    FLOAT64_ARRAY_TYPE,
    IMAGE_TYPES,
    JOINT_STATE_TYPE,
    STRING_TYPE,
    TWIST_STAMPED_TYPE,
)
from vla_cache_ros.stamps import stamp_nanoseconds

FLOAT32_ARRAY_TYPE = "std_msgs/msg/Float32MultiArray"
TWIST_TYPE = "geometry_msgs/msg/Twist"
JOINT_TRAJECTORY_TYPE = "trajectory_msgs/msg/JointTrajectory"
# Message types accepted as "recorded commands", each turned into a flat vector by
# :func:`command_values`.
COMMAND_TYPES = (FLOAT64_ARRAY_TYPE, FLOAT32_ARRAY_TYPE, TWIST_TYPE, TWIST_STAMPED_TYPE, JOINT_TRAJECTORY_TYPE)

# Names preferred when a bag has several topics of the right type and none was named.
PREFERRED_IMAGE_TOPICS = (
    topics.CAMERA_TOPIC,
    "/camera/color/image_raw",
    f"{topics.CAMERA_TOPIC}/compressed",
    "/camera/color/image_raw/compressed",
    "/image_raw",
    "/image",
)
PREFERRED_JOINT_TOPICS = (topics.JOINT_STATES_TOPIC,)
PREFERRED_INSTRUCTION_TOPICS = (topics.INSTRUCTION_TOPIC, "/vla/instruction", "/task/instruction")

# Sentinel for "find the topic by type"; ``None`` means "do not use this stream".
AUTO = "auto"

JOINT_ALIGNMENTS = ("interpolate", "previous")


@dataclass(frozen=True)
class JointSample:
    """Joint state values at one instant.

    ``timestamp_ns`` is the bag time the values describe: the frame's time when interpolated,
    the sample's own time when held from an earlier message.
    """

    timestamp_ns: int
    names: tuple[str, ...]
    position: np.ndarray
    velocity: np.ndarray
    effort: np.ndarray


@dataclass(frozen=True)
class RecordedCommand:
    """A command message recorded in the bag, flattened to a vector (see :func:`command_values`)."""

    topic: str
    msgtype: str
    timestamp_ns: int
    values: np.ndarray


@dataclass(frozen=True)
class Frame:
    """One camera frame with what the bag says about that instant.

    Attributes:
        index: position of the frame among the image topic's messages (0-based, before
            subsampling, so indices stay comparable between runs with different ``every``).
        timestamp_ns: bag time of the image message (alignment is on this).
        stamp_ns: the image's header stamp.
        image: (H, W, 3) uint8 RGB.
        joint_state: aligned joint state, or None (no joint topic, or no sample yet).
        instruction: the instruction in force, or None.
        command: the first command recorded at or after this frame and before the next frame.
    """

    index: int
    timestamp_ns: int
    stamp_ns: int
    image: np.ndarray
    joint_state: JointSample | None
    instruction: str | None
    command: RecordedCommand | None


@dataclass(frozen=True)
class FrameTopics:
    """The topics a FrameReader uses; None where a stream is absent or disabled."""

    image: str
    image_type: str
    joint_states: str | None
    instruction: str | None
    command: str | None


def joint_sample(message: Any, timestamp_ns: int) -> JointSample:
    """A JointSample from a decoded ``sensor_msgs/JointState``."""
    return JointSample(
        timestamp_ns=timestamp_ns,
        names=tuple(message.name),
        position=np.asarray(message.position, dtype=np.float64),
        velocity=np.asarray(message.velocity, dtype=np.float64),
        effort=np.asarray(message.effort, dtype=np.float64),
    )


def align_joint_state(
    frame_time_ns: int,
    before: JointSample | None,
    after: JointSample | None,
    mode: str = "interpolate",
) -> JointSample | None:
    """The joint state at ``frame_time_ns`` from the samples around it.

    ``before`` is the latest sample at or before the frame, ``after`` the first sample after it
    (if known). ``"previous"`` returns ``before`` as is. ``"interpolate"`` interpolates each
    array linearly between the two when both exist, name the same joints, and the array lengths
    agree (other arrays, e.g. an empty ``effort``, come from ``before``); otherwise it holds
    ``before``. A sample exactly at the frame time is returned unchanged. No sample at or before
    the frame gives None: values are never extrapolated backwards.
    """
    if mode not in JOINT_ALIGNMENTS:
        raise ValueError(f"joint alignment must be one of {JOINT_ALIGNMENTS}, not {mode!r}")
    if before is None and after is not None and after.timestamp_ns == frame_time_ns:
        return after
    if before is None or mode == "previous" or before.timestamp_ns == frame_time_ns:
        return before
    if after is None or after.names != before.names or after.timestamp_ns <= before.timestamp_ns:
        return before
    weight = (frame_time_ns - before.timestamp_ns) / (after.timestamp_ns - before.timestamp_ns)

    def lerp(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + weight * (b - a) if a.shape == b.shape else a

    return JointSample(
        timestamp_ns=frame_time_ns,
        names=before.names,
        position=lerp(before.position, after.position),
        velocity=lerp(before.velocity, after.velocity),
        effort=lerp(before.effort, after.effort),
    )


def command_values(message: Any, msgtype: str) -> np.ndarray:
    """Flatten a command message: MultiArray → data; Twist(Stamped) → [linear xyz, angular xyz];
    JointTrajectory → positions of its first point (empty without points).

    Raises ValueError for any other type: topics are checked against :data:`COMMAND_TYPES` when
    they are chosen, so reaching it is a bug.
    """
    if msgtype in (FLOAT64_ARRAY_TYPE, FLOAT32_ARRAY_TYPE):
        return np.asarray(message.data, dtype=np.float64)
    if msgtype in (TWIST_TYPE, TWIST_STAMPED_TYPE):
        twist = message.twist if msgtype == TWIST_STAMPED_TYPE else message
        linear, angular = twist.linear, twist.angular
        return np.array([linear.x, linear.y, linear.z, angular.x, angular.y, angular.z], dtype=np.float64)
    if msgtype == JOINT_TRAJECTORY_TYPE:
        if not len(message.points):
            return np.zeros(0, dtype=np.float64)
        return np.asarray(message.points[0].positions, dtype=np.float64)
    raise ValueError(f"{msgtype} is not a supported command type ({', '.join(COMMAND_TYPES)})")


def decode_image(message: Any, msgtype: str) -> np.ndarray:
    """A decoded Image or CompressedImage as an (H, W, 3) uint8 RGB array.

    The node's conversion is reused as is (:mod:`vla_cache_ros.image_conversion`), so a
    bag and a live camera obey one rule: 8-bit colour or mono only; depth, 16-bit and float
    images (raw or compressed, e.g. ``16UC1; png compressed``) and malformed ones raise its
    ``ImageConversionError`` (a UserFacingError).
    """
    if msgtype == COMPRESSED_IMAGE_TYPE:
        return compressed_image_to_rgb(message)
    return image_to_rgb(message)


def _pick_topic(
    bag: BagReader,
    requested: str | None,
    msgtypes: Sequence[str],
    preferred: Sequence[str],
    role: str,
    required: bool,
) -> str | None:
    """Resolve one stream's topic: an explicit name (must exist), None (disabled) or AUTO."""
    if requested is None:
        return None
    if requested != AUTO:
        return bag.require_topic(requested, msgtypes).name
    candidates = bag.topics_of_type(msgtypes)
    if len(candidates) == 1:
        return candidates[0]
    for name in preferred:
        if name in candidates:
            return name
    if not required:
        return None
    what = " or ".join(msgtypes)
    if not candidates:
        raise BagError(f"bag {bag.path} has no {role} topic ({what}); it has:\n{bag.describe_topics()}")
    raise BagError(
        f"bag {bag.path} has several {role} topics ({', '.join(candidates)}); choose one. It has:\n"
        f"{bag.describe_topics()}"
    )


def resolve_frame_topics(
    bag: BagReader,
    image_topic: str | None = AUTO,
    joint_topic: str | None = AUTO,
    instruction_topic: str | None = AUTO,
    command_topic: str | None = AUTO,
) -> FrameTopics:
    """Choose the topics for frame iteration.

    Each argument is a topic name (must exist with a suitable type, else BagError listing the
    bag's topics), :data:`AUTO` (the only topic of that type, else a conventional name such as
    ``/joint_states``; an ambiguous or absent image topic is an error, other streams are then
    simply not used), or None (do not use that stream).
    """
    image = _pick_topic(bag, image_topic, IMAGE_TYPES, PREFERRED_IMAGE_TOPICS, "camera image", required=True)
    assert image is not None
    return FrameTopics(
        image=image,
        image_type=bag.msgtype(image),
        joint_states=_pick_topic(bag, joint_topic, (JOINT_STATE_TYPE,), PREFERRED_JOINT_TOPICS, "joint state", False),
        instruction=_pick_topic(
            bag, instruction_topic, (STRING_TYPE,), PREFERRED_INSTRUCTION_TOPICS, "instruction", False
        ),
        command=_pick_topic(bag, command_topic, COMMAND_TYPES, (), "command", False),
    )


@dataclass
class _PendingFrame:
    """A frame read from the stream and waiting for the messages that follow it."""

    index: int
    raw: RawMessage
    joint_before: JointSample | None
    instruction: str | None
    joint_after: JointSample | None = None
    command: RecordedCommand | None = None


class FrameReader:
    """Iterates the camera frames of a bag with aligned joint states, instruction and commands.

    Alignment rules (all on bag time):

    - joint state: with ``joint_alignment="interpolate"`` (default), linear interpolation
      between the latest joint sample at or before the frame and the first sample after it that
      arrives before the next frame; held from the earlier sample when no later one is there
      (end of bag, joints slower than the camera, joint names changed). With ``"previous"``, the
      latest sample at or before the frame. None before the first joint sample.
    - instruction: ``instruction`` if given (overrides the topic); else the latest message on the
      instruction topic at or before the frame; else None.
    - command: the first message on the command topic at or after the frame and before the next
      image message (the response to this frame), else None.

    Only one frame is held back at a time (to see what follows it), so memory is bounded by one
    image whatever the bag's size. ``every`` keeps every n-th frame; ``max_frames`` stops early;
    ``start_ns``/``stop_ns`` restrict the bag-time window.

    Images that are not 8-bit colour or mono (a depth camera's ``16UC1; png compressed``, float
    depth, 16-bit colour) are never turned into frames: the first image message in the window
    is decoded when the reader is made, so such a topic is refused before any model is loaded,
    and a later frame that fails to decode ends the iteration. Both raise BagError naming the
    topic, the frame and the image's format or encoding. An unknown ``joint_alignment``,
    ``every < 1`` or a negative ``max_frames`` raise ConfigurationError.

    ``skip_before_instruction``: frames recorded before the first message on the instruction
    topic are not yielded (nor counted by ``every`` and ``max_frames``); a bag recorded from a
    live system often starts with camera frames before the instruction is published. How many
    were skipped is in :attr:`skipped_before_instruction` after iterating.
    """

    def __init__(
        self,
        bag: BagReader,
        *,
        image_topic: str | None = AUTO,
        joint_topic: str | None = AUTO,
        instruction_topic: str | None = AUTO,
        command_topic: str | None = AUTO,
        instruction: str | None = None,
        joint_alignment: str = "interpolate",
        every: int = 1,
        max_frames: int | None = None,
        start_ns: int | None = None,
        stop_ns: int | None = None,
        skip_before_instruction: bool = False,
    ) -> None:
        if joint_alignment not in JOINT_ALIGNMENTS:
            raise ConfigurationError(
                f"joint alignment must be one of {', '.join(JOINT_ALIGNMENTS)}, not {joint_alignment!r}")
        if every < 1:
            raise ConfigurationError(f"every (use every N-th frame) must be >= 1, not {every}")
        if max_frames is not None and max_frames < 0:
            raise ConfigurationError(f"max_frames must be >= 0, not {max_frames}")
        self.bag = bag
        self.instruction = instruction
        self.topics = resolve_frame_topics(
            bag,
            image_topic=image_topic,
            joint_topic=joint_topic,
            instruction_topic=None if instruction is not None else instruction_topic,
            command_topic=command_topic,
        )
        self.joint_alignment = joint_alignment
        self.every = every
        self.max_frames = max_frames
        self.start_ns = start_ns
        self.stop_ns = stop_ns
        self.skip_before_instruction = skip_before_instruction and self.topics.instruction is not None
        self.skipped_before_instruction = 0
        self._image_count = bag.topics[self.topics.image].message_count
        self._check_first_image()

    def _check_first_image(self) -> None:
        """Decode the first image message in the window; BagError if it cannot feed the policy."""
        messages = self.bag.raw_messages([self.topics.image], self.start_ns, self.stop_ns)
        try:
            first = next(messages, None)
        finally:
            messages.close()  # releases the storage cursor at once
        if first is not None:
            self._decode(first, 0)

    def _decode(self, raw: RawMessage, index: int) -> tuple[Any, np.ndarray]:
        """The decoded message and its RGB image; BagError (one line) when it does not convert."""
        message = self.bag.deserialize(raw)
        try:
            return message, decode_image(message, raw.msgtype)
        except ImageConversionError as error:
            raise BagError(
                f"cannot use image {index} on {raw.topic} in bag {self.bag.path}: {error}"
            ) from None

    def __len__(self) -> int:
        """Number of frames iteration yields, from the bag index (exact when no time window is set
        and no frame is skipped before the first instruction)."""
        count = (self._image_count + self.every - 1) // self.every
        return count if self.max_frames is None else min(count, self.max_frames)

    def _finish(self, pending: _PendingFrame) -> Frame:
        message, image = self._decode(pending.raw, pending.index)
        return Frame(
            index=pending.index,
            timestamp_ns=pending.raw.timestamp_ns,
            stamp_ns=stamp_nanoseconds(message.header.stamp),
            image=image,
            joint_state=align_joint_state(
                pending.raw.timestamp_ns, pending.joint_before, pending.joint_after, self.joint_alignment
            ),
            instruction=pending.instruction,
            command=pending.command,
        )

    def __iter__(self) -> Iterator[Frame]:
        topics = self.topics
        wanted = [t for t in (topics.image, topics.joint_states, topics.instruction, topics.command) if t]
        instruction = self.instruction
        last_joint: JointSample | None = None
        pending: _PendingFrame | None = None
        image_index = 0
        emitted = 0
        self.skipped_before_instruction = 0
        for raw in self.bag.raw_messages(wanted, self.start_ns, self.stop_ns):
            if raw.topic == topics.image and self.skip_before_instruction and instruction is None:
                self.skipped_before_instruction += 1
            elif raw.topic == topics.image:
                if pending is not None:
                    yield self._finish(pending)
                    emitted += 1
                    pending = None
                if self.max_frames is not None and emitted >= self.max_frames:
                    return
                if image_index % self.every == 0:
                    pending = _PendingFrame(image_index, raw, last_joint, instruction)
                image_index += 1
            elif raw.topic == topics.joint_states:
                sample = joint_sample(self.bag.deserialize(raw), raw.timestamp_ns)
                if pending is not None and pending.joint_after is None:
                    if sample.timestamp_ns == pending.raw.timestamp_ns:
                        pending.joint_before = sample  # exactly at the frame: the value itself
                    else:
                        pending.joint_after = sample
                last_joint = sample
            elif raw.topic == topics.instruction:
                instruction = str(self.bag.deserialize(raw).data)
            elif raw.topic == topics.command:
                if pending is not None and pending.command is None:
                    message = self.bag.deserialize(raw)
                    pending.command = RecordedCommand(
                        raw.topic, raw.msgtype, raw.timestamp_ns, command_values(message, raw.msgtype)
                    )
        if pending is not None and (self.max_frames is None or emitted < self.max_frames):
            yield self._finish(pending)
