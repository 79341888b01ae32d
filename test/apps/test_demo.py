"""``vla-cache demo`` from the command line, as the README runs it (each in its own process).

- episodes (default): the node drives the MuJoCo arm for one short episode and the demo writes
  the GIF of the reused tokens (with the ``tiny`` model: the shipped policy is for users);
- ``--live`` (default robot: the MuJoCo arm where it renders, else the synthetic camera), with a
  parameter sweep and a recorded bag that ``vla-cache replay --model tiny`` then reads;
- the synthetic camera stopped with Ctrl-C; a child that dies early; ``--offline``.

The miniature checkpoint goes to a per-session VLA_CACHE_HOME (a copy of the session's one).
No timing is asserted: on a loaded machine the node may even report a fault.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("vla_cache_ros.ros.node")

# One status line per second, in the node's `one_line` wording behind the elapsed time.
STATUS_LINE = re.compile(r"^\[\s*[\d.]+s\] \[(OK|WARN|ERROR)\] \S+ mode=(off|fixed|vla_cache|learned) "
                         r"ratio=[\d.]+/(n/a|[\d.]+) latency_p50=(n/a|[\d.]+)ms "
                         r"inference=(n/a|[\d.]+)Hz control=(n/a|[\d.]+)Hz", re.MULTILINE)


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> dict[str, str]:
    """The environment of the demo processes: VLA_CACHE_HOME holds the miniature checkpoint."""
    home = tmp_path_factory.mktemp("vla_cache_home")
    shutil.copytree(tiny_checkpoint, home / "tiny-seed0")
    return dict(os.environ, VLA_CACHE_HOME=str(home), PYTHONUNBUFFERED="1")


def vla_cache(*args: str, env: dict[str, str], cwd: Path, timeout: float = 180.0) -> subprocess.CompletedProcess:
    """Run ``vla-cache ARGS`` to completion (output captured as text)."""
    return subprocess.run([sys.executable, "-m", "vla_cache_ros.apps.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


EPISODE_LINE = re.compile(r"^episode 1/1 \[touch\] '[^']+': (success in|timeout after) [\d.]+ s, (\d+) steps, "
                          r"cache ratio ([\d.]+|n/a), latency ([\d.]+ ms|n/a)$", re.MULTILINE)


@pytest.mark.ros
@pytest.mark.sim
def test_episodes_with_the_reuse_animation(tmp_path: Path, demo_env: dict[str, str]) -> None:
    pytest.importorskip("mujoco")
    demo = vla_cache("demo", "--model", "tiny", "--mode", "fixed:0.5", "--episodes", "1", "--families", "touch",
                     "--episode-timeout", "3", "--out", str(tmp_path / "demo"), "--log-dir", str(tmp_path / "logs"),
                     env=demo_env, cwd=tmp_path)
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output
    assert "Traceback" not in output, output
    [episode] = EPISODE_LINE.findall(demo.stdout)
    assert int(episode[1]) >= 1, output
    assert re.search(r"^fixed:0\.5: [01]/1 successful, mean cache ratio [\d.]+", demo.stdout, re.MULTILINE), output
    gif = tmp_path / "demo" / "episode.gif"
    assert f"animation: {gif} (episode 1, " in demo.stdout, output
    from PIL import Image

    with Image.open(gif) as animation:
        assert 1 <= animation.n_frames <= int(episode[1])
    for name in ("sim_arm_node", "vla_cache_node"):
        assert (tmp_path / "logs" / f"{name}.log").is_file()


@pytest.mark.ros
def test_live_demo_sweeps_records_and_the_bag_replays(tmp_path: Path, demo_env: dict[str, str]) -> None:
    bag = tmp_path / "demo_bag"
    demo = vla_cache("demo", "--live", "--model", "tiny", "--duration", "12", "--sweep", "--sweep-period", "4",
                     "--record", str(bag),
                     "--log-dir", str(tmp_path / "logs"), env=demo_env, cwd=tmp_path)
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output
    assert "Traceback" not in output, output
    assert len(STATUS_LINE.findall(demo.stdout)) >= 3, output
    assert re.search(r"^robot: (sim_arm_node|synthetic_camera) ", demo.stdout, re.MULTILINE), output
    # the sweep starts with the first spec of the registry's default sweep
    assert re.search(r"^sweep: cache_mode=off cache_ratio=0 -> accepted$", demo.stdout, re.MULTILINE), output
    assert "mode=off ratio=0.000/" in demo.stdout, output  # the change shows in the status lines
    for name in ("vla_cache_node", "recorder"):
        assert (tmp_path / "logs" / f"{name}.log").is_file()

    replay_command = f"vla-cache replay {bag} --model tiny"
    assert replay_command in demo.stdout.splitlines()[-1], output
    replay = vla_cache(*replay_command.split()[1:], "--max-frames", "3", "--modes", "off,fixed:0.5",
                       "--no-plots", "--no-progress", "--out", str(tmp_path / "replay"), env=demo_env, cwd=tmp_path)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert (tmp_path / "replay" / "replay.json").is_file()
    assert "fixed:0.5" in replay.stdout


def _read_lines(stream: object, lines: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.append(line)


@pytest.mark.ros
def test_synthetic_camera_stopped_with_ctrl_c(tmp_path: Path, demo_env: dict[str, str]) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "vla_cache_ros.apps.cli", "demo", "--live", "--model", "tiny", "--source", "synthetic",
         "--duration", "120", "--no-record"],
        env=demo_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120.0

        def running() -> bool:  # the lifecycle node reports while it loads: wait for the policy's status
            _, _, after = "".join(lines).partition("instruction: 'pick up the red cube'")
            return bool(after) and len(STATUS_LINE.findall(after)) >= 2

        while not running() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert running(), "".join(lines)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(timeout=10)
    output = "".join(lines)
    assert process.returncode == 0, output
    assert "robot: synthetic_camera (node in dry run)" in output
    assert "interrupted" in output and "Traceback" not in output, output
    logs = tmp_path / "out" / "demo_logs"
    assert "Traceback" not in (logs / "vla_cache_node.log").read_text() + (logs / "synthetic_camera.log").read_text()



@pytest.mark.ros
@pytest.mark.sim
@pytest.mark.timeout(120)
@pytest.mark.parametrize("loop", ["episodes", "live"])
def test_sigterm_while_the_node_loads_stops_the_demo_with_143(loop: str, tmp_path: Path,
                                                               demo_env: dict[str, str]) -> None:
    """Regression: a SIGTERM (`kill`, a scheduler, `timeout`) stopped the demo's children but the
    demo exited 0, as if it had run; the README promises 143 (Ctrl-C still ends the live loop
    with 0). Episodes: sent once vla_cache_node runs as a child (it is loading). Live: sent at the
    first status line, once the children are past their imports (a child that gets the demo's
    SIGINT while Python still imports its modules dies with a traceback, reported as an error)."""
    from test.conftest import signal_once_ready
    from vla_cache_ros.subprocesses import python_module, start_child

    options = ["--episodes", "1"] if loop == "episodes" else ["--live", "--source", "synthetic", "--no-record"]
    demo = start_child("demo", python_module(
        "vla_cache_ros.apps.cli", "demo", "--model", "tiny", "--threads", "1", *options,
        "--log-dir", str(tmp_path / "logs"), "--out", str(tmp_path / "out")), tmp_path, env=demo_env, cwd=tmp_path)
    def started(children: dict[int, str]) -> bool:
        if loop == "live":
            return bool(STATUS_LINE.search(demo.log()))
        return any("-m vla_cache_ros.ros.node " in command for command in children.values())

    left = signal_once_ready(demo, started, signal.SIGTERM)
    log = demo.log()
    assert demo.exit_code == 128 + signal.SIGTERM and "Traceback" not in log, log[-3000:]
    assert "interrupted" in log and not left, (left, log[-3000:])

@pytest.mark.ros
@pytest.mark.timeout(120)
@pytest.mark.parametrize("stop, code", [(signal.SIGINT, 0), (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_a_stop_while_the_children_import_is_no_failure(stop: int, code: int, tmp_path: Path,
                                                        demo_env: dict[str, str]) -> None:
    """Regression: a Ctrl-C or SIGTERM while the live demo's children still imported their modules
    made them die of the demo's own SIGINT (exit -2, a KeyboardInterrupt traceback), which the demo
    reported as errors ("synthetic_camera exited with code -2") and exited 1. A child ended by the
    signal the demo sent to stop it has stopped as asked: the demo ends as documented (Ctrl-C 0,
    SIGTERM 143) and leaves no process behind."""
    from test.conftest import signal_once_ready
    from vla_cache_ros.subprocesses import python_module, start_child

    demo = start_child("demo", python_module(
        "vla_cache_ros.apps.cli", "demo", "--live", "--model", "tiny", "--threads", "1", "--source", "synthetic",
        "--no-record", "--log-dir", str(tmp_path / "logs"), "--out", str(tmp_path / "out")), tmp_path,
        env=demo_env, cwd=tmp_path)
    def started(children: dict[int, str]) -> bool:  # both exist; the node imports torch for seconds after this
        return all(any(f"-m vla_cache_ros.ros.{module} " in command for command in children.values())
                   for module in ("synthetic_camera", "node"))

    left = signal_once_ready(demo, started, stop)
    log = demo.log()
    assert demo.exit_code == code and "error" not in log and "Traceback" not in log, log[-3000:]
    assert "interrupted" in log and not left, (left, log[-3000:])


@pytest.mark.ros
def test_a_child_that_dies_early_is_one_clear_error(tmp_path: Path, demo_env: dict[str, str]) -> None:
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    demo = vla_cache("demo", "--live", "--source", "synthetic", "--model", str(not_a_model), "--no-record",
                     env=demo_env, cwd=tmp_path)
    assert demo.returncode != 0
    errors = [line for line in demo.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, demo.stderr
    assert errors[0].startswith("vla-cache demo: error: vla_cache_node exited early"), demo.stderr
    assert "no config.json" in errors[0] and "Traceback" not in demo.stdout + demo.stderr


def test_offline_demo(tmp_path: Path, demo_env: dict[str, str]) -> None:
    demo = vla_cache("demo", "--offline", "--model", "tiny", "--steps", "2", "--modes", "off,fixed:0.5",
                     "--threads", "1", env=demo_env, cwd=tmp_path)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "decoder layers, 1 torch threads)" in demo.stdout  # --threads applies (it was ignored)
    assert demo.stdout.count("[   fixed:0.5] step") == 2
    # interleaved: frame 0 through every mode, then frame 1
    steps = re.findall(r"^\[\s*(\S+)\] step (\d)", demo.stdout, re.MULTILINE)
    assert steps == [("off", "0"), ("fixed:0.5", "0"), ("off", "1"), ("fixed:0.5", "1")], demo.stdout
    summary = demo.stdout.split("actions equal to first")[1].split()
    assert summary[0] == "off" and "fixed:0.5" in summary


@pytest.fixture(scope="module")
def drafter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A drafter for the miniature checkpoint (random weights: it drafts, the verify keeps greedy)."""
    import torch

    from vla_cache_ros.cache.drafter import DrafterConfig, DrafterNet, save_drafter

    torch.manual_seed(0)
    return save_drafter(tmp_path_factory.mktemp("drafter") / "drafter",
                        DrafterNet(DrafterConfig(hidden_size=64, token_offset=31744, width=8)))


def test_offline_demo_decodes_speculatively_with_a_drafter(tmp_path: Path, demo_env: dict[str, str],
                                                            drafter_dir: Path) -> None:
    demo = vla_cache("demo", "--offline", "--model", "tiny", "--steps", "2", "--modes", "off,fixed:0.5",
                     "--decode", "speculative", "--drafter", str(drafter_dir), env=demo_env, cwd=tmp_path)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert f"each mode also decodes speculatively; draft: learned drafter {drafter_dir}\n" in demo.stdout
    steps = re.findall(r"^\[\s*([^\]]+)\] step (\d)", demo.stdout, re.MULTILINE)
    runs = ["off", "off speculative", "fixed:0.5", "fixed:0.5 speculative"]
    assert steps == [(run, frame) for frame in "01" for run in runs], demo.stdout
    summary = demo.stdout.split("actions equal to first\n")[1]
    rows = {line.rsplit(None, 5)[0]: line.split()[-5:] for line in summary.splitlines() if line.strip()}
    assert list(rows) == runs, demo.stdout
    assert rows["off"][-2:] == ["6.00", "100%"]  # greedy: six decode passes after the prefill
    assert rows["off speculative"][-1] == "100%"  # the verified draft keeps the greedy actions


def test_a_broken_drafter_is_one_error_before_any_child_starts(tmp_path: Path, demo_env: dict[str, str]) -> None:
    (tmp_path / "drafter").mkdir()
    (tmp_path / "drafter" / "drafter.json").write_text("{")
    (tmp_path / "drafter" / "drafter.safetensors").write_bytes(b"")
    for options in ([], ["--live", "--source", "synthetic", "--no-record"], ["--offline", "--steps", "1"]):
        demo = vla_cache("demo", "--model", "tiny", "--decode", "speculative", "--drafter", str(tmp_path / "drafter"),
                         "--log-dir", str(tmp_path / "logs"), "--out", str(tmp_path / "out"), *options,
                         env=demo_env, cwd=tmp_path)
        assert demo.returncode == 2, demo.stdout + demo.stderr
        errors = [line for line in demo.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and "Traceback" not in demo.stdout, demo.stdout + demo.stderr
        assert errors[0].startswith("vla-cache demo: error: drafter ")
        assert f"{tmp_path / 'drafter' / 'drafter.json'}: not readable JSON" in errors[0], errors
        assert not (tmp_path / "logs").exists() and not (tmp_path / "out").exists()


def test_a_broken_cache_policy_is_one_error_before_any_child_starts(tmp_path: Path,
                                                                     demo_env: dict[str, str]) -> None:
    """Episodes and --live read --cache-policy before any node starts (the node found it, its log's
    tail the error, after the simulator had started); --offline reads it before the first frame."""
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cache_policy.json").write_text("{")
    (tmp_path / "bad" / "cache_policy.safetensors").write_bytes(b"")
    for options in ([], ["--live", "--source", "synthetic", "--no-record"], ["--offline", "--steps", "1"]):
        demo = vla_cache("demo", "--model", "tiny", "--cache-policy", str(tmp_path / "bad"),
                         "--log-dir", str(tmp_path / "logs"), "--out", str(tmp_path / "out"), *options,
                         env=demo_env, cwd=tmp_path)
        assert demo.returncode == 2, demo.stdout + demo.stderr
        errors = [line for line in demo.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and "Traceback" not in demo.stdout, demo.stdout + demo.stderr
        assert errors[0].startswith("vla-cache demo: error: cache policy "), errors
        assert f"{tmp_path / 'bad' / 'cache_policy.json'}: not readable JSON" in errors[0], errors
        assert not (tmp_path / "logs").exists() and not (tmp_path / "out").exists()


def test_node_command_hands_the_node_its_decode_and_drafter() -> None:
    """The demo's ``-p`` overrides as the node reads them (values are YAML on the command line)."""
    import yaml

    from vla_cache_ros.apps import demo
    from vla_cache_ros.runtime.config import NodeConfig

    def node_config(command: list[str]) -> NodeConfig:
        pairs = [command[i + 1].split(":=", 1) for i, word in enumerate(command) if word == "-p"]
        return NodeConfig.from_values({name: yaml.safe_load(text) for name, text in pairs})

    node = node_config(demo.node_command(Path("config.yaml"), Path("/model"), "", actuation=True,
                                         drafter="/drafters/d", decode="speculative"))
    assert node.model.drafter_path == "/drafters/d" and node.cache.decode == "speculative"
    plain = node_config(demo.node_command(Path("config.yaml"), Path("/model"), "", actuation=True))
    assert plain.model.drafter_path == "" and plain.cache.decode == "greedy"  # the config's (the defaults here)
