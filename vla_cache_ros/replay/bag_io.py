"""Read and write rosbag2 recordings (sqlite3 and mcap) without ROS, with the ``rosbags`` library.

Reading is streaming throughout: messages are pulled one at a time in timestamp order, so
memory stays bounded on multi-GB bags. Every failure a user can cause (missing path, corrupt or
truncated file, missing topic) surfaces as one :class:`~vla_cache_ros.errors.BagError` whose
message says what was wrong; a missing topic lists the bag's topics and types.

Main pieces:

- :class:`BagReader`: topics/types/counts, raw CDR messages, decoded messages.
- :class:`FrameReader`: camera frames (``sensor_msgs/Image`` or ``CompressedImage``) as RGB
  arrays, each with the joint state aligned to it, the instruction in force and the recorded
  command that followed it (see the class docstring for the exact alignment rules).
- :class:`BagWriter` plus message builders (:func:`image_message`, :func:`joint_state_message`,
  ...): typed messages to a rosbag2 directory, reused by the synthetic bag and the simulator's
  data collection.
- :func:`canonical_cdr`: trims the trailing bytes rclpy's serializer leaves on some messages,
  so bytes serialized by rclpy can be stored and read back by ``rosbags``.

Timestamps are integer nanoseconds. "Bag time" is the time a message was logged (receive time
for a recorder, the writer's timestamp otherwise); alignment of frames, joints, instructions and
commands uses bag time, never header stamps, because header stamps are often zero or come from
different clocks.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.interfaces import (
    Connection,
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.rosbag2.storage_mcap import McapReader
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from vla_cache_ros.errors import BagError

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE)
JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"
STRING_TYPE = "std_msgs/msg/String"
FLOAT64_ARRAY_TYPE = "std_msgs/msg/Float64MultiArray"
# Message types accepted as "recorded commands", each turned into a flat vector by
# :func:`command_values`.
COMMAND_TYPES = (
    FLOAT64_ARRAY_TYPE,
    "std_msgs/msg/Float32MultiArray",
    "geometry_msgs/msg/Twist",
    "geometry_msgs/msg/TwistStamped",
    "trajectory_msgs/msg/JointTrajectory",
)

STORAGES = ("mcap", "sqlite3")
STORAGE_SUFFIXES = {".mcap": "mcap", ".db3": "sqlite3"}

# Names preferred when a bag has several topics of the right type and none was named.
PREFERRED_IMAGE_TOPICS = (
    "/camera/image_raw",
    "/camera/color/image_raw",
    "/camera/image_raw/compressed",
    "/camera/color/image_raw/compressed",
    "/image_raw",
    "/image",
)
PREFERRED_JOINT_TOPICS = ("/joint_states",)
PREFERRED_INSTRUCTION_TOPICS = ("/instruction", "/vla/instruction", "/task/instruction")

# Sentinel for "find the topic by type"; ``None`` means "do not use this stream".
AUTO = "auto"

JOINT_ALIGNMENTS = ("interpolate", "previous")


@functools.cache
def ros2_typestore() -> Typestore:
    """The ROS 2 Kilted typestore shared by readers and writers (cached: building it costs ~0.1 s)."""
    return get_typestore(Stores.ROS2_KILTED)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicSummary:
    """One topic of a bag: its name, message type and number of messages."""

    name: str
    msgtype: str
    message_count: int


@dataclass(frozen=True)
class RawMessage:
    """One serialized (CDR) message as stored in the bag."""

    topic: str
    msgtype: str
    timestamp_ns: int
    data: bytes


def _resolve_bag_path(path: Path) -> Path:
    """Return what ``rosbags`` should open for ``path``, or raise a BagError saying why not."""
    if not path.exists():
        raise BagError(f"bag not found: {path}")
    if path.is_dir():
        if (path / "metadata.yaml").exists():
            return path
        # A directory whose metadata.yaml was lost (e.g. a recorder killed hard) still holds a
        # readable storage file; open it directly when there is exactly one.
        storage_files = sorted(p for p in path.iterdir() if p.suffix in STORAGE_SUFFIXES)
        if len(storage_files) == 1:
            return storage_files[0]
        raise BagError(
            f"{path} is not a rosbag2 directory: no metadata.yaml"
            + (f" and {len(storage_files)} storage files" if storage_files else " and no .mcap/.db3 file")
        )
    if path.suffix not in STORAGE_SUFFIXES:
        raise BagError(f"{path} is not a rosbag2 bag: expected a directory, a .mcap or a .db3 file")
    return path


def _error_detail(error: BaseException) -> str:
    """One-line description of a library exception, for embedding in a BagError."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class BagReader:
    """A rosbag2 directory or a single .mcap / .db3 file, opened for streaming reads.

    Use as a context manager::

        with BagReader("run1/") as bag:
            print(bag.describe_topics())
            for message in bag.raw_messages(["/joint_states"]):
                ...

    Any failure to open or read the bag raises :class:`BagError`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._reader: Reader | None = None
        self._typestore: Typestore = ros2_typestore()
        self._connections: dict[str, list[Connection]] = {}
        self._storage = ""

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> "BagReader":
        """Open the bag and read its index; raises BagError if it is missing or unreadable."""
        target = _resolve_bag_path(self.path)
        try:
            reader = Reader(target)
            reader.open()
        except BagError:
            raise
        except Exception as error:  # rosbags, sqlite3, OS and parse errors alike
            raise BagError(f"cannot open bag {self.path} (corrupt or truncated?): {_error_detail(error)}") from None
        self._reader = reader
        self._storage = self._storage_name(reader, target)
        connections: dict[str, list[Connection]] = {}
        for connection in reader.connections:
            connections.setdefault(connection.topic, []).append(connection)
        self._connections = dict(sorted(connections.items()))
        self._typestore = self._build_typestore(reader.connections)
        return self

    @staticmethod
    def _storage_name(reader: Reader, target: Path) -> str:
        if target.is_file():
            return STORAGE_SUFFIXES[target.suffix]
        storages = getattr(reader.storage, "storages", [])
        return "mcap" if storages and isinstance(storages[0], McapReader) else "sqlite3"

    def close(self) -> None:
        """Close the bag (idempotent)."""
        reader, self._reader = self._reader, None
        if reader is not None:
            try:
                reader.close()
            except Exception:  # closing a damaged file must not mask the original error
                pass

    def __enter__(self) -> "BagReader":
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def _open_reader(self) -> Reader:
        if self._reader is None:
            raise RuntimeError("BagReader is not open; use it as a context manager or call open()")
        return self._reader

    def _build_typestore(self, connections: Iterable[Connection]) -> Typestore:
        """Kilted types, plus any type the bag defines itself that Kilted lacks (custom messages)."""
        base = ros2_typestore()
        extra: dict[str, Any] = {}
        for connection in connections:
            if connection.msgtype in base.types or not connection.msgdef.data:
                continue
            try:
                if connection.msgdef.data.startswith("=" * 80 + "\nIDL: "):
                    for part in connection.msgdef.data.split("=" * 80 + "\n")[1:]:
                        extra.update(get_types_from_idl(part.split("\n", 1)[1]))
                else:
                    extra.update(get_types_from_msg(connection.msgdef.data, connection.msgtype))
            except Exception:
                continue  # undecodable definition: raw access still works for that topic
        if not extra:
            return base
        store = get_typestore(Stores.ROS2_KILTED)  # a fresh store; the shared one stays pristine
        store.register({name: fields for name, fields in extra.items() if name not in store.types})
        return store

    # -- metadata ------------------------------------------------------------------------------

    @property
    def storage(self) -> str:
        """``"mcap"`` or ``"sqlite3"``."""
        self._open_reader
        return self._storage

    @property
    def start_time_ns(self) -> int:
        """Bag time of the earliest message (0 for an empty bag)."""
        return self._open_reader.start_time if self.message_count else 0

    @property
    def end_time_ns(self) -> int:
        """Bag time of the latest message (0 for an empty bag)."""
        return self._open_reader.end_time - 1 if self.message_count else 0

    @property
    def duration_ns(self) -> int:
        """Time between the earliest and the latest message."""
        return max(0, self.end_time_ns - self.start_time_ns)

    @property
    def message_count(self) -> int:
        """Number of messages over all topics."""
        return self._open_reader.message_count

    @property
    def topics(self) -> dict[str, TopicSummary]:
        """Every topic of the bag, by name (sorted)."""
        self._open_reader
        return {
            name: TopicSummary(name, connections[0].msgtype, sum(c.msgcount for c in connections))
            for name, connections in self._connections.items()
        }

    def msgtype(self, topic: str) -> str:
        """The message type stored on ``topic`` (raises BagError listing the topics if absent)."""
        return self.require_topic(topic).msgtype

    def qos_profiles(self, topic: str) -> list[Qos]:
        """The QoS profiles offered on ``topic`` when it was recorded (may be empty)."""
        self.require_topic(topic)
        profiles: list[Qos] = []
        for connection in self._connections[topic]:
            profiles.extend(getattr(connection.ext, "offered_qos_profiles", []) or [])
        return profiles

    def describe_topics(self, indent: str = "  ") -> str:
        """A multi-line listing ``topic  type  (N messages)`` for messages and errors."""
        topics = self.topics
        if not topics:
            return f"{indent}(the bag has no topics)"
        width = max(len(name) for name in topics)
        return "\n".join(
            f"{indent}{summary.name:<{width}}  {summary.msgtype}  ({summary.message_count} msgs)"
            for summary in topics.values()
        )

    def require_topic(self, topic: str, msgtypes: Sequence[str] | None = None) -> TopicSummary:
        """Return the summary of ``topic``; BagError (listing the bag's topics) if absent or of the wrong type."""
        summary = self.topics.get(topic)
        if summary is None:
            raise BagError(f"topic {topic!r} is not in bag {self.path}; it has:\n{self.describe_topics()}")
        if msgtypes is not None and summary.msgtype not in msgtypes:
            raise BagError(
                f"topic {topic!r} in bag {self.path} has type {summary.msgtype}, expected "
                f"{' or '.join(msgtypes)}; the bag has:\n{self.describe_topics()}"
            )
        return summary

    def topics_of_type(self, msgtypes: Sequence[str]) -> list[str]:
        """Names of the topics whose type is one of ``msgtypes``, sorted."""
        return [name for name, summary in self.topics.items() if summary.msgtype in msgtypes]

    # -- messages ------------------------------------------------------------------------------

    def raw_messages(
        self,
        topics: Iterable[str] | None = None,
        start_ns: int | None = None,
        stop_ns: int | None = None,
    ) -> Iterator[RawMessage]:
        """Stream the serialized messages of ``topics`` (all if None) in bag-time order.

        ``start_ns`` is inclusive, ``stop_ns`` exclusive. A read failure part-way (truncated or
        corrupt file) raises BagError.
        """
        reader = self._open_reader
        if topics is None:
            connections = [c for group in self._connections.values() for c in group]
        else:
            connections = [c for topic in topics for c in self._connections[self.require_topic(topic).name]]
        if not connections:
            return
        try:
            for connection, timestamp, data in reader.messages(connections, start=start_ns, stop=stop_ns):
                yield RawMessage(
                    connection.topic, connection.msgtype, timestamp, data if isinstance(data, bytes) else bytes(data)
                )
        except BagError:
            raise
        except Exception as error:
            raise BagError(f"cannot read bag {self.path} (corrupt or truncated?): {_error_detail(error)}") from None

    def deserialize(self, message: RawMessage) -> Any:
        """Decode a raw message into a ``rosbags`` message object (BagError if it does not decode)."""
        try:
            return self._typestore.deserialize_cdr(message.data, message.msgtype)
        except Exception as error:
            raise BagError(
                f"cannot decode a {message.msgtype} message on {message.topic} at t={message.timestamp_ns} ns "
                f"in bag {self.path}: {_error_detail(error)}"
            ) from None

    def messages(
        self,
        topics: Iterable[str] | None = None,
        start_ns: int | None = None,
        stop_ns: int | None = None,
    ) -> Iterator[tuple[RawMessage, Any]]:
        """Like :meth:`raw_messages`, each paired with its decoded message."""
        for raw in self.raw_messages(topics, start_ns, stop_ns):
            yield raw, self.deserialize(raw)


def list_topics(path: str | Path) -> dict[str, TopicSummary]:
    """The topics of the bag at ``path`` (opens and closes it)."""
    with BagReader(path) as bag:
        return bag.topics


# --------------------------------------------------------------------------------------------
# Frames with aligned joint states, instruction and commands
# --------------------------------------------------------------------------------------------


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


def _stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


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
    JointTrajectory → positions of its first point (empty without points)."""
    if msgtype in ("std_msgs/msg/Float64MultiArray", "std_msgs/msg/Float32MultiArray"):
        return np.asarray(message.data, dtype=np.float64)
    if msgtype in ("geometry_msgs/msg/Twist", "geometry_msgs/msg/TwistStamped"):
        twist = message.twist if msgtype.endswith("TwistStamped") else message
        linear, angular = twist.linear, twist.angular
        return np.array([linear.x, linear.y, linear.z, angular.x, angular.y, angular.z], dtype=np.float64)
    if msgtype == "trajectory_msgs/msg/JointTrajectory":
        if not len(message.points):
            return np.zeros(0, dtype=np.float64)
        return np.asarray(message.points[0].positions, dtype=np.float64)
    raise ValueError(f"{msgtype} is not a supported command type ({', '.join(COMMAND_TYPES)})")


def decode_image(message: Any, msgtype: str) -> np.ndarray:
    """A decoded Image or CompressedImage as an (H, W, 3) uint8 RGB array.

    The node's conversion is reused as is (:mod:`vla_cache_ros.image_conversion`), so a
    bag and a live camera obey one rule: 8-bit colour or mono only; depth, 16-bit and float
    images (raw or compressed, e.g. ``16UC1; png compressed``) raise its
    ``ImageConversionError``, a UserFacingError and ValueError.
    """
    from vla_cache_ros import image_conversion  # pure numpy/OpenCV, no rclpy

    if msgtype == COMPRESSED_IMAGE_TYPE:
        return image_conversion.compressed_image_to_rgb(message)
    return image_conversion.image_to_rgb(message)


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
    topic, the frame and the image's format or encoding.
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
    ) -> None:
        if joint_alignment not in JOINT_ALIGNMENTS:
            raise ValueError(f"joint_alignment must be one of {JOINT_ALIGNMENTS}, not {joint_alignment!r}")
        if every < 1:
            raise ValueError("every must be >= 1")
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
        except BagError:
            raise
        except (ValueError, TypeError) as error:
            raise BagError(
                f"cannot use image {index} on {raw.topic} in bag {self.bag.path}: {error}"
            ) from None

    def __len__(self) -> int:
        """Number of frames iteration yields, from the bag index (exact when no time window is set)."""
        count = (self._image_count + self.every - 1) // self.every
        return count if self.max_frames is None else min(count, self.max_frames)

    def _finish(self, pending: _PendingFrame) -> Frame:
        message, image = self._decode(pending.raw, pending.index)
        return Frame(
            index=pending.index,
            timestamp_ns=pending.raw.timestamp_ns,
            stamp_ns=_stamp_ns(message.header),
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
        for raw in self.bag.raw_messages(wanted, self.start_ns, self.stop_ns):
            if raw.topic == topics.image:
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


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


class BagWriter:
    """Writes typed (``rosbags``) or raw CDR messages to a new rosbag2 directory.

    ::

        with BagWriter("out_bag", storage="mcap") as writer:
            writer.write("/joint_states", joint_state_message(...), timestamp_ns)

    Topics are registered on first write (or explicitly with :meth:`add_topic`, e.g. to store
    QoS profiles). The bag is finalised (metadata.yaml written) when the context exits, also on
    an exception, so whatever was written before a crash or Ctrl-C stays readable.
    """

    def __init__(self, path: str | Path, *, storage: str = "mcap", typestore: Typestore | None = None) -> None:
        if storage not in STORAGES:
            raise BagError(f"unknown bag storage {storage!r}; choose one of {', '.join(STORAGES)}")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"{self.path} exists already; not overwriting a bag")
        self.storage = storage
        self.typestore = typestore or ros2_typestore()
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        self._connections: dict[str, Connection] = {}
        self._open = False
        self.message_count = 0

    def open(self) -> "BagWriter":
        """Create the bag directory and storage file."""
        try:
            self._writer.open()
        except Exception as error:
            raise BagError(f"cannot create bag {self.path}: {_error_detail(error)}") from None
        self._open = True
        return self

    def close(self) -> None:
        """Finalise the bag: flush the storage and write metadata.yaml (idempotent)."""
        if self._open:
            self._open = False
            self._writer.close()

    def __enter__(self) -> "BagWriter":
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def topics(self) -> dict[str, str]:
        """Registered topics and their types."""
        return {topic: connection.msgtype for topic, connection in self._connections.items()}

    def add_topic(self, topic: str, msgtype: str, qos_profiles: Sequence[Qos] = ()) -> None:
        """Register ``topic`` with ``msgtype`` (a Kilted or custom type known to the typestore)."""
        existing = self._connections.get(topic)
        if existing is not None:
            if existing.msgtype != msgtype:
                raise BagError(f"topic {topic} already holds {existing.msgtype}, cannot also write {msgtype}")
            return
        if msgtype not in self.typestore.types:
            raise BagError(f"message type {msgtype} is unknown to the ROS 2 typestore; cannot write {topic}")
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, typestore=self.typestore, offered_qos_profiles=list(qos_profiles)
        )

    def write(self, topic: str, message: Any, timestamp_ns: int) -> None:
        """Serialize a ``rosbags`` message object and write it at bag time ``timestamp_ns``."""
        msgtype = message.__msgtype__
        self.add_topic(topic, msgtype)
        self.write_raw(topic, msgtype, bytes(self.typestore.serialize_cdr(message, msgtype)), timestamp_ns)

    def write_raw(self, topic: str, msgtype: str, data: bytes, timestamp_ns: int) -> None:
        """Write already-serialized CDR bytes of type ``msgtype`` at bag time ``timestamp_ns``."""
        if timestamp_ns < 0:
            raise BagError(f"negative timestamp {timestamp_ns} for {topic}")
        self.add_topic(topic, msgtype)
        self._writer.write(self._connections[topic], int(timestamp_ns), data)
        self.message_count += 1


def make_qos(*, reliable: bool = True, transient_local: bool = False, depth: int = 10) -> Qos:
    """An offered-QoS entry for :meth:`BagWriter.add_topic` (e.g. a latched instruction topic:
    ``transient_local=True, depth=1``); deadlines and lifespans are left at their defaults."""
    default_time = QosTime(0, 0)
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=depth,
        reliability=QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
        durability=QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
        deadline=default_time,
        lifespan=default_time,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=default_time,
        avoid_ros_namespace_conventions=False,
    )


def canonical_cdr(data: bytes, msgtype: str, typestore: Typestore | None = None) -> bytes:
    """``data`` without bytes trailing the message proper.

    ``rclpy.serialization.serialize_message`` appends a few bytes after messages holding an
    empty array, which ``rosbags`` then rejects ("CDR message size mismatch"). Bytes received
    over DDS were clean when checked, but the recorder passes everything through this guard.
    Returns ``data`` unchanged when it already decodes; raises BagError when it does not decode
    at all.
    """
    store = typestore or ros2_typestore()
    try:
        store.deserialize_cdr(data, msgtype)
        return data
    except Exception:
        pass
    try:
        if data[1] not in (0, 1):  # encapsulation: 0x0000 CDR_BE, 0x0001 CDR_LE
            raise ValueError("unknown CDR encapsulation")
        msgdef = store.get_msgdef(msgtype)
        deserialize = msgdef.deserialize_cdr_le if data[1] == 1 else msgdef.deserialize_cdr_be
        _, end = deserialize(data[4:], 0, msgdef.cls, store)
        trimmed = bytes(data[: 4 + end])
        store.deserialize_cdr(trimmed, msgtype)
        return trimmed
    except Exception as error:
        raise BagError(f"a {msgtype} message does not decode: {_error_detail(error)}") from None


# --------------------------------------------------------------------------------------------
# Message builders (rosbags message objects, no ROS needed)
# --------------------------------------------------------------------------------------------


def _types() -> dict[str, Any]:
    return ros2_typestore().types


def time_message(stamp_ns: int) -> Any:
    """``builtin_interfaces/Time`` for ``stamp_ns``."""
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return _types()["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)


def header_message(stamp_ns: int, frame_id: str = "") -> Any:
    """``std_msgs/Header`` with the given stamp and frame."""
    return _types()["std_msgs/msg/Header"](stamp=time_message(stamp_ns), frame_id=frame_id)


def image_message(rgb: np.ndarray, stamp_ns: int, frame_id: str = "camera", encoding: str = "rgb8") -> Any:
    """``sensor_msgs/Image`` from an (H, W, 3) uint8 RGB array, stored in ``encoding``
    (``rgb8``, ``bgr8``, ``rgba8``, ``bgra8`` or ``mono8``)."""
    from vla_cache_ros.image_conversion import rgb_to_image_fields

    fields = rgb_to_image_fields(rgb, encoding)
    fields["data"] = np.frombuffer(fields["data"], dtype=np.uint8)
    return _types()[IMAGE_TYPE](header=header_message(stamp_ns, frame_id), **fields)


def compressed_image_message(rgb: np.ndarray, stamp_ns: int, frame_id: str = "camera", fmt: str = "jpeg") -> Any:
    """``sensor_msgs/CompressedImage`` (``jpeg`` or ``png``) from an (H, W, 3) uint8 RGB array."""
    from vla_cache_ros.image_conversion import rgb_to_compressed_fields

    fields = rgb_to_compressed_fields(rgb, fmt)
    fields["data"] = np.frombuffer(fields["data"], dtype=np.uint8)
    return _types()[COMPRESSED_IMAGE_TYPE](header=header_message(stamp_ns, frame_id), **fields)


def joint_state_message(
    names: Sequence[str],
    position: Sequence[float],
    stamp_ns: int,
    velocity: Sequence[float] = (),
    effort: Sequence[float] = (),
) -> Any:
    """``sensor_msgs/JointState``; empty ``velocity``/``effort`` are allowed, as in ROS."""
    return _types()[JOINT_STATE_TYPE](
        header=header_message(stamp_ns),
        name=list(names),
        position=np.asarray(position, dtype=np.float64),
        velocity=np.asarray(velocity, dtype=np.float64),
        effort=np.asarray(effort, dtype=np.float64),
    )


def string_message(text: str) -> Any:
    """``std_msgs/String``."""
    return _types()[STRING_TYPE](data=text)


def float64_array_message(values: Sequence[float]) -> Any:
    """``std_msgs/Float64MultiArray`` with an empty layout (as forward_command_controller expects)."""
    types = _types()
    layout = types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    return types[FLOAT64_ARRAY_TYPE](layout=layout, data=np.asarray(values, dtype=np.float64))
