"""Controller: commands out while running, safety command within a tick of a fault, recovery."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vla_cache_ros.control.actions import ActionConfig, CommandInterface
from vla_cache_ros.control.controller import Controller, ControllerConfig
from vla_cache_ros.control.gripper import GripperConfig
from vla_cache_ros.control.safety import SafetyLimits
from vla_cache_ros.control.watchdog import WatchdogConfig, WatchdogState
from vla_cache_ros.errors import InvalidInputError

JOINTS = ("j1", "j2", "j3", "j4", "j5", "j6")


def joint_controller(**overrides: object) -> Controller:
    config = ControllerConfig(
        action=ActionConfig(semantics="joint_delta", interface="joint_trajectory", period_s=0.2),
        limits=SafetyLimits(max_joint_delta_rad=0.5),
        watchdog=WatchdogConfig(max_obs_age_s=0.5, max_inference_s=1.0),
        joint_names=JOINTS, min_duration_s=0.05, **overrides)
    return Controller(config)


def feed(controller: Controller, now: float, joints: float = 0.0) -> None:
    controller.on_joint_state(list(reversed(JOINTS)), [joints] * 6, now, now)
    controller.on_observation(now, now)


def test_waiting_then_running_joint_trajectory() -> None:
    controller = joint_controller()
    out = controller.tick(0.0)
    assert out.state is WatchdogState.WAITING and out.arm is None
    assert out.reason == "waiting for camera, joint_states"
    feed(controller, 1.0)
    assert controller.waiting_for() == []
    controller.on_step_started(1.0)
    outcome = controller.on_step_result([0.1] * 6 + [0.0], 1.0, 1.0, 1.1)
    assert outcome.accepted
    out = controller.tick(1.15)
    assert out.state is WatchdogState.RUNNING
    assert out.arm.interface is CommandInterface.JOINT_TRAJECTORY
    np.testing.assert_allclose(out.arm.joint_positions, [0.1] * 6)
    assert out.arm.duration_s == pytest.approx(0.15)  # time left to reach the target
    assert out.gripper == 0.0  # OpenVLA 0 = close -> command_closed
    assert controller.tick(1.29).arm.duration_s == pytest.approx(0.05)  # floor


def test_stale_camera_sends_hold_of_measured_joints() -> None:
    controller = joint_controller()
    feed(controller, 1.0, joints=0.3)
    controller.on_step_result([0.1] * 6 + [1.0], 1.0, 1.0, 1.1)
    assert controller.tick(1.2).state is WatchdogState.RUNNING
    for now in (1.3, 1.4):  # joint states keep coming, the camera stopped at 1.0
        controller.on_joint_state(JOINTS, [0.35] * 6, now, now)
    out = controller.tick(1.55)
    assert out.state is WatchdogState.FAULT and out.entered_fault
    assert "camera is stale" in out.reason
    assert out.arm.is_safety
    np.testing.assert_allclose(out.arm.joint_positions, [0.35] * 6)
    assert out.gripper == 1.0  # gripper held in its state
    # The hold stays frozen at the fault-time measurement, and keeps going out.
    controller.on_joint_state(JOINTS, [0.9] * 6, 1.6, 1.6)
    later = controller.tick(1.65)
    assert not later.entered_fault
    np.testing.assert_allclose(later.arm.joint_positions, [0.35] * 6)


def test_inference_error_then_recovery() -> None:
    controller = joint_controller()
    feed(controller, 1.0)
    controller.on_step_result([0.1] * 6 + [1.0], 1.0, 1.0, 1.1)
    controller.on_step_error("RuntimeError: CUDA out of memory", 1.2)
    out = controller.tick(1.25)
    assert out.state is WatchdogState.FAULT and out.arm.is_safety and out.entered_fault
    assert not controller.tick(1.26).entered_fault
    assert out.reason == "RuntimeError: CUDA out of memory"
    # A result on a pre-fault observation is refused.
    assert not controller.on_step_result([0.2] * 6 + [1.0], 1.0, 1.0, 1.3).accepted
    assert controller.tick(1.3).arm.is_safety
    feed(controller, 1.4)
    assert controller.on_step_result([0.2] * 6 + [1.0], 1.4, 1.4, 1.45).accepted
    out = controller.tick(1.5)
    assert out.state is WatchdogState.RUNNING and not out.arm.is_safety
    np.testing.assert_allclose(out.arm.joint_positions, [0.2] * 6)


def test_nan_action_faults_and_sends_no_policy_command() -> None:
    controller = joint_controller()
    feed(controller, 1.0)
    outcome = controller.on_step_result([math.nan] * 7, 1.0, 1.0, 1.1)
    assert not outcome.accepted and "non-finite" in outcome.reason
    out = controller.tick(1.1)
    assert out.state is WatchdogState.FAULT and out.arm.is_safety


def test_twist_expires_to_zero_and_safety_is_zero_twist() -> None:
    config = ControllerConfig(action=ActionConfig(period_s=0.2),
                              watchdog=WatchdogConfig(max_obs_age_s=0.5))
    controller = Controller(config)
    controller.on_observation(1.0, 1.0)
    controller.on_step_result([0.02, 0, 0, 0, 0, 0, 1.0], 1.0, 1.0, 1.05)
    out = controller.tick(1.1)
    np.testing.assert_allclose(out.arm.linear, [0.1, 0, 0])
    out = controller.tick(1.3)  # past the action period: stop moving, not a fault
    assert out.state is WatchdogState.RUNNING and not out.arm.is_safety
    np.testing.assert_allclose(out.arm.linear, 0.0)
    out = controller.tick(1.6)
    assert out.state is WatchdogState.FAULT and out.arm.is_safety
    np.testing.assert_allclose(out.arm.linear, 0.0)
    np.testing.assert_allclose(out.arm.angular, 0.0)


def test_workspace_needs_ee_pose_input() -> None:
    config = ControllerConfig(limits=SafetyLimits(workspace_min=(0, 0, 0),
                                                  workspace_max=(1, 1, 1)))
    controller = Controller(config)
    controller.on_observation(1.0, 1.0)
    assert controller.waiting_for() == ["ee_pose"]
    controller.on_ee_position([0.5, 0.5, 0.99], 1.0, 1.0)
    controller.on_step_result([0.0, 0, 0.05, 0, 0, 0, 1.0], 1.0, 1.0, 1.05)
    np.testing.assert_allclose(controller.tick(1.1).arm.linear, [0, 0, 0.01 / 0.2])
    assert controller.clamp_counts["workspace"] == 1


def test_safety_none_sends_nothing() -> None:
    controller = joint_controller(safety_command="none")
    feed(controller, 1.0)
    controller.on_step_error("boom", 1.1)
    out = controller.tick(1.2)
    assert out.state is WatchdogState.FAULT and out.arm is None


def test_hold_without_joint_measurement_is_none() -> None:
    controller = joint_controller()
    controller.on_observation(1.0, 1.0)
    controller.on_step_error("boom", 1.1)
    assert controller.tick(1.2).arm is None
    assert controller.safety_command() is None


def test_live_update_of_limits_and_scale() -> None:
    controller = joint_controller()
    controller.update(limits=SafetyLimits(max_joint_delta_rad=0.05),
                      action_scale=[2.0] * 7)
    feed(controller, 1.0)
    controller.on_step_result([0.01] + [0.1] * 5 + [1.0], 1.0, 1.0, 1.1)
    np.testing.assert_allclose(controller.tick(1.1).arm.joint_positions,
                               [0.02] + [0.05] * 5)
    with pytest.raises(InvalidInputError, match="action scale needs 7 values"):
        controller.update(action_scale=[1.0])
    assert controller.config.action.scale == (2.0,) * 7  # unchanged on error


def test_gripper_mapping_configurable() -> None:
    controller = joint_controller(gripper=GripperConfig(command_open=0.08, command_closed=0.01))
    feed(controller, 1.0)
    controller.on_step_result([0.0] * 6 + [0.9], 1.0, 1.0, 1.1)
    assert controller.tick(1.1).gripper == 0.08


def test_bad_joint_state_is_rejected_without_changing_state() -> None:
    controller = joint_controller()
    feed(controller, 1.0, joints=0.25)
    with pytest.raises(InvalidInputError, match="non-finite positions for"):
        controller.on_joint_state(JOINTS, [0.5] * 5 + [math.nan], 1.1, 1.1)
    with pytest.raises(InvalidInputError, match="6 names but 5 positions"):
        controller.on_joint_state(JOINTS, [0.5] * 5, 1.1, 1.1)
    with pytest.raises(InvalidInputError, match="duplicate joint names"):
        controller.on_joint_state(JOINTS + ("j1",), [0.5] * 7, 1.1, 1.1)
    with pytest.raises(InvalidInputError, match="input stamp must be finite"):
        controller.on_joint_state(JOINTS, [0.5] * 6, math.nan, 1.1)
    np.testing.assert_allclose(controller.measured_joints, [0.25] * 6)
    assert controller.input_age("joint_states", 1.2) == pytest.approx(0.2)


def test_trajectory_is_not_resent_after_its_period() -> None:
    """A policy trajectory older than its period is not re-published (the arm is there)."""
    controller = joint_controller()
    feed(controller, 1.0)
    controller.on_step_result([0.1] * 6 + [0.0], 1.0, 1.0, 1.1)
    assert controller.tick(1.3).arm.duration_s == pytest.approx(0.05)
    out = controller.tick(1.35)
    assert out.state is WatchdogState.RUNNING and out.arm is None


def test_one_sided_workspace_requires_ee_pose_and_clamps() -> None:
    config = ControllerConfig(limits=SafetyLimits(workspace_min=(0.0, 0.0, 0.1)))
    assert config.required_inputs == ("camera", "ee_pose")
    controller = Controller(config)
    controller.on_observation(1.0, 1.0)
    assert controller.waiting_for() == ["ee_pose"]
    controller.on_ee_position([0.5, 0.5, 0.11], 1.0, 1.0)
    controller.on_step_result([0.0, 0, -0.05, 0, 0, 0, 1.0], 1.0, 1.0, 1.05)
    np.testing.assert_allclose(controller.tick(1.1).arm.linear, [0, 0, -0.01 / 0.2])
