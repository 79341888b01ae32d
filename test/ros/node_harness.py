"""Test harness for the node: run ``vla_cache_node`` in its own process, talk to it over DDS.

``NodeProcess`` starts ``python -m vla_cache_ros.ros.node`` with a generated parameter file and
stops it with SIGINT. ``Peer`` is an rclpy node in the test process (own context, spun on a
background thread) that publishes camera frames, joint states, /clock and instructions from
timers, records what the node publishes, and calls the node's parameter services exactly as
rqt_reconfigure does.
"""
from __future__ import annotations

import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import rclpy
import yaml
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterDescriptor, ParameterType, ParameterValue
from rcl_interfaces.srv import DescribeParameters, SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String

from vla_cache_ros import topics
from vla_cache_ros.image_conversion import fill_message, rgb_to_compressed_fields, rgb_to_image_fields
from vla_cache_ros.ros.qos import CLOCK_QOS, LATCHED_QOS, SENSOR_QOS
from vla_cache_ros.stamps import seconds_to_nanoseconds, stamp_nanoseconds, time_message
from vla_cache_ros.subprocesses import ChildProcess, python_module, start_child
from vla_cache_ros.synthetic import SyntheticScene

REPO = Path(__file__).resolve().parents[2]
JOINTS = ["joint_1", "joint_2", "joint_3", "joint_4", "joint_5", "joint_6"]
MEASURED = [0.1, -0.2, 0.3, -0.4, 0.5, -0.6]


def make_checkpoint(directory: Path, broken_stats: bool = False) -> Path:
    """A miniature OpenVLA-format checkpoint; ``broken_stats`` makes every step raise."""
    import json

    import torch

    from vla_cache_ros.models.tiny import make_tiny_checkpoint

    torch.set_num_threads(1)
    path = make_tiny_checkpoint(directory, seed=0)
    if broken_stats:  # statistics for 3 dims: un-normalising a 7-D action raises at step time
        config_file = path / "config.json"
        config = json.loads(config_file.read_text())
        for entry in config["norm_stats"].values():
            entry["action"]["q01"] = entry["action"]["q01"][:3]
        config_file.write_text(json.dumps(config))
    return path



def joint_arm_parameters(checkpoint: Path, interface: str = "joint_positions",
                         **overrides: Any) -> dict[str, Any]:
    """Node parameters for the miniature checkpoint driving the test's 6-joint arm with joint
    deltas, actuation on, generous watchdog limits for a loaded machine."""
    return {"model_path": str(checkpoint), "unnorm_key": "tiny_sim", "num_threads": 1,
            "command_interface": interface, "action_semantics": "joint_delta",
            "joint_names": JOINTS, "enable_actuation": True, "control_rate_hz": 20.0,
            "max_obs_age_s": 1.0, "max_inference_s": 10.0, **overrides}

class NodeProcess(ChildProcess):
    """A running ``vla_cache_node`` process (alive, log, interrupt from ChildProcess)."""

    def stop(self, timeout_s: float = 30.0) -> tuple[int, str]:
        """SIGINT, wait, return (exit code, output); kills it if it does not stop."""
        self.interrupt(timeout_s)
        return self.process.returncode, self.log()


def start_node(name: str, parameters: dict[str, Any], params_files: list[Path] = (),
               extra_args: list[str] = (), workdir: Path | None = None,
               module: str = "vla_cache_ros.ros.node",
               env: dict[str, str] | None = None) -> NodeProcess:
    """Start the node as ``name`` with ``parameters`` (written to a params file, applied last).

    ``module`` is the entry point run with ``python -m`` (the node, or the fault-injecting
    wrapper ``test.ros.faulty_node``); ``env`` adds environment variables.
    """
    workdir = Path(workdir or tempfile.mkdtemp(prefix="vla_node_"))
    override = workdir / f"{name}_params.yaml"
    override.write_text(yaml.safe_dump({"/**": {"ros__parameters": parameters}}))
    arguments = ["--ros-args", "-r", f"__node:={name}"]
    for params_file in [*params_files, override]:
        arguments += ["--params-file", str(params_file)]
    child = start_child(name, python_module(module, *arguments, *extra_args), workdir, env=env, cwd=REPO)
    return NodeProcess(child.name, child.process, child.log_path)


def parameter_value(value: Any) -> ParameterValue:
    """A Python value as rcl_interfaces/ParameterValue (what rqt sends)."""
    if isinstance(value, bool):
        return ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
    if isinstance(value, int):
        return ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
    if isinstance(value, float):
        return ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
    if isinstance(value, str):
        return ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
    if isinstance(value, list) and all(isinstance(v, float) for v in value):
        return ParameterValue(type=ParameterType.PARAMETER_DOUBLE_ARRAY, double_array_value=value)
    raise TypeError(f"unsupported parameter value {value!r}")


@dataclass
class Recorded:
    """Messages received on one topic, with arrival times (monotonic seconds)."""

    messages: list[tuple[float, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, message: Any) -> None:
        with self.lock:
            self.messages.append((time.monotonic(), message))

    def since(self, start: float) -> list[Any]:
        """Messages that arrived at or after monotonic time ``start``."""
        with self.lock:
            return [message for arrived, message in self.messages if arrived >= start]

    def count(self) -> int:
        with self.lock:
            return len(self.messages)


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str,
               log: Callable[[], str] | None = None) -> Any:
    """Poll ``predicate`` until truthy; fail with ``what`` (and the node log) on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    detail = f"\n--- node log ---\n{log()[-4000:]}" if log else ""
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{detail}")


class Peer:
    """The test's side of the DDS conversation with the node under test."""

    def __init__(self, name: str = "vla_test_peer") -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.recorded: dict[str, Recorded] = {}
        frames = SyntheticScene(height=96, width=128, seed=3).frames(8)
        self.frames = [fill_message(Image(), rgb_to_image_fields(frame)) for frame in frames]
        self.jpeg_frames = [fill_message(CompressedImage(), rgb_to_compressed_fields(frame))
                            for frame in frames]
        self._frame_index = 0
        self.image_stamps_ns: deque[int] = deque(maxlen=200)  # stamps of the latest camera frames sent
        self._stamps_lock = threading.Lock()
        self.camera_on = False
        self.compressed_on = False  # JPEG frames on camera/compressed
        self.image_override: Callable[[], Image] | None = None
        self.joints_on = False
        self.joint_names = list(JOINTS)
        self.joint_positions = list(MEASURED)
        self.sim_time: float | None = None  # publish /clock from this sim time when set
        self._image_pub = self.node.create_publisher(Image, topics.IMAGE, SENSOR_QOS)
        self._compressed_pub = self.node.create_publisher(CompressedImage, "camera/compressed", SENSOR_QOS)
        self._joint_pub = self.node.create_publisher(JointState, topics.JOINT_STATES, SENSOR_QOS)
        self._instruction_pub = self.node.create_publisher(String, topics.INSTRUCTION, LATCHED_QOS)
        self._clock_pub = self.node.create_publisher(Clock, topics.CLOCK, CLOCK_QOS)
        self.node.create_timer(0.05, self._publish_camera)
        self.node.create_timer(0.02, self._publish_joints)
        self.node.create_timer(0.01, self._publish_clock)
        self._sim_origin = time.monotonic()
        self.record(topics.DIAGNOSTICS, DiagnosticArray)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    # -------------------------------------------------------------------------- streams
    def now_stamp(self) -> Time:
        """The stamp inputs carry: sim time when /clock is published, else wall time."""
        if self.sim_time is not None:
            seconds = self.sim_time + (time.monotonic() - self._sim_origin)
            return time_message(seconds_to_nanoseconds(seconds), Time)
        return self.node.get_clock().now().to_msg()

    def jump_clock(self, delta_s: float) -> float:
        """Move the published sim time by ``delta_s`` (negative: back, as a bag loop or a
        simulator reset does); returns the sim time just before the jump."""
        assert self.sim_time is not None, "jump_clock needs sim time"
        before = self.sim_time + (time.monotonic() - self._sim_origin)
        self.sim_time, self._sim_origin = before + delta_s, time.monotonic()
        return before

    def _publish_camera(self) -> None:
        if self.compressed_on:
            jpeg = self.jpeg_frames[self._frame_index % len(self.jpeg_frames)]
            jpeg.header.stamp = self.now_stamp()
            self._compressed_pub.publish(jpeg)
            self._frame_index += 1
        if not self.camera_on:
            return
        if self.image_override is not None:
            message = self.image_override()
        else:
            message = self.frames[self._frame_index % len(self.frames)]
            self._frame_index += 1
        message.header.stamp = self.now_stamp()
        message.header.frame_id = "test_camera"
        self._image_pub.publish(message)
        with self._stamps_lock:
            self.image_stamps_ns.append(stamp_nanoseconds(message.header.stamp))

    def _publish_joints(self) -> None:
        if not self.joints_on:
            return
        message = JointState(name=list(self.joint_names),
                             position=[float(v) for v in self.joint_positions])
        message.header.stamp = self.now_stamp()
        self._joint_pub.publish(message)

    def _publish_clock(self) -> None:
        if self.sim_time is not None:
            self._clock_pub.publish(Clock(clock=self.now_stamp()))

    def sent_image_stamps_ns(self) -> list[int]:
        """Stamps (ns) of the latest camera frames published (raw Image topic)."""
        with self._stamps_lock:
            return list(self.image_stamps_ns)

    def publish_instruction(self, text: str) -> None:
        """Publish on the latched instruction topic."""
        self._instruction_pub.publish(String(data=text))

    # ------------------------------------------------------------------------ recording
    def record(self, topic: str, message_type: Any, qos: Any = 10) -> Recorded:
        """Start recording ``topic``; returns its :class:`Recorded`."""
        recorded = self.recorded.setdefault(topic, Recorded())
        self.node.create_subscription(message_type, topic, recorded.add, qos)
        return recorded

    def statuses(self, node_name: str, since: float = 0.0) -> list[Any]:
        """DiagnosticStatus entries from ``node_name`` (a node name, or a fully qualified one
        with its namespace) received after ``since``; the node names its status
        ``<fully qualified name>: policy``."""
        prefix = (node_name if node_name.startswith("/") else f"/{node_name}") + ":"
        found = []
        for array in self.recorded[topics.DIAGNOSTICS].since(since):
            found += [status for status in array.status if status.name.startswith(prefix)]
        return found

    def wait_status(self, node_name: str, predicate: Callable[[Any, dict[str, str]], bool],
                    timeout_s: float, what: str, process: NodeProcess | None = None) -> Any:
        """Wait for a diagnostic status of ``node_name`` satisfying ``predicate(status, values)``."""
        start = time.monotonic()

        def match() -> Any:
            for status in reversed(self.statuses(node_name, start)):
                if predicate(status, {kv.key: kv.value for kv in status.values}):
                    return status
            return None
        return wait_until(match, timeout_s, what, process.log if process else None)

    # ------------------------------------------------------------------------ parameters
    def _call(self, service_type: Any, service: str, request: Any, timeout_s: float) -> Any:
        client = self.node.create_client(service_type, service)
        try:
            if not client.wait_for_service(timeout_sec=timeout_s):
                raise AssertionError(f"service {service} not available")
            future = client.call_async(request)
            wait_until(future.done, timeout_s, f"a reply from {service}")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def set_parameters(self, node_name: str, timeout_s: float = 15.0,
                       **values: Any) -> list[Any]:
        """Call ``/<node>/set_parameters`` as rqt does; return the SetParametersResult list."""
        request = SetParameters.Request(parameters=[
            ParameterMsg(name=name, value=parameter_value(value)) for name, value in values.items()])
        return self._call(SetParameters, f"/{node_name}/set_parameters", request,
                          timeout_s).results

    def describe_parameters(self, node_name: str, names: list[str],
                            timeout_s: float = 15.0) -> dict[str, ParameterDescriptor]:
        """Call ``/<node>/describe_parameters``."""
        response = self._call(DescribeParameters, f"/{node_name}/describe_parameters",
                              DescribeParameters.Request(names=names), timeout_s)
        return {descriptor.name: descriptor for descriptor in response.descriptors}

    # ------------------------------------------------------------------------- teardown
    def close(self) -> None:
        """Stop spinning, then destroy the node and the context (in that order)."""
        self.executor.shutdown(timeout_sec=5.0)
        self._thread.join(timeout=10.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def positions(message: Any) -> np.ndarray:
    """Joint positions of a JointTrajectory's first point or a Float64MultiArray."""
    if hasattr(message, "points"):
        return np.array(message.points[0].positions)
    return np.array(message.data)
