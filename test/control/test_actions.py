"""Action mapping: EE delta -> twist, joint delta / absolute -> guarded joint targets, scale."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vla_cache_ros.control.actions import ActionConfig, ActionMapper, ActionSemantics, CommandInterface
from vla_cache_ros.control.safety import SafetyGuard, SafetyLimits
from vla_cache_ros.errors import InvalidInputError
from vla_cache_ros.geometry import matrix_from_rotvec, rot_x, rot_y, rot_z


def test_ee_delta_to_twist_divides_by_period() -> None:
    mapper = ActionMapper(ActionConfig(period_s=0.2), SafetyGuard())
    mapped = mapper.map([0.01, -0.02, 0.0, 0.0, 0.0, 0.1, 0.8])
    assert mapped.arm.interface is CommandInterface.EE_TWIST
    np.testing.assert_allclose(mapped.arm.linear, [0.05, -0.1, 0.0])
    np.testing.assert_allclose(mapped.arm.angular, [0.0, 0.0, 0.5])
    assert mapped.arm.duration_s == 0.2 and mapped.gripper == pytest.approx(0.8)
    assert not mapper.needs_joint_states


def test_euler_rotation_delta_becomes_the_equivalent_angular_velocity() -> None:
    """A combined roll/pitch/yaw delta (extrinsic, OpenVLA convention) -> rotvec(R) / period."""
    roll, pitch, yaw = 0.2, -0.15, 0.25
    mapped = ActionMapper(ActionConfig(period_s=0.1), SafetyGuard()).map([0, 0, 0, roll, pitch, yaw, 1.0])
    rotation = rot_z(yaw) @ rot_y(pitch) @ rot_x(roll)
    rotated_by_velocity = matrix_from_rotvec(np.asarray(mapped.arm.angular) * 0.1)
    np.testing.assert_allclose(rotated_by_velocity, rotation, atol=1e-12)
    assert not np.allclose(mapped.arm.angular, np.array([roll, pitch, yaw]) / 0.1, atol=1e-3)


def test_scale_applies_before_guard() -> None:
    guard = SafetyGuard(SafetyLimits(max_translation_m=0.015))
    config = ActionConfig(scale=(2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 0.5), period_s=1.0)
    mapped = ActionMapper(config, guard).map([0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(mapped.arm.linear, [0.015, 0.0, 0.0])  # 0.02 clamped
    assert mapped.gripper == 0.5
    assert guard.clamp_counts["translation"] == 1


@pytest.mark.parametrize("semantics, expected", [
    (ActionSemantics.JOINT_DELTA, [1.1, 1.8]),
    (ActionSemantics.JOINT_ABSOLUTE, [0.1, -0.2]),
])
def test_joint_semantics(semantics: ActionSemantics, expected: list[float]) -> None:
    config = ActionConfig(semantics=semantics, interface="joint_trajectory", action_dim=3,
                          period_s=0.5)
    mapped = ActionMapper(config, SafetyGuard()).map([0.1, -0.2, 1.0], np.array([1.0, 2.0]))
    assert mapped.arm.interface is CommandInterface.JOINT_TRAJECTORY
    np.testing.assert_allclose(mapped.arm.joint_positions, expected)
    assert mapped.arm.duration_s == 0.5


def test_joint_targets_are_guarded() -> None:
    guard = SafetyGuard(SafetyLimits(max_joint_delta_rad=0.05))
    config = ActionConfig(semantics="joint_absolute", interface="joint_positions", action_dim=3)
    mapped = ActionMapper(config, guard).map([1.0, 0.0, 1.0], np.array([0.0, 0.0]))
    np.testing.assert_allclose(mapped.arm.joint_positions, [0.05, 0.0])


def test_no_gripper() -> None:
    config = ActionConfig(semantics="joint_delta", interface="joint_positions", action_dim=2,
                          has_gripper=False)
    mapped = ActionMapper(config, SafetyGuard()).map([0.1, 0.2], np.zeros(2))
    assert mapped.gripper is None
    np.testing.assert_allclose(mapped.arm.joint_positions, [0.1, 0.2])


@pytest.mark.parametrize("kwargs, fragment", [
    ({"semantics": "ee_delta", "interface": "joint_trajectory"}, "cannot drive command interface"),
    ({"semantics": "joint_delta", "interface": "ee_twist"}, "allowed: joint_trajectory"),
    ({"semantics": "teleport"}, "unknown action semantics 'teleport'; choose one of: ee_delta"),
    ({"interface": "torque"}, "unknown command interface 'torque'"),
    ({"action_dim": 8}, "ee_delta actions need 6 arm values"),
    ({"scale": (1.0, 2.0)}, "action scale needs 7 values"),
    ({"period_s": 0.0}, "action period_s must be > 0"),
])
def test_invalid_config(kwargs: dict, fragment: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        ActionConfig(**kwargs)
    assert fragment in str(info.value)


def test_invalid_actions() -> None:
    mapper = ActionMapper(ActionConfig(), SafetyGuard())
    with pytest.raises(InvalidInputError, match="policy action must have 7 values, got 6"):
        mapper.map(np.zeros(6))
    with pytest.raises(InvalidInputError, match="policy action contains non-finite"):
        mapper.map([0, 0, 0, 0, 0, math.inf, 1])
    joints = ActionMapper(ActionConfig(semantics="joint_delta", interface="joint_positions"),
                          SafetyGuard())
    with pytest.raises(InvalidInputError, match="no joint state received yet"):
        joints.map(np.zeros(7))
    with pytest.raises(InvalidInputError, match="drives 6 joints but 7 joint positions"):
        joints.map(np.zeros(7), np.zeros(7))
