"""``launch/demo.launch.py`` starts what ``vla-cache demo --live`` starts on the MuJoCo arm, and
the processes it describes really run the demo.

``launch`` / ``launch_ros`` are not on PyPI: the launch file is executed against the recording
stand-ins of test_launch_file.py, then the arm and the node are started here as separate
processes with exactly the parameters and remaps the description holds.
"""
from __future__ import annotations

import types
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from geometry_msgs.msg import TwistStamped

from test.ros.node_harness import REPO, Peer, make_checkpoint, start_node, wait_until
from test.ros.test_launch_file import declared, load_launch_file
from vla_cache_ros.apps import demo
from vla_cache_ros.models.catalog import DEFAULT_MODEL
from vla_cache_ros.ros.qos import COMMAND_QOS
from vla_cache_ros.subprocesses import python_module, start_child

pytestmark = pytest.mark.timeout(300)
DEMO_LAUNCH = REPO / "launch" / "demo.launch.py"


@pytest.fixture
def launch_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    yield load_launch_file(DEMO_LAUNCH, monkeypatch, REPO)  # share dir = the source tree


def processes(module: Any, **arguments: str) -> list[Any]:
    context = types.SimpleNamespace(launch_configurations={**declared(module), **arguments})
    return module._processes(context)


def test_defaults_start_arm_node_and_recorder(launch_module: Any) -> None:
    assert declared(launch_module)["model_path"] == DEFAULT_MODEL
    arm, policy, recorder = processes(launch_module)
    assert arm.kwargs["executable"] == "sim_arm_node"
    assert arm.kwargs["parameters"][0]["auto_reset"] is True
    assert policy.kwargs["executable"] == "vla_cache_node"
    config, overrides = policy.kwargs["parameters"]
    assert Path(config) == REPO / "config" / demo.CONFIG_NAME
    assert overrides["enable_actuation"] is True and overrides["cache_mode"] == "vla_cache"
    assert recorder.kwargs["cmd"] == ["ros2", "bag", "record", "-o", "out/demo_bag",
                                      *demo.RECORDED_TOPICS]
    assert not launch_module.test_logger.warnings


def test_same_wiring_as_the_demo_command(launch_module: Any) -> None:
    """Remaps and actuation match ``vla-cache demo --live``'s node command."""
    _, policy = processes(launch_module, record="false")
    command = demo.node_command(Path("config.yaml"), Path("model"), "", actuation=True)
    remaps = [tuple(command[i + 1].split(":=")) for i, word in enumerate(command) if word == "-r"]
    assert policy.kwargs["remappings"] == remaps
    assert "enable_actuation:=true" in command


def test_a_misspelt_number_is_named(launch_module: Any) -> None:
    with pytest.raises(ValueError, match="launch argument cache_ratio:='0,5' is not a number"):
        processes(launch_module, cache_ratio="0,5")
    with pytest.raises(ValueError, match="launch argument seed:='1e5' is not an integer"):
        processes(launch_module, seed="1e5")


def test_record_false_and_unknown_arguments(launch_module: Any) -> None:
    assert len(processes(launch_module, record="false")) == 2
    processes(launch_module, model="sim_policy")
    [warning] = launch_module.test_logger.warnings
    assert "model" in warning and "model_path" in warning


def test_described_processes_drive_the_arm(launch_module: Any, tmp_path: Path) -> None:
    """The arm and node with the launch file's parameters and remaps: the node loads, follows
    the arm's instruction and its twists reach the arm's Servo topic."""
    checkpoint = make_checkpoint(tmp_path / "tiny")
    arm, policy = processes(launch_module, record="false", model_path=str(checkpoint),
                             unnorm_key="tiny_sim", task_family="touch")
    arm_params = tmp_path / "arm.yaml"
    arm_params.write_text(yaml.safe_dump({"/**": {"ros__parameters": arm.kwargs["parameters"][0]}}))
    sim = start_child("sim_arm_node", python_module("vla_cache_ros.ros.sim_node", "--ros-args",
                                                    "--params-file", str(arm_params)),
                      tmp_path, cwd=REPO)
    config, overrides = policy.kwargs["parameters"]
    remaps = [word for inner, outer in policy.kwargs["remappings"] for word in ("-r", f"{inner}:={outer}")]
    node = start_node("vla_cache_node", {**overrides, "num_threads": 1}, params_files=[Path(config)],
                      extra_args=remaps, workdir=tmp_path)
    peer = Peer("vla_test_peer_demo_launch")
    try:
        twists = peer.record(dict(demo.NODE_REMAPS)["twist_cmd"], TwistStamped, COMMAND_QOS)
        peer.wait_status("vla_cache_node", lambda s, v: v.get("instruction", "").startswith("touch"),
                         150, "the arm's instruction in the node's diagnostics", node)
        wait_until(lambda: len(twists.since(0.0)) >= 3, 60, "twists on the arm's Servo topic", node.log)
    finally:
        peer.close()
        code, log = node.stop()
        sim.interrupt()
    assert code == 0 and "Traceback" not in log, log[-3000:]
