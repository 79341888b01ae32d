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


def test_a_failed_start_leaves_no_simulator_behind(tmp_path: Path) -> None:
    from vla_cache_ros.errors import EvalError
    from vla_cache_ros.ros.sim_eval_client import RosEpisodeRunner
    from vla_cache_ros.sim.evaluate import EvalConfig, parse_modes

    config = EvalConfig(modes=parse_modes("expert"), episodes=1, out_dir=tmp_path, startup_timeout_s=0.01)
    runner = RosEpisodeRunner(config, log_dir=tmp_path / "logs")
    with pytest.raises(EvalError, match="timed out .* waiting for the simulator's first episode status"):
        runner.__enter__()
    assert runner._sim is not None and not runner._sim.alive()
