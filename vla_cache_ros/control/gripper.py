"""Gripper command with hysteresis and a configurable open/close mapping.

VLA policies output a continuous gripper value (OpenVLA / OXE: 0 = close, 1 = open). Sending that
value straight to a gripper makes it chatter around the midpoint, so the gripper state flips only
when the value crosses a band around the middle of the policy's range, and the published command
is one of two configured values (e.g. a finger opening in metres, or a position-controller
target). Datasets with the opposite convention are handled by swapping ``action_open`` and
``action_closed``.
"""
from __future__ import annotations

from dataclasses import dataclass

from vla_cache_ros.control.validation import finite_scalar
from vla_cache_ros.errors import InvalidInputError


@dataclass(frozen=True)
class GripperConfig:
    """Mapping from the policy's gripper value to a gripper command.

    Attributes:
        action_open: policy value meaning fully open (OpenVLA: 1.0).
        action_closed: policy value meaning fully closed (OpenVLA: 0.0).
        hysteresis: width of the dead band, as a fraction of the open-closed range (0..1);
            the state flips to open above ``0.5 + hysteresis / 2`` of the range and to closed
            below ``0.5 - hysteresis / 2``.
        command_open: value published to open the gripper.
        command_closed: value published to close it.
        initially_open: state before the first policy step.
    """

    action_open: float = 1.0
    action_closed: float = 0.0
    hysteresis: float = 0.2
    command_open: float = 1.0
    command_closed: float = 0.0
    initially_open: bool = True

    def __post_init__(self) -> None:
        for name in ("action_open", "action_closed", "command_open", "command_closed"):
            object.__setattr__(self, name, finite_scalar(getattr(self, name), f"gripper {name}"))
        object.__setattr__(self, "hysteresis",
                           finite_scalar(self.hysteresis, "gripper hysteresis", 0.0, 0.99))
        if self.action_open == self.action_closed:
            raise InvalidInputError(
                f"gripper action_open and action_closed must differ, both are {self.action_open}")


class GripperHysteresis:
    """Turns a stream of continuous policy gripper values into a debounced open/close command."""

    def __init__(self, config: GripperConfig | None = None) -> None:
        self.config = config or GripperConfig()
        self.is_open = self.config.initially_open

    def reset(self) -> None:
        """Return to the configured initial state."""
        self.is_open = self.config.initially_open

    def openness(self, value: float) -> float:
        """Map a policy gripper value to 0 (closed) .. 1 (open); may fall outside for outliers."""
        config = self.config
        value = finite_scalar(value, "gripper action")
        return (value - config.action_closed) / (config.action_open - config.action_closed)

    def update(self, value: float) -> float:
        """Feed one policy gripper value; return the command to publish."""
        openness = self.openness(value)
        half_band = self.config.hysteresis / 2.0
        if openness > 0.5 + half_band:
            self.is_open = True
        elif openness < 0.5 - half_band:
            self.is_open = False
        return self.command

    @property
    def command(self) -> float:
        """The command for the current state."""
        return self.config.command_open if self.is_open else self.config.command_closed


class GoalGate:
    """Lets a gripper command through to an action server only when it changes.

    A topic gripper gets the command every control period; an action server gets a goal only
    when the open/closed decision (:class:`GripperHysteresis`) differs from the goal last
    delivered, since each goal restarts the gripper's motion. While actuation is off nothing
    goes out and the gate forgets the last goal, so the decision in force is sent again when
    actuation comes back (the gripper may have been moved meanwhile). A command that could not
    be delivered (no server yet) is not marked, so it is tried again at the next period.
    """

    def __init__(self) -> None:
        self._delivered: float | None = None

    def take(self, command: float | None, actuate: bool) -> float | None:
        """The command to send now, or None (nothing new, no command, or actuation off)."""
        if not actuate:
            self._delivered = None
            return None
        if command is None or command == self._delivered:
            return None
        return command

    def delivered(self, command: float) -> None:
        """Record that ``command`` went out as a goal."""
        self._delivered = command

    def reset(self) -> None:
        """Forget the last goal (activation, cleanup): the next command goes out."""
        self._delivered = None
