"""Read rosbag2 recordings (sqlite3 and mcap) without ROS, with the ``rosbags`` library.

Reading is streaming throughout: messages are pulled one at a time in bag-time order, so memory
stays bounded on multi-GB bags. Every failure a user can cause (missing path, corrupt or
truncated file, missing topic, undecodable message) surfaces as one
:class:`~vla_cache_ros.errors.BagError` whose message says what was wrong; a missing topic lists
the bag's topics and types.

- :class:`BagReader`: topics/types/counts/offered QoS, raw CDR messages, decoded messages.
- :func:`ros2_typestore`: the ROS 2 message definitions shared by reading, writing and the
  message builders.
- :func:`canonical_cdr`: trims the trailing bytes rclpy's serializer leaves on some messages,
  so bytes serialized by rclpy can be stored and read back by ``rosbags``.

Aligning camera frames with joint states, instructions and commands is
:mod:`vla_cache_ros.replay.frames`; writing is :mod:`vla_cache_ros.replay.bag_writer`.
Timestamps are integer nanoseconds of bag time: the time a message was logged (receive time for
a recorder, the writer's timestamp otherwise).
"""
from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rosbags.interfaces import Connection, Qos
from rosbags.rosbag2 import Reader
from rosbags.rosbag2.storage_mcap import McapReader
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from vla_cache_ros.errors import BagError

STORAGES = ("mcap", "sqlite3")
STORAGE_SUFFIXES = {".mcap": "mcap", ".db3": "sqlite3"}


@functools.cache
def ros2_typestore() -> Typestore:
    """The ROS 2 Kilted typestore shared by readers and writers (cached: building it costs ~0.1 s)."""
    return get_typestore(Stores.ROS2_KILTED)


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


def error_detail(error: BaseException) -> str:
    """One-line ``Type: text`` description of a library exception, for embedding in a BagError."""
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
            raise BagError(f"cannot open bag {self.path} (corrupt or truncated?): {error_detail(error)}") from None
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
            raise BagError(f"cannot read bag {self.path} (corrupt or truncated?): {error_detail(error)}") from None

    def deserialize(self, message: RawMessage) -> Any:
        """Decode a raw message into a ``rosbags`` message object (BagError if it does not decode)."""
        try:
            return self._typestore.deserialize_cdr(message.data, message.msgtype)
        except Exception as error:
            raise BagError(
                f"cannot decode a {message.msgtype} message on {message.topic} at t={message.timestamp_ns} ns "
                f"in bag {self.path}: {error_detail(error)}"
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
        raise BagError(f"a {msgtype} message does not decode: {error_detail(error)}") from None
