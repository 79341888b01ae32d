"""The ROS side of ``vla-cache sim-eval``: real nodes in their own processes, talking over DDS.

:class:`RosEpisodeRunner` starts ``sim_arm_node`` once and, when the first cache mode is asked
for, one ``vla_cache_node`` (actuation enabled, EE-twist interface remapped onto the simulator's
topics); later cache modes are switched on that node live through its ``cache_mode`` and
``cache_ratio`` parameters (a bare mode name gets the node's default ratio), so interleaved modes
share one process, one warm model and the same machine state. Each episode: set the simulator's
``seed`` / ``task_family`` parameters, call ``/sim/reset``, then wait for the episode status to
report success or timeout, while collecting the node's per-step ``~/step_stats`` records; only
steps run in the episode's mode and ratio are kept (a step still in flight from the previous mode
is dropped). The ``expert`` mode stops the policy node and drives the simulator with the scripted
expert from the privileged state topic, through the same twist and gripper topics a policy uses.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import rclpy
import yaml
from geometry_msgs.msg import TwistStamped
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger

from vla_cache_ros import topics
from vla_cache_ros.errors import EvalError, InvalidInputError
from vla_cache_ros.geometry import euler_to_rotvec
from vla_cache_ros.ros.qos import COMMAND_QOS, MONITOR_QOS
from vla_cache_ros.runtime.parameters import defaults
from vla_cache_ros.sim.evaluate import EpisodeResult, EvalConfig, EvalMode
from vla_cache_ros.sim.expert import ScriptedExpert
from vla_cache_ros.sim.scene import BASE_FRAME
from vla_cache_ros.sim.snapshot import SceneSnapshot
from vla_cache_ros.stages import StepRecord
from vla_cache_ros.subprocesses import ChildProcess, python_module, start_child

SIM_NODE = "sim_arm_node"
POLICY_NODE = "vla_cache_node"


class _Harness:
    """An rclpy node in the evaluating process (own context, spun on a background thread)."""

    def __init__(self, period_s: float) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node("sim_eval", context=self.context)
        self.period_s = period_s
        self.lock = threading.Lock()
        self.status: dict[str, Any] | None = None
        self.steps: list[StepRecord] = []
        self.expert: ScriptedExpert | None = None
        self._expert_episode = -1
        node = self.node
        node.create_subscription(String, topics.EPISODE_STATUS_TOPIC, self._on_status, MONITOR_QOS)
        node.create_subscription(String, topics.of_node(POLICY_NODE, topics.STEP_STATS), self._on_step, MONITOR_QOS)
        node.create_subscription(String, topics.PRIVILEGED_STATE_TOPIC, self._on_privileged, MONITOR_QOS)
        self.twist_pub = node.create_publisher(TwistStamped, topics.TWIST_TOPIC, COMMAND_QOS)
        self.gripper_pub = node.create_publisher(Float64MultiArray, topics.GRIPPER_TOPIC, COMMAND_QOS)
        self.reset_client = node.create_client(Trigger, topics.RESET_SERVICE)
        self.parameter_client = node.create_client(SetParameters, f"/{SIM_NODE}/set_parameters")
        self.policy_parameter_client = node.create_client(SetParameters, f"/{POLICY_NODE}/set_parameters")
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(node)
        self._thread = threading.Thread(target=self.executor.spin, name="sim_eval_spin", daemon=True)
        self._thread.start()

    def _on_status(self, msg: String) -> None:
        with self.lock:
            self.status = json.loads(msg.data)

    def _on_step(self, msg: String) -> None:
        try:
            step = StepRecord.from_json(msg.data)
        except InvalidInputError as error:  # not from this package's node: say so, keep counting
            self.node.get_logger().warning(str(error), throttle_duration_sec=10.0)
            return
        with self.lock:
            self.steps.append(step)

    def _on_privileged(self, msg: String) -> None:
        expert = self.expert
        if expert is None:
            return
        snapshot = SceneSnapshot.from_json(msg.data)
        status = snapshot.status()
        if status.episode != self._expert_episode:
            expert.reset(snapshot)
            self._expert_episode = status.episode
        if status.done:
            return
        action = expert.act(snapshot)
        twist = TwistStamped()
        twist.header.stamp = self.node.get_clock().now().to_msg()
        twist.header.frame_id = BASE_FRAME
        linear = action[:3] / self.period_s
        angular = euler_to_rotvec(action[3:6]) / self.period_s
        twist.twist.linear.x, twist.twist.linear.y, twist.twist.linear.z = (float(v) for v in linear)
        twist.twist.angular.x, twist.twist.angular.y, twist.twist.angular.z = (float(v) for v in angular)
        self.twist_pub.publish(twist)
        self.gripper_pub.publish(Float64MultiArray(data=[float(action[6])]))

    def set_expert(self, expert: ScriptedExpert | None) -> None:
        self._expert_episode = -1
        self.expert = expert

    def call(self, client: Any, request: Any, timeout_s: float, what: str) -> Any:
        if not client.wait_for_service(timeout_sec=timeout_s):
            raise EvalError(f"{what}: service {client.srv_name} not available")
        future = client.call_async(request)
        deadline = time.monotonic() + timeout_s
        while not future.done():
            if time.monotonic() > deadline:
                raise EvalError(f"{what}: no answer from {client.srv_name} within {timeout_s:.0f} s")
            time.sleep(0.01)
        return future.result()

    def close(self) -> None:
        self.executor.shutdown()
        self._thread.join(timeout=5.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


class RosEpisodeRunner:
    """Runs evaluation episodes over ROS 2 (see the module docstring); use as a context manager."""

    def __init__(self, config: EvalConfig, log_dir: Path) -> None:
        self.config = config
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._sim: ChildProcess | None = None
        self._policy: ChildProcess | None = None
        self._harness: _Harness | None = None

    def __enter__(self) -> "RosEpisodeRunner":
        config = self.config
        expert = any(mode.is_expert for mode in config.modes)
        self._sim = start_child(SIM_NODE, python_module(
            "vla_cache_ros.ros.sim_node", "--ros-args",
            "-p", f"episode_timeout_s:={config.episode_timeout_s}",
            "-p", f"camera_rate_hz:={config.camera_rate_hz}",
            "-p", f"publish_privileged_state:={'true' if expert else 'false'}",
        ), self.log_dir, die_with_parent=True)  # a second signal during clean-up leaves no orphan
        try:
            self._harness = _Harness(config.action_period_s)
            self._wait(lambda: self._harness.status is not None, config.startup_timeout_s,
                       "the simulator's first episode status", self._sim)
        except BaseException:  # Ctrl-C, SIGTERM or a failed start: leave no simulator behind
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_mode()
        if self._harness is not None:
            self._harness.close()
        if self._sim is not None:
            self._sim.interrupt()

    def _wait(self, condition: Any, timeout_s: float, what: str, process: ChildProcess) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if not process.alive():
                raise EvalError(f"{process.name} exited while waiting for {what}; its log "
                                f"({process.log_path}) ends with:\n{process.log_tail()}")
            if time.monotonic() > deadline:
                raise EvalError(f"timed out after {timeout_s:.0f} s waiting for {what}; "
                                f"see {process.log_path}")
            time.sleep(0.05)

    @staticmethod
    def cache_ratio(mode: EvalMode) -> float:
        """The ratio the node runs ``mode`` with: the given one, else the node's default."""
        return float(mode.cache_ratio) if mode.cache_ratio is not None else float(defaults()["cache_ratio"])

    def _policy_parameters(self, mode: EvalMode) -> dict[str, Any]:
        config = self.config
        return {
            "model_path": str(Path(config.model_path).expanduser()), "device": config.device,
            "unnorm_key": config.unnorm_key, "num_threads": config.num_threads,
            "cache_mode": mode.cache_mode, "cache_ratio": self.cache_ratio(mode),
            "cache_policy_path": config.cache_policy_path, "decode": config.decode,
            "drafter_path": config.drafter_path, "lm_head": config.lm_head,
            "latency_budget_ms": 0.0,  # steps are matched to a mode by their ratio: no steering
            "command_interface": "ee_twist", "action_semantics": "ee_delta",
            "twist_frame_id": BASE_FRAME, "control_rate_hz": 20.0, "action_period_s": config.action_period_s,
            "gripper_command_open": 1.0, "gripper_command_closed": 0.0, "enable_actuation": True,
            "max_translation_m": 0.05, "max_rotation_rad": 0.5, "max_obs_age_s": 1.0, "max_inference_s": 10.0,
        }

    def _runs(self, mode: EvalMode, step: StepRecord) -> bool:
        """Whether ``step`` ran in ``mode``: its cache mode and its target ratio (a double all the
        way from the parameter to the JSON record, so compared tightly)."""
        return step.mode == mode.cache_mode and abs(step.target_ratio - self.cache_ratio(mode)) < 1e-9

    def switch_mode(self, mode: EvalMode) -> None:
        harness = self._harness
        if mode.is_expert:
            self._stop_policy()
            harness.set_expert(ScriptedExpert())
            return
        harness.set_expert(None)
        if self._policy is None:
            self._start_policy(mode)
            return
        request = SetParameters.Request(parameters=[
            Parameter("cache_mode", Parameter.Type.STRING, mode.cache_mode).to_parameter_msg(),
            Parameter("cache_ratio", Parameter.Type.DOUBLE, self.cache_ratio(mode)).to_parameter_msg()])
        answer = harness.call(harness.policy_parameter_client, request, 10.0, f"switching to {mode.label}")
        refused = [result.reason for result in answer.results if not result.successful]
        if refused:
            raise EvalError(f"{POLICY_NODE} refused mode {mode.label}: {refused}")

    def _start_policy(self, mode: EvalMode) -> None:
        harness = self._harness
        parameters_file = self.log_dir / f"{POLICY_NODE}.yaml"
        parameters_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": self._policy_parameters(mode)}}))
        with harness.lock:
            harness.steps.clear()
        self._policy = start_child(POLICY_NODE, python_module(
            "vla_cache_ros.ros.node", "--ros-args",
            "--params-file", str(parameters_file), *topics.remap_arguments(topics.ARM_TOPICS.items()),
        ), self.log_dir, die_with_parent=True)
        self._wait(lambda: bool(harness.steps), self.config.startup_timeout_s,
                   f"the first inference step of {POLICY_NODE} ({mode.label})", self._policy)

    def _stop_policy(self) -> None:
        if self._policy is not None:
            self._policy.interrupt()
            self._policy = None

    def stop_mode(self) -> None:
        if self._harness is not None:
            self._harness.set_expert(None)
        self._stop_policy()

    def run_episode(self, mode: EvalMode, index: int, seed: int, family: str) -> EpisodeResult:
        harness, config = self._harness, self.config
        request = SetParameters.Request(parameters=[
            Parameter("seed", Parameter.Type.INTEGER, seed).to_parameter_msg(),
            Parameter("task_family", Parameter.Type.STRING, family).to_parameter_msg()])
        answer = harness.call(harness.parameter_client, request, 10.0, "setting the episode")
        refused = [result.reason for result in answer.results if not result.successful]
        if refused:
            raise EvalError(f"{SIM_NODE} refused the episode settings: {refused}")
        response = harness.call(harness.reset_client, Trigger.Request(), 30.0, "resetting the simulator")
        if not response.success:
            raise EvalError(f"{SIM_NODE} could not reset: {response.message}")
        episode = json.loads(response.message)
        with harness.lock:
            harness.steps.clear()
        started = time.monotonic()

        def finished() -> bool:
            status = harness.status
            return bool(status and status["episode"] == episode["episode"] and status["done"])

        watched = self._policy or self._sim
        self._wait(finished, config.episode_timeout_s * 2 + 30.0, f"the end of episode {index}", watched)
        if not self._sim.alive():
            raise EvalError(f"{SIM_NODE} died; its log ends with:\n{self._sim.log_tail()}")
        wall = time.monotonic() - started
        with harness.lock:
            status = dict(harness.status)
            steps = [step for step in harness.steps if not mode.is_expert and self._runs(mode, step)]
        length = status["success_time_s"] if status["success"] else status["elapsed_s"]
        return EpisodeResult(
            mode=mode.label, index=index, seed=seed, family=family, instruction=episode["instruction"],
            success=bool(status["success"]), timed_out=bool(status["timed_out"]), length_s=float(length),
            wall_s=wall, steps=steps)
