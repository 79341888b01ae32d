"""Message builders: every builder's message survives a bag round trip with its fields intact."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vla_cache_ros.image_conversion import compressed_image_to_rgb, image_to_rgb
from vla_cache_ros.replay.bag_reader import BagReader
from vla_cache_ros.replay.bag_writer import BagWriter
from vla_cache_ros.replay.messages import (
    COMPRESSED_IMAGE_TYPE,
    FLOAT64_ARRAY_TYPE,
    IMAGE_TYPE,
    JOINT_STATE_TYPE,
    POSE_STAMPED_TYPE,
    STRING_TYPE,
    TWIST_STAMPED_TYPE,
    compressed_image_message,
    float64_array_message,
    image_message,
    joint_state_message,
    pose_stamped_message,
    string_message,
    twist_stamped_message,
)
from vla_cache_ros.synthetic import SyntheticScene

STAMP_NS = 1_700_000_000_250_000_001


def _round_trip(tmp_path: Path, messages: dict[str, object]) -> dict[str, tuple[str, object]]:
    """Write one message per topic at STAMP_NS, read them back: topic -> (type, message)."""
    with BagWriter(tmp_path / "bag") as writer:
        for topic, message in messages.items():
            writer.write(topic, message, STAMP_NS)
    with BagReader(tmp_path / "bag") as bag:
        return {raw.topic: (raw.msgtype, message) for raw, message in bag.messages()}


def test_builders_round_trip_through_a_bag(tmp_path: Path) -> None:
    rgb = SyntheticScene(height=24, width=32).frame(2)
    back = _round_trip(tmp_path, {
        "/image": image_message(rgb, STAMP_NS, "cam", encoding="bgr8"),
        "/compressed": compressed_image_message(rgb, STAMP_NS, "cam", fmt="png"),
        "/joints": joint_state_message(["a", "b"], [0.5, -1.0], STAMP_NS, velocity=[0.1, 0.2]),
        "/text": string_message("pick up the block"),
        "/action": float64_array_message([0.1, -0.2, 1.0]),
        "/pose": pose_stamped_message(np.array([0.4, -0.1, 0.3]), [0.5, 0.5, -0.5, 0.5], STAMP_NS, "base_link"),
        "/twist": twist_stamped_message([0.1, 0.0, -0.2], [0.0, 0.3, 0.0], STAMP_NS, "tool0"),
    })
    assert {topic: msgtype for topic, (msgtype, _) in back.items()} == {
        "/image": IMAGE_TYPE, "/compressed": COMPRESSED_IMAGE_TYPE, "/joints": JOINT_STATE_TYPE,
        "/text": STRING_TYPE, "/action": FLOAT64_ARRAY_TYPE, "/pose": POSE_STAMPED_TYPE,
        "/twist": TWIST_STAMPED_TYPE}
    image, compressed = back["/image"][1], back["/compressed"][1]
    assert image.encoding == "bgr8" and image.header.frame_id == "cam"
    np.testing.assert_array_equal(image_to_rgb(image), rgb)
    np.testing.assert_array_equal(compressed_image_to_rgb(compressed), rgb)  # png is lossless
    for topic in ("/image", "/compressed", "/joints", "/pose", "/twist"):
        stamp = back[topic][1].header.stamp
        assert (stamp.sec, stamp.nanosec) == (1_700_000_000, 250_000_001), topic
    joints = back["/joints"][1]
    assert joints.name == ["a", "b"] and joints.effort.size == 0
    np.testing.assert_array_equal(joints.velocity, [0.1, 0.2])
    assert back["/text"][1].data == "pick up the block"
    np.testing.assert_array_equal(back["/action"][1].data, [0.1, -0.2, 1.0])
    pose = back["/pose"][1]
    assert pose.header.frame_id == "base_link"
    assert (pose.pose.position.x, pose.pose.position.y, pose.pose.position.z) == (0.4, -0.1, 0.3)
    orientation = pose.pose.orientation  # given as w, x, y, z
    assert (orientation.w, orientation.x, orientation.y, orientation.z) == (0.5, 0.5, -0.5, 0.5)
    twist = back["/twist"][1]
    assert twist.header.frame_id == "tool0"
    assert (twist.twist.linear.x, twist.twist.linear.z, twist.twist.angular.y) == (0.1, -0.2, 0.3)


def test_a_vector_needs_exactly_three_values() -> None:
    with pytest.raises(ValueError):
        twist_stamped_message([0.1, 0.2], [0.0, 0.0, 0.0], 0, "base_link")
