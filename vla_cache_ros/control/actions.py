"""Action -> arm command mapping: EE deltas to twists, joint deltas / absolutes to joint targets.

A policy action is a vector whose last element is the gripper (OpenVLA: 7-D
``[dx, dy, dz, droll, dpitch, dyaw, gripper]``). How the rest is interpreted is the
:class:`ActionSemantics`; which controller receives it is the :class:`CommandInterface`:

============== ===================================== ===========================================
semantics      arm part of the action                interfaces
============== ===================================== ===========================================
ee_delta       6-D EE displacement per policy step   ee_twist (velocity = delta / action period)
joint_delta    one change per joint                  joint_trajectory, joint_positions
joint_absolute one target per joint                  joint_trajectory, joint_positions
============== ===================================== ===========================================

EE deltas to joint targets would need the arm's inverse kinematics, which this package does not
have; MoveIt Servo (``ee_twist``) does that on the robot. The rotation part of an EE delta is
OpenVLA's (Bridge's) extrinsic roll/pitch/yaw delta; it is converted to the equivalent rotation
vector, which divided by the period gives the angular velocity.
Every action is multiplied by a per-dimension scale first, then passed through the
:class:`~vla_cache_ros.control.safety.SafetyGuard`.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Sequence

import numpy as np

from vla_cache_ros.control.safety import SafetyGuard
from vla_cache_ros.control.validation import finite_vector, positive_scalar
from vla_cache_ros.errors import InvalidInputError
from vla_cache_ros.geometry import euler_to_rotvec


class ActionSemantics(str, Enum):
    """What the non-gripper part of a policy action means."""

    EE_DELTA = "ee_delta"
    JOINT_DELTA = "joint_delta"
    JOINT_ABSOLUTE = "joint_absolute"


class CommandInterface(str, Enum):
    """Which kind of controller the arm command goes to."""

    JOINT_TRAJECTORY = "joint_trajectory"
    JOINT_POSITIONS = "joint_positions"
    EE_TWIST = "ee_twist"


COMPATIBLE = {
    ActionSemantics.EE_DELTA: (CommandInterface.EE_TWIST,),
    ActionSemantics.JOINT_DELTA: (CommandInterface.JOINT_TRAJECTORY,
                                  CommandInterface.JOINT_POSITIONS),
    ActionSemantics.JOINT_ABSOLUTE: (CommandInterface.JOINT_TRAJECTORY,
                                     CommandInterface.JOINT_POSITIONS),
}


def parse_enum(enum_type: type[Enum], value: str, what: str) -> Enum:
    """Look ``value`` up in ``enum_type`` by value, with an error listing the valid choices."""
    try:
        return enum_type(value)
    except ValueError:
        choices = ", ".join(member.value for member in enum_type)
        raise InvalidInputError(f"unknown {what} {value!r}; choose one of: {choices}") from None


@dataclass(frozen=True)
class ActionConfig:
    """How policy actions become arm commands.

    Attributes:
        semantics: meaning of the arm part of the action.
        interface: the controller that receives commands; must suit ``semantics``.
        action_dim: length of the policy's action (OpenVLA: 7), gripper last.
        scale: per-dimension multiplier applied first (empty = all ones; else ``action_dim``
            values, the gripper's included).
        period_s: the time one action is meant to take (the policy's nominal step period):
            twists are delta / period and are sent for this long; joint trajectories reach
            their target after this long.
        has_gripper: whether the last action dimension is the gripper.
    """

    semantics: ActionSemantics = ActionSemantics.EE_DELTA
    interface: CommandInterface = CommandInterface.EE_TWIST
    action_dim: int = 7
    scale: tuple[float, ...] = ()
    period_s: float = 0.2
    has_gripper: bool = True

    def __post_init__(self) -> None:
        semantics = parse_enum(ActionSemantics, self.semantics, "action semantics")
        interface = parse_enum(CommandInterface, self.interface, "command interface")
        if interface not in COMPATIBLE[semantics]:
            allowed = ", ".join(item.value for item in COMPATIBLE[semantics])
            raise InvalidInputError(
                f"action semantics {semantics.value!r} cannot drive command interface "
                f"{interface.value!r} (allowed: {allowed})")
        object.__setattr__(self, "semantics", semantics)
        object.__setattr__(self, "interface", interface)
        if int(self.action_dim) < 1 + int(self.has_gripper):
            raise InvalidInputError(f"action_dim must leave room for the arm, got {self.action_dim}")
        if semantics is ActionSemantics.EE_DELTA and self.arm_dim != 6:
            raise InvalidInputError(
                f"ee_delta actions need 6 arm values (+ gripper), action_dim is {self.action_dim}")
        scale = tuple(finite_vector(self.scale, "action scale")) if len(self.scale) else ()
        if scale and len(scale) != self.action_dim:
            raise InvalidInputError(
                f"action scale needs {self.action_dim} values (one per action dimension), "
                f"got {len(scale)}")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "period_s", positive_scalar(self.period_s, "action period_s"))

    @property
    def arm_dim(self) -> int:
        """Number of action values that drive the arm (all but the gripper)."""
        return int(self.action_dim) - int(self.has_gripper)


@dataclass(frozen=True)
class ArmCommand:
    """One command for the arm's controller, independent of message types.

    ``joint_positions`` is set for the joint interfaces, ``linear`` / ``angular`` (velocities,
    m/s and rad/s) for ``ee_twist``. ``duration_s`` is how long the command is meant to take
    (``time_from_start`` of a trajectory point; how long a twist stays valid).
    """

    interface: CommandInterface
    joint_positions: np.ndarray | None = None
    linear: np.ndarray | None = None
    angular: np.ndarray | None = None
    duration_s: float = 0.0
    is_safety: bool = False

    @classmethod
    def zero_twist(cls, is_safety: bool = False) -> "ArmCommand":
        """A twist that stops the end effector."""
        return cls(CommandInterface.EE_TWIST, linear=np.zeros(3), angular=np.zeros(3),
                   is_safety=is_safety)

    def with_duration(self, duration_s: float) -> "ArmCommand":
        """The same command with another ``duration_s``."""
        return ArmCommand(self.interface, self.joint_positions, self.linear, self.angular,
                          duration_s, self.is_safety)


@dataclass(frozen=True)
class MappedAction:
    """A policy action after scaling, mapping and the safety guard."""

    arm: ArmCommand
    gripper: float | None  # the raw (scaled) gripper value, before hysteresis


class ActionMapper:
    """Maps validated policy actions to guarded :class:`ArmCommand` objects."""

    def __init__(self, config: ActionConfig, guard: SafetyGuard) -> None:
        self.config = config
        self.guard = guard

    @property
    def needs_joint_states(self) -> bool:
        """Whether mapping needs measured joint positions (every joint semantics)."""
        return self.config.semantics is not ActionSemantics.EE_DELTA

    def map(self, action: Sequence[float], measured_joints: np.ndarray | None = None,
            ee_position: np.ndarray | None = None) -> MappedAction:
        """Scale, interpret and guard one action.

        Raises:
            InvalidInputError: wrong action size, NaN / inf, joint count mismatch, or missing
                joint states for joint semantics.
        """
        config = self.config
        values = finite_vector(action, "policy action", size=config.action_dim)
        if config.scale:
            values = values * np.asarray(config.scale)
        arm = values[:config.arm_dim]
        gripper = float(values[-1]) if config.has_gripper else None
        if config.semantics is ActionSemantics.EE_DELTA:
            delta = self.guard.limit_ee_delta(arm, ee_position)
            command = ArmCommand(config.interface, linear=delta[:3] / config.period_s,
                                 angular=euler_to_rotvec(delta[3:]) / config.period_s,
                                 duration_s=config.period_s)
            return MappedAction(command, gripper)
        if measured_joints is None:
            raise InvalidInputError("no joint state received yet; joint actions need one")
        measured = finite_vector(measured_joints, "measured joint positions")
        if measured.shape[0] != config.arm_dim:
            raise InvalidInputError(
                f"the policy drives {config.arm_dim} joints but {measured.shape[0]} joint "
                "positions are measured; set joint_names to the arm's joints in action order")
        targets = measured + arm if config.semantics is ActionSemantics.JOINT_DELTA else arm
        targets = self.guard.limit_joint_targets(targets, measured)
        command = ArmCommand(config.interface, joint_positions=targets,
                             duration_s=config.period_s)
        return MappedAction(command, gripper)
