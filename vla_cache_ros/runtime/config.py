"""The node's configuration as one frozen, validated value built from its parameter values.

:class:`NodeConfig` groups the settings by who uses them (model loading, cache, message
interfaces, the controller, reporting). A change is two steps, as rclpy's parameter callbacks
want it: :meth:`NodeConfig.with_changes` validates the changed values against everything else
and returns a new config (or raises with the reason), and only then does the runtime apply it.
Nothing here imports rclpy.

Parameters that belong together (``workspace_min`` / ``workspace_max``, ``joint_lower_limits`` /
``joint_upper_limits``) can each be set alone, as rqt_reconfigure does (one parameter per
request): an unset side is unbounded, and a side that is set is checked against the current
value of its partner.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from vla_cache_ros.cache.modes import check_available
from vla_cache_ros.control.actions import ActionConfig, CommandInterface
from vla_cache_ros.control.controller import ControllerConfig
from vla_cache_ros.control.gripper import GripperConfig
from vla_cache_ros.control.safety import SafetyLimits
from vla_cache_ros.control.watchdog import WatchdogConfig
from vla_cache_ros.errors import ConfigurationError, InvalidInputError, clip_text
from vla_cache_ros.models.norm_stats import ACTION_DIM
from vla_cache_ros.runtime.parameters import PARAMETER_PAIRS, SPECS, coerce_parameter, defaults


@dataclass(frozen=True)
class ModelConfig:
    """Where and how the policy is loaded (fixed once configured)."""

    model_path: str
    device: str
    dtype: str
    unnorm_key: str | None
    center_crop: bool
    num_threads: int
    cpu_weight_prepack: str
    cache_policy_path: str = ""
    lm_head: str = "screened"
    drafter_path: str = ""


@dataclass(frozen=True)
class BackendConfig:
    """Where inference runs (fixed once configured).

    Attributes:
        backend: ``local`` (a policy in this process) or ``remote`` (a policy server).
        server_url, session_id, request_timeout_s, image_encoding: the remote backend's server,
            this robot's session ("" = the node's full name), per-request timeout (s) and frame
            encoding (see :mod:`vla_cache_ros.serving.client`).
    """

    backend: str
    server_url: str
    session_id: str
    request_timeout_s: float
    image_encoding: str

    @property
    def remote(self) -> bool:
        """Whether inference runs on a policy server."""
        return self.backend == "remote"


@dataclass(frozen=True)
class CacheConfig:
    """Visual-token cache settings (live).

    Attributes:
        mode: the cache mode (``cache/modes.py``).
        ratio: the ``cache_ratio`` parameter in [0, 1]: the ratio, or with a latency budget the
            cap of the ratio the budget controller chooses.
        max_token_age: steps a token may be reused in a row.
        decode: ``greedy`` or ``speculative``.
        latency_budget_ms: the step-time budget in ms (0: off; see
            :mod:`vla_cache_ros.control.budget`).
    """

    mode: str
    ratio: float
    max_token_age: int
    decode: str = "greedy"
    latency_budget_ms: float = 0.0


@dataclass(frozen=True)
class InterfaceConfig:
    """Message types, topics' meaning and rates (fixed once configured).

    Attributes:
        ee_pose_source: ``topic`` or ``tf`` (the EE position is read only for ``ee_twist``).
        tf_base_frame, tf_tool_frame: the TF lookup of ``ee_pose_source: tf`` (the base frame
            defaults to ``twist_frame_id``).
        servo_start_service: MoveIt Servo's start service ("" = none), of
            ``servo_start_type``, waited for at most ``servo_start_timeout_s`` (s).
        gripper_interface: ``topic`` or a control_msgs gripper action on
            ``gripper_action_name`` with ``gripper_max_effort``.
    """

    image_type: str
    command_interface: CommandInterface
    joint_names: tuple[str, ...]
    twist_frame_id: str
    control_rate_hz: float
    publish_gripper: bool
    ee_pose_source: str
    tf_base_frame: str
    tf_tool_frame: str
    servo_start_service: str
    servo_start_type: str
    servo_start_timeout_s: float
    gripper_interface: str
    gripper_action_name: str
    gripper_max_effort: float

    @property
    def reads_ee_pose(self) -> bool:
        """Whether the node reads the EE pose (for ``ee_twist``'s workspace box)."""
        return self.command_interface is CommandInterface.EE_TWIST

    @property
    def ee_pose_description(self) -> str:
        """Where the EE pose comes from, for /diagnostics (``topic ee_pose`` or
        ``tf <base> -> <tool>``)."""
        if self.ee_pose_source == "tf":
            return f"tf {self.tf_base_frame} -> {self.tf_tool_frame}"
        return "topic ee_pose"


@dataclass(frozen=True)
class NodeConfig:
    """Every setting of the node, validated together.

    Attributes:
        model, backend, cache, interface: see their classes.
        controller: the ROS-free controller's configuration (action mapping, limits, gripper,
            watchdog, safety command).
        instruction: the task ("" until one is given).
        enable_actuation: whether commands go to the command topics (else preview only).
        telemetry_window: steps / ticks in the rolling statistics.
        log_status: log a one-line status every second.
        autostart: walk configure -> activate at start.
        values: the parameter values this config was built from (read-only mapping).
    """

    model: ModelConfig
    backend: BackendConfig
    cache: CacheConfig
    interface: InterfaceConfig
    controller: ControllerConfig
    instruction: str
    enable_actuation: bool
    telemetry_window: int
    log_status: bool
    autostart: bool
    values: Mapping[str, Any]

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "NodeConfig":
        """Build and cross-check a config from parameter values (missing ones take defaults).

        Raises:
            ConfigurationError: a value of the wrong type or out of range, or an inconsistent
                combination, with a message naming the parameter(s).
        """
        merged = {**defaults(), **values}
        unknown = sorted(set(merged) - set(SPECS))
        if unknown:
            raise ConfigurationError(f"unknown parameters: {', '.join(unknown)}")
        merged = {name: coerce_parameter(SPECS[name], value) for name, value in merged.items()}
        try:
            controller = controller_config(merged)
        except InvalidInputError as error:
            raise ConfigurationError(str(error)) from None
        return cls(
            model=ModelConfig(
                model_path=str(merged["model_path"]), device=str(merged["device"]),
                dtype=str(merged["dtype"]), unnorm_key=str(merged["unnorm_key"]) or None,
                center_crop=bool(merged["center_crop"]), num_threads=int(merged["num_threads"]),
                cpu_weight_prepack=str(merged["cpu_weight_prepack"]), lm_head=str(merged["lm_head"]),
                cache_policy_path=str(merged["cache_policy_path"]).strip(),
                drafter_path=str(merged["drafter_path"]).strip()),
            backend=BackendConfig(
                backend=str(merged["inference_backend"]), server_url=str(merged["server_url"]).strip(),
                session_id=str(merged["session_id"]).strip(),
                request_timeout_s=float(merged["request_timeout_s"]),
                image_encoding=str(merged["server_image_encoding"])),
            cache=CacheConfig(mode=str(merged["cache_mode"]), ratio=float(merged["cache_ratio"]),
                              max_token_age=int(merged["max_token_age"]), decode=str(merged["decode"]),
                              latency_budget_ms=float(merged["latency_budget_ms"])),
            interface=InterfaceConfig(
                image_type=str(merged["image_type"]),
                command_interface=controller.action.interface,
                joint_names=tuple(merged["joint_names"]),
                twist_frame_id=str(merged["twist_frame_id"]),
                control_rate_hz=float(merged["control_rate_hz"]),
                publish_gripper=bool(merged["publish_gripper"]),
                **_optional_interfaces(merged, controller.action.interface)),
            controller=controller,
            instruction=str(merged["instruction"]).strip(),
            enable_actuation=bool(merged["enable_actuation"]),
            telemetry_window=int(merged["telemetry_window"]),
            log_status=bool(merged["log_status"]),
            autostart=bool(merged["autostart"]),
            values=MappingProxyType(merged))

    def with_changes(self, changes: Mapping[str, Any],
                     available_modes: Sequence[str] | None = None) -> "NodeConfig":
        """The config after ``changes`` (parameter name -> new value), validated; ``self`` is
        unchanged.

        Args:
            changes: new values; read-only parameters may not change.
            available_modes: cache modes the loaded policy can run (None: not loaded yet, any
                known mode is accepted).

        Raises:
            ConfigurationError: unknown or read-only parameter, a bad value, a mode the policy
                cannot run, an empty instruction, or an inconsistent combination. One side of
                a limit pair may change alone; when it conflicts with its partner's current
                value, the reason names both and says to change the partner first (or both in
                one request).
        """
        unknown = [name for name in changes if name not in SPECS]
        if unknown:
            raise ConfigurationError(f"unknown parameters: {', '.join(unknown)}")
        read_only = [name for name in changes if SPECS[name].read_only]
        if read_only:
            raise ConfigurationError(
                f"read-only parameters cannot change at run time: {', '.join(read_only)}")
        mode = changes.get("cache_mode")
        if isinstance(mode, str) and available_modes is not None:
            check_available(clip_text(mode), available_modes)
        changes = {name: coerce_parameter(SPECS[name], value) for name, value in changes.items()}
        if "instruction" in changes and not str(changes["instruction"]).strip():
            raise ConfigurationError("instruction must not be empty")
        merged = {**self.values, **changes}
        try:
            return NodeConfig.from_values(merged)
        except ConfigurationError as error:
            raise ConfigurationError(str(error) + _partner_hint(merged, changes)) from None


def safety_limits(values: Mapping[str, Any]) -> SafetyLimits:
    """SafetyLimits from parameter values (an empty array leaves that side unbounded).

    Raises:
        InvalidInputError: invalid limits (see :class:`SafetyLimits`).
    """
    low, high = list(values["workspace_min"]), list(values["workspace_max"])
    return SafetyLimits(
        max_translation_m=float(values["max_translation_m"]),
        max_rotation_rad=float(values["max_rotation_rad"]),
        max_joint_delta_rad=float(values["max_joint_delta_rad"]),
        joint_lower=tuple(values["joint_lower_limits"]),
        joint_upper=tuple(values["joint_upper_limits"]),
        workspace_min=tuple(low) if low else None, workspace_max=tuple(high) if high else None)


def controller_config(values: Mapping[str, Any]) -> ControllerConfig:
    """Build and cross-check the controller configuration from (coerced) parameter values.

    Raises:
        InvalidInputError: any invalid or inconsistent setting, with a message naming it.
    """
    action = ActionConfig(
        semantics=values["action_semantics"], interface=values["command_interface"],
        action_dim=ACTION_DIM, scale=tuple(values["action_scale"]),
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
    gripper = GripperConfig(
        action_open=float(values["gripper_action_open"]),
        action_closed=float(values["gripper_action_closed"]),
        hysteresis=float(values["gripper_hysteresis"]),
        command_open=float(values["gripper_command_open"]),
        command_closed=float(values["gripper_command_closed"]))
    return ControllerConfig(
        action=action, limits=safety_limits(values), gripper=gripper,
        watchdog=WatchdogConfig(max_obs_age_s=float(values["max_obs_age_s"]),
                                max_inference_s=float(values["max_inference_s"])),
        safety_command=values["safety_command"], joint_names=joint_names,
        min_duration_s=1.0 / float(values["control_rate_hz"]))


def _optional_interfaces(values: Mapping[str, Any],
                         interface: CommandInterface) -> dict[str, Any]:
    """The EE pose source, the servo start and the gripper interface settings, cross-checked.

    Raises:
        ConfigurationError: a TF source without frames, a servo start service for a command
            interface other than ``ee_twist``, or a gripper action without a name.
    """
    base = str(values["tf_base_frame"]).strip() or str(values["twist_frame_id"]).strip()
    tool = str(values["tf_tool_frame"]).strip()
    if values["ee_pose_source"] == "tf" and not (base and tool):
        raise ConfigurationError("ee_pose_source tf needs tf_tool_frame and tf_base_frame (or "
                                 "twist_frame_id) to name frames")
    service = str(values["servo_start_service"]).strip()
    if service and interface is not CommandInterface.EE_TWIST:
        raise ConfigurationError(
            f"servo_start_service is for MoveIt Servo (command_interface ee_twist), not "
            f"{interface.value}: leave it empty")
    action_name = str(values["gripper_action_name"]).strip()
    if values["gripper_interface"] != "topic" and not action_name:
        raise ConfigurationError(
            f"gripper_interface {values['gripper_interface']} needs gripper_action_name")
    return {"ee_pose_source": str(values["ee_pose_source"]), "tf_base_frame": base,
            "tf_tool_frame": tool, "servo_start_service": service,
            "servo_start_type": str(values["servo_start_type"]),
            "servo_start_timeout_s": float(values["servo_start_timeout_s"]),
            "gripper_interface": str(values["gripper_interface"]),
            "gripper_action_name": action_name,
            "gripper_max_effort": float(values["gripper_max_effort"])}


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
