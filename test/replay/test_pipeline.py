"""play -> vla_cache_node (use_sim_time) -> record: the node's command stream over a bag's frames
is recorded on the bag's clock and reads back. Three processes over real DDS."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vla_cache_ros.replay.bag_reader import BagReader
from vla_cache_ros.replay.frames import FrameReader
from vla_cache_ros.replay.synthetic_bag import SyntheticBagSpec, write_synthetic_bag
from vla_cache_ros.stamps import stamp_nanoseconds
from vla_cache_ros.subprocesses import collect

pytest.importorskip("rclpy")
pytest.importorskip("vla_cache_ros.ros.node")

NODE = "/vla_cache_node"
RECORDED = ("/camera/image_raw", f"{NODE}/preview/twist_cmd", f"{NODE}/cache_ratio")


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_subscribers(topic: str, count: int, timeout_s: float, node_process: subprocess.Popen) -> None:
    """Until ``topic`` has ``count`` subscribers. The node subscribes to the camera only once its
    model is loaded (the recorder only once a publisher appears), while the player starts as
    soon as each bag topic has some subscriber (the node's /clock one comes first): on a busy
    machine a node still loading missed the whole bag."""
    import rclpy
    from rclpy.node import Node

    context = rclpy.Context()
    rclpy.init(context=context)
    probe = Node("pipeline_test_probe", context=context)
    try:
        deadline = time.monotonic() + timeout_s
        while probe.count_subscribers(topic) < count:
            assert node_process.poll() is None, "the node exited"
            assert time.monotonic() < deadline, f"{topic} has fewer than {count} subscribers after {timeout_s} s"
            time.sleep(0.2)
    finally:
        probe.destroy_node()
        rclpy.shutdown(context=context)


@pytest.mark.ros
def test_play_node_record(tmp_path: Path) -> None:
    from vla_cache_ros.models.tiny import make_tiny_checkpoint

    model = make_tiny_checkpoint(tmp_path / "tiny", seed=0)
    source = write_synthetic_bag(
        tmp_path / "source", "mcap", SyntheticBagSpec(num_frames=12, height=60, width=80, camera_hz=5.0))
    node = _start("-m", "vla_cache_ros.ros.node", "--ros-args", "-p", f"model_path:={model}",
                  "-p", "unnorm_key:=tiny_sim", "-p", "use_sim_time:=true", "-p", "max_obs_age_s:=5.0",
                  "-r", "image:=/camera/image_raw")
    recorder = _start("-m", "vla_cache_ros.apps.bag_commands", "record", str(tmp_path / "recorded"), "--topics",
                      *RECORDED, "--use-sim-time")
    try:
        _wait_for_subscribers("/camera/image_raw", 1, 120, node)
        player = _start("-m", "vla_cache_ros.apps.bag_commands", "play", str(source.path), "--delay", "1.0",
                        "--wait-for-subscribers", "90")
        play = collect(player, 150)
        assert play.returncode == 0, play.stderr
        time.sleep(2.0)  # last steps and commands in flight
    finally:
        record = collect(recorder, interrupt_first=True)
        node_err = collect(node, interrupt_first=True).stderr
    record_err = record.stderr
    assert record.returncode == 0, record_err
    assert "Traceback" not in node_err, node_err

    with BagReader(source.path) as original:
        start_ns, end_ns = original.start_time_ns, original.end_time_ns
        original_frames = list(FrameReader(original))
    with BagReader(tmp_path / "recorded") as recorded:
        types = {name: summary.msgtype for name, summary in recorded.topics.items()}
        assert types == {
            "/camera/image_raw": "sensor_msgs/msg/Image",
            f"{NODE}/preview/twist_cmd": "geometry_msgs/msg/TwistStamped",
            f"{NODE}/cache_ratio": "std_msgs/msg/Float32",
        }, record_err
        steps = [(raw.timestamp_ns, message.data) for raw, message in recorded.messages([f"{NODE}/cache_ratio"])]
        commands = [(raw.timestamp_ns, message) for raw, message in recorded.messages([f"{NODE}/preview/twist_cmd"])]
        frames = list(FrameReader(recorded, image_topic="/camera/image_raw"))

    # the frames went through unchanged, and the node stepped on them: at most one step per frame
    assert len(frames) == len(original_frames)
    for mine, theirs in zip(frames, original_frames):
        np.testing.assert_array_equal(mine.image, theirs.image)
    assert 1 <= len(steps) <= len(original_frames), node_err
    assert all(0.0 <= ratio <= 1.0 for _, ratio in steps)
    assert commands, node_err
    # everything is on the bag's clock (sim time), in order
    for stamps in ([t for t, _ in steps], [t for t, _ in commands]):
        assert stamps == sorted(stamps)
        assert start_ns <= stamps[0] and stamps[-1] <= end_ns + 10**9
    for _, command in commands:
        stamp = stamp_nanoseconds(command.header.stamp)
        assert start_ns <= stamp <= end_ns + 10**9
