"""Start-up and shutdown of the node process: configuration errors are one line with exit code 2
(never an rclpy traceback), numbers are accepted as users write them in YAML, cheap checks come
before expensive ones, and Ctrl-C works even when SIGINT was inherited as ignored.

Each failing start is a real ``vla_cache_node`` process with a real params file; it exits before
loading any weight, so these tests are fast.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from std_msgs.msg import Float64MultiArray

from test.ros.node_harness import JOINTS, MEASURED, REPO, Peer, make_checkpoint, positions, start_node, wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    peer = Peer("vla_test_peer_startup")
    yield peer
    peer.close()


def expect_one_line_exit_2(parameters: dict, fragment: str, tmp_path: Path,
                           params_files: list[Path] = ()) -> str:
    node = start_node("vla_startup_bad", parameters, params_files=params_files,
                      workdir=tmp_path)
    try:
        wait_until(lambda: not node.alive(), 60, "the node to exit", node.log)
    finally:
        code, log = node.stop()
    assert code == 2, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    last = log.strip().splitlines()[-1]
    assert last.startswith("vla_cache_node: error: ") and fragment in last, last
    return last


@pytest.mark.parametrize("value, fragment", [
    ("0.5", "parameter cache_ratio: got '0.5' (str), expected a number"),
    (float("inf"), "parameter cache_ratio: got inf, expected a finite number"),
    (float("nan"), "parameter cache_ratio: got nan, expected a finite number"),
    (True, "parameter cache_ratio: got True (bool), expected a number"),
    (1.5, "parameter cache_ratio: got 1.5, expected a value in [0, 1]"),
])
def test_bad_number_in_params_file(value: object, fragment: str, checkpoint: Path,
                                   tmp_path: Path) -> None:
    expect_one_line_exit_2({"model_path": str(checkpoint), "cache_ratio": value}, fragment,
                           tmp_path)


def test_out_of_range_rate_and_bad_lists(checkpoint: Path, tmp_path: Path) -> None:
    expect_one_line_exit_2({"model_path": str(checkpoint), "control_rate_hz": 2000.0},
                           "parameter control_rate_hz: got 2000, expected a value in [1, 1000]",
                           tmp_path)
    expect_one_line_exit_2({"model_path": str(checkpoint), "joint_upper_limits": ["1", "2"]},
                           "parameter joint_upper_limits: got ['1', '2'] (list), expected a list "
                           "of numbers", tmp_path)
    expect_one_line_exit_2({"model_path": str(checkpoint), "max_token_age": 2.5},
                           "parameter max_token_age: got 2.5 (float), expected an integer",
                           tmp_path)


def test_yaml_syntax_error_in_params_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("/**:\n  ros__parameters:\n    cache_ratio: [0.5,\n")
    expect_one_line_exit_2({}, "Couldn't parse params file", tmp_path, params_files=[broken])


def test_missing_model_path_reported_before_heavy_imports() -> None:
    """The check runs before torch is imported (which alone takes seconds)."""
    script = (
        "import sys, rclpy\n"
        "from vla_cache_ros.errors import UserFacingError\n"
        "from vla_cache_ros.ros.node import VlaCacheNode\n"
        "rclpy.init()\n"
        "try:\n"
        "    VlaCacheNode()\n"
        "except UserFacingError as error:\n"
        "    print('ERROR', error)\n"
        "print('torch imported:', 'torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert "ERROR parameter model_path is required" in result.stdout, result.stderr
    assert "torch imported: False" in result.stdout


def test_device_without_gpu_is_one_line(checkpoint: Path, tmp_path: Path) -> None:
    # cuda:63 exists on no machine, so this holds on GPU machines too.
    expect_one_line_exit_2({"model_path": str(checkpoint), "unnorm_key": "tiny_sim",
                            "device": "cuda:63"}, "device 'cuda:63' requested", tmp_path)
    expect_one_line_exit_2({"model_path": str(checkpoint), "device": "gpu0"},
                           "device 'gpu0' is not a torch device name", tmp_path)


def test_unnorm_key_checked_before_weights(checkpoint: Path, tmp_path: Path) -> None:
    """A checkpoint whose weights are unreadable: the statistics key is still what is reported,
    so it was checked without reading a weight."""
    broken = tmp_path / "broken_weights"
    broken.mkdir()
    for item in checkpoint.iterdir():
        target = broken / item.name
        if item.suffix == ".safetensors":
            target.write_bytes(b"not a safetensors file")
        elif item.is_file():
            target.write_bytes(item.read_bytes())
    expect_one_line_exit_2({"model_path": str(broken), "unnorm_key": "bridge_orig"},
                           "unknown unnorm_key 'bridge_orig'", tmp_path)


def test_whole_numbers_accepted_for_doubles(checkpoint: Path, peer: Peer, tmp_path: Path) -> None:
    """``cache_ratio: 1`` and integer joint limits, as users write YAML, start the node."""
    config = tmp_path / "integers.yaml"
    config.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "cache_ratio": 1, "max_obs_age_s": 2, "joint_lower_limits": [-3] * 6,
        "joint_upper_limits": [3] * 6, "workspace_min": [-1, -1, 0], "workspace_max": [1, 1, 2],
    }}}))
    assert "cache_ratio: 1\n" in config.read_text()  # really an integer in the file
    name = "vla_startup_ints"
    node = start_node(name, {"model_path": str(checkpoint), "unnorm_key": "tiny_sim",
                             "num_threads": 1, "command_interface": "joint_trajectory",
                             "action_semantics": "joint_delta", "joint_names": JOINTS},
                      params_files=[config], workdir=tmp_path)
    try:
        status = peer.wait_status(name, lambda s, v: "target_ratio" in v, 60,
                                  "diagnostics from the node", node)
        values = {kv.key: kv.value for kv in status.values}
        assert values["target_ratio"] == "1.000"
    finally:
        code, log = node.stop()
    assert code == 0 and "Traceback" not in log, log[-3000:]


def test_two_arms_in_namespaces_have_distinct_diagnostics(checkpoint: Path, peer: Peer,
                                                         tmp_path: Path) -> None:
    """Regression (issue 15): the status was named ``vla_cache_node: policy`` whatever the
    namespace, so two arms collided in a diagnostic aggregator. It carries the full name now."""
    name = "vla_startup_ns"
    for arm in ("arm_left", "arm_right"):
        (tmp_path / arm).mkdir()
    nodes = [start_node(name, {"model_path": str(checkpoint), "unnorm_key": "tiny_sim",
                               "num_threads": 1}, extra_args=["-r", f"__ns:=/{arm}"],
                        workdir=tmp_path / arm) for arm in ("arm_left", "arm_right")]
    try:
        for arm, node in zip(("arm_left", "arm_right"), nodes):
            status = peer.wait_status(f"/{arm}/{name}", lambda s, v: "cache_mode" in v, 60,
                                      f"diagnostics from /{arm}/{name}", node)
            assert status.name == f"/{arm}/{name}: policy"
            assert status.hardware_id == f"/{arm}/{name}"
    finally:
        logs = [node.stop() for node in nodes]
    assert all(code == 0 for code, _ in logs), [log[-2000:] for _, log in logs]


def test_ctrl_c_while_the_model_loads_ends_the_process_cleanly(checkpoint: Path, peer: Peer,
                                                                tmp_path: Path) -> None:
    """Regression: a node stopped while its start-up thread was inside the model load aborted
    ("terminate called without an active exception", exit -6; a race seen in CI). It now ends at
    once with exit 0 and says so; the load is made slow here so the stop lands inside it."""
    name = "vla_startup_loading"
    node = start_node(name, {"model_path": str(checkpoint), "unnorm_key": "tiny_sim", "num_threads": 1},
                      workdir=tmp_path, module="test.ros.faulty_node",
                      env={"VLA_TEST_FAULT_FILE": str(tmp_path / "no_fault"), "VLA_TEST_SLOW_LOAD_S": "60"})
    peer.wait_status(name, lambda s, v: True, 60,
                     "diagnostics while the model loads", node)
    started = time.monotonic()
    code, log = node.stop(timeout_s=30)
    assert code == 0 and time.monotonic() - started < 20, log[-2000:]
    assert "stopped while starting up" in log and "terminate called" not in log, log[-2000:]


def test_warm_up_runs_before_ready(checkpoint: Path, tmp_path: Path) -> None:
    name = "vla_startup_warm"
    node = start_node(name, {"model_path": str(checkpoint), "unnorm_key": "tiny_sim",
                             "num_threads": 1}, workdir=tmp_path)
    try:
        wait_until(lambda: "ready:" in node.log(), 60, "ready", node.log)
    finally:
        code, log = node.stop()
    assert code == 0, log[-3000:]
    assert log.index("warm-up step took") < log.index("ready:")


def test_sigint_works_when_inherited_as_ignored(checkpoint: Path, peer: Peer,
                                                tmp_path: Path) -> None:
    """A background job from a non-interactive shell starts with SIGINT ignored; the node must
    still stop on it and send its safety command."""
    name = "vla_startup_sigint"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "model_path": str(checkpoint), "unnorm_key": "tiny_sim", "num_threads": 1,
        "command_interface": "joint_positions", "action_semantics": "joint_delta",
        "joint_names": JOINTS, "enable_actuation": True, "max_obs_age_s": 1.0,
        "max_inference_s": 10.0, "instruction": "pick up the red cube"}}}))
    commands = peer.record("/joint_commands", Float64MultiArray)
    log_path = tmp_path / "node.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "vla_cache_ros.ros.node", "--ros-args", "-r",
             f"__node:={name}", "--params-file", str(params)],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        peer.camera_on = peer.joints_on = True
        start = time.monotonic()
        wait_until(lambda: len(commands.since(start)) >= 3, 60, "commands",
                   lambda: log_path.read_text(errors="replace"))
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        peer.camera_on = peer.joints_on = False
    text = log_path.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert "shutdown: safety command sent" in text
    time.sleep(0.3)
    last = commands.since(start)[-1]
    assert list(positions(last)) == MEASURED  # the hold: measured joints


def test_checkpoint_without_usable_statistics_is_refused_at_start(tmp_path: Path) -> None:
    """Once the node said "ready" and then faulted on every step; now it is one line at start."""
    broken = make_checkpoint(tmp_path / "broken", broken_stats=True)
    last = expect_one_line_exit_2({"model_path": str(broken), "unnorm_key": "tiny_sim"},
                                  "'tiny_sim' action q01 has 3 values, expected 7", tmp_path)
    assert "ready" not in last


def test_min_max_statistics_are_used_with_a_warning(tmp_path: Path, peer: Peer) -> None:
    """A dataset_statistics.json from another pipeline (mean/std/min/max, no q01/q99): the node
    starts, says which fallback it uses, and acts."""
    path = make_checkpoint(tmp_path / "minmax")
    config = json.loads((path / "config.json").read_text())
    action = config["norm_stats"]["tiny_sim"]["action"]
    (path / "dataset_statistics.json").write_text(json.dumps({"other_pipeline": {"action": {
        "mean": [0.0] * 7, "std": [1.0] * 7, "min": action["q01"], "max": action["q99"]}}}))
    name = "vla_startup_minmax"
    node = start_node(name, {"model_path": str(path), "unnorm_key": "other_pipeline",
                             "num_threads": 1}, workdir=tmp_path)
    try:
        peer.camera_on = True
        peer.publish_instruction("pick up the red cube")
        peer.wait_status(name, lambda s, v: v.get("state") == "running", 60, "running", node)
    finally:
        peer.camera_on = False
        code, log = node.stop()
    assert code == 0 and "Traceback" not in log, log[-3000:]
    assert "'other_pipeline': no action q01/q99; un-normalising with min/max instead" in log


def test_misspelt_parameter_is_refused_with_the_closest_name(checkpoint: Path,
                                                             tmp_path: Path) -> None:
    """A typo in a safety setting must not leave its default silently in force."""
    expect_one_line_exit_2({"model_path": str(checkpoint), "enable_actuaton": True},
                           "unknown parameters: enable_actuaton (did you mean enable_actuation?)",
                           tmp_path)


def test_unsupported_device_type_is_one_line(checkpoint: Path, tmp_path: Path) -> None:
    expect_one_line_exit_2({"model_path": str(checkpoint), "unnorm_key": "tiny_sim",
                            "device": "mps"}, "device 'mps' is not supported", tmp_path)
