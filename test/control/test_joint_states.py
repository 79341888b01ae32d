"""Joint states from several publishers (issue 10 item 5): merged by joint name, per-joint ages.

An arm's joint_state_broadcaster and a gripper driver often share /joint_states; an arm's joints
may also come from two drivers. Each message contributes the configured joints it carries; one
with none of them is irrelevant (None), not bad input.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from vla_cache_ros.control.actions import ActionConfig
from vla_cache_ros.control.controller import Controller, ControllerConfig, JointStateUpdate
from vla_cache_ros.control.watchdog import WatchdogConfig, WatchdogState
from vla_cache_ros.errors import InvalidInputError

JOINTS = ("j1", "j2", "j3", "j4", "j5", "j6")
FINGERS = ("finger_left", "finger_right")


def joint_controller() -> Controller:
    return Controller(ControllerConfig(
        action=ActionConfig(semantics="joint_delta", interface="joint_trajectory", period_s=0.2),
        watchdog=WatchdogConfig(max_obs_age_s=0.5, max_inference_s=1.0), joint_names=JOINTS))


def publish_split(controller: Controller, now: float, values: list[float]) -> None:
    """Joints 1-3 from one publisher, 4-6 from another, 10 ms apart."""
    controller.on_joint_state(JOINTS[:3], values[:3], now, now)
    controller.on_joint_state(JOINTS[3:], values[3:], now + 0.01, now + 0.01)


def test_split_arm_is_merged_once_every_joint_arrived() -> None:
    controller = joint_controller()
    first = controller.on_joint_state(["j3", "j1", "j2"], [0.3, 0.1, 0.2], 1.0, 1.0)
    assert first == JointStateUpdate(("j1", "j2", "j3"), None)  # configuration order
    assert controller.measured_joints is None
    controller.on_observation(1.0, 1.0)
    assert controller.waiting_for() == ["joint_states (j4, j5, j6 not seen yet)"]
    assert controller.input_age("joint_states", 1.0) is None
    second = controller.on_joint_state(["j6", "j4", "j5"], [0.6, 0.4, 0.5], 1.01, 1.01)
    assert second.used == ("j4", "j5", "j6")
    np.testing.assert_allclose(second.positions, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert controller.waiting_for() == []
    # Interleaved publishers keep the merged state current, and the policy runs on it.
    for i in range(1, 5):
        now = 1.0 + i * 0.05
        publish_split(controller, now, [float(i)] * 3 + [10.0 * i] * 3)
        controller.on_observation(now, now)
    outcome = controller.on_step_result([0.01] * 6 + [1.0], 1.2, 1.2, 1.22)
    assert outcome.accepted, outcome.reason
    np.testing.assert_allclose(outcome.command.joint_positions, [4.01] * 3 + [40.01] * 3)
    assert controller.input_age("joint_states", 1.22) == pytest.approx(0.02)


def test_gripper_driver_messages_are_irrelevant_not_rejected() -> None:
    """Regression: every finger-only message raised "lacks configured joints" (600 in 30 s)."""
    controller = joint_controller()
    now = 1.0
    for tick in range(600):  # 30 s at 20 Hz of arm + gripper messages on one topic
        now = 1.0 + tick * 0.05
        controller.on_joint_state(JOINTS, [0.2] * 6, now, now)
        assert controller.on_joint_state(FINGERS, [0.04, math.nan], now, now) is None
        controller.on_observation(now, now)
        assert controller.on_step_result([0.0] * 7, now, now, now).accepted
        controller.tick(now)
    assert controller.state is WatchdogState.RUNNING
    np.testing.assert_allclose(controller.measured_joints, [0.2] * 6)


def test_reordered_names_and_extra_joints() -> None:
    controller = joint_controller()
    names = ["finger_left", "j6", "j5", "j4", "j3", "j2", "j1", "base_yaw"]
    update = controller.on_joint_state(names, [math.nan, 6, 5, 4, 3, 2, 1, 99], 1.0, 1.0)
    assert update.used == JOINTS
    np.testing.assert_allclose(update.positions, [1, 2, 3, 4, 5, 6])


def test_one_stalled_publisher_faults_naming_its_joints() -> None:
    controller = joint_controller()
    publish_split(controller, 1.0, [0.0] * 6)
    controller.on_observation(1.0, 1.0)
    assert controller.on_step_result([0.0] * 7, 1.0, 1.0, 1.02).accepted
    for i in range(1, 13):  # the 4-6 publisher stalled at 1.01; 1-3 and camera go on
        now = 1.0 + i * 0.05
        controller.on_joint_state(JOINTS[:3], [0.0] * 3, now, now)
        controller.on_observation(now, now)
        out = controller.tick(now)
    assert out.state is WatchdogState.FAULT and out.arm.is_safety
    assert out.reason.startswith("joint_states is stale (j4, j5, j6: 0.5")
    assert controller.input_age("joint_states", 1.6) == pytest.approx(0.59)
    # The stalled publisher comes back: a fresh step recovers.
    publish_split(controller, 1.7, [0.0] * 6)
    controller.on_observation(1.71, 1.71)
    assert controller.on_step_result([0.0] * 7, 1.71, 1.71, 1.72).accepted


def test_bad_message_with_a_configured_joint_is_rejected_whole() -> None:
    controller = joint_controller()
    publish_split(controller, 1.0, [0.5] * 6)
    with pytest.raises(InvalidInputError, match=r"non-finite positions for \['j2'\]"):
        controller.on_joint_state(["j1", "j2"], [0.9, math.inf], 1.1, 1.1)
    with pytest.raises(InvalidInputError, match="duplicate joint names"):
        controller.on_joint_state(["j1", "finger", "finger"], [0.9, 0.0, 0.0], 1.1, 1.1)
    np.testing.assert_allclose(controller.measured_joints, [0.5] * 6)  # j1 not taken either
    assert controller.input_age("joint_states", 1.1) == pytest.approx(0.1)


def test_joint_delivered_out_of_order_is_not_rewound() -> None:
    controller = joint_controller()
    publish_split(controller, 1.0, [0.0] * 6)
    controller.on_joint_state(["j1"], [1.0], 1.2, 1.2)
    # Stamped 1.1: older than j1's 1.2 (kept), newer than j2's 1.0 (taken).
    late = controller.on_joint_state(["j1", "j2"], [0.5, 0.5], 1.1, 1.21)
    assert late.used == ("j2",)
    assert controller.measured_joints[:2].tolist() == [1.0, 0.5]


def test_without_joint_names_each_message_is_taken_whole() -> None:
    """ee_twist with no joint_names: today's behaviour, whole message in message order."""
    controller = Controller(ControllerConfig())
    update = controller.on_joint_state(["b", "a"], [2.0, 1.0], 1.0, 1.0)
    assert update.used == ("b", "a") and update.positions.tolist() == [2.0, 1.0]
    controller.on_joint_state(FINGERS, [0.04, 0.04], 1.1, 1.1)
    assert controller.measured_joints.tolist() == [0.04, 0.04]
    with pytest.raises(InvalidInputError, match="non-finite"):
        controller.on_joint_state(["a"], [math.nan], 1.2, 1.2)
