"""The node's parameter table and the check of one value against it.

:data:`NODE_PARAMETERS` names every parameter with its type, default, description, range, choices
and whether it may change at run time; the node turns it into declared parameters with
descriptors (so rqt_reconfigure shows descriptions, sliders for ranges and greys out read-only
ones). :func:`coerce_parameter` checks one value against its entry: used for values from params
files before rclpy declares them (rclpy itself would stop with a traceback on an integer written
for a double, and lets NaN through a range) and for every live change. Users write YAML the way
they think of numbers, so whole numbers are accepted where doubles are expected
(``cache_ratio: 1``, ``joint_lower_limits: [-3, -3, 3]``); strings are never taken for numbers
(``"0.5"`` is refused), nor booleans. Array parameters use an empty list for "not set".

How the values combine into a configuration lives in :mod:`vla_cache_ros.runtime.config`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from vla_cache_ros.cache.modes import DECODE_SETTINGS, LM_HEAD_CHOICES, MODE_NAMES, PREPACK_CHOICES
from vla_cache_ros.control.actions import ActionSemantics, CommandInterface
from vla_cache_ros.control.controller import SafetyCommand
from vla_cache_ros.errors import ConfigurationError, clip_text

IMAGE_TYPES = ("raw", "compressed")
DTYPES = ("float32", "bfloat16", "float16")
GRIPPER_INTERFACES = ("topic", "gripper_command", "parallel_gripper_command")
"""topic: std_msgs/Float64MultiArray; the others: control_msgs/action/GripperCommand /
ParallelGripperCommand goals (see :mod:`vla_cache_ros.ros.gripper_output`)."""
EE_POSE_SOURCES = ("topic", "tf")
INFERENCE_BACKENDS = ("local", "remote")
"""local: a CachedVLAPolicy in the node; remote: a ``vla-cache serve`` server
(:mod:`vla_cache_ros.serving.client`)."""
SERVER_IMAGE_ENCODINGS = ("raw", "png", "jpeg")
"""As :data:`vla_cache_ros.serving.wire.ENCODINGS` (spelled here so the table stays light)."""
SERVO_START_TYPES = ("switch_command_type", "trigger")
"""switch_command_type: moveit_msgs/srv/ServoCommandType (Jazzy and later); trigger:
std_srvs/srv/Trigger (Humble's ``~/start_servo``)."""


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


RQT_SLIDER_STEPS = 100
"""rqt_reconfigure maps a parameter's range onto a slider of this many steps (its double slider
ignores the descriptor's ``step``), so a live parameter's range is chosen for the values an
operator actually tunes: one slider step stays well below the default. The clamps' and the
watchdog's ranges follow from that (e.g. ``max_inference_s`` 0.01-10 s moves in 0.1 s steps; a
step slower than 10 s is not closed-loop control - evaluate such a model offline with
``vla-cache replay``)."""

NODE_PARAMETERS: tuple[ParameterSpec, ...] = (
    # --- model (fixed at start) ------------------------------------------------------------
    ParameterSpec("model_path", "string", "",
                  "OpenVLA-format checkpoint directory, or a short name: tiny, sim_policy (required)",
                  read_only=True),
    ParameterSpec("device", "string", "cpu", "torch device for the policy, e.g. cpu or cuda:0",
                  read_only=True),
    _choice("dtype", "float32", DTYPES, "weights / compute dtype"),
    ParameterSpec("unnorm_key", "string", "",
                  "dataset statistics used to un-normalise actions (empty: the short name's, or the only one)",
                  read_only=True),
    ParameterSpec("center_crop", "bool", False,
                  "centre-crop 0.9 of the area before resizing (models trained with crop aug)",
                  read_only=True),
    ParameterSpec("num_threads", "int", 0, "torch CPU threads (0: torch's default)",
                  read_only=True, minimum=0, maximum=256),
    ParameterSpec("cache_policy_path", "string", "",
                  "learned cache policy directory (vla-cache train-cache output) that cache_mode "
                  "learned runs; empty: the model directory's own cache_policy/, if it has one; "
                  "none: no cache policy",
                  read_only=True),
    ParameterSpec("drafter_path", "string", "",
                  "learned drafter directory (vla-cache train-drafter output) whose tokens are decode "
                  "speculative's draft; empty: the model directory's own drafter/, if it has one; "
                  "none: the previous step's tokens",
                  read_only=True),
    _choice("cpu_weight_prepack", "auto", tuple(PREPACK_CHOICES),
            "CPU only: keep a prepacked copy of the decoder weights for faster (cached) prefills; "
            "auto = float32/bfloat16 decoders >= 512 wide whose copy fits in memory"),
    _choice("lm_head", "screened", LM_HEAD_CHOICES,
            "greedy tokens from the LM head: screened = a bfloat16 pass over every row, then float32 "
            "only for the rows that could hold the maximum (same tokens; float32 models only, others "
            "run the full head); full = the whole head every time"),
    # --- inference backend (fixed at start) ------------------------------------------------
    _choice("inference_backend", "local", INFERENCE_BACKENDS,
            "where the policy runs: in this process (model_path), or on a vla-cache serve "
            "policy server (server_url; model_path, device, dtype, threads are the server's)"),
    ParameterSpec("server_url", "string", "http://127.0.0.1:8000",
                  "inference_backend remote: the policy server's URL (bearer token, if the "
                  "server wants one: environment variable VLA_CACHE_SERVE_TOKEN)", read_only=True),
    ParameterSpec("session_id", "string", "",
                  "inference_backend remote: this robot's session (its visual cache) on the "
                  "server (empty: the node's full name)", read_only=True),
    ParameterSpec("request_timeout_s", "double", 2.0,
                  "inference_backend remote: a step request unanswered this long is a failed "
                  "inference", read_only=True, minimum=0.01, maximum=60.0),
    _choice("server_image_encoding", "raw", SERVER_IMAGE_ENCODINGS,
            "inference_backend remote: how frames travel (raw: lossless, no encoding cost; png: "
            "lossless, smaller; jpeg: smallest, lossy: actions differ from the local policy's)"),
    # --- cache (live) ----------------------------------------------------------------------
    _choice("cache_mode", "fixed", MODE_NAMES,
            "visual-token cache mode; learned needs a trained cache policy", read_only=False),
    ParameterSpec("cache_ratio", "double", 0.5,
                  "fraction of visual tokens whose K/V are reused (fixed: target; learned / "
                  "vla_cache: upper bound)", minimum=0.0, maximum=1.0),
    ParameterSpec("latency_budget_ms", "double", 0.0,
                  "step-time budget (ms, e.g. the control period): the cache ratio is steered "
                  "within [0, cache_ratio] to the least reuse whose steps meet it (0: off, the "
                  "ratio is cache_ratio; no effect in cache_mode off)", minimum=0.0,
                  maximum=1000.0),
    ParameterSpec("max_token_age", "int", 20,
                  "a token reused this many steps in a row is recomputed", minimum=1,
                  maximum=1000),
    _choice("decode", "greedy", DECODE_SETTINGS,
            "action-token decoding: greedy, or speculative (the previous step's tokens verified "
            "inside the prefill; the same tokens, fewer decode passes when they repeat)",
            read_only=False),
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
    _choice("ee_pose_source", "topic", EE_POSE_SOURCES,
            "where the measured EE position (workspace box, ee_twist only) comes from: "
            "geometry_msgs/PoseStamped on ee_pose, or a TF lookup of tf_tool_frame in "
            "tf_base_frame (needs tf2_ros: a system ROS 2)"),
    ParameterSpec("tf_base_frame", "string", "",
                  "ee_pose_source tf: frame the EE position and the workspace box are in "
                  "(empty: twist_frame_id)", read_only=True),
    ParameterSpec("tf_tool_frame", "string", "tool0",
                  "ee_pose_source tf: the end-effector frame looked up", read_only=True),
    ParameterSpec("servo_start_service", "string", "",
                  "MoveIt Servo service called on every activation, e.g. "
                  "/servo_node/switch_command_type (Jazzy+) or /servo_node/start_servo "
                  "(Humble); empty: none", read_only=True),
    _choice("servo_start_type", "switch_command_type", SERVO_START_TYPES,
            "type of servo_start_service: moveit_msgs ServoCommandType, TWIST (needs "
            "moveit_msgs: a system ROS 2) or std_srvs Trigger"),
    ParameterSpec("servo_start_timeout_s", "double", 5.0,
                  "how long the servo start waits for the service and its reply (steady "
                  "clock; the executor is never blocked)", read_only=True, minimum=0.1,
                  maximum=60.0),
    ParameterSpec("publish_gripper", "bool", True,
                  "send gripper commands (see gripper_interface)", read_only=True),
    _choice("gripper_interface", "topic", GRIPPER_INTERFACES,
            "topic: std_msgs/Float64MultiArray on gripper_command every control period; "
            "gripper_command / parallel_gripper_command: a control_msgs action goal on "
            "gripper_action_name when the open/closed decision changes (needs control_msgs: a "
            "system ROS 2)"),
    ParameterSpec("gripper_action_name", "string", "gripper_controller/gripper_cmd",
                  "gripper action server (ros2_controllers: <controller>/gripper_cmd)",
                  read_only=True),
    ParameterSpec("gripper_max_effort", "double", 0.0,
                  "max effort of gripper action goals (N, or N m for a revolute finger); "
                  "position-controlled grippers ignore it, effort-controlled ones apply at "
                  "most this (0: no force); parallel_gripper_command sends it only when > 0",
                  read_only=True, minimum=0.0, maximum=1000.0),
    ParameterSpec("gripper_action_open", "double", 1.0,
                  "policy gripper value meaning open (OpenVLA: 1)", read_only=True,
                  minimum=-10.0, maximum=10.0),
    ParameterSpec("gripper_action_closed", "double", 0.0,
                  "policy gripper value meaning closed (OpenVLA: 0)", read_only=True,
                  minimum=-10.0, maximum=10.0),
    ParameterSpec("gripper_hysteresis", "double", 0.2,
                  "dead band around the middle of the open/closed range, as a fraction",
                  read_only=True, minimum=0.0, maximum=0.99),
    ParameterSpec("gripper_command_open", "double", 1.0,
                  "value published to open the gripper (the goal position for gripper actions, "
                  "m or rad)", read_only=True, minimum=-10.0, maximum=10.0),
    ParameterSpec("gripper_command_closed", "double", 0.0,
                  "value published to close the gripper (the goal position for gripper "
                  "actions)", read_only=True, minimum=-10.0, maximum=10.0),
    # --- safety ----------------------------------------------------------------------------
    ParameterSpec("enable_actuation", "bool", False,
                  "publish on command topics; false = dry run (preview topics only)"),
    _choice("safety_command", SafetyCommand.HOLD.value,
            tuple(item.value for item in SafetyCommand),
            "sent on fault and shutdown: hold = last measured joints / zero twist"),
    ParameterSpec("max_translation_m", "double", 0.05, "largest EE translation per action",
                  minimum=0.001, maximum=0.2),
    ParameterSpec("max_rotation_rad", "double", 0.3, "largest EE rotation per action",
                  minimum=0.001, maximum=1.0),
    ParameterSpec("max_joint_delta_rad", "double", 0.2,
                  "largest joint target change from the measured position", minimum=0.001,
                  maximum=1.0),
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
                  minimum=0.01, maximum=5.0),
    ParameterSpec("max_inference_s", "double", 2.0,
                  "an inference step running longer than this is a fault", minimum=0.01,
                  maximum=10.0),
    # --- reporting -------------------------------------------------------------------------
    ParameterSpec("telemetry_window", "int", 100, "steps / ticks in the rolling statistics",
                  read_only=True, minimum=2, maximum=100000),
    ParameterSpec("log_status", "bool", False, "log a one-line status every second"),
    # --- lifecycle -------------------------------------------------------------------------
    ParameterSpec("autostart", "bool", True,
                  "walk configure -> activate at start (false: a lifecycle manager drives it)",
                  read_only=True),
)

SPECS = {spec.name: spec for spec in NODE_PARAMETERS}

PARAMETER_PAIRS: tuple[tuple[str, str], ...] = (("workspace_min", "workspace_max"),
                                                ("joint_lower_limits", "joint_upper_limits"))
"""Parameters checked against each other; either of a pair may be set alone (other side open)."""


def defaults() -> dict[str, Any]:
    """Every parameter's default value."""
    return {spec.name: spec.default for spec in NODE_PARAMETERS}


_KIND_WORDS = {
    "bool": "true or false", "int": "an integer", "double": "a number",
    "string": "a string", "double_array": "a list of numbers",
    "string_array": "a list of strings",
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _refuse(spec: Any, value: Any, expected: str) -> ConfigurationError:
    shown = clip_text(repr(value))
    return ConfigurationError(f"parameter {spec.name}: got {shown} ({type(value).__name__}), "
                              f"expected {expected}")


def _in_range(spec: Any, number: float) -> None:
    if not math.isfinite(number):
        raise ConfigurationError(f"parameter {spec.name}: got {number}, expected a finite number")
    low, high = spec.minimum, spec.maximum
    if (low is not None and number < low) or (high is not None and number > high):
        raise ConfigurationError(f"parameter {spec.name}: got {number:g}, expected a value in "
                                 f"[{low:g}, {high:g}]")


def coerce_parameter(spec: Any, value: Any) -> Any:
    """Return ``value`` in the parameter's declared type, or raise why it cannot be used.

    Args:
        spec: the parameter's ``ParameterSpec`` (``kind``, ``minimum``/``maximum``, ``choices``).
        value: a plain Python value as parsed from YAML or received from a parameter service.

    Returns:
        The value with whole numbers turned into floats for ``double`` / ``double_array``;
        lists as lists.

    Raises:
        ConfigurationError: wrong type (a string for a number, a float for an integer, ...),
            NaN / inf, out of the spec's range, or not one of its choices.
    """
    kind = spec.kind
    expected = _KIND_WORDS[kind]
    if kind == "bool":
        if not isinstance(value, bool):
            raise _refuse(spec, value, expected)
        return value
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise _refuse(spec, value, expected)
        _in_range(spec, float(value))
        return value
    if kind == "double":
        if not _is_number(value):
            raise _refuse(spec, value, expected)
        number = float(value)
        _in_range(spec, number)
        return number
    if kind == "string":
        if not isinstance(value, str):
            raise _refuse(spec, value, expected)
        if spec.choices and value not in spec.choices:
            raise ConfigurationError(f"parameter {spec.name}: got {clip_text(repr(value))}, "
                                     f"expected one of {', '.join(spec.choices)}")
        return value
    if not isinstance(value, (list, tuple)):
        raise _refuse(spec, value, expected)
    if kind == "double_array":
        if not all(_is_number(item) for item in value):
            raise _refuse(spec, value, expected)
        numbers = [float(item) for item in value]
        bad = [number for number in numbers if not math.isfinite(number)]
        if bad:
            raise ConfigurationError(f"parameter {spec.name}: contains {bad[0]}, expected "
                                     "finite numbers")
        return numbers
    if not all(isinstance(item, str) for item in value):  # string_array
        raise _refuse(spec, value, expected)
    return list(value)
