"""Topic names: every node input/output has a default arm topic, private names resolve, remaps."""
from __future__ import annotations

import pytest

from vla_cache_ros import topics


def test_every_node_topic_has_an_absolute_arm_default() -> None:
    node_names = {topics.IMAGE, topics.JOINT_STATES, topics.INSTRUCTION, topics.EE_POSE, topics.JOINT_TRAJECTORY,
                  topics.JOINT_COMMANDS, topics.TWIST_CMD, topics.GRIPPER_COMMAND}
    assert set(topics.ARM_TOPICS) == node_names
    assert all(not name.startswith("/") for name in node_names)  # relative: remappable, namespaced
    assert all(arm.startswith("/") for arm in topics.ARM_TOPICS.values())


def test_private_topics_resolve_for_a_node_in_the_root_namespace() -> None:
    assert topics.of_node("vla_cache_node", topics.CACHE_RATIO) == "/vla_cache_node/cache_ratio"
    assert topics.of_node("n", topics.preview(topics.TWIST_CMD)) == "/n/preview/twist_cmd"
    with pytest.raises(ValueError):
        topics.of_node("n", topics.CLOCK)


def test_remap_arguments() -> None:
    assert topics.remap_arguments([(topics.IMAGE, "/wrist/image"), ("a", "/b")]) == [
        "-r", "image:=/wrist/image", "-r", "a:=/b"]
