"""``vla_cache_node``: camera + joint states in, arm commands out, cache ratio tunable live.

A thin ROS 2 layer over :class:`~vla_cache_ros.policy.CachedVLAPolicy` and the ROS-free
:mod:`vla_cache_ros.control` package: this file converts messages to arrays and ROS times to
float seconds, declares parameters from :data:`~vla_cache_ros.control.settings.NODE_PARAMETERS`,
and publishes what :meth:`Controller.tick` decides.

Threads: the executor thread runs subscriptions, parameter services and the timers; one worker
thread runs inference on the newest camera frame as soon as the previous step is done. The
control timer (ROS clock, so ``use_sim_time`` works) publishes the latest valid command; the
diagnostics timer (steady clock, ~1 Hz) publishes /diagnostics even when sim time stops.

Topics (relative names, remap as needed):
  in:  image (sensor_msgs/Image or CompressedImage, see image_type), joint_states,
       instruction (std_msgs/String; both a latched message published before the node started
       and volatile publishers such as ``ros2 topic pub`` reach it), ee_pose
       (geometry_msgs/PoseStamped, used for the workspace box with ee_twist)
  out: joint_trajectory | joint_commands | twist_cmd (per command_interface), gripper_command
       (std_msgs/Float64MultiArray) -- only when enable_actuation is true;
       ~/preview/<same names> (always: what is or would be sent), ~/cache_ratio and
       ~/inference_latency_ms (std_msgs/Float32, per step), /diagnostics.

Nothing the node receives or computes can stop it: every callback and the worker loop catch
what escapes them, log it once (each severity from its own call site, as rclpy requires), show
it on /diagnostics, fault the watchdog (so the safety command goes out) and carry on; the next
good observation recovers. Start-up checks every parameter, the device and the statistics key
before any weight is read, then runs one warm-up step before reporting ready.
"""
from __future__ import annotations

import os
import re
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, TwistStamped
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.clock import Clock, ClockType, JumpThreshold
from rclpy.duration import Duration

try:  # Jazzy and later
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (DurabilityPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float32, Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_cache_ros.control import settings
from vla_cache_ros.control.actions import ArmCommand, CommandInterface
from vla_cache_ros.control.clock import CLOCK_SKEW_TOLERANCE_S
from vla_cache_ros.control.controller import CAMERA, EE_POSE, JOINT_STATES, Controller
from vla_cache_ros.control.diagnostics import build_status, one_line
from vla_cache_ros.control.observation import LatestObservation
from vla_cache_ros.control.parameter_types import coerce_parameter
from vla_cache_ros.control.telemetry import Telemetry
from vla_cache_ros.control.validation import InvalidInputError
from vla_cache_ros.control.watchdog import WatchdogState
from vla_cache_ros.errors import ConfigurationError, UserFacingError, clip_text
from vla_cache_ros.image_conversion import compressed_image_to_rgb, image_to_rgb
from vla_cache_ros.ros.process import run_node

NODE_NAME = "vla_cache_node"
COMMAND_TOPICS = {
    CommandInterface.JOINT_TRAJECTORY: ("joint_trajectory", JointTrajectory),
    CommandInterface.JOINT_POSITIONS: ("joint_commands", Float64MultiArray),
    CommandInterface.EE_TWIST: ("twist_cmd", TwistStamped),
}
GRIPPER_TOPIC = "gripper_command"
RECENT_ERROR_S = 5.0
LOG_REPEAT_S = 10.0  # an unchanged problem is logged again at most this often, with a count
MESSAGE_LIMIT = 600  # characters of any one log line / diagnostics value built from inputs
WARM_UP_INSTRUCTION = "pick up the object"
PARAMETER_TYPES = {
    "bool": Parameter.Type.BOOL, "int": Parameter.Type.INTEGER, "double": Parameter.Type.DOUBLE,
    "string": Parameter.Type.STRING, "double_array": Parameter.Type.DOUBLE_ARRAY,
    "string_array": Parameter.Type.STRING_ARRAY,
}
COMMAND_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
VOLATILE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)


def stamp_seconds(stamp: Any) -> float:
    """builtin_interfaces/Time -> float seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def check_model_path(value: Any) -> str:
    """The checkpoint directory from the ``model_path`` parameter, checked before any heavy import.

    Raises:
        ConfigurationError: empty, or not a directory.
    """
    model_path = os.path.expanduser(str(value))
    if not model_path:
        raise ConfigurationError("parameter model_path is required (an OpenVLA-format "
                                 "checkpoint directory; `vla-cache make-tiny DIR` makes one)")
    if not Path(model_path).is_dir():
        raise ConfigurationError(f"model_path {clip_text(repr(model_path))} is not a directory")
    return model_path


def descriptor_for(spec: settings.ParameterSpec) -> ParameterDescriptor:
    """A ParameterDescriptor with description, read-only flag, range and listed choices."""
    descriptor = ParameterDescriptor(
        name=spec.name, type=PARAMETER_TYPES[spec.kind].value, description=spec.description,
        read_only=spec.read_only)
    if spec.choices:
        descriptor.additional_constraints = "one of: " + ", ".join(spec.choices)
    if spec.minimum is not None and spec.maximum is not None:
        if spec.kind == "int":
            descriptor.integer_range = [IntegerRange(from_value=int(spec.minimum),
                                                     to_value=int(spec.maximum), step=1)]
        else:
            descriptor.floating_point_range = [FloatingPointRange(
                from_value=float(spec.minimum), to_value=float(spec.maximum), step=0.0)]
    return descriptor


class VlaCacheNode(Node):
    """The policy runner node. Construction loads the model; raises UserFacingError on bad setup."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self._declare_parameters()
        values = self._parameter_values()
        model_path = check_model_path(values["model_path"])  # before any heavy import
        self._controller = Controller(settings.controller_config(values))
        self._interface = self._controller.config.action.interface
        self._telemetry = Telemetry(int(values["telemetry_window"]))
        self._slot = LatestObservation()
        self._state_lock = threading.Lock()
        self._instruction = ""
        self._actuation = bool(values["enable_actuation"])
        self._log_status = bool(values["log_status"])
        self._send_safety_once = False
        self._last_error: tuple[str, float] | None = None  # (message, monotonic time)
        self._logged: dict[str, tuple[str, float, int]] = {}  # key -> (shape, time, repeats)
        self._closing = False
        self._policy = self._load_policy(model_path, values)
        if str(values["instruction"]).strip():
            self._set_instruction(str(values["instruction"]), source="parameter")  # may raise

        self._create_publishers(values)
        self._create_subscriptions(values)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        rate = float(values["control_rate_hz"])
        self._control_timer = self.create_timer(1.0 / rate,
                                                self._guarded("control tick", self._on_control_tick))
        self._diagnostics_timer = self.create_timer(
            1.0, self._guarded("diagnostics", self._on_diagnostics),
            clock=Clock(clock_type=ClockType.STEADY_TIME))
        # Bag loops and simulator resets move /clock back: see Controller.on_clock_jump.
        self._jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=Duration(seconds=0.1),
                          min_backward=Duration(nanoseconds=-int(CLOCK_SKEW_TOLERANCE_S * 1e9)),
                          on_clock_change=True),
            post_callback=self._guarded("clock jump", self._on_clock_jump))
        self._worker = threading.Thread(target=self._inference_loop, name="vla_inference",
                                        daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"ready: model {model_path}, mode {self._policy.mode} "
            f"ratio {self._policy.cache_ratio:g}, interface {self._interface.value}, "
            f"actuation {'ENABLED' if self._actuation else 'disabled (dry run)'}")

    # ------------------------------------------------------------------------- parameters
    def _declare_parameters(self) -> None:
        """Declare every parameter with its descriptor, after checking the params-file values.

        rclpy would raise on an integer written for a double (and accept NaN within a range);
        the values given on the command line / in params files are checked and converted first,
        so users may write ``cache_ratio: 1`` and get one clear line for ``cache_ratio: "0.5"``.

        Raises:
            ConfigurationError: a given value of the wrong type, out of range, or not finite.
        """
        overrides = getattr(self, "_parameter_overrides", {})  # rclpy's parsed --ros-args values
        for spec in settings.NODE_PARAMETERS:
            given = overrides.get(spec.name)
            if given is not None and given.type_ is not Parameter.Type.NOT_SET:
                overrides[spec.name] = Parameter(spec.name, PARAMETER_TYPES[spec.kind],
                                                 coerce_parameter(spec, given.value))
        for spec in settings.NODE_PARAMETERS:
            descriptor = descriptor_for(spec)
            if spec.kind.endswith("_array"):
                # An empty list has no type in rclpy: declare typed and writable, fill in the
                # default if nothing overrode it, then apply the real (maybe read-only) descriptor.
                writable = descriptor_for(spec)
                writable.read_only = False
                parameter = self.declare_parameter(spec.name, PARAMETER_TYPES[spec.kind],
                                                   writable)
                if parameter.value is None:
                    self.set_parameters([Parameter(spec.name, PARAMETER_TYPES[spec.kind],
                                                   list(spec.default))])
                self.set_descriptor(spec.name, descriptor)
            else:
                self.declare_parameter(spec.name, spec.default, descriptor)

    def _parameter_values(self) -> dict[str, Any]:
        values = {}
        for spec in settings.NODE_PARAMETERS:
            value = self.get_parameter(spec.name).value
            values[spec.name] = list(value) if spec.kind.endswith("_array") else value
        return values

    def _on_set_parameters(self, parameters: Sequence[Parameter]) -> SetParametersResult:
        """rclpy's on-set callback: validate, then apply; an unexpected error refuses the change
        (an exception here would reach the executor and end the process)."""
        try:
            return self._apply_parameters(parameters)
        except Exception as error:  # noqa: BLE001 - the node must stay up whatever happens
            self._internal_error("parameter change", error)
            return SetParametersResult(successful=False, reason=clip_text(
                f"internal error: {type(error).__name__}: {error}", MESSAGE_LIMIT))

    def _apply_parameters(self, parameters: Sequence[Parameter]) -> SetParametersResult:
        changes = {}
        try:
            for parameter in parameters:
                spec = settings.SPECS.get(parameter.name)
                if spec is None:
                    continue  # e.g. use_sim_time: rclpy's own parameters
                value = parameter.value
                changes[parameter.name] = coerce_parameter(
                    spec, list(value) if spec.kind.endswith("_array") else value)
        except ConfigurationError as error:
            return self._refuse_change(str(error))
        if not changes:
            return SetParametersResult(successful=True)
        reason = settings.check_change(self._parameter_values(), changes,
                                       self._policy.available_modes())
        if reason is None and "instruction" in changes:
            reason = self._instruction_problem(str(changes["instruction"]))
        if reason is not None:
            return self._refuse_change(reason)
        merged = {**self._parameter_values(), **changes}
        try:
            self._controller.update(limits=settings.safety_limits(merged),
                                    watchdog=settings.watchdog_config(merged),
                                    action_scale=merged["action_scale"])
            if "cache_mode" in changes:
                self._policy.set_mode(changes["cache_mode"])
            if "cache_ratio" in changes:
                self._policy.set_cache_ratio(changes["cache_ratio"])
            if "max_token_age" in changes:
                self._policy.set_max_token_age(changes["max_token_age"])
        except UserFacingError as error:
            return SetParametersResult(successful=False, reason=str(error))
        if "instruction" in changes:
            self._set_instruction(str(changes["instruction"]), source="parameter")
        if "enable_actuation" in changes:
            self._set_actuation(bool(changes["enable_actuation"]))
        if "log_status" in changes:
            self._log_status = bool(changes["log_status"])
        return SetParametersResult(successful=True)

    def _refuse_change(self, reason: str) -> SetParametersResult:
        reason = clip_text(reason, MESSAGE_LIMIT)
        self._warn("parameters", f"parameter change refused: {reason}")
        return SetParametersResult(successful=False, reason=reason)

    def _instruction_problem(self, text: str) -> str | None:
        """Why ``text`` cannot be the instruction (None if it can)."""
        try:
            self._policy.check_instruction(text.strip())
        except UserFacingError as error:
            return str(error)
        return None

    def _set_actuation(self, enabled: bool) -> None:
        with self._state_lock:
            if self._actuation and not enabled:
                self._send_safety_once = True  # stop what the arm was doing
            self._actuation = enabled
        self.get_logger().warning(f"actuation {'ENABLED' if enabled else 'disabled (dry run)'}")

    def _set_instruction(self, text: str, source: str) -> None:
        """Adopt a (checked) instruction; a new one starts a new episode.

        Raises:
            InstructionError: empty or too long for the model's context.
        """
        text = text.strip()
        self._policy.check_instruction(text)
        with self._state_lock:
            changed = text != self._instruction
            self._instruction = text
        if changed:
            self._policy.reset()  # a new task is a new episode
            self.get_logger().info(f"instruction ({source}): {clip_text(repr(text))}")

    # ------------------------------------------------------------------------------ setup
    def _load_policy(self, model_path: str, values: dict[str, Any]) -> Any:
        """Check device, dtype and statistics key, then load the weights and warm up.

        Raises:
            UserFacingError: any of them unusable (nothing heavy has been loaded then).
        """
        from vla_cache_ros.cache.modes import parse_prepack
        from vla_cache_ros.compute import resolve_device, resolve_dtype, set_cpu_threads
        from vla_cache_ros.models.config import load_config
        from vla_cache_ros.policy import CachedVLAPolicy

        device = resolve_device(str(values["device"]))
        dtype = resolve_dtype(str(values["dtype"]))
        unnorm_key = str(values["unnorm_key"]) or None
        load_config(Path(model_path)).action_statistics().select(unnorm_key)  # no weights read
        set_cpu_threads(int(values["num_threads"]))
        self.get_logger().info(f"loading {model_path} on {device} ...")
        policy = CachedVLAPolicy.from_pretrained(
            model_path, mode="off", cache_ratio=float(values["cache_ratio"]),
            unnorm_key=unnorm_key, device=str(device), dtype=dtype,
            center_crop=bool(values["center_crop"]),
            prepack=parse_prepack(str(values["cpu_weight_prepack"])))
        self.get_logger().info(f"decoder weights: {policy.engine.projections.reason}")
        policy.set_mode(str(values["cache_mode"]))
        policy.set_max_token_age(int(values["max_token_age"]))
        self._warm_up(policy)
        return policy

    def _warm_up(self, policy: Any) -> None:
        """One untimed step on a blank frame, so the first real step is not the slow one
        (lazy initialisation, allocator growth) that trips the watchdog; then a fresh episode."""
        import numpy as np

        start = time.monotonic()
        size = policy.model.config.image_sizes[0]
        policy.step(np.full((size, size, 3), 127, dtype=np.uint8), WARM_UP_INSTRUCTION)
        policy.reset()
        self.get_logger().info(f"warm-up step took {time.monotonic() - start:.2f} s")

    def _create_publishers(self, values: dict[str, Any]) -> None:
        topic, message_type = COMMAND_TOPICS[self._interface]
        self._command_type = message_type
        self._command_pub = self.create_publisher(message_type, topic, COMMAND_QOS)
        self._preview_pub = self.create_publisher(message_type, f"~/preview/{topic}", COMMAND_QOS)
        self._gripper_pub = self._gripper_preview_pub = None
        if values["publish_gripper"]:
            self._gripper_pub = self.create_publisher(Float64MultiArray, GRIPPER_TOPIC,
                                                      COMMAND_QOS)
            self._gripper_preview_pub = self.create_publisher(
                Float64MultiArray, f"~/preview/{GRIPPER_TOPIC}", COMMAND_QOS)
        self._ratio_pub = self.create_publisher(Float32, "~/cache_ratio", 10)
        self._latency_pub = self.create_publisher(Float32, "~/inference_latency_ms", 10)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._joint_names = list(values["joint_names"])
        self._twist_frame = str(values["twist_frame_id"])

    def _create_subscriptions(self, values: dict[str, Any]) -> None:
        if values["image_type"] == "compressed":
            self._subscribe(CompressedImage, "image", self._on_compressed_image,
                            qos_profile_sensor_data)
        else:
            self._subscribe(Image, "image", self._on_image, qos_profile_sensor_data)
        self._subscribe(JointState, "joint_states", self._on_joint_state, qos_profile_sensor_data)
        # A transient-local subscription receives a latched instruction published before the
        # node started but cannot match volatile publishers (``ros2 topic pub`` since Jazzy, a
        # plain create_publisher(String, ..., 10)); a volatile one matches both. Both listen;
        # a latched message arriving twice is the same instruction and changes nothing.
        self._subscribe(String, "instruction", self._on_instruction, LATCHED_QOS,
                        event_callbacks=SubscriptionEventCallbacks(
                            incompatible_qos=lambda event: None))  # the volatile one matches
        self._subscribe(String, "instruction", self._on_instruction, VOLATILE_QOS)
        if self._interface is CommandInterface.EE_TWIST:
            self._subscribe(PoseStamped, "ee_pose", self._on_ee_pose, qos_profile_sensor_data)

    # -------------------------------------------------------------------------- callbacks
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _throttled(self, key: str, message: str) -> str | None:
        """Record ``message`` as the last error; return the line to log, or None to stay quiet.

        A problem is logged at once when it is new for ``key`` (numbers aside); the same one
        again only every LOG_REPEAT_S, saying how often it recurred (a bad camera stream or a
        failing model must not flood the log, but must not vanish either).
        """
        message = clip_text(message, MESSAGE_LIMIT)
        now = time.monotonic()
        shape = re.sub(r"\d+(\.\d+)?", "#", message)  # same message, other numbers
        with self._state_lock:
            self._last_error = (message, now)
            shape_before, logged_at, repeats = self._logged.get(key, ("", -LOG_REPEAT_S, 0))
            if shape_before == shape and now - logged_at < LOG_REPEAT_S:
                self._logged[key] = (shape, logged_at, repeats + 1)
                return None
            self._logged[key] = (shape, now, 0)
        return message + (f" (and {repeats} more like it)" if shape_before == shape and repeats
                          else "")

    # rclpy refuses a severity change at one call site: each severity has its own call site.
    def _warn(self, key: str, message: str) -> None:
        line = self._throttled(key, message)
        if line is not None:
            self.get_logger().warning(line)

    def _error(self, key: str, message: str) -> None:
        line = self._throttled(key, message)
        if line is not None:
            self.get_logger().error(line)

    def _reject(self, kind: str, error: Exception) -> None:
        self._telemetry.record_rejected(kind)
        self._warn(kind, f"rejected {kind}: {error}")

    def _guarded(self, where: str, callback: Callable[..., None]) -> Callable[..., None]:
        """``callback`` that never raises into the executor (which would end the process)."""
        def run(*args: Any) -> None:
            try:
                callback(*args)
            except Exception as error:  # noqa: BLE001 - the node must stay up whatever happens
                self._internal_error(where, error)
        return run

    def _internal_error(self, where: str, error: BaseException) -> None:
        """Something escaped a callback or the worker: a bug or an unforeseen input. Log it with
        its traceback (once per kind), fault the watchdog so the safety command goes out, and
        keep serving."""
        reason = clip_text(f"internal error in {where}: {type(error).__name__}: {error}",
                           MESSAGE_LIMIT)
        try:
            self._controller.force_fault(reason, self._now())
        except Exception:  # noqa: BLE001 - reporting must not fail too
            pass
        key = f"internal:{where}:{type(error).__name__}"
        first = key not in self._logged
        self._error(key, reason)
        if first:  # the traceback once per kind: enough to file a bug, not a flood
            self.get_logger().error("".join(traceback.format_exception(error)).rstrip())
        if where == "control tick":  # the tick that would send the safety command failed
            try:
                with self._state_lock:
                    actuate = self._actuation
                self._publish(self._controller.safety_command(), None, actuate)
            except Exception:  # noqa: BLE001 - nothing more can be done from here
                pass

    def _on_image(self, msg: Image) -> None:
        self._store_frame(msg, image_to_rgb)

    def _on_compressed_image(self, msg: CompressedImage) -> None:
        self._store_frame(msg, compressed_image_to_rgb)

    def _subscribe(self, message_type: Any, topic: str, callback: Callable[[Any], None],
                   qos: Any, **options: Any) -> None:
        self.create_subscription(message_type, topic, self._guarded(f"{topic} callback", callback),
                                 qos, **options)

    def _store_frame(self, msg: Any, convert: Any) -> None:
        now = self._now()
        stamp = stamp_seconds(msg.header.stamp)
        try:
            rgb = convert(msg)
            generation = self._controller.on_observation(stamp, now)
        except UserFacingError as error:
            self._reject("image", error)
            return
        dropped = self._slot.put(rgb, stamp, now, generation)
        if dropped:
            self._telemetry.record_dropped_frames(dropped)

    def _on_joint_state(self, msg: JointState) -> None:
        """Merge by joint name; a message with none of ``joint_names`` (a gripper driver on the
        same topic) is not for us, which is not an error."""
        try:
            self._controller.on_joint_state(msg.name, msg.position,
                                            stamp_seconds(msg.header.stamp), self._now())
        except InvalidInputError as error:
            self._reject("joint_states", error)

    def _on_clock_jump(self, jump: Any) -> None:
        if self._controller.on_clock_jump(jump.delta.nanoseconds * 1e-9, self._now()):
            self._after_clock_jump()

    def _after_clock_jump(self) -> None:
        """Forget what was held from before a clock jump the controller acted on."""
        self._policy.reset()
        self._slot.clear()
        self._telemetry.clock_jumped()
        self.get_logger().error(f"clock jump: {self._controller.fault_reason}")

    def _on_ee_pose(self, msg: PoseStamped) -> None:
        position = msg.pose.position
        try:
            self._controller.on_ee_position([position.x, position.y, position.z],
                                            stamp_seconds(msg.header.stamp), self._now())
        except InvalidInputError as error:
            self._reject("ee_pose", error)

    def _on_instruction(self, msg: String) -> None:
        if not msg.data.strip():
            self._reject("instruction", InvalidInputError("instruction message is empty; "
                                                          "keeping the previous instruction"))
            return
        try:
            self._set_instruction(msg.data, source="topic")
        except UserFacingError as error:
            self._reject("instruction", InvalidInputError(
                f"{error}; keeping the previous instruction"))

    # -------------------------------------------------------------------------- inference
    def _inference_loop(self) -> None:
        """Worker thread: run the policy on each new frame, newest first. Never exits before
        shutdown: whatever one step raises is a fault for that step, not the end of the worker."""
        while not self._closing:
            try:
                self._serve_one()
            except Exception as error:  # noqa: BLE001 - the worker must outlive any one step
                self._internal_error("inference worker", error)
                time.sleep(0.05)  # a failure before take() must not spin the CPU

    def _serve_one(self) -> None:
        """Take the newest frame (waiting up to 0.2 s) and run one step on it."""
        observation = self._slot.take(timeout_s=0.2)
        if observation is None:
            return
        with self._state_lock:
            instruction = self._instruction
        if not instruction or self._controller.waiting_for():
            return  # not ready: frames are dropped, not queued
        self._controller.on_step_started(self._now())
        try:
            action, stats = self._policy.step(observation.image, instruction)
        except Exception as error:  # noqa: BLE001 - any inference failure is a fault
            reason = clip_text(f"inference failed: {type(error).__name__}: {error}",
                               MESSAGE_LIMIT)
            self._controller.on_step_error(reason, self._now())
            self._error("inference", reason)
            return
        now = self._now()
        outcome = self._controller.on_step_result(action, observation.stamp_s,
                                                  observation.received_s, now,
                                                  observation.generation)
        if not outcome.accepted:
            self._warn("step", f"step not used: {outcome.reason}")
        self._telemetry.record_step(
            now, stats.times_s, mode=stats.mode, target_ratio=stats.target_ratio,
            actual_ratio=stats.actual_ratio, reused_tokens=stats.reused_tokens,
            recomputed_tokens=stats.recomputed_tokens, flops=stats.flops,
            flops_uncached=stats.flops_uncached)
        if not self._closing:
            self._ratio_pub.publish(Float32(data=float(stats.actual_ratio)))
            self._latency_pub.publish(Float32(data=float(stats.times_s["total"] * 1000.0)))

    # ---------------------------------------------------------------------------- output
    def _on_control_tick(self) -> None:
        now = self._now()
        self._telemetry.record_tick(now)
        output = self._controller.tick(now)
        if output.clock_jumped:  # a jump the clock callback did not report
            self._after_clock_jump()
        if output.entered_fault:
            self.get_logger().error(f"FAULT, policy output stopped: {output.reason}")
        with self._state_lock:
            actuate = self._actuation
            stop_once, self._send_safety_once = self._send_safety_once, False
        if stop_once:
            self._publish(self._controller.safety_command(), None, actuate=True)
        self._publish(output.arm, output.gripper, actuate)

    def _publish(self, arm: ArmCommand | None, gripper: float | None, actuate: bool) -> None:
        if arm is not None:
            message = self._to_message(arm)
            self._preview_pub.publish(message)
            if actuate:
                self._command_pub.publish(message)
        if gripper is not None and self._gripper_pub is not None:
            message = Float64MultiArray(data=[float(gripper)])
            self._gripper_preview_pub.publish(message)
            if actuate:
                self._gripper_pub.publish(message)

    def _to_message(self, command: ArmCommand) -> Any:
        if command.interface is CommandInterface.EE_TWIST:
            message = TwistStamped()
            message.header.stamp = self.get_clock().now().to_msg()
            message.header.frame_id = self._twist_frame
            message.twist.linear.x, message.twist.linear.y, message.twist.linear.z = (
                float(v) for v in command.linear)
            message.twist.angular.x, message.twist.angular.y, message.twist.angular.z = (
                float(v) for v in command.angular)
            return message
        positions = [float(v) for v in command.joint_positions]
        if command.interface is CommandInterface.JOINT_POSITIONS:
            return Float64MultiArray(data=positions)
        point = JointTrajectoryPoint(
            positions=positions,
            time_from_start=Duration(seconds=max(command.duration_s, 0.0)).to_msg())
        return JointTrajectory(joint_names=list(self._joint_names), points=[point])

    # ------------------------------------------------------------------------ diagnostics
    def status_report(self) -> Any:
        """The current :class:`~vla_cache_ros.control.diagnostics.StatusReport`."""
        now = self._now()
        output_state = self._controller.state
        with self._state_lock:
            instruction, actuate, last_error = self._instruction, self._actuation, self._last_error
        reason = self._controller.fault_reason
        waiting = self._controller.waiting_for()
        if output_state is WatchdogState.WAITING:
            missing = (["instruction"] if not instruction else []) + waiting
            reason = (f"waiting for {', '.join(missing)}" if missing
                      else "waiting for the first inference step")
        recent = last_error if last_error and time.monotonic() - last_error[1] < RECENT_ERROR_S \
            else None
        inputs = [CAMERA, JOINT_STATES] + (
            [EE_POSE] if EE_POSE in self._controller.config.required_inputs else [])
        report = build_status(
            state=output_state, reason=reason, telemetry=self._telemetry.snapshot(),
            clamp_counts=self._controller.clamp_counts, actuation_enabled=actuate,
            input_ages={name: self._controller.input_age(name, now) for name in inputs},
            cache_mode=self._policy.mode, target_ratio=self._policy.cache_ratio,
            last_error=last_error[0] if last_error else None,
            recent_warning=recent[0] if recent else None,
            extra={"instruction": clip_text(instruction),
                   "command_interface": self._interface.value,
                   "decoder_weights": self._policy.engine.projections.reason})
        return report

    def _on_diagnostics(self) -> None:
        report = self.status_report()
        status = DiagnosticStatus(
            level=bytes([int(report.level)]), name=f"{self.get_name()}: policy",
            message=report.message, hardware_id=self.get_fully_qualified_name(),
            values=[KeyValue(key=key, value=value) for key, value in report.values])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array)
        if self._log_status:
            self.get_logger().info(one_line(report))

    # --------------------------------------------------------------------------- shutdown
    def shutdown(self) -> None:
        """Stop inference, then send the safety command if actuation is enabled."""
        self._closing = True
        self._slot.close()
        self._control_timer.cancel()
        self._worker.join(timeout=30.0)
        with self._state_lock:
            actuate = self._actuation
        if actuate:
            command = self._controller.safety_command()
            self._publish(command, None, actuate=True)
            if command is not None:
                self._command_pub.wait_for_all_acked(Duration(seconds=1.0))
            self.get_logger().info("shutdown: safety command sent")

    @property
    def worker_alive(self) -> bool:
        """Whether the inference thread is still running (after :meth:`shutdown`: stuck)."""
        return self._worker.is_alive()


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of ``vla_cache_node``; returns the exit code."""
    return run_node(VlaCacheNode, NODE_NAME, args)


if __name__ == "__main__":
    sys.exit(main())
