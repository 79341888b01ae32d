"""sim-eval's model, cache policy and drafter options: resolved (the cache policy and the drafter
read) before anything starts."""
from __future__ import annotations

from pathlib import Path

import pytest

from vla_cache_ros.apps.cli import main as cli_main


def test_sim_eval_refuses_an_unknown_model_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["sim-eval", "--model", "no_such_model", "--episodes", "1", "--out", str(tmp_path / "eval")])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "'no_such_model' is neither a checkpoint directory nor a known name" in error[0]
    assert not (tmp_path / "eval").exists()  # refused before any process or report


def _eval_config(*options: str):
    from vla_cache_ros.apps.cli import build_parser
    from vla_cache_ros.apps.sim_commands import eval_config

    return eval_config(build_parser().parse_args(["sim-eval", "--episodes", "1", *options]))


def test_sim_eval_hands_the_node_the_drafter_it_resolved(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """--drafter DIR, else the model directory's own drafter/, else none; --decode with it; a
    drafter with greedy decoding is no error."""
    import shutil

    import torch

    from vla_cache_ros.cache.drafter import DrafterConfig, DrafterNet, save_drafter

    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model)
    torch.manual_seed(0)
    net = DrafterNet(DrafterConfig(hidden_size=64, token_offset=31744, width=8))
    given = save_drafter(tmp_path / "given", net)
    config = _eval_config("--model", str(model), "--decode", "speculative", "--drafter", str(given))
    assert (config.decode, config.drafter_path) == ("speculative", str(given))
    assert _eval_config("--model", str(model), "--drafter", str(given)).drafter_path == str(given)  # greedy
    assert _eval_config("--model", str(model)).drafter_path == "none"  # the model has no drafter/
    save_drafter(model / "drafter", net)
    assert _eval_config("--model", str(model)).drafter_path == str(model / "drafter")
    assert _eval_config("--model", str(model), "--drafter", "none").drafter_path == "none"
    assert _eval_config("--modes", "expert", "--drafter", str(tmp_path / "missing")).drafter_path == ""  # no node


def test_sim_eval_refuses_a_broken_drafter_in_one_line(tmp_path: Path, tiny_checkpoint: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model)
    (tmp_path / "empty").mkdir()
    code = cli_main(["sim-eval", "--model", str(model), "--episodes", "1", "--decode", "speculative",
                     "--drafter", str(tmp_path / "empty"), "--out", str(tmp_path / "eval")])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"drafter {tmp_path / 'empty'}: drafter.json is missing" in error[0], error
    (model / "drafter").mkdir()  # the model's own drafter/, with unreadable files
    (model / "drafter" / "drafter.json").write_text("{")
    (model / "drafter" / "drafter.safetensors").write_bytes(b"broken")
    assert cli_main(["sim-eval", "--model", str(model), "--episodes", "1", "--out", str(tmp_path / "eval")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"{model / 'drafter' / 'drafter.json'}: not readable JSON" in error[0], error
    assert not (tmp_path / "eval").exists()  # refused before any process or report


def test_sim_eval_hands_the_node_the_cache_policy_it_resolved(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """--cache-policy DIR, else the model directory's own cache_policy/, else none: the node gets
    the directory sim-eval read (or ``none``), never a value it would resolve again."""
    import shutil

    import torch

    from vla_cache_ros.cache.learned import CachePolicyConfig, CacheSelectorNet, save_cache_policy

    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model)
    torch.manual_seed(0)
    net = CacheSelectorNet(CachePolicyConfig(width=4))
    given = save_cache_policy(tmp_path / "given", net)
    assert _eval_config("--model", str(model), "--cache-policy", str(given)).cache_policy_path == str(given)
    assert _eval_config("--model", str(model)).cache_policy_path == "none"  # the model has no cache_policy/
    save_cache_policy(model / "cache_policy", net)
    assert _eval_config("--model", str(model)).cache_policy_path == str(model / "cache_policy")
    assert _eval_config("--model", str(model), "--cache-policy", "none").cache_policy_path == "none"
    assert _eval_config("--modes", "expert", "--cache-policy", str(tmp_path / "missing")).cache_policy_path == ""


def test_sim_eval_refuses_a_broken_cache_policy_in_one_line(tmp_path: Path, tiny_checkpoint: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Found before any node starts (it was found by the node, as its log's tail, after the
    simulator and the node had started)."""
    import shutil

    from vla_cache_ros.cache.learned import CachePolicyConfig, CacheSelectorNet, save_cache_policy

    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cache_policy.json").write_text("{")
    (tmp_path / "bad" / "cache_policy.safetensors").write_bytes(b"broken")
    code = cli_main(["sim-eval", "--model", str(model), "--episodes", "1", "--cache-policy", str(tmp_path / "bad"),
                     "--out", str(tmp_path / "eval")])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"cache policy {tmp_path / 'bad' / 'cache_policy.json'}: not readable JSON" in error[0]
    own = save_cache_policy(model / "cache_policy", CacheSelectorNet(CachePolicyConfig(width=4)))
    (own / "cache_policy.safetensors").unlink()  # the model's own cache_policy/, its weights missing
    assert cli_main(["sim-eval", "--model", str(model), "--episodes", "1", "--out", str(tmp_path / "eval")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"cache policy {own}: cache_policy.safetensors is missing" in error[0], error
    assert not (tmp_path / "eval").exists()  # refused before any process or report


def test_sim_eval_hands_the_node_its_lm_head_and_records_it(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """--lm-head reaches the node's lm_head parameter and the report's settings and notes (the
    step latency depends on it)."""
    from vla_cache_ros.sim.evaluate import method_notes

    assert _eval_config("--model", str(tiny_checkpoint)).lm_head == "screened"
    config = _eval_config("--model", str(tiny_checkpoint), "--lm-head", "full")
    assert config.lm_head == "full"
    assert "the full LM head" in method_notes(config)["lm_head"]
    with pytest.raises(SystemExit):
        _eval_config("--model", str(tiny_checkpoint), "--lm-head", "fast")


@pytest.mark.ros
@pytest.mark.sim
@pytest.mark.timeout(120)
@pytest.mark.parametrize("starting", ["vla_cache_ros.ros.sim_node", "vla_cache_ros.ros.node"])
def test_sigterm_while_sim_eval_starts_stops_its_nodes(starting: str, tmp_path: Path, tiny_checkpoint: Path) -> None:
    """Regression: sim-eval had no SIGTERM handler, so a SIGTERM (`kill`, a scheduler) while it
    started its nodes killed it at once and left sim_arm_node (and vla_cache_node) running,
    orphaned. Sent once ``starting`` runs as a child: while the simulator starts (mode expert,
    no node), or while the node loads the model (mode off). It now stops them and exits 143."""
    import signal

    from test.conftest import signal_once_ready
    from vla_cache_ros.subprocesses import python_module, start_child

    modes = "expert" if starting.endswith("sim_node") else "off"
    sim_eval = start_child("sim_eval", python_module(
        "vla_cache_ros.apps.cli", "sim-eval", "--model", str(tiny_checkpoint), "--modes", modes, "--episodes", "1",
        "--warmup-episodes", "0", "--num-threads", "1", "--out", str(tmp_path / "eval"), "--quiet"), tmp_path)
    left = signal_once_ready(sim_eval, lambda children: any(f"-m {starting} " in command
                                                            for command in children.values()), signal.SIGTERM)
    log = sim_eval.log()
    assert sim_eval.exit_code == 128 + signal.SIGTERM and "Traceback" not in log, log[-3000:]
    assert not left, f"sim-eval left its nodes running: {left}"

