"""Live bag playback and recording over ROS 2, for machines without ``ros2 bag``.

- :func:`play_bag` publishes a bag's messages on their topics straight from the stored CDR
  bytes (no decoding), at the recorded pace scaled by ``rate``, with a ``/clock`` topic like
  ``ros2 bag play --clock`` so nodes running with ``use_sim_time`` follow the bag's time.
- :func:`record_bag` subscribes to topics in raw (serialized) form and writes a rosbag2
  (mcap by default) with each topic's type and the receive time as the message timestamp, on
  the node's clock (sim time from ``/clock`` with ``use_sim_time``).

Both stop cleanly on Ctrl-C or SIGTERM: the recorder finalises its bag, the player closes the
bag and the node. The ROS-free bag reading and writing they build on are ``replay.bag_reader`` and
``replay.bag_writer``.
"""
from __future__ import annotations

import importlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

from vla_cache_ros.errors import BagError, ConfigurationError
from vla_cache_ros.replay.bag_reader import BagReader, canonical_cdr, ros2_typestore
from vla_cache_ros.replay.bag_writer import BagWriter
from vla_cache_ros.replay.messages import STRING_TYPE
from vla_cache_ros.ros.process import ros_session
from vla_cache_ros.ros.qos import CLOCK_QOS, LATCHED_QOS, profile
from vla_cache_ros.stamps import NS_PER_S, time_message
from vla_cache_ros.topics import CLOCK as CLOCK_TOPIC

CLOCK_TYPE = "rosgraph_msgs/msg/Clock"

Log = Callable[[str], None]


def message_class(msgtype: str) -> type:
    """The rclpy message class for ``pkg/msg/Name`` (BagError when its package is not installed)."""
    package, kind, name = (msgtype.split("/") + ["", ""])[:3]
    if kind != "msg" or not package or not name:
        raise BagError(f"unsupported message type name {msgtype!r} (expected package/msg/Name)")
    try:
        return getattr(importlib.import_module(f"{package}.msg"), name)
    except (ImportError, AttributeError):
        raise BagError(f"message type {msgtype} is not installed in this Python environment") from None


# --------------------------------------------------------------------------------------------
# play
# --------------------------------------------------------------------------------------------


@dataclass
class PlayResult:
    """What a playback published: messages per topic, /clock messages, passes over the bag."""

    published: Counter = field(default_factory=Counter)
    clock_messages: int = 0
    passes: int = 0
    interrupted: bool = False


class _ClockPublisher:
    """Publishes bag time on /clock at a fixed wall-clock rate and on demand."""

    def __init__(self, node: Any, hz: float) -> None:
        from builtin_interfaces.msg import Time
        from rosgraph_msgs.msg import Clock

        self._clock_cls, self._time_cls = Clock, Time
        self.period_s = 1.0 / hz if hz > 0 else None
        self._publisher = node.create_publisher(Clock, CLOCK_TOPIC, CLOCK_QOS) if hz > 0 else None
        self.next_tick = time.monotonic()
        self.count = 0
        self._latest_ns = 0

    def restart(self) -> None:
        """A new pass over the bag: time may jump back to the start once."""
        self._latest_ns = 0

    @property
    def enabled(self) -> bool:
        return self._publisher is not None

    def publish(self, bag_time_ns: int) -> None:
        """Publish ``bag_time_ns``, never going back in time within a pass."""
        if self._publisher is None:
            return
        self._latest_ns = max(int(bag_time_ns), self._latest_ns)
        self._publisher.publish(self._clock_cls(clock=time_message(self._latest_ns, self._time_cls)))
        self.count += 1

    def wait_until(self, deadline: float, bag_time_at: Callable[[float], int]) -> None:
        """Sleep until the monotonic ``deadline``, publishing /clock at every tick on the way."""
        while True:
            now = time.monotonic()
            if now >= deadline:
                return
            if self.period_s is not None and now >= self.next_tick:
                self.publish(bag_time_at(now))
                self.next_tick = max(self.next_tick + self.period_s, now)
            wake = deadline if self.period_s is None else min(deadline, self.next_tick)
            time.sleep(max(0.0, wake - now))


def _publisher_qos(bag: BagReader, topic: str) -> Any:
    """Reliable (reaches reliable and best-effort subscribers alike), keep-last 100.

    Latched (transient local, keep-last 1) when the recorded publisher offered transient local,
    and for ``std_msgs/String`` topics, which carry instructions and are conventionally latched:
    a transient-local subscriber (the node's instruction input) never connects to a volatile
    publisher, while a transient-local publisher serves volatile subscribers too.
    """
    latched = bag.msgtype(topic) == STRING_TYPE or any(
        p.durability == QosDurability.TRANSIENT_LOCAL for p in bag.qos_profiles(topic))
    return LATCHED_QOS if latched else profile(100)


def _select_play_topics(bag: BagReader, topics: Sequence[str] | None, clock: bool, log: Log) -> list[str]:
    """The topics to publish: those requested (each must exist) or all the bag's topics whose
    message types are installed. The bag's own /clock is left out when /clock is generated."""
    if topics:
        selected = [bag.require_topic(topic).name for topic in topics]
        for topic in selected:
            message_class(bag.msgtype(topic))  # a requested topic must be publishable
    else:
        selected = []
        for topic, summary in bag.topics.items():
            try:
                message_class(summary.msgtype)
            except BagError as error:
                log(f"skipping {topic}: {error}")
                continue
            selected.append(topic)
    if clock and CLOCK_TOPIC in selected:
        log("the bag's own /clock is not replayed: /clock is generated from the bag time")
        selected.remove(CLOCK_TOPIC)
    if not selected:
        raise BagError(f"nothing to play from {bag.path}; it has:\n{bag.describe_topics()}")
    return selected


def _wait_for_subscribers(publishers: dict[str, Any], timeout_s: float, log: Log) -> None:
    """Wait until every publisher has a subscriber, at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(pub.get_subscription_count() > 0 for pub in publishers.values()):
            return
        time.sleep(0.02)
    lonely = [topic for topic, pub in publishers.items() if pub.get_subscription_count() == 0]
    log(f"starting without subscribers on: {', '.join(lonely)}")


def play_bag(
    path: str | Path,
    *,
    rate: float = 1.0,
    loop: bool = False,
    topics: Sequence[str] | None = None,
    clock_hz: float = 40.0,
    delay_s: float = 0.0,
    wait_for_subscribers_s: float = 0.0,
    node_name: str = "vla_cache_player",
    log: Log = print,
) -> PlayResult:
    """Publish the bag at ``path`` on its topics, like ``ros2 bag play --clock``.

    Messages go out from their stored CDR bytes at their recorded spacing divided by ``rate``.
    With ``clock_hz`` > 0, /clock carries the bag time at that wall-clock rate and also right
    before each message (so a ``use_sim_time`` node never sees a message ahead of its clock);
    ``clock_hz`` = 0 disables /clock. ``delay_s`` waits before the first message (publishing the
    start time on /clock), ``wait_for_subscribers_s`` additionally waits up to that long for every
    topic to have a subscriber. With ``loop`` the bag repeats until interrupted, time jumping back
    to the start on each pass as with ``ros2 bag play --loop``. Ctrl-C / SIGTERM ends playback
    cleanly (``interrupted`` in the result).
    """
    if rate <= 0:
        raise ConfigurationError(f"--rate must be > 0, got {rate}")
    if clock_hz < 0 or delay_s < 0 or wait_for_subscribers_s < 0:
        raise ConfigurationError("--clock-hz, --delay and --wait-for-subscribers must be >= 0")
    result = PlayResult()
    with BagReader(path) as bag:
        selected = _select_play_topics(bag, topics, clock_hz > 0, log)
        with ros_session(node_name) as node:
            publishers = {
                topic: node.create_publisher(message_class(bag.msgtype(topic)), topic, _publisher_qos(bag, topic))
                for topic in selected
            }
            clock = _ClockPublisher(node, clock_hz)
            first_message = next(bag.raw_messages(selected), None)
            if first_message is None:
                raise BagError(f"bag {path} has no messages on {', '.join(selected)}")
            start_ns = first_message.timestamp_ns
            log(f"playing {len(selected)} topics from {path} at rate {rate:g}" + (" (loop)" if loop else ""))
            try:
                if wait_for_subscribers_s > 0:
                    _wait_for_subscribers(publishers, wait_for_subscribers_s, log)
                clock.wait_until(time.monotonic() + delay_s, lambda now: start_ns)
                while True:
                    _play_pass(bag, selected, publishers, clock, start_ns, rate, result)
                    result.passes += 1
                    if not loop:
                        break
            except KeyboardInterrupt:
                result.interrupted = True
            if not result.interrupted:
                _flush(publishers.values())
            result.clock_messages = clock.count
    total = sum(result.published.values())
    log(f"published {total} messages" + (f" and {result.clock_messages} /clock" if clock_hz > 0 else "")
        + (" (interrupted)" if result.interrupted else ""))
    return result


def _flush(publishers: Any, timeout_s: float = 2.0) -> None:
    """Wait until reliable subscribers acknowledged what was sent, so that exiting right after
    the last message does not lose it (best-effort publishers return at once)."""
    from rclpy.duration import Duration

    deadline = time.monotonic() + timeout_s
    for publisher in publishers:
        remaining = max(deadline - time.monotonic(), 0.0)
        publisher.wait_for_all_acked(Duration(nanoseconds=int(remaining * 1e9)))


def _play_pass(
    bag: BagReader,
    topics: list[str],
    publishers: dict[str, Any],
    clock: _ClockPublisher,
    start_ns: int,
    rate: float,
    result: PlayResult,
) -> None:
    """Publish every message once, paced on the monotonic clock."""
    wall_start = time.monotonic()
    clock.restart()

    def bag_time_at(now: float) -> int:
        return start_ns + int((now - wall_start) * rate * 1e9)

    for message in bag.raw_messages(topics):
        deadline = wall_start + (message.timestamp_ns - start_ns) / 1e9 / rate
        clock.wait_until(deadline, bag_time_at)
        clock.publish(message.timestamp_ns)
        publishers[message.topic].publish(message.data)
        result.published[message.topic] += 1


# --------------------------------------------------------------------------------------------
# record
# --------------------------------------------------------------------------------------------


@dataclass
class RecordResult:
    """What a recording wrote: messages per topic and topic types, plus what was left out."""

    path: Path
    written: Counter = field(default_factory=Counter)
    types: dict[str, str] = field(default_factory=dict)
    dropped_before_clock: int = 0
    never_seen: list[str] = field(default_factory=list)
    interrupted: bool = False


def _as_bag_qos(offered: Any) -> Qos:
    """An rclpy QoSProfile (as offered by a publisher) in rosbags' form, for the bag metadata."""

    def member(enum: Any, policy: Any) -> Any:
        return enum.__members__.get(getattr(policy, "name", ""), enum.UNKNOWN)

    def duration(value: Any) -> QosTime:
        sec, nsec = divmod(int(getattr(value, "nanoseconds", 0)), NS_PER_S)
        return QosTime(min(sec, 2**31 - 1), nsec)

    return Qos(
        history=member(QosHistory, offered.history),
        depth=int(offered.depth),
        reliability=member(QosReliability, offered.reliability),
        durability=member(QosDurability, offered.durability),
        deadline=duration(offered.deadline),
        lifespan=duration(offered.lifespan),
        liveliness=member(QosLiveliness, offered.liveliness),
        liveliness_lease_duration=duration(offered.liveliness_lease_duration),
        avoid_ros_namespace_conventions=bool(offered.avoid_ros_namespace_conventions),
    )


def _subscription_qos(node: Any, topic: str) -> Any:
    """A QoS that matches every current publisher of ``topic`` (as ``ros2 bag record`` adapts)."""
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    offered = [info.qos_profile for info in node.get_publishers_info_by_topic(topic)]
    reliable = bool(offered) and all(q.reliability == ReliabilityPolicy.RELIABLE for q in offered)
    latched = bool(offered) and all(q.durability == DurabilityPolicy.TRANSIENT_LOCAL for q in offered)
    return profile(100, reliable=reliable, latched=latched)


class _Recorder:
    """Subscribes to the requested topics as their publishers appear and writes what arrives."""

    def __init__(self, node: Any, writer: BagWriter, topics: Sequence[str], result: RecordResult, log: Log) -> None:
        self.node = node
        self.writer = writer
        self.pending = list(dict.fromkeys(topics))
        self.result = result
        self.log = log
        self.subscriptions: list[Any] = []
        self.typestore = ros2_typestore()

    def discover(self) -> None:
        """Subscribe to each pending topic that now has a publisher."""
        graph = dict(self.node.get_topic_names_and_types())
        for topic in list(self.pending):
            types = graph.get(topic)
            if not types or not self.node.get_publishers_info_by_topic(topic):
                continue
            msgtype = types[0]
            self.pending.remove(topic)
            if len(types) > 1:
                self.log(f"{topic} is published with several types {types}; recording {msgtype}")
            if msgtype not in self.typestore.types:
                self.log(f"not recording {topic}: type {msgtype} is unknown to the ROS 2 Kilted typestore")
                continue
            try:
                cls = message_class(msgtype)
            except BagError as error:
                self.log(f"not recording {topic}: {error}")
                continue
            offered = [_as_bag_qos(info.qos_profile) for info in self.node.get_publishers_info_by_topic(topic)]
            self.writer.add_topic(topic, msgtype, offered)
            self.result.types[topic] = msgtype
            self.subscriptions.append(
                self.node.create_subscription(
                    cls, topic, self._callback(topic, msgtype), _subscription_qos(self.node, topic), raw=True
                )
            )
            self.log(f"recording {topic} ({msgtype})")

    def _callback(self, topic: str, msgtype: str) -> Callable[[bytes], None]:
        def on_message(data: bytes) -> None:
            stamp_ns = self.node.get_clock().now().nanoseconds
            if stamp_ns <= 0:  # use_sim_time and no /clock yet: there is no time to write
                self.result.dropped_before_clock += 1
                return
            self.writer.write_raw(topic, msgtype, canonical_cdr(data, msgtype, self.typestore), stamp_ns)
            self.result.written[topic] += 1

        return on_message


def record_bag(
    out: str | Path,
    topics: Sequence[str],
    *,
    storage: str = "mcap",
    use_sim_time: bool = False,
    duration_s: float | None = None,
    node_name: str = "vla_cache_recorder",
    log: Log = print,
) -> RecordResult:
    """Record ``topics`` into a new rosbag2 at ``out`` until Ctrl-C / SIGTERM or ``duration_s``.

    Each topic is subscribed as soon as a publisher appears, with its advertised type and a QoS
    compatible with its publishers; the publishers' offered QoS go into the bag's metadata (so
    a later ``play`` latches what was latched). Messages are stored as received (minus the stray trailing
    bytes rclpy can add, see :func:`canonical_cdr`) with the receive time on the node's clock
    as timestamp: wall time, or the /clock time with ``use_sim_time`` (messages arriving before
    the first /clock are dropped and counted). ``duration_s`` is wall time.
    """
    if not topics:
        raise ConfigurationError("give at least one topic to record")
    if duration_s is not None and duration_s <= 0:
        raise ConfigurationError(f"--duration must be > 0, got {duration_s}")
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    result = RecordResult(path=Path(out))
    with BagWriter(out, storage=storage) as writer, ros_session(node_name, use_sim_time) as node:
        recorder = _Recorder(node, writer, topics, result, log)
        executor = SingleThreadedExecutor(context=node.context)
        executor.add_node(node)
        end = None if duration_s is None else time.monotonic() + duration_s
        next_discovery = 0.0
        log(f"recording to {out} ({storage}); Ctrl-C to stop")
        try:
            while end is None or time.monotonic() < end:
                if recorder.pending and time.monotonic() >= next_discovery:
                    recorder.discover()
                    next_discovery = time.monotonic() + 0.1
                executor.spin_once(timeout_sec=0.05)
        except (KeyboardInterrupt, ExternalShutdownException):
            result.interrupted = True
        finally:
            executor.remove_node(node)
            executor.shutdown()
        result.never_seen = list(recorder.pending)
    if result.never_seen:
        log(f"no publisher appeared on: {', '.join(result.never_seen)}")
    if result.dropped_before_clock:
        log(f"dropped {result.dropped_before_clock} messages received before the first /clock")
    log(f"wrote {sum(result.written.values())} messages to {out}")
    return result
