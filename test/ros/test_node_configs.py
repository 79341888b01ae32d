"""Every shipped config starts the node (``--ros-args --params-file``), startup errors are one
clear line, and the launch file (tested where ``launch`` is installed) wires arguments through.

Configs name real checkpoints (OpenVLA-7B on a GPU); the test keeps each file's settings and
overrides only what this machine cannot provide: the model (miniature checkpoint), its
statistics key, device, dtype, and threads.
"""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from test.ros.node_harness import REPO, Peer, make_checkpoint, start_node, wait_until

pytestmark = pytest.mark.timeout(120)
CONFIGS = sorted((REPO / "config").glob("*.yaml"))
LAUNCH_FILE = REPO / "launch" / "vla_cache.launch.py"
MACHINE_OVERRIDES = {"unnorm_key": "tiny_sim", "device": "cpu", "dtype": "float32",
                     "num_threads": 1}


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    peer = Peer("vla_test_peer_configs")
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("tiny"))


def test_configs_exist() -> None:
    assert {path.name for path in CONFIGS} >= {"openvla_7b_servo.yaml", "joint_trajectory_arm.yaml",
                                               "miniature_demo.yaml"}


@pytest.mark.parametrize("config", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_node_starts_from_config(config: Path, checkpoint: Path, peer: Peer,
                                 tmp_path: Path) -> None:
    settings = yaml.safe_load(config.read_text())["/**"]["ros__parameters"]
    name = f"vla_cfg_{config.stem}"
    node = start_node(name, {"model_path": str(checkpoint), **MACHINE_OVERRIDES},
                      params_files=[config], workdir=tmp_path)
    try:
        status = peer.wait_status(name, lambda s, v: "command_interface" in v, 60,
                                  f"diagnostics from {config.name}", node)
        values = {kv.key: kv.value for kv in status.values}
        assert values["command_interface"] == settings["command_interface"]
        assert values["cache_mode"] == settings["cache_mode"]
        assert values["actuation_enabled"] == str(settings["enable_actuation"]).lower()
        descriptors = peer.describe_parameters(name, ["joint_names", "command_interface"])
        assert descriptors["command_interface"].read_only
    finally:
        code, log = node.stop()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log


def test_bad_setup_exits_with_one_clear_line(checkpoint: Path, tmp_path: Path) -> None:
    node = start_node("vla_cfg_bad", {"model_path": "/nonexistent/model"}, workdir=tmp_path)
    wait_until(lambda: not node.alive(), 60, "the node to exit", node.log)
    code, log = node.stop()
    assert code == 2, log[-3000:]
    assert log.strip().splitlines()[-1] == (
        "vla_cache_node: error: model_path '/nonexistent/model' is not a directory "
        "(nor a known name: sim_policy, tiny)")
    assert "Traceback" not in log


@pytest.mark.parametrize("parameters, message", [
    ({"unnorm_key": ""}, "unnorm_key is required"),
    ({"unnorm_key": "bridge_orig"}, "unknown unnorm_key 'bridge_orig'"),
    ({"model_path": ""}, "parameter model_path is required"),
    ({"command_interface": "joint_trajectory", "action_semantics": "joint_delta"},
     "needs joint_names with 6 joints"),
    ({"command_interface": "ee_twist", "action_semantics": "joint_delta"},
     "cannot drive command interface 'ee_twist'"),
    ({"cache_mode": "turbo"},
     "parameter cache_mode: got 'turbo', expected one of off, fixed, vla_cache, learned"),
    ({"cpu_weight_prepack": "sometimes"},
     "parameter cpu_weight_prepack: got 'sometimes', expected one of auto, on, off"),
    ({"dtype": "float16", "cpu_weight_prepack": "on"}, "cannot prepack decoder weights: dtype float16"),
    ({"workspace_min": [0.0, 0.0, 0.0], "workspace_max": [1.0, 1.0]},
     "workspace_max must have 3 values"),
    ({"joint_names": ["a", "b"], "joint_lower_limits": [0.0], "joint_upper_limits": [1.0]},
     "have 1 values but joint_names has 2"),
])
def test_bad_setup_raises_user_facing_error(parameters: dict, message: str,
                                            checkpoint: Path) -> None:
    """In-process (real rclpy, no subprocess): construction (parameters) or the configure
    transition (model, device, statistics) refuses with a clear message."""
    import rclpy
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from vla_cache_ros.errors import UserFacingError
    from vla_cache_ros.ros.node import VlaCacheNode

    values = {"model_path": str(checkpoint), "unnorm_key": "tiny_sim", "num_threads": 1,
              "autostart": False, **parameters}
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        try:
            node = VlaCacheNode(context=context, parameter_overrides=[
                Parameter(name, value=value) for name, value in values.items()])
        except UserFacingError as error:
            assert message in str(error)
            return
        try:
            assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
            assert isinstance(node._configure_error, UserFacingError)
            assert message in str(node._configure_error)
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_launch_file_is_valid_python_with_documented_arguments() -> None:
    tree = ast.parse(LAUNCH_FILE.read_text())
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    text = LAUNCH_FILE.read_text()
    for argument in ("config", "model_path", "use_sim_time", "command_interface", "image_topic",
                     "twist_topic", "joint_trajectory_topic", "gripper_topic"):
        assert f'"{argument}"' in text


@pytest.mark.skipif(importlib.util.find_spec("launch") is None
                    or importlib.util.find_spec("launch_ros") is None,
                    reason="launch / launch_ros are not installed (not on PyPI); runs in a "
                           "ROS 2 workspace")
def test_launch_description_builds_the_node(checkpoint: Path) -> None:
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    spec = importlib.util.spec_from_file_location("vla_cache_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    declared = {entity.name: entity for entity in description.entities
                if isinstance(entity, DeclareLaunchArgument)}
    assert {"config", "model_path", "use_sim_time", "command_interface"} <= set(declared)
    context = LaunchContext()
    for name, argument in declared.items():
        context.launch_configurations[name] = "".join(
            part.perform(context) for part in argument.default_value or [])
    context.launch_configurations.update({
        "config": str(REPO / "config" / "miniature_demo.yaml"),
        "model_path": str(checkpoint), "use_sim_time": "true"})
    [opaque] = [e for e in description.entities if isinstance(e, OpaqueFunction)]
    [node] = opaque.execute(context)
    assert node.node_executable == "vla_cache_node"
