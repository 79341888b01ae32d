"""``vla_cache_node``: camera + joint states in, arm commands out, cache ratio tunable live.

A thin managed (lifecycle) ROS 2 node over :class:`~vla_cache_ros.runtime.loop.PolicyRuntime`:
it declares parameters from :data:`~vla_cache_ros.runtime.parameters.NODE_PARAMETERS`, converts
messages to arrays and ROS times to float seconds, and publishes what the runtime decides. All
loop logic (latest frame, instruction, worker, watchdog, clamps, telemetry) lives in the runtime.

Lifecycle: configure = validate the configuration, load the model, warm up; activate = policy
output allowed (actuation still behind ``enable_actuation``); deactivate = policy output stops,
then the safety command goes out; cleanup / shutdown release the model. With ``autostart``
(default) the node walks configure -> activate by itself in a background thread, so parameter
services answer while a large model loads; with ``autostart: false`` a lifecycle manager drives it
(its configure request is served by the executor, which is busy until the model is loaded).

Topics (relative names, remap as needed):
  in:  image (sensor_msgs/Image or CompressedImage, see image_type), joint_states (merged by
       joint name), instruction (std_msgs/String; latched and volatile publishers), ee_pose
       (geometry_msgs/PoseStamped, for the workspace box with ee_twist; or TF with
       ee_pose_source: tf, see ros.tf_pose). image, joint_states and ee_pose take the standard
       QoS override parameters (qos_overrides./image.subscription.reliability, see ros.qos).
  out: joint_trajectory | joint_commands | twist_cmd (per command_interface), gripper_command
       (std_msgs/Float64MultiArray every period, or a control_msgs gripper action goal when the
       decision changes, per gripper_interface, see ros.gripper_output) -- only when
       enable_actuation is true; ~/preview/<same names>
       (always), ~/cache_ratio and ~/inference_latency_ms (std_msgs/Float32, per step),
       ~/step_stats (std_msgs/String, per step: mode, ratios and stage times as JSON, see
       stages.StepRecord), ~/reused_tokens (sensor_msgs/Image mono8, per step: the 16x16 visual
       token grid, 255 = reused, stamped with the camera frame's stamp and frame id),
       /diagnostics (steady clock, ~1 Hz, in every lifecycle state).

MoveIt Servo: with servo_start_service set, every activation calls Servo's start service
(ServoCommandType TWIST or Trigger, asynchronously, see ros.servo_start); /diagnostics shows the
outcome as servo_start. Packages only a system ROS 2 provides (control_msgs, tf2_ros,
moveit_msgs) are imported when a parameter selects them; missing, configure fails with the
reason (ros.optional_packages).

No callback lets an exception reach the executor: it is reported, faults the watchdog (the
safety command goes out) and the node carries on.
"""
from __future__ import annotations

import sys
import threading
from typing import Any, Callable, Sequence

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType, JumpThreshold
from rclpy.duration import Duration
from rclpy.lifecycle import LifecycleNodeMixin, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from rclpy.subscription import Subscription
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float32, String

from vla_cache_ros import topics
from vla_cache_ros.control.actions import ArmCommand
from vla_cache_ros.control.clock import CLOCK_SKEW_TOLERANCE_S
from vla_cache_ros.control.diagnostics import one_line
from vla_cache_ros.errors import ConfigurationError, UserFacingError, clip_text
from vla_cache_ros.image_conversion import (
    compressed_image_to_rgb,
    fill_message,
    image_to_rgb,
    mask_to_image_fields,
)
from vla_cache_ros.ros import qos
from vla_cache_ros.ros.commands import COMMAND_TOPICS, command_message
from vla_cache_ros.ros.gripper_output import gripper_output
from vla_cache_ros.ros.optional_packages import check_for
from vla_cache_ros.ros.parameters import declare_from_table, parameter_values
from vla_cache_ros.ros.process import run_node
from vla_cache_ros.ros.servo_start import ServoStarter
from vla_cache_ros.ros.tf_pose import TfPose
from vla_cache_ros.runtime.config import NodeConfig
from vla_cache_ros.runtime.loop import PolicyRuntime, Publication, StepReport, check_policy_source
from vla_cache_ros.runtime.parameters import SPECS
from vla_cache_ros.runtime.reporting import MESSAGE_LIMIT, ProblemLog
from vla_cache_ros.stamps import seconds_to_nanoseconds, stamp_seconds, time_message

NODE_NAME = "vla_cache_node"
SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


class VlaCacheNode(LifecycleNodeMixin, Node):
    """The policy runner node; construction validates the parameters (UserFacingError if bad)."""

    def __init__(self, **node_kwargs: Any) -> None:
        Node.__init__(self, NODE_NAME, **node_kwargs)
        # Own group for the lifecycle services, ready for a multi-threaded executor.
        LifecycleNodeMixin.__init__(self, callback_group=MutuallyExclusiveCallbackGroup())
        declare_from_table(self)
        config = NodeConfig.from_values(parameter_values(self))
        check_policy_source(config)  # before any heavy import
        logger = self.get_logger()
        self._runtime = PolicyRuntime(
            config, self._now, ProblemLog(warn=logger.warning, error=logger.error),
            info=logger.info, on_step=self._publish_step,
            session_name=self.get_fully_qualified_name())
        self._entities: list[Any] = []
        self._command_pub: Any = None
        self._gripper: Any = None  # gripper_output.TopicGripper / ActionGripper
        self._servo: ServoStarter | None = None
        self.startup_error: UserFacingError | None = None  # autostart failed: the process ends
        self.startup_thread: threading.Thread | None = None  # autostart's configure -> activate
        self._configure_error: UserFacingError | None = None
        self._camera_frame_id = ""  # of the latest camera frame: the frame of ~/reused_tokens
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS,
                                                      qos.DIAGNOSTICS_QOS)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_timer(1.0, self._guarded("diagnostics", self._on_diagnostics),
                          clock=Clock(clock_type=ClockType.STEADY_TIME))
        # Bag loops and simulator resets move /clock back: see Controller.on_clock_jump.
        self._jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=Duration(seconds=0.1),
                          min_backward=Duration(nanoseconds=-int(CLOCK_SKEW_TOLERANCE_S * 1e9)),
                          on_clock_change=True),
            post_callback=self._guarded("clock jump", lambda jump: self._runtime.on_clock_jump(
                jump.delta.nanoseconds * 1e-9)))

    def start(self) -> None:
        """With ``autostart``: configure and activate in a background thread (the executor
        keeps answering meanwhile); a configuration error is kept in :attr:`startup_error`."""
        if self._runtime.config.autostart:
            self.startup_thread = threading.Thread(target=self._autostart, name="vla_autostart", daemon=True)
            self.startup_thread.start()

    def _autostart(self) -> None:
        # startup_error is set only once the transition is over, so the process may stop then.
        try:
            if self.trigger_configure() != SUCCESS:
                self.startup_error = self._configure_error or ConfigurationError("configure failed")
            else:
                self.trigger_activate()
        except Exception as error:  # noqa: BLE001 - a thread's exception would only be printed
            if not self.context.ok():  # stopped meanwhile (Ctrl-C during the load): nothing to report
                return
            self.startup_error = ConfigurationError(
                f"start-up failed: {type(error).__name__}: {clip_text(str(error))}")

    # -------------------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Validate the configuration, load the model, warm up, create the interfaces."""
        try:
            self._runtime.apply(NodeConfig.from_values(parameter_values(self)))
            check_for(self._runtime.config.interface, self)  # packages and names, before loading
            self._runtime.load()
        except UserFacingError as error:
            self.get_logger().error(f"configure failed: {error}")
            self._configure_error = error
            return FAILURE
        except Exception as error:  # noqa: BLE001 - e.g. a torch backend error while loading
            self._runtime.log.exception("configure", error)
            self._configure_error = ConfigurationError(
                f"configure failed: {type(error).__name__}: {clip_text(str(error))}")
            return FAILURE
        self._create_interfaces(self._runtime.config)
        self._runtime.start_worker()
        config = self._runtime.config
        source = (f"policy server {config.backend.server_url}" if config.backend.remote
                  else f"model {config.model.model_path}")
        self.get_logger().info(
            f"ready: {source}, mode {config.cache.mode} ratio "
            f"{config.cache.ratio:g}, interface {config.interface.command_interface.value}, "
            f"actuation {'ENABLED' if config.enable_actuation else 'disabled (dry run)'}")
        return SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Policy output allowed; the next gripper decision goes out; MoveIt Servo is started
        (``servo_start_service``, asynchronously)."""
        self._runtime.activate()
        if self._gripper is not None:
            self._gripper.reset()
        if self._servo is not None:
            self._servo.start()
        return SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Policy output stops first (inside the runtime), then the safety command goes out."""
        self._publish(self._runtime.deactivate(), None, self._runtime.config.enable_actuation)
        return SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._runtime.release()
        self._command_pub = self._gripper = self._servo = None
        for entity in self._entities:  # through the node, so the executor forgets them too
            close = getattr(entity, "close", None)  # this package's adapters
            if close is not None:
                close()
            else:
                {Subscription: self.destroy_subscription, Publisher: self.destroy_publisher}.get(
                    type(entity), self.destroy_timer)(entity)
        self._entities = []
        return SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.shutdown()
        return SUCCESS

    # ------------------------------------------------------------------------- parameters
    def _on_set_parameters(self, parameters: Sequence[Parameter]) -> SetParametersResult:
        """Validate every change against the config in force, then apply it (at the end of
        this callback, which works on every distro)."""
        changes = {p.name: list(p.value) if SPECS[p.name].kind.endswith("_array") else p.value
                   for p in parameters if p.name in SPECS}  # rclpy arrays are array.array
        if not changes:
            return SetParametersResult(successful=True)  # e.g. use_sim_time
        try:
            self._runtime.apply(self._runtime.validate(changes))
        except ConfigurationError as error:
            reason = clip_text(str(error), MESSAGE_LIMIT)
            self._runtime.log.warn("parameters", f"parameter change refused: {reason}")
            return SetParametersResult(successful=False, reason=reason)
        except Exception as error:  # noqa: BLE001 - must not reach the executor
            self._runtime.internal_error("parameter change", error)
            return SetParametersResult(successful=False, reason=clip_text(
                f"internal error: {type(error).__name__}: {error}", MESSAGE_LIMIT))
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------------- interfaces
    def _create_interfaces(self, config: NodeConfig) -> None:
        topic, command_type = COMMAND_TOPICS[config.interface.command_interface]
        pub, sub = self.create_publisher, self._subscribe
        self._command_pub = pub(command_type, topic, qos.COMMAND_QOS)
        self._preview_pub = pub(command_type, f"~/preview/{topic}", qos.COMMAND_QOS)
        runtime = self._runtime
        self._gripper = gripper_output(
            self, config.interface, config.controller.gripper,
            report=lambda line: runtime.set_interface_status("gripper_action", line),
            warn=lambda line: runtime.log.warn("gripper_action", line))
        self._ratio_pub = pub(Float32, topics.CACHE_RATIO, qos.TELEMETRY_QOS)
        self._latency_pub = pub(Float32, topics.INFERENCE_LATENCY_MS, qos.TELEMETRY_QOS)
        self._step_pub = pub(String, topics.STEP_STATS, qos.TELEMETRY_QOS)
        self._reused_pub = pub(Image, topics.REUSED_TOKENS, qos.TELEMETRY_QOS)
        overridable = {"qos_overriding_options": qos.overridable()}  # see qos.py
        if config.interface.image_type == "compressed":
            sub(CompressedImage, topics.IMAGE, lambda m: self._on_image(m, compressed_image_to_rgb),
                qos.sensor_profile(), **overridable)
        else:
            sub(Image, topics.IMAGE, lambda m: self._on_image(m, image_to_rgb), qos.sensor_profile(),
                **overridable)
        sub(JointState, topics.JOINT_STATES, lambda m: runtime.on_joint_state(
            m.name, m.position, stamp_seconds(m.header.stamp)), qos.sensor_profile(), **overridable)
        # Transient-local hears a latched instruction published before the node started but
        # cannot match volatile publishers (``ros2 topic pub`` since Jazzy); volatile matches
        # both. A latched message heard twice is the same instruction and changes nothing.
        sub(String, topics.INSTRUCTION, lambda m: runtime.on_instruction_message(m.data), qos.LATCHED_QOS,
            event_callbacks=qos.ignore_incompatible_qos())
        sub(String, topics.INSTRUCTION, lambda m: runtime.on_instruction_message(m.data), qos.VOLATILE_QOS)
        self._create_optional_interfaces(config)
        self._entities += [self._command_pub, self._preview_pub, self._ratio_pub, self._latency_pub,
                           self._step_pub, self._reused_pub, self.create_timer(
                               1.0 / config.interface.control_rate_hz,
                               self._guarded("control tick", self._on_control_tick))]

    def _create_optional_interfaces(self, config: NodeConfig) -> None:
        """The EE pose input (topic or TF), the gripper output and the MoveIt Servo starter."""
        interface, runtime = config.interface, self._runtime
        if interface.reads_ee_pose and interface.ee_pose_source == "tf":
            self._entities.append(TfPose(
                self, interface.tf_base_frame, interface.tf_tool_frame,
                1.0 / interface.control_rate_hz, runtime.on_ee_position,
                lambda line: runtime.log.warn("ee_pose", line)))
        elif interface.reads_ee_pose:
            self._subscribe(PoseStamped, topics.EE_POSE, lambda m: runtime.on_ee_position(
                [m.pose.position.x, m.pose.position.y, m.pose.position.z],
                stamp_seconds(m.header.stamp)), qos.sensor_profile(),
                qos_overriding_options=qos.overridable())
        if interface.servo_start_service:
            self._servo = ServoStarter(
                self, interface.servo_start_service, interface.servo_start_type,
                interface.servo_start_timeout_s,
                report=lambda line: runtime.set_interface_status("servo_start", line),
                error=lambda line: runtime.log.error("servo_start", line),
                info=self.get_logger().info)
        self._entities += [entity for entity in (self._gripper, self._servo) if entity is not None]

    def _on_image(self, message: Any, convert: Callable[[Any], Any]) -> None:
        self._camera_frame_id = message.header.frame_id  # for ~/reused_tokens
        self._runtime.on_image(lambda: convert(message), stamp_seconds(message.header.stamp))

    def _subscribe(self, message_type: Any, topic: str, callback: Callable[[Any], None],
                   profile: Any, **options: Any) -> None:
        self._entities.append(self.create_subscription(
            message_type, topic, self._guarded(f"{topic} callback", callback), profile, **options))

    def _guarded(self, where: str, callback: Callable[..., None]) -> Callable[..., None]:
        """``callback`` that never raises into the executor (which would end the process)."""
        def run(*args: Any) -> None:
            try:
                callback(*args)
            except Exception as error:  # noqa: BLE001 - the node must stay up whatever happens
                self._runtime.internal_error(where, error)
                if where == "control tick":  # the tick that sends the safety command failed
                    self._publish(self._runtime.safety_command(), None,
                                  self._runtime.config.enable_actuation)
        return run

    # ---------------------------------------------------------------------------- output
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_control_tick(self) -> None:
        publication: Publication = self._runtime.tick()
        if publication.entered_fault:
            self.get_logger().error(f"FAULT, policy output stopped: {publication.reason}")
        if publication.safety_first is not None:
            self._publish(publication.safety_first, None, actuate=True)
        self._publish(publication.arm, publication.gripper, publication.actuate)

    def _publish_step(self, report: StepReport) -> None:
        stats = report.stats
        self._ratio_pub.publish(Float32(data=float(stats.actual_ratio)))
        self._latency_pub.publish(Float32(data=float(stats.times_s["total"] * 1000.0)))
        self._step_pub.publish(String(data=stats.record().to_json()))
        mask = fill_message(Image(), mask_to_image_fields(report.reuse_mask))
        mask.header.stamp = time_message(seconds_to_nanoseconds(report.stamp_s), Time)
        mask.header.frame_id = self._camera_frame_id
        self._reused_pub.publish(mask)

    def _publish(self, arm: ArmCommand | None, gripper: float | None, actuate: bool) -> None:
        if arm is not None and self._command_pub is not None:
            interface = self._runtime.config.interface
            message = command_message(arm, interface.joint_names, interface.twist_frame_id,
                                      self.get_clock().now().to_msg())
            self._preview_pub.publish(message)
            if actuate:
                self._command_pub.publish(message)
        if gripper is not None and self._gripper is not None:
            self._gripper.publish(gripper, actuate)

    def _on_diagnostics(self) -> None:
        state = self._state_machine.current_state[1] if hasattr(self, "_state_machine") else "?"
        report = self._runtime.status_report(extra={"lifecycle_state": state})
        array = DiagnosticArray(status=[DiagnosticStatus(
            level=bytes([int(report.level)]), name=f"{self.get_fully_qualified_name()}: policy",
            message=report.message, hardware_id=self.get_fully_qualified_name(),
            values=[KeyValue(key=key, value=value) for key, value in report.values])])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array)
        if self._runtime.config.log_status:
            self.get_logger().info(one_line(report))

    # --------------------------------------------------------------------------- shutdown
    def shutdown(self) -> None:
        """Stop inference first, then send the safety command if actuation is enabled."""
        stopped = self._runtime.stop_worker()
        command = self._runtime.shutdown_command()
        if command is not None and self._command_pub is not None:
            self._publish(command, None, actuate=True)
            self._command_pub.wait_for_all_acked(Duration(seconds=1.0))
            self.get_logger().info("shutdown: safety command sent")
        if not stopped:
            self.get_logger().error("shutdown: the inference worker is stuck in a step")

    @property
    def worker_alive(self) -> bool:
        """Whether the inference thread is still running (after :meth:`shutdown`: stuck)."""
        return self._runtime.worker_alive


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of ``vla_cache_node``; returns the exit code."""
    return run_node(VlaCacheNode, NODE_NAME, args)


if __name__ == "__main__":
    sys.exit(main())
