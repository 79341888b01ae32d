"""Reading bags written with rosbags (both storages): topics, counts, raw and decoded messages,
every way a bag can be unreadable, and rclpy's trailing CDR bytes."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from test.replay.helpers import STORAGES, write_small_bag
from vla_cache_ros.errors import BagError
from vla_cache_ros.replay.bag_reader import BagReader, canonical_cdr, list_topics, ros2_typestore
from vla_cache_ros.replay.bag_writer import BagWriter


@pytest.mark.parametrize("storage", STORAGES)
def test_topics_counts_and_single_file_open(tmp_path: Path, storage: str) -> None:
    info = write_small_bag(tmp_path, "bag", storage, commands=True)
    spec = info.spec
    topics = list_topics(info.path)
    assert {name: t.msgtype for name, t in topics.items()} == {
        "/camera/image_raw": "sensor_msgs/msg/Image",
        "/instruction": "std_msgs/msg/String",
        "/joint_states": "sensor_msgs/msg/JointState",
        "/vla/action": "std_msgs/msg/Float64MultiArray",
    }
    assert topics["/joint_states"].message_count == len(spec.joint_times_ns()) > 12 * 4
    with BagReader(info.path) as bag:
        [instruction_qos] = bag.qos_profiles("/instruction")
        assert instruction_qos.durability.name == "TRANSIENT_LOCAL" and bag.qos_profiles("/joint_states") == []
    storage_file = next(p for p in info.path.iterdir() if p.suffix in (".mcap", ".db3"))
    with BagReader(storage_file) as bag:
        assert bag.storage == storage
        assert bag.message_count == sum(t.message_count for t in topics.values())
        assert bag.start_time_ns == spec.joint_times_ns()[0]
        assert bag.end_time_ns == max(spec.end_time_ns + round(spec.command_latency_s * 1e9), spec.joint_times_ns()[-1])
        stamps = [m.timestamp_ns for m in bag.raw_messages()]
    assert stamps == sorted(stamps)
    assert len(stamps) == sum(t.message_count for t in topics.values())


def test_missing_topic_is_a_bag_error_listing_the_topics(tmp_path: Path) -> None:
    info = write_small_bag(tmp_path, "bag", "mcap")
    with BagReader(info.path) as bag:
        with pytest.raises(BagError) as error:
            list(bag.raw_messages(["/nope"]))
        with pytest.raises(BagError, match="expected std_msgs/msg/String"):
            bag.require_topic("/joint_states", ["std_msgs/msg/String"])
    assert "/nope" in str(error.value)
    joint_count = len(info.joint_times_ns)
    assert re.search(rf"/joint_states +sensor_msgs/msg/JointState +\({joint_count} msgs\)", str(error.value))


def _truncate(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize("storage", STORAGES)
def test_truncated_bag_is_a_bag_error(tmp_path: Path, storage: str) -> None:
    info = write_small_bag(tmp_path, "bag", storage)
    storage_file = next(p for p in info.path.iterdir() if p.suffix in (".mcap", ".db3"))
    _truncate(storage_file)
    with pytest.raises(BagError, match="corrupt or truncated"):
        with BagReader(info.path) as bag:
            list(bag.raw_messages())


@pytest.mark.parametrize("suffix", [".mcap", ".db3"])
def test_garbage_file_is_a_bag_error(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(BagError, match="corrupt or truncated"):
        BagReader(path).open()


def test_missing_and_non_bag_paths(tmp_path: Path) -> None:
    with pytest.raises(BagError, match="bag not found"):
        BagReader(tmp_path / "nope").open()
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match="no metadata.yaml"):
        BagReader(tmp_path / "empty").open()
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BagError, match="not a rosbag2 bag"):
        BagReader(tmp_path / "notes.txt").open()


def test_directory_without_metadata_opens_its_storage_file(tmp_path: Path) -> None:
    info = write_small_bag(tmp_path, "bag", "mcap")
    (info.path / "metadata.yaml").unlink()
    with BagReader(info.path) as bag:
        assert bag.topics["/camera/image_raw"].message_count == 12
        assert [m.timestamp_ns for m in bag.raw_messages(["/camera/image_raw"])] == info.frame_times_ns


def test_undecodable_message_is_a_bag_error(tmp_path: Path) -> None:
    path = tmp_path / "bad_message"
    with BagWriter(path, storage="mcap") as writer:
        writer.write_raw("/joint_states", "sensor_msgs/msg/JointState", b"\x00\x01\x00\x00\xff\xff", 5)
    with BagReader(path) as bag:
        with pytest.raises(BagError, match="cannot decode a sensor_msgs/msg/JointState message on /joint_states"):
            list(bag.messages())


def test_canonical_cdr_fixes_rclpy_trailing_bytes(tmp_path: Path) -> None:
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState

    message = JointState()
    message.name = ["a", "b"]
    message.position = [1.0, 2.0]  # velocity and effort stay empty: the case rclpy pads
    raw = serialize_message(message)
    with pytest.raises(Exception):
        ros2_typestore().deserialize_cdr(raw, "sensor_msgs/msg/JointState")
    fixed = canonical_cdr(raw, "sensor_msgs/msg/JointState")
    assert len(fixed) < len(raw)
    path = tmp_path / "fixed"
    with BagWriter(path) as writer:
        writer.write_raw("/joint_states", "sensor_msgs/msg/JointState", fixed, 1)
    with BagReader(path) as bag:
        [(_, decoded)] = list(bag.messages())
    assert decoded.name == ["a", "b"]
    np.testing.assert_array_equal(decoded.position, [1.0, 2.0])
    assert canonical_cdr(fixed, "sensor_msgs/msg/JointState") == fixed
    with pytest.raises(BagError, match="does not decode"):
        canonical_cdr(b"\x00\x01\x00\x00\x01", "sensor_msgs/msg/JointState")
