"""The control loop's brain, ROS-free: inputs and step results in, the command to publish out.

The node feeds it joint states, EE positions, observation arrivals, inference start / result /
error and clock jumps, and calls :meth:`Controller.tick` from its control timer. ``tick``
returns what to publish this period:

- RUNNING: the latest accepted policy command (a twist only for its ``period_s``, then a zero
  twist; a joint trajectory, with the time remaining to its target, until that time) and the
  gripper command. A command dated ahead of the clock (the clock went back) has expired.
- FAULT: policy output is dropped first, then the safety command (``hold``: the joint positions
  measured when the fault began, or a zero twist; ``none``: nothing) and the gripper held in its
  current state (so a grasped object is not dropped).
- WAITING: nothing.

Joint states are merged by joint name: each message contributes the configured joints it carries
(an arm's broadcaster and a gripper driver, or two arm publishers, may share the topic), and
``joint_states`` is as old as its oldest configured joint. With no joint names configured, each
message is taken whole, in message order.

Clock jumps (bag loop, simulator reset): the node reports them with :meth:`Controller.on_clock_jump`
(called by the ROS clock's jump callback), and ``tick`` also notices a clock that went back since the previous
tick. Either way every command and input time is dropped, FAULT is entered with a reason naming
the jump, the hold goes out, and recovery needs a fresh observation and a step that succeeds on
it, as after any fault. Times are compared only through
:func:`~vla_cache_ros.control.clock.elapsed_s`.

All methods take a lock, so the inference worker and the executor may call them concurrently.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Sequence

import numpy as np

from vla_cache_ros.control.actions import ActionConfig, ActionMapper, ArmCommand, CommandInterface, parse_enum
from vla_cache_ros.control.clock import elapsed_s, went_back
from vla_cache_ros.control.gripper import GripperConfig, GripperHysteresis
from vla_cache_ros.control.safety import SafetyGuard, SafetyLimits
from vla_cache_ros.control.validation import (
    InvalidInputError,
    finite_vector,
    message_joint_positions,
    pick_joint_positions,
)
from vla_cache_ros.control.watchdog import Watchdog, WatchdogConfig, WatchdogState

CAMERA, JOINT_STATES, EE_POSE = "camera", "joint_states", "ee_pose"


class SafetyCommand(str, Enum):
    """What goes out while in FAULT."""

    HOLD = "hold"
    NONE = "none"


@dataclass(frozen=True)
class ControllerConfig:
    """Everything the controller needs; the node builds it from its parameters.

    Attributes:
        action: action semantics, interface, scale, period.
        limits: safety limits.
        gripper: gripper mapping and hysteresis.
        watchdog: staleness and overrun thresholds.
        safety_command: what to send in FAULT.
        joint_names: joints to pick from joint states, in action order (empty: every joint of
            each message, in message order).
        min_duration_s: shortest ``duration_s`` a re-sent joint trajectory gets (one control
            period is a good value).
    """

    action: ActionConfig = field(default_factory=ActionConfig)
    limits: SafetyLimits = field(default_factory=SafetyLimits)
    gripper: GripperConfig = field(default_factory=GripperConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    safety_command: SafetyCommand = SafetyCommand.HOLD
    joint_names: tuple[str, ...] = ()
    min_duration_s: float = 0.05

    def __post_init__(self) -> None:
        object.__setattr__(self, "safety_command",
                           parse_enum(SafetyCommand, self.safety_command, "safety command"))
        object.__setattr__(self, "joint_names", tuple(str(n) for n in self.joint_names))

    @property
    def required_inputs(self) -> tuple[str, ...]:
        """Inputs that must stay fresh: camera, plus whatever the command mapping reads (joint
        states for joint interfaces, the EE pose when a workspace box side is set)."""
        inputs = [CAMERA]
        if self.action.interface is not CommandInterface.EE_TWIST:
            inputs.append(JOINT_STATES)
        elif self.limits.has_workspace:
            inputs.append(EE_POSE)
        return tuple(inputs)

    @property
    def input_parts(self) -> dict[str, tuple[str, ...]]:
        """Inputs that arrive in parts: ``joint_states`` by configured joint (if any)."""
        return {JOINT_STATES: self.joint_names} if self.joint_names else {}


@dataclass(frozen=True)
class TickOutput:
    """What the node publishes in one control period.

    ``clock_jumped`` is True when this tick found the clock earlier than at the previous tick
    and acted on it like :meth:`Controller.on_clock_jump` (the node then resets what that
    method's docstring lists).
    """

    state: WatchdogState
    arm: ArmCommand | None
    gripper: float | None
    reason: str | None  # fault reason, or what WAITING waits for
    entered_fault: bool = False
    clock_jumped: bool = False


@dataclass(frozen=True)
class JointStateUpdate:
    """What one joint-state message changed.

    Attributes:
        used: joints whose position this message set (configured joints it carries, in
            configuration order, minus any it carried out of order; with no joint names
            configured, all its joints).
        positions: the measured joint positions after this message (configured joints in
            order), or None until every configured joint has been received.
    """

    used: tuple[str, ...]
    positions: np.ndarray | None


@dataclass(frozen=True)
class StepOutcome:
    """Whether a finished inference step's action was accepted, and why not."""

    accepted: bool
    reason: str | None = None
    command: ArmCommand | None = None


class Controller:
    """Combines mapping, safety guard, gripper hysteresis and watchdog behind one lock."""

    def __init__(self, config: ControllerConfig) -> None:
        self._lock = threading.Lock()
        self._config = config
        self._guard = SafetyGuard(config.limits)
        self._mapper = ActionMapper(config.action, self._guard)
        self._gripper = GripperHysteresis(config.gripper)
        self._watchdog = Watchdog(config.watchdog, config.required_inputs, config.input_parts)
        self._joint_values: dict[str, float] = {}  # configured joint -> latest position
        self._joints: np.ndarray | None = None
        self._ee_position: np.ndarray | None = None
        self._command: ArmCommand | None = None
        self._command_time: float | None = None
        self._hold: ArmCommand | None = None
        self._gripper_active = False
        self._announced_fault = 0  # fault_count of the last reported fault
        self._last_tick_s: float | None = None

    # --------------------------------------------------------------------------- config
    @property
    def config(self) -> ControllerConfig:
        """The configuration in force."""
        return self._config

    def update(self, *, limits: SafetyLimits | None = None,
               watchdog: WatchdogConfig | None = None,
               action_scale: Sequence[float] | None = None) -> None:
        """Change the settings that may change at run time; effective from the next step.

        Switching the workspace box on for ``ee_twist`` makes the EE pose a required input
        (stale or missing -> FAULT).

        Raises:
            InvalidInputError: an invalid value (nothing is changed then).
        """
        with self._lock:
            config = self._config
            action = config.action
            if action_scale is not None:
                action = replace(action, scale=tuple(action_scale))
            config = replace(config, action=action, limits=limits or config.limits,
                             watchdog=watchdog or config.watchdog)
            self._config = config
            self._guard.limits = config.limits
            self._mapper.config = config.action
            self._watchdog.config = config.watchdog
            self._watchdog.required_inputs = config.required_inputs

    # --------------------------------------------------------------------------- inputs
    def on_joint_state(self, names: Sequence[str], positions: Sequence[float],
                       stamp_s: float, now_s: float) -> JointStateUpdate | None:
        """Merge a joint state into the measured joints.

        With joint names configured, the message contributes the configured joints it carries
        (latest stamp per joint; a joint carried out of order or stamped before a clock jump is
        left as it was). A message with none of them is irrelevant: None is returned and
        nothing changes. With no joint names configured the whole message is taken.

        Returns:
            None for an irrelevant message, else what it changed.

        Raises:
            InvalidInputError: names and positions of different lengths, duplicate names, a
                NaN / inf position of a configured joint (any joint when none are configured)
                or stamp; nothing is changed then.
        """
        wanted = self._config.joint_names
        if not wanted:
            values = message_joint_positions(names, positions)
            with self._lock:
                taken = self._watchdog.input_received(JOINT_STATES, stamp_s, now_s)
                if taken:
                    self._joints = values
                return JointStateUpdate(tuple(str(name) for name in names) if taken else (),
                                        self._measured())
        picked = pick_joint_positions(names, positions, wanted)
        if not picked:
            return None
        with self._lock:
            used = self._watchdog.parts_received(JOINT_STATES, picked, stamp_s, now_s)
            for joint in used:
                self._joint_values[joint] = picked[joint]
            if used and len(self._joint_values) == len(wanted):
                self._joints = np.array([self._joint_values[joint] for joint in wanted])
            return JointStateUpdate(tuple(used), self._measured())

    def on_ee_position(self, position: Sequence[float], stamp_s: float, now_s: float) -> None:
        """Record the measured EE position (for the workspace box).

        Raises:
            InvalidInputError: not 3 finite values, or a NaN / inf stamp.
        """
        position = finite_vector(position, "EE position", size=3)
        with self._lock:
            if self._watchdog.input_received(EE_POSE, stamp_s, now_s):
                self._ee_position = position

    def on_observation(self, stamp_s: float, now_s: float) -> int:
        """Record a valid camera frame's arrival; return its clock generation.

        Pass the generation back to :meth:`on_step_result` with the step's result, so a frame
        that arrived before a clock jump can never produce a command.

        Raises:
            InvalidInputError: a NaN / inf stamp.
        """
        with self._lock:
            self._watchdog.input_received(CAMERA, stamp_s, now_s)
            return self._watchdog.generation

    def waiting_for(self) -> list[str]:
        """Inputs the policy cannot run without that have not arrived yet."""
        with self._lock:
            return self._watchdog.missing_inputs()

    # ---------------------------------------------------------------------------- steps
    def on_step_started(self, now_s: float) -> None:
        """An inference step began."""
        with self._lock:
            self._watchdog.step_started(now_s)

    def on_step_result(self, action: Sequence[float], obs_stamp_s: float,
                       obs_received_s: float, now_s: float,
                       generation: int | None = None) -> StepOutcome:
        """Check, map, guard and (if the watchdog allows) adopt one step's action.

        Args:
            action: the policy's action.
            obs_stamp_s / obs_received_s: the observation's header stamp and arrival time.
            now_s: the time the step finished.
            generation: what :meth:`on_observation` returned for the observation (None: only
                the generation current at :meth:`on_step_started` is checked).

        The result is refused when the watchdog refuses it (see
        :meth:`~vla_cache_ros.control.watchdog.Watchdog.check_step`: stale or future-dated
        observation, stale input, overrun, a clock jump since the observation or the step's
        start, or an observation older than the current fault). An unusable action (wrong size,
        NaN, missing joint state) counts as a failed step.
        """
        with self._lock:
            problem = self._watchdog.check_step(now_s, obs_stamp_s, obs_received_s, generation)
            if problem is not None:
                if self._watchdog.state is WatchdogState.FAULT:
                    self._drop_policy_output()
                return StepOutcome(False, problem)
            try:
                mapped = self._mapper.map(action, self._joints, self._ee_position)
            except InvalidInputError as error:
                reason = f"unusable policy action: {error}"
                self._watchdog.step_failed(now_s, reason)
                self._drop_policy_output()
                return StepOutcome(False, reason)
            self._watchdog.accept_step(now_s, obs_stamp_s, obs_received_s)
            self._command, self._command_time = mapped.arm, now_s
            if mapped.gripper is not None:
                self._gripper.update(mapped.gripper)
                self._gripper_active = True
            return StepOutcome(True, None, mapped.arm)

    def on_step_error(self, reason: str, now_s: float) -> None:
        """An inference step raised; enters FAULT."""
        with self._lock:
            self._watchdog.step_failed(now_s, reason)
            self._drop_policy_output()

    def force_fault(self, reason: str, now_s: float) -> None:
        """Enter FAULT from outside (e.g. shutdown); the next tick sends the safety command."""
        with self._lock:
            self._watchdog.fault(now_s, reason)
            self._drop_policy_output()

    def on_clock_jump(self, delta_s: float, now_s: float) -> bool:
        """The clock jumped by ``delta_s`` seconds (negative: back) and now reads ``now_s``.

        Call it from rclpy's clock jump callback (``Clock.create_jump_callback``, post
        callback: ``delta_s = jump.delta.nanoseconds * 1e-9``). Acts on every backward jump and
        on forward jumps longer than ``max_obs_age_s``: drops the policy command (twist
        included), freezes the hold from the last measurements, forgets every input time and
        the measured joints and EE position (nothing counts as fresh, ``waiting_for`` lists all
        inputs again), refuses any step begun or observation taken before the jump, and enters
        FAULT with a reason naming the jump (unless still WAITING: nothing was commanded yet).
        The next tick sends the safety command; RUNNING resumes only after an observation
        received after the jump and a step that succeeds on it.

        Returns:
            True if it acted. The node must then also reset what it holds from before the jump:
            the policy's visual cache (``policy.reset()``), the newest-frame slot
            (:meth:`~vla_cache_ros.control.observation.LatestObservation.clear`) and the
            telemetry rates (:meth:`~vla_cache_ros.control.telemetry.Telemetry.clock_jumped`).

        Raises:
            ValueError: ``delta_s`` or ``now_s`` is NaN or infinite (a caller bug).
        """
        with self._lock:
            acted = self._clock_jumped(delta_s, now_s)
            if acted:
                self._last_tick_s = now_s
            return acted

    # ----------------------------------------------------------------------------- tick
    def tick(self, now_s: float) -> TickOutput:
        """Decide what to publish at ``now_s``.

        A ``now_s`` earlier than the previous tick's (beyond the clock skew tolerance) is a
        backward clock jump, handled as by :meth:`on_clock_jump` and flagged in the output.
        Never returns a policy command dated ahead of ``now_s`` or past its ``duration_s``.
        """
        with self._lock:
            jumped = False
            if self._last_tick_s is not None and went_back(now_s, self._last_tick_s):
                jumped = self._clock_jumped(now_s - self._last_tick_s, now_s)
            self._last_tick_s = now_s
            state = self._watchdog.tick(now_s)
            if state is WatchdogState.FAULT:
                # First tick of this fault, whoever raised it (tick, worker, or outside).
                entered = self._announced_fault != self._watchdog.fault_count
                self._announced_fault = self._watchdog.fault_count
                if self._command is not None or self._hold is None:
                    self._drop_policy_output()
                gripper = self._gripper.command if self._gripper_active else None
                return TickOutput(state, self._hold, gripper, self._watchdog.fault_reason,
                                  entered, jumped)
            if state is WatchdogState.WAITING:
                missing = self._watchdog.missing_inputs()
                reason = f"waiting for {', '.join(missing)}" if missing else \
                    "waiting for the first inference step"
                return TickOutput(state, None, None, reason, clock_jumped=jumped)
            gripper = self._gripper.command if self._gripper_active else None
            return TickOutput(state, self._live_command(now_s), gripper, None,
                              clock_jumped=jumped)

    def safety_command(self) -> ArmCommand | None:
        """The command to send when stopping (what FAULT sends), from the latest measurements
        (or, when none are held since a clock jump, the hold frozen at the jump)."""
        with self._lock:
            hold = self._make_hold()
            return self._hold if hold is None else hold

    # ---------------------------------------------------------------------------- status
    @property
    def state(self) -> WatchdogState:
        """Current watchdog state."""
        with self._lock:
            return self._watchdog.state

    @property
    def fault_reason(self) -> str | None:
        """Why the controller is in FAULT (None otherwise)."""
        with self._lock:
            return self._watchdog.fault_reason

    @property
    def clamp_counts(self) -> dict[str, int]:
        """Cumulative clamp counts per kind."""
        with self._lock:
            return self._guard.clamp_counts

    def input_age(self, name: str, now_s: float) -> float | None:
        """Age in seconds of an input (``camera``, ``joint_states``: its oldest configured joint,
        ``ee_pose``); None if not received (at all, every configured joint, or since a clock
        jump). Negative: dated ahead of ``now_s`` (the clock went back), i.e. stale."""
        with self._lock:
            return self._watchdog.input_age(name, now_s)

    @property
    def measured_joints(self) -> np.ndarray | None:
        """The latest joint positions (configured joints in order), None until all are known."""
        with self._lock:
            return self._measured()

    @property
    def clock_generation(self) -> int:
        """How many clock jumps the controller has acted on (see :meth:`on_observation`)."""
        with self._lock:
            return self._watchdog.generation

    # --------------------------------------------------------------------------- private
    def _measured(self) -> np.ndarray | None:
        return None if self._joints is None else self._joints.copy()

    def _clock_jumped(self, delta_s: float, now_s: float) -> bool:
        """Act on a clock jump (lock held); see :meth:`on_clock_jump`."""
        if not self._watchdog.clock_jumped(delta_s, now_s):
            return False
        self._drop_policy_output()  # freezes the hold from the last measurements
        self._joints = None
        self._joint_values.clear()
        self._ee_position = None
        return True

    def _drop_policy_output(self) -> None:
        """Forget the policy command and freeze the safety command (lock held)."""
        self._command = None
        self._command_time = None
        if self._watchdog.state is WatchdogState.FAULT and self._hold is None:
            self._hold = self._make_hold()
        if self._watchdog.state is not WatchdogState.FAULT:
            self._hold = None

    def _make_hold(self) -> ArmCommand | None:
        if self._config.safety_command is SafetyCommand.NONE:
            return None
        interface = self._config.action.interface
        if interface is CommandInterface.EE_TWIST:
            return ArmCommand.zero_twist(is_safety=True)
        if self._joints is None:
            return None  # nothing measured, nothing to hold
        return ArmCommand(interface, joint_positions=self._joints.copy(),
                          duration_s=self._config.min_duration_s, is_safety=True)

    def _live_command(self, now_s: float) -> ArmCommand | None:
        """The policy command for ``now_s``: a twist within its period (else a zero twist), a
        joint target with the time left to reach it (nothing once that time has passed)."""
        command, since = self._command, self._command_time
        if command is None or since is None:
            return None
        self._hold = None
        elapsed = elapsed_s(now_s, since)  # negative: the clock went back -> expired
        if command.interface is CommandInterface.EE_TWIST:
            return command if 0.0 <= elapsed < command.duration_s else ArmCommand.zero_twist()
        if not 0.0 <= elapsed <= command.duration_s:
            return None
        return command.with_duration(max(command.duration_s - elapsed,
                                         self._config.min_duration_s))
