"""The control loop's brain, ROS-free: inputs and step results in, the command to publish out.

The node feeds it joint states, EE positions, observation arrivals, inference start / result /
error, and calls :meth:`Controller.tick` from its control timer. ``tick`` returns what to
publish this period:

- RUNNING: the latest accepted policy command (a twist only for its ``period_s``, then a zero
  twist; a joint trajectory with the time remaining to its target) and the gripper command.
- FAULT: policy output is dropped first, then the safety command (``hold``: the joint positions
  measured when the fault began, or a zero twist; ``none``: nothing) and the gripper held in its
  current state (so a grasped object is not dropped).
- WAITING: nothing.

All methods take a lock, so the inference worker and the executor may call them concurrently.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Sequence

import numpy as np

from vla_cache_ros.control.actions import (ActionConfig, ActionMapper, ArmCommand,
                                           CommandInterface, parse_enum)
from vla_cache_ros.control.gripper import GripperConfig, GripperHysteresis
from vla_cache_ros.control.safety import SafetyGuard, SafetyLimits
from vla_cache_ros.control.validation import (InvalidInputError, finite_vector,
                                              select_joint_positions)
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
        joint_names: joints to pick from joint states, in action order (empty: message order).
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
        """Inputs that must stay fresh: camera, plus whatever the command mapping reads."""
        inputs = [CAMERA]
        if self.action.interface is not CommandInterface.EE_TWIST:
            inputs.append(JOINT_STATES)
        elif self.limits.has_workspace:
            inputs.append(EE_POSE)
        return tuple(inputs)


@dataclass(frozen=True)
class TickOutput:
    """What the node publishes in one control period."""

    state: WatchdogState
    arm: ArmCommand | None
    gripper: float | None
    reason: str | None  # fault reason, or what WAITING waits for
    entered_fault: bool = False


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
        self._watchdog = Watchdog(config.watchdog, config.required_inputs)
        self._joints: np.ndarray | None = None
        self._ee_position: np.ndarray | None = None
        self._command: ArmCommand | None = None
        self._command_time: float | None = None
        self._hold: ArmCommand | None = None
        self._gripper_active = False
        self._announced_fault: float | None = None  # fault_since of the last reported fault

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
                       stamp_s: float, now_s: float) -> np.ndarray:
        """Record a joint state; return the selected positions.

        Raises:
            InvalidInputError: wrong names / count or non-finite values (the state is ignored).
        """
        selected = select_joint_positions(names, positions, self._config.joint_names)
        with self._lock:
            self._joints = selected
            self._watchdog.input_received(JOINT_STATES, stamp_s, now_s)
        return selected

    def on_ee_position(self, position: Sequence[float], stamp_s: float, now_s: float) -> None:
        """Record the measured EE position (for the workspace box)."""
        position = finite_vector(position, "EE position", size=3)
        with self._lock:
            self._ee_position = position
            self._watchdog.input_received(EE_POSE, stamp_s, now_s)

    def on_observation(self, stamp_s: float, now_s: float) -> None:
        """Record a valid camera frame's arrival."""
        with self._lock:
            self._watchdog.input_received(CAMERA, stamp_s, now_s)

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
                       obs_received_s: float, now_s: float) -> StepOutcome:
        """Map, guard and (if the watchdog allows) adopt one step's action.

        An unusable action (wrong size, NaN, missing joint state) counts as a failed step.
        """
        with self._lock:
            try:
                mapped = self._mapper.map(action, self._joints, self._ee_position)
            except InvalidInputError as error:
                reason = f"unusable policy action: {error}"
                self._watchdog.step_failed(now_s, reason)
                self._drop_policy_output()
                return StepOutcome(False, reason)
            if not self._watchdog.step_succeeded(now_s, obs_stamp_s, obs_received_s):
                self._drop_policy_output()
                return StepOutcome(False, self._watchdog.fault_reason or "observation predates "
                                   "the current fault; waiting for a fresh one")
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

    # ----------------------------------------------------------------------------- tick
    def tick(self, now_s: float) -> TickOutput:
        """Decide what to publish at ``now_s``."""
        with self._lock:
            state = self._watchdog.tick(now_s)
            if state is WatchdogState.FAULT:
                # First tick of this fault, whoever raised it (tick, worker, or outside).
                entered = self._announced_fault != self._watchdog.fault_since
                self._announced_fault = self._watchdog.fault_since
                if self._command is not None or self._hold is None:
                    self._drop_policy_output()
                gripper = self._gripper.command if self._gripper_active else None
                return TickOutput(state, self._hold, gripper, self._watchdog.fault_reason,
                                  entered)
            if state is WatchdogState.WAITING:
                missing = self._watchdog.missing_inputs()
                reason = f"waiting for {', '.join(missing)}" if missing else \
                    "waiting for the first inference step"
                return TickOutput(state, None, None, reason)
            gripper = self._gripper.command if self._gripper_active else None
            return TickOutput(state, self._live_command(now_s), gripper, None)

    def safety_command(self) -> ArmCommand | None:
        """The command to send when stopping (what FAULT sends), from the latest measurements."""
        with self._lock:
            return self._make_hold()

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
        """Age of an input (``camera``, ``joint_states``, ``ee_pose``) or None if never seen."""
        with self._lock:
            return self._watchdog.input_age(name, now_s)

    @property
    def measured_joints(self) -> np.ndarray | None:
        """The latest selected joint positions."""
        with self._lock:
            return None if self._joints is None else self._joints.copy()

    # --------------------------------------------------------------------------- private
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
        command, since = self._command, self._command_time
        if command is None or since is None:
            return None
        self._hold = None
        remaining = since + command.duration_s - now_s
        if command.interface is CommandInterface.EE_TWIST:
            return command if remaining > 0.0 else ArmCommand.zero_twist()
        return command.with_duration(max(remaining, self._config.min_duration_s))
