"""Writing bags (both storages): typed and raw messages read back, offered QoS kept, no
overwriting, and a bag finalised when the writing block raises."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from test.replay.helpers import STORAGES
from vla_cache_ros.errors import BagError
from vla_cache_ros.replay.bag_reader import BagReader
from vla_cache_ros.replay.bag_writer import LATCHED_QOS, BagWriter
from vla_cache_ros.replay.messages import joint_state_message, string_message


@pytest.mark.parametrize("storage", STORAGES)
def test_writer_round_trip_and_refuses_to_overwrite(tmp_path: Path, storage: str) -> None:
    path = tmp_path / "out"
    with BagWriter(path, storage=storage) as writer:
        writer.write("/chatter", string_message("hello"), 3_000_000_001)
        writer.write("/joint_states", joint_state_message(["a", "b"], [0.5, -0.5], 3_000_000_002), 3_000_000_002)
        writer.write("/chatter", string_message("world"), 3_000_000_010)
        assert writer.topics == {"/chatter": "std_msgs/msg/String", "/joint_states": "sensor_msgs/msg/JointState"}
        with pytest.raises(BagError, match="already holds"):
            writer.add_topic("/chatter", "std_msgs/msg/Float64MultiArray")
    with BagReader(path) as bag:
        decoded = [(raw.topic, raw.timestamp_ns, message) for raw, message in bag.messages()]
    assert [(topic, stamp) for topic, stamp, _ in decoded] == [
        ("/chatter", 3_000_000_001), ("/joint_states", 3_000_000_002), ("/chatter", 3_000_000_010)]
    assert decoded[0][2].data == "hello" and decoded[2][2].data == "world"
    np.testing.assert_array_equal(decoded[1][2].position, [0.5, -0.5])
    assert decoded[1][2].header.stamp.sec == 3 and decoded[1][2].header.stamp.nanosec == 2
    with pytest.raises(BagError, match="exists already"):
        BagWriter(path, storage=storage)
    with pytest.raises(BagError, match="unknown bag storage"):
        BagWriter(tmp_path / "x", storage="rosbag1")


def test_writer_finalises_the_bag_when_the_block_raises(tmp_path: Path) -> None:
    path = tmp_path / "partial"
    with pytest.raises(KeyboardInterrupt):
        with BagWriter(path) as writer:
            writer.write("/chatter", string_message("kept"), 7)
            raise KeyboardInterrupt
    with BagReader(path) as bag:
        assert [m.data for _, m in bag.messages()] == ["kept"]


def test_offered_qos_is_stored_for_playback(tmp_path: Path) -> None:
    path = tmp_path / "latched"
    with BagWriter(path) as writer:
        writer.add_topic("/instruction", "std_msgs/msg/String", [LATCHED_QOS])
        writer.write("/instruction", string_message("pick"), 1)
        writer.write("/chatter", string_message("hi"), 2)
    with BagReader(path) as bag:
        [offered] = bag.qos_profiles("/instruction")
        assert (offered.durability.name, offered.reliability.name, offered.depth) == ("TRANSIENT_LOCAL", "RELIABLE", 1)
        assert bag.qos_profiles("/chatter") == []


def test_unknown_message_type_and_negative_time_are_bag_errors(tmp_path: Path) -> None:
    with BagWriter(tmp_path / "bad") as writer:
        with pytest.raises(BagError, match="unknown to the ROS 2 typestore"):
            writer.add_topic("/x", "my_msgs/msg/Nothing")
        with pytest.raises(BagError, match="negative timestamp"):
            writer.write("/chatter", string_message("early"), -1)
