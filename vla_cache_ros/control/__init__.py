"""ROS-free control layer: action -> command mapping, safety guard, gripper, watchdog, telemetry,
the latency budget's choice of cache ratio.

Nothing here imports rclpy or message packages; the node (``vla_cache_ros.ros.node``) converts
messages to plain numbers and times (ROS clock, float seconds) and calls into these modules.
That clock can jump (bag loop, simulator reset): every age and expiry is taken with
:func:`vla_cache_ros.control.clock.elapsed_s`, and the node reports jumps to
:meth:`Controller.on_clock_jump`.
"""
from vla_cache_ros.control.actions import ActionConfig, ActionMapper, ActionSemantics, ArmCommand, CommandInterface
from vla_cache_ros.control.budget import BudgetSnapshot, LatencyBudget
from vla_cache_ros.control.controller import (
                                           Controller,
                                           ControllerConfig,
                                           JointStateUpdate,
                                           SafetyCommand,
                                           StepOutcome,
                                           TickOutput,
)
from vla_cache_ros.control.gripper import GripperConfig, GripperHysteresis
from vla_cache_ros.control.observation import LatestObservation, Observation
from vla_cache_ros.control.safety import CLAMP_KINDS, SafetyGuard, SafetyLimits
from vla_cache_ros.control.telemetry import Telemetry, TelemetrySnapshot
from vla_cache_ros.control.watchdog import Watchdog, WatchdogConfig, WatchdogState
from vla_cache_ros.errors import InvalidInputError

__all__ = [
    "ActionConfig", "ActionMapper", "ActionSemantics", "ArmCommand", "CommandInterface",
    "BudgetSnapshot", "LatencyBudget",
    "Controller", "ControllerConfig", "JointStateUpdate", "SafetyCommand", "StepOutcome",
    "TickOutput",
    "GripperConfig", "GripperHysteresis", "LatestObservation", "Observation", "CLAMP_KINDS",
    "SafetyGuard", "SafetyLimits", "Telemetry", "TelemetrySnapshot", "InvalidInputError",
    "Watchdog", "WatchdogConfig", "WatchdogState",
]
