"""``sim_arm_node``: the MuJoCo tabletop arm behind the topics a real arm offers.

A thin ROS 2 layer over :mod:`vla_cache_ros.sim` (all physics, control and task logic lives
there). A loop thread ticks the simulator at ``joint_state_rate_hz`` and paces it against the
wall clock (``real_time_factor``); with ``publish_clock`` it also publishes ``/clock`` and stamps
everything with the simulated time, so nodes with ``use_sim_time`` follow it.

Publishes (names in :mod:`vla_cache_ros.topics`, QoS in :mod:`vla_cache_ros.ros.qos`):
``/camera/image_raw`` (rgb8, at ``camera_rate_hz``), ``/joint_states`` and ``/ee_pose`` (every
tick), ``/instruction`` (transient local), ``/sim/episode_status`` (JSON in a String, on change
and at 2 Hz) and ``/sim/success`` (Bool, transient local); with ``publish_privileged_state`` also
object poses and contacts on ``/sim/privileged_state`` (JSON, at the camera rate; for the
scripted expert).

Accepts: ``/arm_controller/joint_trajectory`` (JointTrajectory), ``/forward_position_controller/
commands`` (Float64MultiArray, one position per arm joint), ``/servo_node/delta_twist_cmds``
(TwistStamped in base_link or the tool frame; stops after ``twist_timeout_s`` without a new
one) and ``/gripper_controller/commands`` (Float64MultiArray [opening], 0 = closed, 1 = open).
A malformed command is logged and ignored. ``/sim/reset`` (std_srvs/Trigger) starts a new
episode with seed ``seed`` (then increments the parameter) and family ``task_family``.
"""
from __future__ import annotations

import json
import sys
import threading
from typing import Any

from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped, TwistStamped
from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor, SetParametersResult
from rclpy._rclpy_pybind11 import RCLError
from rclpy.node import Node
from rclpy.parameter import Parameter
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from vla_cache_ros import topics
from vla_cache_ros.errors import SimCommandError, UserFacingError
from vla_cache_ros.image_conversion import fill_message, rgb_to_image_fields
from vla_cache_ros.ros.process import run_node
from vla_cache_ros.ros.qos import CLOCK_QOS, COMMAND_QOS, LATCHED_QOS, SENSOR_QOS, STATUS_QOS
from vla_cache_ros.sim.controller import ControllerSettings
from vla_cache_ros.sim.env import SimConfig, TabletopSim
from vla_cache_ros.sim.recording import PUBLISHED_JOINTS, published_joint_state
from vla_cache_ros.sim.runtime import Pacer, SimRuntime, TickOutput, twist_in_tool_frame
from vla_cache_ros.sim.scene import BASE_FRAME
from vla_cache_ros.sim.snapshot import SceneSnapshot
from vla_cache_ros.sim.tasks import FAMILIES
from vla_cache_ros.stamps import seconds_to_nanoseconds, stamp_seconds, time_message


def _range(low: float, high: float) -> list[FloatingPointRange]:
    return [FloatingPointRange(from_value=low, to_value=high, step=0.0)]


class SimArmNode(Node):
    """The simulated arm; see the module docstring."""

    def __init__(self) -> None:
        super().__init__("sim_arm_node")
        self.declare_parameter("seed", 0, ParameterDescriptor(
            description="seed of the next episode (reset increments it)"))
        self.declare_parameter("task_family", "", ParameterDescriptor(
            description=f"task family of new episodes: one of {sorted(FAMILIES)}, or '' to draw it from the seed"))
        self.declare_parameter("camera_rate_hz", 10.0, ParameterDescriptor(
            description="camera image rate", floating_point_range=_range(1.0, 60.0)))
        self.declare_parameter("real_time_factor", 1.0, ParameterDescriptor(
            description="simulated seconds per wall-clock second", floating_point_range=_range(0.05, 20.0)))
        self.declare_parameter("auto_reset", False, ParameterDescriptor(
            description="start the next episode by itself when one ends"))
        self.declare_parameter("joint_state_rate_hz", 100.0, ParameterDescriptor(
            description="physics tick and joint state rate", read_only=True,
            floating_point_range=_range(50.0, 500.0)))
        self.declare_parameter("publish_clock", False, ParameterDescriptor(
            description="publish /clock and stamp messages with simulated time", read_only=True))
        self.declare_parameter("publish_privileged_state", False, ParameterDescriptor(
            description="publish object poses and contacts (for driving the scripted expert "
                        "over ROS; a policy must not use them)", read_only=True))
        self.declare_parameter("episode_timeout_s", 30.0, ParameterDescriptor(
            description="an episode without success ends after this long", read_only=True,
            floating_point_range=_range(1.0, 3600.0)))
        self.declare_parameter("twist_timeout_s", 0.5, ParameterDescriptor(
            description="stop when no twist arrived for this long", read_only=True,
            floating_point_range=_range(0.01, 10.0)))
        self.add_on_set_parameters_callback(self._validate_parameters)

        p = self.get_parameter
        self._publish_clock = p("publish_clock").value
        config = SimConfig(episode_timeout_s=p("episode_timeout_s").value,
                           controller=ControllerSettings(twist_timeout_s=p("twist_timeout_s").value))
        self._sim = TabletopSim(config)
        self._runtime = SimRuntime(self._sim, 1.0 / p("joint_state_rate_hz").value,
                                   1.0 / p("camera_rate_hz").value)
        self._pacer = Pacer(p("real_time_factor").value)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.rejected_commands = 0
        self._done_since: float | None = None

        self._image_pub = self.create_publisher(Image, topics.CAMERA_TOPIC, SENSOR_QOS)
        self._joint_pub = self.create_publisher(JointState, topics.JOINT_STATES_TOPIC, SENSOR_QOS)
        self._pose_pub = self.create_publisher(PoseStamped, topics.EE_POSE_TOPIC, SENSOR_QOS)
        self._instruction_pub = self.create_publisher(String, topics.INSTRUCTION_TOPIC, LATCHED_QOS)
        self._status_pub = self.create_publisher(String, topics.EPISODE_STATUS_TOPIC, STATUS_QOS)
        self._success_pub = self.create_publisher(Bool, topics.EPISODE_SUCCESS_TOPIC, LATCHED_QOS)
        self._clock_pub = self.create_publisher(Clock, topics.CLOCK, CLOCK_QOS) if self._publish_clock else None
        self._privileged_pub = self.create_publisher(String, topics.PRIVILEGED_STATE_TOPIC, STATUS_QOS) \
            if p("publish_privileged_state").value else None
        self.create_subscription(JointTrajectory, topics.JOINT_TRAJECTORY_TOPIC, self._on_trajectory, COMMAND_QOS)
        self.create_subscription(Float64MultiArray, topics.JOINT_POSITIONS_TOPIC, self._on_joint_positions, COMMAND_QOS)
        self.create_subscription(TwistStamped, topics.TWIST_TOPIC, self._on_twist, COMMAND_QOS)
        self.create_subscription(Float64MultiArray, topics.GRIPPER_TOPIC, self._on_gripper, COMMAND_QOS)
        self.create_service(Trigger, topics.RESET_SERVICE, self._on_reset)

        self._start_episode()
        self._thread = threading.Thread(target=self._loop, name="sim_loop", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ parameters
    def _validate_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        for parameter in parameters:
            if parameter.name == "task_family" and parameter.value not in ("", *FAMILIES):
                return SetParametersResult(successful=False, reason=(
                    f"unknown task family {parameter.value!r}; choose from {sorted(FAMILIES)} or ''"))
            if parameter.name == "camera_rate_hz" and 1.0 / parameter.value < self._runtime.tick_s:
                return SetParametersResult(successful=False, reason="camera rate above the joint state rate")
        for parameter in parameters:  # accepted: apply what takes effect live
            if parameter.name == "camera_rate_hz":
                self._runtime.camera_period_s = 1.0 / parameter.value
            elif parameter.name == "real_time_factor":
                self._pacer.real_time_factor = parameter.value
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ episodes
    def _start_episode(self) -> dict[str, Any]:
        """Reset to the ``seed`` parameter's episode (caller holds no lock); returns its summary."""
        seed = int(self.get_parameter("seed").value)
        family = self.get_parameter("task_family").value or None
        with self._lock:
            task = self._runtime.reset(seed, family)
            self._done_since = None
            status = self._sim.status()
        self.set_parameters([Parameter("seed", Parameter.Type.INTEGER, seed + 1)])
        self._instruction_pub.publish(String(data=task.instruction))
        self._publish_status(status.to_dict(), self._runtime.clock_s)
        self.get_logger().info(f"episode {status.episode}: seed {seed}, {task.family}: '{task.instruction}'")
        return {"episode": status.episode, "seed": seed, "family": task.family, "target": task.target,
                "instruction": task.instruction}

    def _on_reset(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        try:
            summary = self._start_episode()
        except UserFacingError as error:
            response.success, response.message = False, str(error)
            return response
        response.success, response.message = True, json.dumps(summary)
        return response

    # ------------------------------------------------------------------ commands
    def _command(self, what: str, apply: Any) -> None:
        try:
            with self._lock:
                apply()
        except UserFacingError as error:
            self.rejected_commands += 1
            self.get_logger().warning(f"ignored {what}: {error}", throttle_duration_sec=1.0)

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        times = [stamp_seconds(point.time_from_start) for point in msg.points]
        positions = [list(point.positions) for point in msg.points]
        self._command("joint trajectory", lambda: self._sim.controller.command_trajectory(
            self._sim.time, list(msg.joint_names), times, positions))

    def _on_joint_positions(self, msg: Float64MultiArray) -> None:
        self._command("joint positions", lambda: self._sim.controller.command_joint_positions(list(msg.data)))

    def _on_twist(self, msg: TwistStamped) -> None:
        linear, angular = msg.twist.linear, msg.twist.angular

        def apply() -> None:
            tool = twist_in_tool_frame(msg.header.frame_id)
            self._sim.controller.command_twist(self._sim.time, [linear.x, linear.y, linear.z],
                                               [angular.x, angular.y, angular.z], tool_frame=tool)
        self._command("twist", apply)

    def _on_gripper(self, msg: Float64MultiArray) -> None:
        def apply() -> None:
            if len(msg.data) != 1:
                raise SimCommandError(f"gripper command needs 1 value (opening 0..1), got {len(msg.data)}")
            self._sim.controller.command_gripper(msg.data[0])
        self._command("gripper command", apply)

    # ------------------------------------------------------------------ loop
    def _stamp(self) -> Time:
        if self._publish_clock:
            return time_message(seconds_to_nanoseconds(self._runtime.clock_s), Time)
        return self.get_clock().now().to_msg()

    def _publish_status(self, status: dict[str, Any], clock_s: float) -> None:
        self._status_pub.publish(String(data=json.dumps({**status, "sim_clock_s": clock_s})))
        self._success_pub.publish(Bool(data=bool(status["success"])))

    def _loop(self) -> None:
        try:
            self._run_loop()
        finally:
            with self._lock:
                self._sim.close()  # the GL context belongs to this thread

    def _run_loop(self) -> None:
        while not self._stop.is_set() and self.context.ok():
            with self._lock:
                output = self._runtime.tick()
                stamp = self._stamp()
                positions, velocities = published_joint_state(self._sim)
                ee_position, ee_quat = self._sim.ee_pose()
                clock_s = self._runtime.clock_s
                snapshot = SceneSnapshot.capture(self._sim) \
                    if self._privileged_pub is not None and output.image is not None else None
            try:
                if snapshot is not None:
                    self._privileged_pub.publish(String(data=snapshot.to_json()))
                self._publish_tick(output, stamp, positions, velocities, ee_position, ee_quat, clock_s)
            except RCLError:
                if self.context.ok():
                    raise
                return  # Ctrl-C shut the context down between the check and the publish
            self._pacer.wait(self._runtime.tick_s)

    def _publish_tick(self, output: TickOutput, stamp: Time, positions: list[float], velocities: list[float],
                      ee_position: Any, ee_quat: Any, clock_s: float) -> None:
        if self._clock_pub is not None:
            self._clock_pub.publish(Clock(clock=stamp))
        joint_state = JointState(name=list(PUBLISHED_JOINTS), position=positions, velocity=velocities)
        joint_state.header.stamp = stamp
        self._joint_pub.publish(joint_state)
        pose = PoseStamped()
        pose.header.stamp, pose.header.frame_id = stamp, BASE_FRAME
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = (float(v) for v in ee_position)
        o = pose.pose.orientation
        o.w, o.x, o.y, o.z = (float(v) for v in ee_quat)
        self._pose_pub.publish(pose)
        if output.image is not None:
            image = fill_message(Image(), rgb_to_image_fields(output.image, "rgb8"))
            image.header.stamp, image.header.frame_id = stamp, topics.CAMERA_FRAME
            self._image_pub.publish(image)
        if output.status is not None:
            self._publish_status(output.status.to_dict(), clock_s)
            self._maybe_auto_reset(output.status.done, clock_s)

    def _maybe_auto_reset(self, done: bool, clock_s: float) -> None:
        if not done or not self.get_parameter("auto_reset").value:
            return
        if self._done_since is None:
            self._done_since = clock_s
        elif clock_s - self._done_since >= 1.0:
            self._start_episode()

    def shutdown(self) -> None:
        """Stop the loop thread, which releases the renderer (call before destroy_node)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)


def main(args: list[str] | None = None) -> int:
    """Entry point of ``sim_arm_node``; returns the exit code."""
    return run_node(SimArmNode, "sim_arm_node", args)


if __name__ == "__main__":
    sys.exit(main())
