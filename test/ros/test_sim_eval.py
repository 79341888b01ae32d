"""sim-eval end to end: the real vla_cache_node (miniature checkpoint), switched between cache modes
live, drives sim_arm_node over DDS."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vla_cache_ros.apps.cli import main as cli_main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # In a child process: importing triton (via torch / timm) into a process that has already
    # rendered with Mesa's EGL (the simulator tests) crashes it (conflicting LLVM builds).
    path = tmp_path_factory.mktemp("tiny") / "model"
    subprocess.run([sys.executable, "-m", "vla_cache_ros.apps.cli", "make-tiny", str(path)], check=True,
                   capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return path


def test_a_short_closed_loop_run_completes_and_reports(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    cache_policy = tmp_path / "cache_policy"  # made in a child process, as the checkpoint (see above)
    script = ("import sys, torch; from vla_cache_ros.cache.learned import *; torch.manual_seed(0); "
              "save_cache_policy(sys.argv[1], CacheSelectorNet(CachePolicyConfig(width=4)))")
    subprocess.run([sys.executable, "-c", script, str(cache_policy)], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    code = cli_main(["sim-eval", "--model", str(checkpoint), "--unnorm-key", "tiny_sim",
                     "--modes", "off,fixed:0.5,learned:0.5,expert", "--cache-policy", str(cache_policy),
                     "--episodes", "1", "--families", "touch",
                     "--episode-timeout", "2", "--num-threads", "1", "--warmup-steps", "1",
                     "--out", str(out), "--quiet"])
    assert code == 0
    document = json.loads((out / "results.json").read_text())
    off, fixed, learned, expert = (document["summary"][label]
                                   for label in ("off", "fixed:0.5", "learned:0.5", "expert"))
    # The learned mode ran on the node with the cache policy it was given, under its 0.5 cap.
    assert learned["inference_steps"] >= 3 and learned["cache_ratio_mean"] <= 0.5
    # One node served both cache modes, switched live (warm-up round, then the counted round):
    # the policy really ran, and each mode kept only its own steps -- none reused in off, about
    # half in fixed:0.5.
    assert (out / "logs" / "vla_cache_node.yaml").exists()
    assert fixed["inference_steps"] >= 3 and fixed["latency_ms_p50"] > 0 and fixed["latency_steps"] >= 2
    assert 0.2 < fixed["cache_ratio_mean"] <= 0.5 and off["cache_ratio_mean"] == 0.0
    assert set(fixed["stage_latency_ms"]) == {"preprocess", "vision", "select", "prefill", "decode", "total"}
    assert fixed["speedup_pairs"] == 1 and fixed["speedup_vs_off"] > 0
    assert fixed["overall"]["episodes"] == 1 and document["episodes"][0]["family"] == "touch"
    assert sorted(e["mode"] for e in document["episodes"]) == ["expert", "fixed:0.5", "learned:0.5", "off"]
    assert document["warmup_episodes"] == 1 and "first 1 inference step(s)" in document["method"]["warmup"]
    # The scripted expert, through the same topics, solves the same episode.
    assert expert["overall"]["successes"] == 1 and expert["latency_ms_p50"] is None
    assert (out / "results.md").exists() and (out / "success_by_family.png").exists()


def test_speculative_decoding_drafts_with_the_given_drafter(checkpoint: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """--decode speculative --drafter DIR: the node runs with that drafter and the report names it."""
    drafter = tmp_path / "drafter"  # made in a child process, as the checkpoint (see above)
    script = ("import sys, torch; from vla_cache_ros.cache.drafter import *; torch.manual_seed(0); "
              "save_drafter(sys.argv[1], DrafterNet(DrafterConfig(hidden_size=64, token_offset=31744, width=8)))")
    subprocess.run([sys.executable, "-c", script, str(drafter)], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = tmp_path / "eval"
    code = cli_main(["sim-eval", "--model", str(checkpoint), "--unnorm-key", "tiny_sim", "--modes", "fixed:0.5",
                     "--decode", "speculative", "--drafter", str(drafter), "--episodes", "1", "--families", "touch",
                     "--episode-timeout", "2", "--num-threads", "1", "--warmup-episodes", "0",
                     "--warmup-steps", "1", "--out", str(out), "--quiet"])
    assert code == 0
    document = json.loads((out / "results.json").read_text())
    assert document["decode"] == "speculative" and document["summary"]["fixed:0.5"]["inference_steps"] >= 2
    assert document["method"]["decode"].endswith(f"draft: learned drafter {drafter}")
    assert f"draft: learned drafter {drafter}" in capsys.readouterr().out
    node_log = (out / "logs" / "vla_cache_node.log").read_text()
    assert f"learned drafter: {drafter}" in node_log and "Traceback" not in node_log


def test_a_failed_start_leaves_no_simulator_behind(tmp_path: Path) -> None:
    from vla_cache_ros.errors import EvalError
    from vla_cache_ros.ros.sim_eval_client import RosEpisodeRunner
    from vla_cache_ros.sim.evaluate import EvalConfig, parse_modes

    config = EvalConfig(modes=parse_modes("expert"), episodes=1, out_dir=tmp_path, startup_timeout_s=0.01)
    runner = RosEpisodeRunner(config, log_dir=tmp_path / "logs")
    with pytest.raises(EvalError, match="timed out .* waiting for the simulator's first episode status"):
        runner.__enter__()
    assert runner._sim is not None and not runner._sim.alive()


def test_the_node_is_started_with_the_decode_and_the_drafter_of_the_evaluation(tmp_path: Path) -> None:
    """What sim-eval writes into the node's parameter file is read by the node's own config as
    the evaluation's decode setting, drafter and cache policy (the node then loads them)."""
    from vla_cache_ros.ros.sim_eval_client import RosEpisodeRunner
    from vla_cache_ros.runtime.config import NodeConfig
    from vla_cache_ros.sim.evaluate import EvalConfig, parse_modes

    config = EvalConfig(modes=parse_modes("off,fixed:0.5"), episodes=1, out_dir=tmp_path, model_path=tmp_path,
                        decode="speculative", drafter_path=str(tmp_path / "drafter"), cache_policy_path="none",
                        lm_head="full")
    runner = RosEpisodeRunner(config, log_dir=tmp_path / "logs")
    node = NodeConfig.from_values(runner._policy_parameters(config.modes[1]))
    assert node.cache.decode == "speculative" and node.cache.mode == "fixed" and node.model.lm_head == "full"
    assert node.model.drafter_path == str(tmp_path / "drafter") and node.model.cache_policy_path == "none"
    greedy = NodeConfig.from_values(RosEpisodeRunner(
        EvalConfig(modes=config.modes, episodes=1, out_dir=tmp_path, model_path=tmp_path), tmp_path / "logs"
    )._policy_parameters(config.modes[0]))
    assert greedy.cache.decode == "greedy" and greedy.model.drafter_path == "" and greedy.model.lm_head == "screened"


@pytest.mark.timeout(120)
def test_the_simulator_ends_with_a_runner_killed_while_it_starts(tmp_path: Path) -> None:
    """Regression: the runner's nodes were started without die_with_parent, so when the
    evaluating process died before its clean-up had stopped them (a second signal during it, a
    kill), sim_arm_node ran on as an orphan. Now it gets SIGTERM when its parent dies."""
    import signal
    import time

    from test.conftest import descendants, still_running

    script = ("from pathlib import Path\n"
              "from vla_cache_ros.ros.sim_eval_client import RosEpisodeRunner\n"
              "from vla_cache_ros.sim.evaluate import EvalConfig, parse_modes\n"
              f"out = Path({str(tmp_path)!r})\n"
              "RosEpisodeRunner(EvalConfig(modes=parse_modes('expert'), episodes=1, out_dir=out,\n"
              "                            startup_timeout_s=600), log_dir=out / 'logs').__enter__()\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 60
        while parent.poll() is None and time.monotonic() < deadline and not children:
            children = {pid: command for pid, command in descendants(parent.pid).items() if "sim_node" in command}
            time.sleep(0.02)
        assert children, "sim_arm_node did not start"
        parent.send_signal(signal.SIGKILL)  # no clean-up at all
        parent.wait()
        deadline = time.monotonic() + 30
        while any(still_running(pid, command) for pid, command in children.items()) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = {pid: command for pid, command in children.items() if still_running(pid, command)}
    finally:
        parent.kill()
        for pid, command in children.items():
            if still_running(pid, command):
                os.kill(pid, signal.SIGKILL)
    assert not left, left
