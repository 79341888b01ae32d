"""The node's parameters as plain data: names, types, defaults, ranges, and how they combine.

The ROS node turns :data:`NODE_PARAMETERS` into declared parameters with descriptors (so
rqt_reconfigure shows descriptions, sliders for ranges and greys out read-only ones), and calls
:func:`controller_config` / :func:`check_change` so the rules for valid settings live here,
ROS-free and testable. Array parameters use an empty list for "not set".

Parameters that belong together (:data:`PARAMETER_PAIRS`: ``workspace_min`` / ``workspace_max``,
``joint_lower_limits`` / ``joint_upper_limits``) can each be set alone, as rqt_reconfigure does
(one parameter per request): an unset side is unbounded, and a side that is set is checked
against the current value of its partner.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from vla_cache_ros.cache.modes import PREPACK_CHOICES
from vla_cache_ros.control.actions import ActionConfig, ActionSemantics, CommandInterface
from vla_cache_ros.control.controller import ControllerConfig, SafetyCommand
from vla_cache_ros.control.gripper import GripperConfig
from vla_cache_ros.control.safety import SafetyLimits
from vla_cache_ros.control.validation import InvalidInputError
from vla_cache_ros.control.watchdog import WatchdogConfig

CACHE_MODES = ("off", "fixed", "vla_cache", "learned")
IMAGE_TYPES = ("raw", "compressed")
DTYPES = ("float32", "bfloat16", "float16")
OPENVLA_ACTION_DIM = 7


@dataclass(frozen=True)
class ParameterSpec:
    """One node parameter.

    ``kind`` is one of ``bool, int, double, string, double_array, string_array``. ``minimum`` /
    ``maximum`` become an IntegerRange / FloatingPointRange; ``choices`` are listed in the
    descriptor's constraints and enforced by :func:`check_change`.
    """

    name: str
    kind: str
    default: Any
    description: str
    read_only: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()


def _choice(name: str, default: str, choices: Sequence[str], description: str,
            read_only: bool = True) -> ParameterSpec:
    listed = " | ".join(choices)
    return ParameterSpec(name, "string", default, f"{description} ({listed})", read_only,
                         choices=tuple(choices))


NODE_PARAMETERS: tuple[ParameterSpec, ...] = (
    # --- model (fixed at start) ------------------------------------------------------------
    ParameterSpec("model_path", "string", "", "OpenVLA-format checkpoint directory (required)",
                  read_only=True),
    ParameterSpec("device", "string", "cpu", "torch device for the policy, e.g. cpu or cuda:0",
                  read_only=True),
    _choice("dtype", "float32", DTYPES, "weights / compute dtype"),
    ParameterSpec("unnorm_key", "string", "",
                  "dataset statistics used to un-normalise actions (empty: the only one)",
                  read_only=True),
    ParameterSpec("center_crop", "bool", False,
                  "centre-crop 0.9 of the area before resizing (models trained with crop aug)",
                  read_only=True),
    ParameterSpec("num_threads", "int", 0, "torch CPU threads (0: torch's default)",
                  read_only=True, minimum=0, maximum=256),
    _choice("cpu_weight_prepack", "auto", tuple(PREPACK_CHOICES),
            "CPU only: keep a prepacked copy of the decoder weights for faster (cached) prefills; "
            "auto = float32/bfloat16 decoders >= 512 wide whose copy fits in memory"),
    # --- cache (live) ----------------------------------------------------------------------
    _choice("cache_mode", "fixed", CACHE_MODES,
            "visual-token cache mode; learned needs a trained cache policy", read_only=False),
    ParameterSpec("cache_ratio", "double", 0.5,
                  "fraction of visual tokens whose K/V are reused (fixed: target; learned / "
                  "vla_cache: upper bound)", minimum=0.0, maximum=1.0),
    ParameterSpec("max_token_age", "int", 20,
                  "a token reused this many steps in a row is recomputed", minimum=1,
                  maximum=1000),
    ParameterSpec("instruction", "string", "",
                  "task instruction (also settable on the instruction topic; last one wins)"),
    # --- interfaces (fixed at start) -------------------------------------------------------
    _choice("image_type", "raw", IMAGE_TYPES,
            "camera message type: sensor_msgs/Image or sensor_msgs/CompressedImage"),
    _choice("command_interface", CommandInterface.EE_TWIST.value,
            tuple(item.value for item in CommandInterface), "arm command interface"),
    _choice("action_semantics", ActionSemantics.EE_DELTA.value,
            tuple(item.value for item in ActionSemantics),
            "meaning of the policy's first 6 action values"),
    ParameterSpec("joint_names", "string_array", [],
                  "arm joints in action order (required for joint interfaces)", read_only=True),
    ParameterSpec("twist_frame_id", "string", "base_link",
                  "frame_id of published twists (MoveIt Servo's planning / robot link frame)",
                  read_only=True),
    ParameterSpec("control_rate_hz", "double", 20.0,
                  "rate at which the latest valid command is (re-)published", read_only=True,
                  minimum=1.0, maximum=1000.0),
    ParameterSpec("action_period_s", "double", 0.2,
                  "time one action is meant to take: twist = delta / period, trajectory "
                  "time_from_start", read_only=True, minimum=0.001, maximum=10.0),
    ParameterSpec("action_scale", "double_array", [],
                  "per-dimension multiplier for the 7 action values (empty: all 1)"),
    ParameterSpec("publish_gripper", "bool", True,
                  "publish the gripper command (std_msgs/Float64MultiArray)", read_only=True),
    ParameterSpec("gripper_action_open", "double", 1.0,
                  "policy gripper value meaning open (OpenVLA: 1)", read_only=True,
                  minimum=-10.0, maximum=10.0),
    ParameterSpec("gripper_action_closed", "double", 0.0,
                  "policy gripper value meaning closed (OpenVLA: 0)", read_only=True,
                  minimum=-10.0, maximum=10.0),
    ParameterSpec("gripper_hysteresis", "double", 0.2,
                  "dead band around the middle of the open/closed range, as a fraction",
                  read_only=True, minimum=0.0, maximum=0.99),
    ParameterSpec("gripper_command_open", "double", 1.0, "value published to open the gripper",
                  read_only=True, minimum=-10.0, maximum=10.0),
    ParameterSpec("gripper_command_closed", "double", 0.0,
                  "value published to close the gripper", read_only=True, minimum=-10.0,
                  maximum=10.0),
    # --- safety ----------------------------------------------------------------------------
    ParameterSpec("enable_actuation", "bool", False,
                  "publish on command topics; false = dry run (preview topics only)"),
    _choice("safety_command", SafetyCommand.HOLD.value,
            tuple(item.value for item in SafetyCommand),
            "sent on fault and shutdown: hold = last measured joints / zero twist"),
    ParameterSpec("max_translation_m", "double", 0.05, "largest EE translation per action",
                  minimum=0.0001, maximum=1.0),
    ParameterSpec("max_rotation_rad", "double", 0.3, "largest EE rotation per action",
                  minimum=0.0001, maximum=3.2),
    ParameterSpec("max_joint_delta_rad", "double", 0.2,
                  "largest joint target change from the measured position", minimum=0.0001,
                  maximum=3.2),
    ParameterSpec("joint_lower_limits", "double_array", [],
                  "joint position lower limits, one per joint (empty: none; may be set without "
                  "the upper limits)"),
    ParameterSpec("joint_upper_limits", "double_array", [],
                  "joint position upper limits, one per joint (empty: none; may be set without "
                  "the lower limits)"),
    ParameterSpec("workspace_min", "double_array", [],
                  "EE workspace box minimum [x, y, z] in twist_frame_id (needs ee_pose; empty: "
                  "no minimum, may be set without workspace_max)"),
    ParameterSpec("workspace_max", "double_array", [],
                  "EE workspace box maximum [x, y, z] (empty: no maximum, may be set without "
                  "workspace_min)"),
    ParameterSpec("max_obs_age_s", "double", 0.5,
                  "observations older than this (ROS clock) never produce a command",
                  minimum=0.01, maximum=60.0),
    ParameterSpec("max_inference_s", "double", 2.0,
                  "an inference step running longer than this is a fault", minimum=0.001,
                  maximum=600.0),
    # --- reporting -------------------------------------------------------------------------
    ParameterSpec("telemetry_window", "int", 100, "steps / ticks in the rolling statistics",
                  read_only=True, minimum=2, maximum=100000),
    ParameterSpec("log_status", "bool", False, "log a one-line status every second"),
)

SPECS = {spec.name: spec for spec in NODE_PARAMETERS}

PARAMETER_PAIRS: tuple[tuple[str, str], ...] = (("workspace_min", "workspace_max"),
                                                ("joint_lower_limits", "joint_upper_limits"))
"""Parameters checked against each other; either of a pair may be set alone (other side open)."""


def defaults() -> dict[str, Any]:
    """Every parameter's default value."""
    return {spec.name: spec.default for spec in NODE_PARAMETERS}


def _optional_box(values: Mapping[str, Any]) -> tuple[Any, Any]:
    low, high = list(values["workspace_min"]), list(values["workspace_max"])
    return (tuple(low) if low else None), (tuple(high) if high else None)


def safety_limits(values: Mapping[str, Any]) -> SafetyLimits:
    """SafetyLimits from parameter values (an empty array leaves that side unbounded).

    Raises:
        InvalidInputError: invalid limits (see :class:`SafetyLimits`).
    """
    low, high = _optional_box(values)
    return SafetyLimits(
        max_translation_m=float(values["max_translation_m"]),
        max_rotation_rad=float(values["max_rotation_rad"]),
        max_joint_delta_rad=float(values["max_joint_delta_rad"]),
        joint_lower=tuple(values["joint_lower_limits"]),
        joint_upper=tuple(values["joint_upper_limits"]),
        workspace_min=low, workspace_max=high)


def watchdog_config(values: Mapping[str, Any]) -> WatchdogConfig:
    """WatchdogConfig from parameter values."""
    return WatchdogConfig(max_obs_age_s=float(values["max_obs_age_s"]),
                          max_inference_s=float(values["max_inference_s"]))


def controller_config(values: Mapping[str, Any]) -> ControllerConfig:
    """Build and cross-check the controller configuration from parameter values.

    Raises:
        InvalidInputError: any invalid or inconsistent setting, with a message naming it.
    """
    for name, spec in SPECS.items():
        if spec.choices and values[name] not in spec.choices:
            raise InvalidInputError(
                f"{name} must be one of {', '.join(spec.choices)}, got {values[name]!r}")
    action = ActionConfig(
        semantics=values["action_semantics"], interface=values["command_interface"],
        action_dim=OPENVLA_ACTION_DIM, scale=tuple(values["action_scale"]),
        period_s=float(values["action_period_s"]), has_gripper=True)
    joint_names = tuple(values["joint_names"])
    if action.interface is not CommandInterface.EE_TWIST:
        if len(joint_names) != action.arm_dim:
            raise InvalidInputError(
                f"command_interface {action.interface.value} needs joint_names with "
                f"{action.arm_dim} joints (the policy's arm dimensions), got {list(joint_names)}")
    wrong = [name for name in ("joint_lower_limits", "joint_upper_limits")
             if joint_names and len(values[name]) not in (0, len(joint_names))]
    if wrong:
        counts = sorted({len(values[name]) for name in wrong})
        verb = "has" if len(wrong) == 1 else "have"
        raise InvalidInputError(
            f"{' / '.join(wrong)} {verb} {' / '.join(map(str, counts))} values but joint_names "
            f"has {len(joint_names)}")
    limits = safety_limits(values)
    gripper = GripperConfig(
        action_open=float(values["gripper_action_open"]),
        action_closed=float(values["gripper_action_closed"]),
        hysteresis=float(values["gripper_hysteresis"]),
        command_open=float(values["gripper_command_open"]),
        command_closed=float(values["gripper_command_closed"]))
    rate = float(values["control_rate_hz"])
    if not math.isfinite(rate) or rate <= 0:
        raise InvalidInputError(f"control_rate_hz must be > 0, got {rate}")
    return ControllerConfig(action=action, limits=limits, gripper=gripper,
                            watchdog=watchdog_config(values),
                            safety_command=values["safety_command"], joint_names=joint_names,
                            min_duration_s=1.0 / rate)


def check_change(current: Mapping[str, Any], changes: Mapping[str, Any],
                 available_modes: Sequence[str]) -> str | None:
    """Return why ``changes`` must be refused (None if acceptable).

    Checks types loosely (rclpy already enforces declared types and ranges), choices, the cache
    mode against what the loaded policy offers, non-empty instructions, and that the combined
    configuration (``current`` updated by ``changes``) is valid. One side of a
    :data:`PARAMETER_PAIRS` pair may change alone; when it conflicts with its partner's current
    value, the reason names both values and says to change the partner first (or both in one
    request).
    """
    unknown = [name for name in changes if name not in SPECS]
    if unknown:
        return f"unknown parameters: {', '.join(unknown)}"
    read_only = [name for name in changes if SPECS[name].read_only]
    if read_only:
        return f"read-only parameters cannot change at run time: {', '.join(read_only)}"
    if "cache_mode" in changes and changes["cache_mode"] not in available_modes:
        mode = changes["cache_mode"]
        hint = " (no trained cache policy is loaded)" if mode == "learned" else ""
        return (f"cache_mode {mode!r} is not available{hint}; available: "
                f"{', '.join(available_modes)}")
    if "instruction" in changes and not str(changes["instruction"]).strip():
        return "instruction must not be empty"
    merged = {**current, **changes}
    try:
        controller_config(merged)
    except InvalidInputError as error:
        return str(error) + _partner_hint(merged, changes)
    return None


def _partner_hint(merged: Mapping[str, Any], changes: Mapping[str, Any]) -> str:
    """Advice for a refused one-sided change of a pair whose conflict is with the partner."""
    for pair in PARAMETER_PAIRS:
        changed = [name for name in pair if name in changes]
        if len(changed) != 1:
            continue
        partner = pair[1] if changed[0] == pair[0] else pair[0]
        if not list(merged[partner]):
            continue
        try:
            controller_config({**merged, partner: []})
        except InvalidInputError:
            continue  # wrong on its own: the partner is not the problem
        return f" (change {partner} first, or both in one request)"
    return ""
