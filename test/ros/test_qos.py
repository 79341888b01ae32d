"""QoS profiles say what their names promise (the instruction, command and sensor contracts), and
the QoS override parameters users give are checked before anything is created."""
from __future__ import annotations

import pytest
from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

from vla_cache_ros.errors import ConfigurationError
from vla_cache_ros.ros import qos


def test_latched_and_volatile_instruction_profiles() -> None:
    assert (qos.LATCHED_QOS.depth, qos.LATCHED_QOS.durability, qos.LATCHED_QOS.reliability) == (
        1, DurabilityPolicy.TRANSIENT_LOCAL, ReliabilityPolicy.RELIABLE)
    assert (qos.VOLATILE_QOS.durability, qos.VOLATILE_QOS.reliability) == (
        DurabilityPolicy.VOLATILE, ReliabilityPolicy.RELIABLE)


def test_sensor_data_is_best_effort_and_commands_reliable() -> None:
    assert qos.SENSOR_QOS.reliability == ReliabilityPolicy.BEST_EFFORT
    for profile in (qos.COMMAND_QOS, qos.CLOCK_QOS, qos.DIAGNOSTICS_QOS, qos.STATUS_QOS, qos.MONITOR_QOS):
        assert profile.reliability == ReliabilityPolicy.RELIABLE
        assert profile.durability == DurabilityPolicy.VOLATILE


def test_profile_builder() -> None:
    best_effort = qos.profile(7, reliable=False, latched=True)
    assert (best_effort.depth, best_effort.reliability, best_effort.durability) == (
        7, ReliabilityPolicy.BEST_EFFORT, DurabilityPolicy.TRANSIENT_LOCAL)


OURS, FIXED = ["/camera/image_raw", "/joint_states", "/ee_pose"], ["/instruction"]


def test_valid_overrides_and_other_entities_pass() -> None:
    qos.check_overrides({
        "qos_overrides./camera/image_raw.subscription.reliability": "reliable",
        "qos_overrides./joint_states.subscription.history": "KEEP_LAST",  # rclpy ignores case
        "qos_overrides./joint_states.subscription.depth": 20,
        "qos_overrides./clock.subscription.durability": "anything: not this node's entity",
        "cache_ratio": 0.5}, OURS, FIXED)


@pytest.mark.parametrize("name, value, fragment", [
    ("qos_overrides./camera/image_raw.subscription.reliability", "sometimes",
     "got 'sometimes', expected one of system_default, reliable, best_effort"),
    ("qos_overrides./joint_states.subscription.depth", "10", "expected a whole number >= 0"),
    ("qos_overrides./joint_states.subscription.depth", -1, "expected a whole number >= 0"),
    ("qos_overrides.image.subscription.reliability", "reliable",
     "QoS overrides name the full topic, e.g. qos_overrides./image.subscription.reliability"),
    ("qos_overrides./ee_pose.subscription.durability", "volatile",
     "takes qos_overrides./ee_pose.subscription.<history | depth | reliability>"),
    ("qos_overrides./ee_pose.publisher.depth", 5, "takes qos_overrides./ee_pose.subscription"),
    ("qos_overrides./instruction.subscription.reliability", "reliable",
     "the instruction subscriptions take no QoS overrides"),
    ("qos_overrides.depth", 5, "expected qos_overrides.<full topic name>.subscription.<policy>"),
])
def test_bad_overrides_are_refused_naming_the_parameter(name: str, value: object,
                                                         fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        qos.check_overrides({name: value}, OURS, FIXED)
    assert str(info.value).startswith(f"parameter {name}: ") and fragment in str(info.value)


def test_sensor_profile_is_a_copy_rclpy_may_write_into() -> None:
    profile = qos.sensor_profile()
    assert profile == qos.SENSOR_QOS and profile is not qos.SENSOR_QOS
    profile.reliability = ReliabilityPolicy.RELIABLE
    assert qos.SENSOR_QOS.reliability == ReliabilityPolicy.BEST_EFFORT
