"""QoS profiles say what their names promise (the instruction, command and sensor contracts)."""
from __future__ import annotations

from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

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
