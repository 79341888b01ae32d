"""`play` and `record` over real DDS: the CLI runs in subprocesses, the test process subscribes
or publishes with rclpy. No timing is asserted; waits are generous deadlines."""
from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vla_cache_ros import topics
from vla_cache_ros.replay.bag_reader import BagReader, list_topics
from vla_cache_ros.replay.frames import FrameReader
from vla_cache_ros.replay.synthetic_bag import SyntheticBagSpec, write_synthetic_bag
from vla_cache_ros.stamps import stamp_nanoseconds
from vla_cache_ros.subprocesses import collect
from vla_cache_ros.synthetic import SyntheticScene

rclpy = pytest.importorskip("rclpy")

SPEC = dict(height=32, width=40, num_frames=8, camera_hz=20.0, joint_hz=100.0, commands=True)
TOPICS = (topics.CAMERA_TOPIC, topics.JOINT_STATES_TOPIC, topics.INSTRUCTION_TOPIC, topics.ACTION_TOPIC)


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vla_cache_ros.apps.bag_commands", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen, timeout: float = 30.0, ctrl_c: bool = False) -> tuple[int, str]:
    """Exit code and stderr of ``process`` once it ends (after SIGINT with ``ctrl_c``); fails the
    test when it has not ended within ``timeout`` seconds."""
    result = collect(process, timeout, interrupt_first=ctrl_c)
    if result.killed:
        pytest.fail(f"process did not finish in {timeout} s; stderr:\n{result.stderr}")
    return result.returncode, result.stderr


@contextlib.contextmanager
def _ros_node(name: str) -> Iterator[tuple[Any, Callable[[float], None]]]:
    """A node in its own context plus a spin(seconds) helper; torn down afterwards."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node(name, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)

    def spin(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.02)

    try:
        yield node, spin
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def _spin_while_running(spin: Callable[[float], None], process: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < end:
        spin(0.05)
    spin(0.5)  # drain what is still in flight


@pytest.fixture
def source_bag(tmp_path: Path):
    return write_synthetic_bag(tmp_path / "source", "mcap", SyntheticBagSpec(**SPEC))


def _subscribe(node: Any, received: dict[str, list], topic: str, cls: type, latched: bool = False) -> None:
    from vla_cache_ros.ros.qos import LATCHED_QOS, profile

    node.create_subscription(cls, topic, received[topic].append, LATCHED_QOS if latched else profile(1000))


def test_play_publishes_every_message_with_clock(source_bag) -> None:
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float64MultiArray, String

    received: dict[str, list] = defaultdict(list)
    with _ros_node("play_listener") as (node, spin):
        for topic, cls in zip((*TOPICS, topics.CLOCK), (Image, JointState, String, Float64MultiArray, Clock)):
            # the instruction is subscribed latched, as the node does: play must offer transient local
            _subscribe(node, received, topic, cls, latched=topic == topics.INSTRUCTION_TOPIC)
        player = _cli("play", str(source_bag.path), "--wait-for-subscribers", "15", "--delay", "0.3")
        _spin_while_running(spin, player, timeout=40)
        returncode, stderr = _finish(player)

    assert returncode == 0, stderr
    counts = {name: summary.message_count for name, summary in list_topics(source_bag.path).items()}
    assert {topic: len(received[topic]) for topic in TOPICS} == counts
    scene = SyntheticScene(height=32, width=40)
    images = [np.asarray(m.data, dtype=np.uint8).reshape(m.height, m.width, 3) for m in received[topics.CAMERA_TOPIC]]
    for index, image in enumerate(images):
        np.testing.assert_array_equal(image, scene.frame(index))
    assert received[topics.INSTRUCTION_TOPIC][0].data == "pick up the block"
    assert received[topics.JOINT_STATES_TOPIC][0].name == [f"joint{i}" for i in range(1, 8)]
    assert f"published {sum(counts.values())} messages" in stderr

    clock = [stamp_nanoseconds(m.clock) for m in received[topics.CLOCK]]
    assert len(clock) >= sum(counts.values())  # at least one /clock before every message
    assert clock == sorted(clock)
    with BagReader(source_bag.path) as bag:
        assert bag.start_time_ns <= min(clock) and max(clock) <= bag.end_time_ns
    # the clock carries the message times themselves
    assert set(source_bag.frame_times_ns) <= set(clock)


def test_play_loops_until_ctrl_c(source_bag) -> None:
    from sensor_msgs.msg import JointState

    received: dict[str, list] = defaultdict(list)
    joints = topics.JOINT_STATES_TOPIC
    per_pass = len(source_bag.joint_times_ns)
    with _ros_node("loop_listener") as (node, spin):
        _subscribe(node, received, joints, JointState)
        player = _cli("play", str(source_bag.path), "--loop", "--rate", "4", "--topics", joints,
                      "--wait-for-subscribers", "15")
        deadline = time.monotonic() + 40
        while len(received[joints]) <= 2 * per_pass and player.poll() is None and time.monotonic() < deadline:
            spin(0.05)
        still_running = player.poll() is None
        returncode, stderr = _finish(player, ctrl_c=True)

    assert still_running, f"play --loop ended by itself: {stderr}"
    assert len(received[joints]) > 2 * per_pass
    assert returncode == 0, stderr
    assert "(interrupted)" in stderr and "Traceback" not in stderr


def test_play_missing_topic_is_one_clear_error(source_bag) -> None:
    returncode, stderr = _finish(_cli("play", str(source_bag.path), "--topics", "/nope"))
    assert returncode == 2
    assert "topic '/nope' is not in bag" in stderr and "sensor_msgs/msg/JointState" in stderr
    assert "Traceback" not in stderr


def test_record_with_sim_time_from_play(source_bag, tmp_path: Path) -> None:
    out = tmp_path / "recorded"
    recorder = _cli("record", str(out), "--topics", *TOPICS, "--use-sim-time")
    try:
        player = _cli("play", str(source_bag.path), "--topics", *TOPICS, "--wait-for-subscribers", "20",
                      "--delay", "0.5")
        play_code, play_err = _finish(player, timeout=60)
        assert play_code == 0, play_err
        time.sleep(1.0)  # let the recorder take in the last messages
    finally:
        record_code, record_err = _finish(recorder, ctrl_c=True)
    assert record_code == 0, record_err
    assert "Traceback" not in record_err

    with BagReader(source_bag.path) as original, BagReader(out) as recorded:
        assert recorded.storage == "mcap"
        assert {n: (t.msgtype, t.message_count) for n, t in recorded.topics.items()} == {
            n: (t.msgtype, t.message_count) for n, t in original.topics.items()}
        stamps: dict[str, list[int]] = defaultdict(list)
        for raw in recorded.raw_messages():
            stamps[raw.topic].append(raw.timestamp_ns)
        recorded_frames = list(FrameReader(recorded))
        original_frames = list(FrameReader(original))
        start_ns, end_ns = original.start_time_ns, original.end_time_ns
    # timestamps are bag (sim) time, not the wall clock: inside the source bag's time span
    for topic, times in stamps.items():
        assert times == sorted(times), topic
        assert start_ns <= times[0] and times[-1] <= end_ns, topic
    for mine, theirs in zip(recorded_frames, original_frames, strict=True):
        np.testing.assert_array_equal(mine.image, theirs.image)
        assert mine.stamp_ns == theirs.stamp_ns  # headers travel untouched
        np.testing.assert_array_equal(mine.command.values, theirs.command.values)
        assert mine.instruction == theirs.instruction


def test_record_wall_time_from_rclpy_publisher(tmp_path: Path) -> None:
    """Messages from a plain rclpy publisher (JointState with empty velocity/effort) are
    recorded into sqlite3 with wall-clock receive times, their offered QoS, and read back."""
    from rosbags.interfaces import QosDurability
    from sensor_msgs.msg import JointState
    from std_msgs.msg import String

    from vla_cache_ros.ros.qos import profile

    out = tmp_path / "wall"
    recorder = _cli("record", str(out), "--topics", "/arm/joints", "/note", "--storage", "sqlite3")
    t_before = time.time_ns()
    try:
        with _ros_node("talker") as (node, spin):
            joints = node.create_publisher(JointState, "/arm/joints", profile(10))
            notes = node.create_publisher(String, "/note", profile(10, latched=True))
            deadline = time.monotonic() + 30
            while (joints.get_subscription_count() == 0 or notes.get_subscription_count() == 0) \
                    and time.monotonic() < deadline and recorder.poll() is None:
                spin(0.05)
            for index in range(5):
                message = JointState()
                message.name = ["shoulder", "elbow"]
                message.position = [0.1 * index, -0.1 * index]
                joints.publish(message)
                notes.publish(String(data=f"note {index}"))
                spin(0.05)
            spin(1.0)
    finally:
        returncode, stderr = _finish(recorder, ctrl_c=True)
    t_after = time.time_ns()
    assert returncode == 0, stderr

    with BagReader(out) as bag:
        assert bag.storage == "sqlite3"
        assert {n: t.msgtype for n, t in bag.topics.items()} == {
            "/arm/joints": "sensor_msgs/msg/JointState", "/note": "std_msgs/msg/String"}
        decoded = [(raw.topic, raw.timestamp_ns, message) for raw, message in bag.messages()]
        # the publishers' offered QoS are kept, so a later play latches /note again
        assert [q.durability for q in bag.qos_profiles("/note")] == [QosDurability.TRANSIENT_LOCAL]
        assert [q.durability for q in bag.qos_profiles("/arm/joints")] == [QosDurability.VOLATILE]
    positions = [list(m.position) for topic, _, m in decoded if topic == "/arm/joints"]
    assert positions == [[0.1 * i, -0.1 * i] for i in range(5)]
    assert [m.data for topic, _, m in decoded if topic == "/note"] == [f"note {i}" for i in range(5)]
    assert all(t_before <= stamp <= t_after for _, stamp, _ in decoded)
