"""The simulated arm's controllers: what a real arm's ros2_control stack would do, minus ROS.

One :class:`ArmController` turns the latest command into joint position targets for the
position actuators, at the controller rate. The latest command of any kind replaces the
previous one (as switching controllers would):

- joint positions (forward position controller): the target moves to the commanded positions
  at no more than ``max_joint_speed`` rad/s;
- joint trajectory (joint_trajectory_controller): linear interpolation from the target at the
  time of receipt through the points' ``time_from_start``; then it holds the last point;
- end-effector twist (servoing): the target is moved by differential IK, integrating the twist
  on the commanded configuration; a twist older than ``twist_timeout_s`` stops the motion;
- gripper: a normalised opening in [0, 1] (0 = closed, 1 = open, the OpenVLA convention).

Joint limits are respected by every mode. The target never runs more than
``max_tracking_error_rad`` ahead of the measured joints, so contact cannot wind it up.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from vla_cache_ros.errors import SimCommandError
from vla_cache_ros.sim.ik import DifferentialIK


class CommandMode(enum.Enum):
    HOLD = "hold"
    JOINT_POSITIONS = "joint_positions"
    TRAJECTORY = "trajectory"
    TWIST = "twist"


@dataclass(frozen=True)
class ControllerSettings:
    max_joint_speed: float = 2.0
    twist_timeout_s: float = 0.5
    max_tracking_error_rad: float = 0.25
    max_linear_speed: float = 0.5
    max_angular_speed: float = 3.0


@dataclass
class _Trajectory:
    start_time: float
    times: np.ndarray  # (k,) seconds from start, first is 0
    positions: np.ndarray  # (k, n) full joint vectors

    def sample(self, elapsed: float) -> np.ndarray:
        if elapsed >= self.times[-1]:
            return self.positions[-1]
        return np.array([np.interp(elapsed, self.times, self.positions[:, j])
                         for j in range(self.positions.shape[1])])


class ArmController:
    """Joint-target generator for the position-controlled arm; see the module docstring."""

    def __init__(self, ik: DifferentialIK, joint_names: tuple[str, ...],
                 settings: ControllerSettings = ControllerSettings()) -> None:
        self.ik = ik
        self.joint_names = joint_names
        self.settings = settings
        self.mode = CommandMode.HOLD
        self.q_target = np.zeros(len(joint_names))
        self.gripper_opening = 1.0
        self._goal = self.q_target.copy()
        self._trajectory: _Trajectory | None = None
        self._twist = np.zeros(6)
        self._twist_time = -np.inf

    def reset(self, q: np.ndarray, gripper_opening: float = 1.0) -> None:
        """Hold ``q`` with the gripper at ``gripper_opening``; forget every command."""
        self.q_target = self.ik.clamp(np.asarray(q, float))
        self._goal = self.q_target.copy()
        self.gripper_opening = float(np.clip(gripper_opening, 0.0, 1.0))
        self.mode = CommandMode.HOLD
        self._trajectory = None
        self._twist = np.zeros(6)
        self._twist_time = -np.inf

    def _check_finite(self, values: np.ndarray, what: str) -> np.ndarray:
        array = np.asarray(values, float)
        if not np.all(np.isfinite(array)):
            raise SimCommandError(f"{what} contains non-finite values: {array.tolist()}")
        return array

    def command_joint_positions(self, positions: np.ndarray) -> None:
        """Move to joint positions (one per arm joint, in ``joint_names`` order)."""
        q = self._check_finite(positions, "joint position command").ravel()
        if q.shape != (len(self.joint_names),):
            raise SimCommandError(
                f"joint position command needs {len(self.joint_names)} values "
                f"({', '.join(self.joint_names)}), got {q.size}")
        self._goal = self.ik.clamp(q)
        self.mode = CommandMode.JOINT_POSITIONS

    def command_trajectory(self, now: float, joint_names: list[str], times_from_start: list[float],
                           positions: list[list[float]]) -> None:
        """Follow a joint trajectory over a subset of the arm joints, starting at ``now``."""
        unknown = [name for name in joint_names if name not in self.joint_names]
        if unknown:
            raise SimCommandError(f"trajectory names unknown joints {unknown}; "
                                  f"arm joints are {list(self.joint_names)}")
        if len(set(joint_names)) != len(joint_names) or not joint_names:
            raise SimCommandError(f"trajectory joint_names must be non-empty and unique: {joint_names}")
        if not positions:
            raise SimCommandError("trajectory has no points")
        times = self._check_finite(times_from_start, "trajectory time_from_start")
        if np.any(np.diff(times) <= 0) or times[0] < 0:
            raise SimCommandError(f"trajectory time_from_start must be >= 0 and increasing: {times.tolist()}")
        points = self._check_finite(positions, "trajectory positions")
        if points.ndim != 2 or points.shape[1] != len(joint_names):
            raise SimCommandError(f"every trajectory point needs {len(joint_names)} positions")
        index = [self.joint_names.index(name) for name in joint_names]
        full = np.repeat(self.q_target[None, :], len(points) + 1, axis=0)
        full[1:, index] = points
        full[1:] = np.clip(full[1:], self.ik.lower, self.ik.upper)
        if times[0] > 0:
            knot_times = np.concatenate([[0.0], times])
        else:  # a point at t=0 replaces the start
            knot_times, full = times, full[1:]
        self._trajectory = _Trajectory(now, knot_times, full)
        self.mode = CommandMode.TRAJECTORY

    def command_twist(self, now: float, linear: np.ndarray, angular: np.ndarray,
                      tool_frame: bool = False) -> None:
        """Servo the end effector at a twist (m/s, rad/s) in the base frame (or the tool frame)."""
        v = self._check_finite(linear, "twist linear velocity").ravel()
        w = self._check_finite(angular, "twist angular velocity").ravel()
        if v.shape != (3,) or w.shape != (3,):
            raise SimCommandError("a twist needs 3 linear and 3 angular components")
        if tool_frame:
            _, rotation = self.ik.forward(self.q_target)
            v, w = rotation @ v, rotation @ w
        speed, spin = np.linalg.norm(v), np.linalg.norm(w)
        if speed > self.settings.max_linear_speed:
            v = v * (self.settings.max_linear_speed / speed)
        if spin > self.settings.max_angular_speed:
            w = w * (self.settings.max_angular_speed / spin)
        self._twist = np.concatenate([v, w])
        self._twist_time = now
        self.mode = CommandMode.TWIST

    def command_gripper(self, opening: float) -> None:
        """Set the gripper opening: 0 = closed, 1 = fully open; clipped into [0, 1]."""
        value = float(self._check_finite(np.asarray(opening), "gripper command"))
        self.gripper_opening = float(np.clip(value, 0.0, 1.0))

    def stop(self) -> None:
        """Hold the current target (what a controller does on a stop request)."""
        self.mode = CommandMode.HOLD
        self._goal = self.q_target.copy()

    def update(self, now: float, dt: float, q_measured: np.ndarray) -> np.ndarray:
        """Advance the target by ``dt`` seconds at time ``now``; returns the joint targets."""
        if self.mode is CommandMode.JOINT_POSITIONS:
            step = self.settings.max_joint_speed * dt
            self.q_target = self.q_target + np.clip(self._goal - self.q_target, -step, step)
        elif self.mode is CommandMode.TRAJECTORY and self._trajectory is not None:
            self.q_target = self._trajectory.sample(now - self._trajectory.start_time)
        elif self.mode is CommandMode.TWIST:
            if now - self._twist_time <= self.settings.twist_timeout_s:
                self.q_target = self.ik.step(self.q_target, self._twist * dt)
        band = self.settings.max_tracking_error_rad
        self.q_target = self.ik.clamp(np.clip(self.q_target, q_measured - band, q_measured + band))
        return self.q_target

    def commanded_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """End-effector position and rotation matrix at the current joint targets."""
        return self.ik.forward(self.q_target)
