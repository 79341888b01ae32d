"""Time that goes backwards (issue 10 item 2): bag loops and simulator resets, on a fake clock.

Each scenario runs twice: with the node reporting the jump (rclpy's clock jump callback ->
``Controller.on_clock_jump``) and without (the controller notices at its next tick). Either way:
no policy command after the jump until a frame that arrived after it was processed by a
successful step, and no input age shown as a negative number.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from vla_cache_ros.control.actions import ActionConfig
from vla_cache_ros.control.clock import elapsed_s
from vla_cache_ros.control.controller import Controller, ControllerConfig, TickOutput
from vla_cache_ros.control.diagnostics import Level, build_status
from vla_cache_ros.control.observation import LatestObservation
from vla_cache_ros.control.telemetry import Telemetry
from vla_cache_ros.control.watchdog import WatchdogConfig, WatchdogState

JOINTS = ("j1", "j2", "j3", "j4", "j5", "j6")
PERIOD = 0.05  # 20 Hz control timer
TWIST_ACTION = [0.02, 0, 0, 0, 0, 0, 1.0]  # 0.1 m/s in x over a 0.2 s period
JOINT_ACTION = [0.05] * 6 + [1.0]


def twist_controller() -> Controller:
    return Controller(ControllerConfig(action=ActionConfig(period_s=0.2),
                                       watchdog=WatchdogConfig(max_obs_age_s=0.5)))


def joint_controller() -> Controller:
    return Controller(ControllerConfig(
        action=ActionConfig(semantics="joint_delta", interface="joint_trajectory", period_s=0.2),
        watchdog=WatchdogConfig(max_obs_age_s=0.5, max_inference_s=1.0), joint_names=JOINTS))


def is_policy_motion(out: TickOutput) -> bool:
    """A command from the policy that moves the arm (not the hold, not a zero twist)."""
    arm = out.arm
    if arm is None or arm.is_safety:
        return False
    if arm.linear is not None:
        return bool(np.any(arm.linear != 0.0) or np.any(arm.angular != 0.0))
    return True


@dataclass
class Loop:
    """A node on a fake clock: camera frames, joint states, inference steps and 20 Hz ticks."""

    controller: Controller
    action: list[float]
    camera: bool = True
    joints: bool = True
    frame_every: int = 2  # ticks per camera frame (10 Hz)
    outputs: list[tuple[float, TickOutput]] = field(default_factory=list)
    accepted: list[float] = field(default_factory=list)
    _count: int = 0

    def run(self, start: float, seconds: float) -> None:
        for i in range(round(seconds / PERIOD)):
            now = round(start + i * PERIOD, 6)
            if self.joints:
                self.controller.on_joint_state(JOINTS, [0.1] * 6, now, now)
            if self.camera and self._count % self.frame_every == 0:
                generation = self.controller.on_observation(now, now)
                if not self.controller.waiting_for():
                    self.controller.on_step_started(now)
                    outcome = self.controller.on_step_result(self.action, now, now, now,
                                                             generation)
                    if outcome.accepted:
                        self.accepted.append(now)
            self._count += 1
            self.outputs.append((now, self.controller.tick(now)))

    def jump(self, delta_s: float, now_s: float, report: bool) -> None:
        if report:
            assert self.controller.on_clock_jump(delta_s, now_s)

    def motion_before_recovery(self, since: int) -> list[float]:
        """Times of policy motion among outputs[since:] before the first accepted step."""
        recovered = min((t for t in self.accepted if t >= self.outputs[since][0]),
                        default=float("inf"))
        return [t for t, out in self.outputs[since:] if t < recovered and is_policy_motion(out)]


@pytest.mark.parametrize("report", [True, False], ids=["reported", "detected"])
def test_expired_twist_never_returns_after_camera_stall_and_jump_back(report: bool) -> None:
    """Regression (a): the camera stalls, /clock jumps back 15 s: an expired non-zero twist came
    back and was re-published at 20 Hz for 14.6 s with no camera frame."""
    loop = Loop(twist_controller(), TWIST_ACTION)
    loop.run(100.0, 1.0)
    assert loop.outputs[-1][1].state is WatchdogState.RUNNING and is_policy_motion(
        loop.outputs[-2][1])
    loop.camera = False
    loop.run(101.0, 0.3)  # stalled, not yet stale (0.35 s < max_obs_age_s)
    since = len(loop.outputs)
    loop.jump(-15.0, 86.3, report)
    loop.run(86.3, 15.0)  # 300 ticks: past the time the old stamps would look fresh again
    assert not [t for t, out in loop.outputs[since:] if is_policy_motion(out)]
    first = loop.outputs[since][1]
    assert first.state is WatchdogState.FAULT and "ROS clock jumped back by" in first.reason
    assert first.arm.is_safety and np.all(first.arm.linear == 0.0)
    assert first.clock_jumped is not report  # the tick flags a jump it found itself
    assert loop.outputs[-1][1].state is WatchdogState.FAULT
    assert loop.controller.input_age("camera", 101.3) is None


@pytest.mark.parametrize("report", [True, False], ids=["reported", "detected"])
def test_looping_bag_whose_camera_starts_late_sends_no_twist_before_a_frame(report: bool) -> None:
    """Regression (a): `play --loop` on a 5 s bag whose camera starts 2 s in: 39 non-zero
    twists went out at each restart before any frame."""
    loop = Loop(twist_controller(), TWIST_ACTION)
    for restart in range(3):
        since = len(loop.outputs)
        if restart:
            loop.jump(-5.0, 0.0, report)
        loop.camera = False
        loop.run(0.0, 2.0)
        loop.camera = True
        loop.run(2.0, 3.0)
        if restart:
            assert loop.motion_before_recovery(since) == []
            assert "jumped back by" in loop.outputs[since][1].reason
        # Not vacuous: once frames arrive after the restart, the policy drives again.
        assert any(t >= 2.0 for t in loop.accepted[-20:])
        assert is_policy_motion(loop.outputs[-2][1])


@pytest.mark.parametrize("report", [True, False], ids=["reported", "detected"])
def test_jump_back_then_joint_states_stop_holds_at_once(report: bool) -> None:
    """Regression (b): /clock jumps back 10 s, then joint states stop: the hold came after
    8.5 s, 170 commands were built on stale joints, joint_states_age_s showed -7.0."""
    loop = Loop(joint_controller(), JOINT_ACTION)
    loop.run(100.0, 1.0)
    assert loop.outputs[-1][1].state is WatchdogState.RUNNING
    since = len(loop.outputs)
    loop.jump(-10.0, 91.0, report)
    loop.joints = False
    loop.run(91.0, 12.0)  # ROS time passes 101 again: the old joint stamps never revive
    outputs = [out for _, out in loop.outputs[since:]]
    assert not any(is_policy_motion(out) for out in outputs)
    assert all(out.state is WatchdogState.FAULT for out in outputs)
    assert outputs[0].entered_fault and "jumped back by" in outputs[0].reason
    # The hold went out at the first tick after the jump, at the joints measured before it.
    assert outputs[0].arm.is_safety
    np.testing.assert_allclose(outputs[0].arm.joint_positions, [0.1] * 6)
    assert loop.controller.waiting_for() == ["joint_states"]
    for now in (91.0, 95.0, 100.5, 101.0):
        age = loop.controller.input_age("joint_states", now)
        assert age is None
        report_values = diagnostics(loop.controller, now).as_dict()
        assert not report_values["joint_states_age_s"].startswith("-")


@pytest.mark.parametrize("report", [True, False], ids=["reported", "detected"])
@pytest.mark.parametrize("stall", ["camera", "joints", "both"])
def test_no_policy_command_after_jump_until_a_fresh_frame_was_processed(stall: str,
                                                                        report: bool) -> None:
    loop = Loop(joint_controller(), JOINT_ACTION)
    loop.run(50.0, 1.0)
    loop.camera = stall == "joints"
    loop.joints = stall == "camera"
    loop.run(51.0, 0.2)  # the stall begins (still within max_obs_age_s)
    since = len(loop.outputs)
    loop.jump(-20.0, 31.2, report)
    loop.run(31.2, 3.0)  # stalled input(s) stay away for 3 s after the jump
    assert not [t for t, out in loop.outputs[since:] if is_policy_motion(out)]
    loop.camera = loop.joints = True
    resumed = len(loop.outputs)
    loop.run(34.2, 2.0)
    assert loop.motion_before_recovery(since) == []
    recovered = [t for t in loop.accepted if t >= 34.2]
    assert recovered, "never recovered"
    assert any(is_policy_motion(out) for _, out in loop.outputs[resumed:])
    assert loop.outputs[-1][1].state is WatchdogState.RUNNING


def diagnostics(controller: Controller, now: float):  # noqa: ANN201 - test helper
    return build_status(
        state=controller.state, reason=controller.fault_reason, telemetry=Telemetry().snapshot(),
        clamp_counts=controller.clamp_counts, actuation_enabled=True,
        input_ages={name: controller.input_age(name, now) for name in ("camera", "joint_states")},
        cache_mode="off", target_ratio=0.0, last_error=None)


def running_twist_controller(now: float) -> Controller:
    controller = twist_controller()
    controller.on_observation(now, now)
    assert controller.on_step_result(TWIST_ACTION, now, now, now).accepted
    return controller


def test_step_begun_before_a_jump_is_discarded() -> None:
    controller = running_twist_controller(9.9)
    generation = controller.on_observation(10.0, 10.0)
    controller.on_step_started(10.0)
    assert controller.on_clock_jump(-3.0, 7.05)
    outcome = controller.on_step_result(TWIST_ACTION, 10.0, 10.0, 7.1, generation)
    assert not outcome.accepted and "predates the clock jump" in outcome.reason
    assert controller.state is WatchdogState.FAULT and "by 3.000 s" in controller.fault_reason


def test_frame_taken_before_a_jump_cannot_recover_even_with_plausible_times() -> None:
    """Times alone cannot tell: a pre-jump frame received at 9.9 looks later than a fault at 9.8
    after a 0.2 s jump back. Its generation tells."""
    controller = running_twist_controller(9.8)
    old = controller.on_observation(9.9, 9.9)
    assert controller.on_clock_jump(-0.2, 9.8)
    controller.on_step_started(9.95)  # the worker took the old frame after the jump
    outcome = controller.on_step_result(TWIST_ACTION, 9.9, 9.9, 9.95, old)
    assert not outcome.accepted and controller.state is WatchdogState.FAULT
    new = controller.on_observation(9.97, 9.97)
    assert new == old + 1 == controller.clock_generation
    controller.on_step_started(9.97)
    assert controller.on_step_result(TWIST_ACTION, 9.97, 9.97, 10.0, new).accepted
    assert controller.tick(10.0).state is WatchdogState.RUNNING


def test_frame_stamped_before_the_jump_but_delivered_after_it_is_not_fresh() -> None:
    """A frame queued in transit: stamped 99.98 (old timeline), arriving at 85.01 (new one)."""
    controller = twist_controller()
    assert controller.on_clock_jump(-15.0, 85.0)
    generation = controller.on_observation(99.98, 85.01)
    assert controller.waiting_for() == ["camera"]
    outcome = controller.on_step_result(TWIST_ACTION, 99.98, 85.01, 85.05, generation)
    assert not outcome.accepted and "stamped before the clock jump" in outcome.reason
    # After a backward jump, a stamp far ahead of its arrival (more than max_obs_age_s) cannot
    # be fresh data of the new timeline (a bag pass's last frames are stamped just after the
    # clock value at which the jump was noticed): not fresh either.
    controller.on_observation(500.0, 85.1)
    assert controller.input_age("camera", 85.2) is None


def test_frame_from_before_a_jump_back_stays_old_after_a_later_forward_jump() -> None:
    """A starved node sees a bag loop's jump back (100 -> 85), then, its next /clock already
    1.2 s on, a forward jump; the previous pass's last frame (stamped 99.98) is processed only
    then. A forward jump must not make the earlier jump back forgotten: that frame, stamped
    past its arrival, counted as fresh from its arrival and drove the arm (a bag-loop test on
    a loaded machine sent non-zero twists before the new pass's first frame)."""
    controller = twist_controller()
    assert controller.on_clock_jump(-15.0, 85.0)
    assert controller.on_clock_jump(1.2, 86.2)
    generation = controller.on_observation(99.98, 86.25)
    assert controller.input_age("camera", 86.3) is None
    outcome = controller.on_step_result(TWIST_ACTION, 99.98, 86.25, 86.3, generation)
    assert not outcome.accepted and "stamped before the clock jump" in outcome.reason
    assert not is_policy_motion(controller.tick(86.35))


def test_forward_jump_beyond_max_obs_age_acts_small_ones_do_not() -> None:
    controller = running_twist_controller(1.0)
    assert not controller.on_clock_jump(0.3, 1.3)
    assert controller.state is WatchdogState.RUNNING
    assert controller.on_clock_jump(120.0, 121.3)
    assert controller.fault_reason.startswith("ROS clock jumped forward by 120.000 s")
    with pytest.raises(ValueError, match="clock jump"):
        controller.on_clock_jump(float("nan"), 1.0)


def test_jump_while_waiting_forgets_inputs_but_commands_nothing() -> None:
    """With use_sim_time the first /clock message jumps the clock from 0: no fault, no hold."""
    controller = joint_controller()
    controller.on_joint_state(JOINTS, [0.3] * 6, 0.0, 0.0)
    controller.on_observation(0.0, 0.0)
    assert controller.on_clock_jump(1.7e9, 1.7e9)
    out = controller.tick(1.7e9)
    assert out.state is WatchdogState.WAITING and out.arm is None
    assert out.reason == "waiting for camera, joint_states"
    assert controller.measured_joints is None


def test_hold_at_a_jump_uses_the_last_measurement_and_survives_a_second_report() -> None:
    loop = Loop(joint_controller(), JOINT_ACTION)
    loop.run(5.0, 0.5)
    assert loop.controller.on_clock_jump(-1.0, 4.5)
    out = loop.controller.tick(4.5)
    assert out.state is WatchdogState.FAULT and out.entered_fault
    np.testing.assert_allclose(out.arm.joint_positions, [0.1] * 6)
    assert loop.controller.measured_joints is None
    np.testing.assert_allclose(loop.controller.safety_command().joint_positions, [0.1] * 6)
    # The same jump reported again (the tick saw it first): still holding the same joints.
    assert loop.controller.on_clock_jump(-1.0, 4.52)
    again = loop.controller.tick(4.55)
    assert again.entered_fault and again.arm.is_safety
    np.testing.assert_allclose(again.arm.joint_positions, [0.1] * 6)


def test_tick_within_clock_skew_is_not_a_jump() -> None:
    controller = running_twist_controller(1.02)
    assert is_policy_motion(controller.tick(1.03))
    out = controller.tick(1.0)  # threads sample the clock a little apart
    assert not out.clock_jumped and is_policy_motion(out)
    assert elapsed_s(1.0, 1.03) == 0.0 and elapsed_s(1.0, 1.2) < 0.0


def test_slot_keeps_the_generation_of_each_frame() -> None:
    slot = LatestObservation()
    slot.put(np.zeros(1), 1.0, 1.0, generation=3)
    assert slot.take(timeout_s=0.0).generation == 3


def test_negative_input_age_is_shown_stale_never_as_a_number() -> None:
    report = build_status(
        state=WatchdogState.RUNNING, reason=None, telemetry=Telemetry().snapshot(),
        clamp_counts={}, actuation_enabled=True,
        input_ages={"camera": 0.05, "joint_states": -7.0}, cache_mode="off", target_ratio=0.0,
        last_error=None)
    values = report.as_dict()
    assert values["joint_states_age_s"] == "stale (dated 7.000 s ahead of the clock)"
    assert values["camera_age_s"] == "0.050"
    assert report.level is Level.WARN and "joint_states dated ahead of the clock" in report.message


def test_telemetry_rates_restart_after_the_clock_goes_back() -> None:
    telemetry = Telemetry(window=50)
    for i in range(20):
        telemetry.record_tick(100.0 + i * 0.05)
        telemetry.record_step(100.0 + i * 0.1, {"total": 0.01})
    for i in range(5):  # the bag looped
        telemetry.record_tick(i * 0.05)
        telemetry.record_step(i * 0.1, {"total": 0.01})
    snapshot = telemetry.snapshot()
    assert snapshot.control_hz == pytest.approx(20.0)
    assert snapshot.inference_hz == pytest.approx(10.0)
    telemetry.record_tick(50.0)  # forward jump, reported by the node
    telemetry.clock_jumped()
    telemetry.record_tick(50.05)
    assert telemetry.snapshot().control_hz is None and telemetry.snapshot().inference_hz is None
    telemetry.record_tick(50.1)
    assert telemetry.snapshot().control_hz == pytest.approx(20.0)
