"""Watchdog: staleness, step errors and overruns fault; recovery needs fresh obs + success."""
from __future__ import annotations

import pytest

from vla_cache_ros.control.watchdog import Watchdog, WatchdogConfig, WatchdogState, effective_stamp


def running_watchdog(required: tuple[str, ...] = ("camera",)) -> Watchdog:
    watchdog = Watchdog(WatchdogConfig(max_obs_age_s=0.5, max_inference_s=1.0), required)
    for name in required:
        watchdog.input_received(name, 10.0, 10.0)
    watchdog.step_started(10.0)
    assert watchdog.step_succeeded(10.2, 10.0, 10.0)
    assert watchdog.state is WatchdogState.RUNNING
    return watchdog


def test_waiting_until_first_accepted_step() -> None:
    watchdog = Watchdog(WatchdogConfig(), ("camera", "joint_states"))
    assert watchdog.missing_inputs() == ["camera", "joint_states"]
    assert watchdog.tick(100.0) is WatchdogState.WAITING  # no data is not a fault
    watchdog.input_received("camera", 1.0, 1.0)
    assert watchdog.missing_inputs() == ["joint_states"]


def test_stale_camera_faults() -> None:
    watchdog = running_watchdog()
    watchdog.input_received("camera", 10.3, 10.3)
    assert watchdog.step_succeeded(10.35, 10.3, 10.3)
    assert watchdog.tick(10.75) is WatchdogState.RUNNING  # camera 0.45 s old: still allowed
    assert watchdog.tick(10.85) is WatchdogState.FAULT
    assert "camera is stale (0.550 s old" in watchdog.fault_reason
    assert watchdog.fault_since == 10.85


def test_stale_joint_states_fault_when_required() -> None:
    watchdog = running_watchdog(("camera", "joint_states"))
    watchdog.input_received("camera", 10.4, 10.4)
    watchdog.step_started(10.4)
    assert watchdog.step_succeeded(10.5, 10.4, 10.4)
    assert watchdog.tick(10.6) is WatchdogState.FAULT
    assert "joint_states is stale (0.600 s old" in watchdog.fault_reason


def test_step_error_and_recovery_requires_fresh_observation() -> None:
    watchdog = running_watchdog()
    watchdog.input_received("camera", 10.3, 10.3)
    watchdog.step_started(10.3)
    watchdog.step_failed(10.4, "RuntimeError: boom")
    assert watchdog.state is WatchdogState.FAULT
    assert watchdog.fault_reason == "RuntimeError: boom"
    # A success on an observation that arrived before the fault does not recover.
    assert not watchdog.step_succeeded(10.5, 10.3, 10.3)
    assert watchdog.state is WatchdogState.FAULT
    # A later fault reason does not overwrite the first.
    watchdog.step_failed(10.55, "second")
    assert watchdog.fault_reason == "RuntimeError: boom"
    # Fresh observation + successful step recovers.
    watchdog.input_received("camera", 10.6, 10.6)
    assert watchdog.step_succeeded(10.7, 10.6, 10.6)
    assert watchdog.state is WatchdogState.RUNNING and watchdog.fault_reason is None


def test_step_overrun_faults_and_late_result_is_refused() -> None:
    watchdog = running_watchdog()
    watchdog.step_started(10.2)
    for now in (10.3, 10.4, 10.5):
        watchdog.input_received("camera", now, now)
        assert watchdog.tick(now) is WatchdogState.RUNNING
    watchdog.input_received("camera", 11.2, 11.2)
    assert watchdog.tick(11.25) is WatchdogState.FAULT
    assert "overran" in watchdog.fault_reason
    # The overrunning step finishes late: its observation (10.2) is stale -> refused.
    assert not watchdog.step_succeeded(11.3, 10.2, 10.2)
    assert watchdog.state is WatchdogState.FAULT


def test_result_from_too_old_observation_refused() -> None:
    watchdog = Watchdog(WatchdogConfig(max_obs_age_s=0.1))
    watchdog.input_received("camera", 1.0, 1.0)
    assert not watchdog.step_succeeded(1.2, 1.0, 1.0)
    assert watchdog.state is WatchdogState.FAULT
    assert "too slow for max_obs_age_s" in watchdog.fault_reason


def test_command_observation_ageing_faults_even_with_live_camera() -> None:
    watchdog = running_watchdog()
    for now in (10.3, 10.45):
        watchdog.input_received("camera", now, now)
    assert watchdog.tick(10.5) is WatchdogState.RUNNING
    watchdog.input_received("camera", 10.55, 10.55)
    assert watchdog.tick(10.55) is WatchdogState.FAULT  # command from obs at 10.0
    assert "behind the current command" in watchdog.fault_reason


def test_effective_stamp_ignores_zero_and_future_stamps() -> None:
    assert effective_stamp(0.0, 5.0) == 5.0
    assert effective_stamp(9.0, 5.0) == 5.0
    assert effective_stamp(4.0, 5.0) == 4.0
    watchdog = Watchdog(WatchdogConfig())
    watchdog.input_received("camera", 3.0, 3.1)
    watchdog.input_received("camera", 2.0, 3.2)  # out-of-order stamp does not rewind
    assert watchdog.input_age("camera", 4.0) == 1.0


def test_step_that_took_too_long_is_refused() -> None:
    watchdog = running_watchdog()
    watchdog.input_received("camera", 10.5, 10.5)
    watchdog.step_started(10.5)
    assert not watchdog.step_succeeded(11.6, 10.5, 10.5)
    assert watchdog.state is WatchdogState.FAULT
    assert "overran: took 1.100 s (> max_inference_s 1)" in watchdog.fault_reason


def test_success_with_a_stale_required_input_does_not_recover() -> None:
    watchdog = running_watchdog(("camera", "joint_states"))
    watchdog.step_failed(10.3, "boom")
    watchdog.input_received("camera", 11.0, 11.0)  # joint states stopped at 10.0
    assert not watchdog.step_succeeded(11.05, 11.0, 11.0)
    assert watchdog.state is WatchdogState.FAULT and watchdog.fault_reason == "boom"
    watchdog.input_received("joint_states", 11.1, 11.1)
    assert watchdog.step_succeeded(11.15, 11.0, 11.0)


def test_newest_arrival_defines_the_input_time_after_the_clock_went_back() -> None:
    """Regression: max(previous, stamp) kept a pre-jump stamp, so ages went negative (-7.0)."""
    watchdog = Watchdog(WatchdogConfig())
    watchdog.input_received("joint_states", 100.0, 100.0)
    assert watchdog.input_age("joint_states", 90.0) == pytest.approx(-10.0)
    watchdog.input_received("joint_states", 90.0, 90.0)  # first message after the jump back
    assert watchdog.input_age("joint_states", 90.1) == pytest.approx(0.1)


def test_input_dated_ahead_of_the_clock_is_stale() -> None:
    watchdog = running_watchdog()
    assert watchdog.tick(9.0) is WatchdogState.FAULT
    assert watchdog.fault_reason == ("camera is stale (dated 1.000 s ahead of the clock: the "
                                     "clock went back, max_obs_age_s 0.5)")


def test_result_after_the_clock_went_back_during_the_step_is_refused() -> None:
    watchdog = running_watchdog()
    watchdog.input_received("camera", 10.3, 10.3)
    watchdog.step_started(10.3)
    assert not watchdog.step_succeeded(5.0, 10.3, 10.3)
    assert "the clock went back by 5.300 s during the inference step" in watchdog.fault_reason


def test_input_of_parts_is_as_old_as_its_oldest_part() -> None:
    watchdog = Watchdog(WatchdogConfig(max_obs_age_s=0.5), ("camera", "joint_states"),
                        {"joint_states": ("a", "b", "c")})
    watchdog.input_received("camera", 1.0, 1.0)
    assert watchdog.parts_received("joint_states", ["a"], 1.0, 1.0) == ["a"]
    assert watchdog.missing_inputs() == ["joint_states (b, c not seen yet)"]
    assert watchdog.input_age("joint_states", 1.0) is None
    watchdog.parts_received("joint_states", ["b", "c"], 1.2, 1.2)
    assert watchdog.missing_inputs() == []
    assert watchdog.input_age("joint_states", 1.3) == pytest.approx(0.3)
    watchdog.input_received("camera", 1.6, 1.6)
    watchdog.parts_received("joint_states", ["a", "b"], 1.6, 1.6)
    assert not watchdog.step_succeeded(1.71, 1.6, 1.6)
    assert watchdog.fault_reason == "joint_states is stale (c: 0.510 s old, max_obs_age_s 0.5)"


def test_clock_jump_forgets_inputs_and_starts_a_new_fault_episode() -> None:
    watchdog = running_watchdog(("camera", "joint_states"))
    watchdog.step_failed(10.3, "boom")
    count = watchdog.fault_count
    assert not watchdog.clock_jumped(0.2, 10.5)  # shorter forward jumps only age the inputs
    assert watchdog.clock_jumped(-15.0, 10.5)
    assert watchdog.fault_count == count + 1 and watchdog.generation == 1
    assert watchdog.fault_reason == ("ROS clock jumped back by 15.000 s (bag loop or simulator "
                                     "reset); holding until fresh observations arrive")
    assert watchdog.missing_inputs() == ["camera", "joint_states"]
    assert watchdog.input_age("camera", 10.5) is None
    watchdog.input_received("camera", 10.6, 10.6)
    assert not watchdog.step_succeeded(10.65, 10.6, 10.6)
    assert watchdog.fault_reason.startswith("ROS clock jumped back")  # first reason kept
    watchdog.input_received("joint_states", 10.7, 10.7)
    assert watchdog.step_succeeded(10.75, 10.6, 10.6, generation=1)
    assert watchdog.state is WatchdogState.RUNNING
