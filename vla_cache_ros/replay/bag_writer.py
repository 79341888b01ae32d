"""Write rosbag2 recordings (mcap or sqlite3) without ROS, with the ``rosbags`` library.

:class:`BagWriter` stores typed messages (built with :mod:`vla_cache_ros.replay.messages`) or
raw CDR bytes (from a live recorder) in a new rosbag2 directory, and :func:`make_qos` describes
the QoS a topic was offered with, for the bag's metadata (so that playback latches a latched
topic again). Used by the synthetic bag, the simulator's episode recorder and the live recorder.
Timestamps are integer nanoseconds of bag time.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rosbags.interfaces import Connection, Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys.store import Typestore

from vla_cache_ros.errors import BagError
from vla_cache_ros.replay.bag_reader import STORAGES, error_detail, ros2_typestore


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
            raise BagError(f"cannot create bag {self.path}: {error_detail(error)}") from None
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


LATCHED_QOS = make_qos(transient_local=True, depth=1)
"""Offered QoS of a latched topic (reliable, transient local, keep last 1), such as an instruction."""
