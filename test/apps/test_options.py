"""The pre-start checks of --drafter / --cache-policy (``apps.options``): a directory readable on
disk but trained for another model is refused against the model's config.json, in one line,
before any node, simulator or Ray starts (it was found by the node or the Ray replica after they
had started: the node's log tail, or "Deploying application vla_cache failed")."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vla_cache_ros.apps.cli import main as cli_main
from vla_cache_ros.apps.options import checked_cache_policy, checked_drafter
from vla_cache_ros.errors import CheckpointError

TINY_HIDDEN, TINY_ACTION_TOKEN = 64, 31744  # the miniature checkpoint (models.tiny)


def _drafter(directory: Path, **changes: int) -> Path:
    import torch

    from vla_cache_ros.cache.drafter import DrafterConfig, DrafterNet, save_drafter

    torch.manual_seed(0)
    settings = {"hidden_size": TINY_HIDDEN, "token_offset": TINY_ACTION_TOKEN, "width": 8, **changes}
    return save_drafter(directory, DrafterNet(DrafterConfig(**settings)))


def _cache_policy(directory: Path, **changes: int) -> Path:
    import torch

    from vla_cache_ros.cache.learned import CachePolicyConfig, CacheSelectorNet, save_cache_policy

    torch.manual_seed(0)
    return save_cache_policy(directory, CacheSelectorNet(CachePolicyConfig(width=4, **changes)))


def test_a_drafter_for_another_model_is_refused_against_the_model_config(tmp_path: Path,
                                                                         tiny_checkpoint: Path) -> None:
    fits = _drafter(tmp_path / "fits")
    assert checked_drafter(str(fits), tiny_checkpoint) == fits
    cases = {"hidden": ({"hidden_size": 32}, "hidden size 32"),
             "offset": ({"token_offset": 100}, "action bins from token 100"),
             "tokens": ({"num_visual": 64, "pool_grid": 2}, "64 visual tokens")}
    for name, (changes, wrong) in cases.items():
        directory = _drafter(tmp_path / name, **changes)
        with pytest.raises(CheckpointError, match=f"the drafter {directory} was trained for .*{wrong}") as raised:
            checked_drafter(str(directory), tiny_checkpoint)
        assert f"this model has {TINY_HIDDEN}, 256 and {TINY_ACTION_TOKEN}" in str(raised.value)
        assert checked_drafter(str(directory), None) == directory  # no model named: the files only
    model = tmp_path / "model"  # the model directory's own drafter/ is checked the same way
    shutil.copytree(tiny_checkpoint, model)
    _drafter(model / "drafter", hidden_size=32)
    with pytest.raises(CheckpointError, match="hidden size 32"):
        checked_drafter(None, model)
    assert checked_drafter("none", model) is None


def test_a_cache_policy_for_another_model_is_refused_against_the_model_config(tmp_path: Path,
                                                                              tiny_checkpoint: Path) -> None:
    fits = _cache_policy(tmp_path / "fits")
    assert checked_cache_policy(str(fits), tiny_checkpoint) == fits
    for name, changes, wrong in (("tokens", {"num_tokens": 64}, "64 tokens of a 224 px frame"),
                                 ("size", {"image_size": 448}, "256 tokens of a 448 px frame")):
        directory = _cache_policy(tmp_path / name, **changes)
        with pytest.raises(CheckpointError, match=f"the cache policy {directory} was trained for {wrong}; "
                                                  "this model has 256 tokens of 224 px"):
            checked_cache_policy(str(directory), tiny_checkpoint)
        assert checked_cache_policy(str(directory), None) == directory
    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model)
    _cache_policy(model / "cache_policy", num_tokens=64)
    with pytest.raises(CheckpointError, match="64 tokens"):
        checked_cache_policy(None, model)


def test_the_selector_refuses_the_same_model_at_its_first_step(tmp_path: Path) -> None:
    """The load-time check and the selector's own per-step check are one comparison."""
    import numpy as np

    from vla_cache_ros.cache.learned import load_learned_selector
    from vla_cache_ros.cache.selectors import SelectionContext
    from vla_cache_ros.errors import ConfigurationError

    selector = load_learned_selector(_cache_policy(tmp_path / "policy", num_tokens=64))
    problem = selector.mismatch(256, 224)
    assert problem is not None and str(tmp_path / "policy") in problem
    context = SelectionContext(frame=np.zeros((224, 224, 3), np.uint8), patches=np.zeros((256, 588), np.float32),
                               similarity=np.zeros(256, np.float32), ages=np.zeros(256, np.int64),
                               eligible=np.ones(256, bool), previous_attention=None, target_ratio=0.5,
                               num_layers=2)
    with pytest.raises(ConfigurationError) as raised:
        selector.select(context)
    assert str(raised.value) == problem


@pytest.mark.parametrize("command", [
    ["sim-eval", "--episodes", "1", "--decode", "speculative"],
    ["serve"],  # refused before Ray starts
])
def test_commands_refuse_a_drafter_for_another_model_in_one_line(command: list[str], tmp_path: Path,
                                                                 tiny_checkpoint: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    directory = _drafter(tmp_path / "drafter", hidden_size=32)
    code = cli_main([*command, "--model", str(tiny_checkpoint), "--drafter", str(directory),
                     *(["--out", str(tmp_path / "eval")] if command[0] == "sim-eval" else [])])
    assert code == 2
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and f"the drafter {directory} was trained for hidden size 32" in errors[0], errors
    assert "starting the policy server" not in captured.out and not (tmp_path / "eval").exists()


@pytest.mark.parametrize("command", [["sim-eval", "--episodes", "1"], ["serve"]])
def test_commands_refuse_a_cache_policy_for_another_model_in_one_line(command: list[str], tmp_path: Path,
                                                                      tiny_checkpoint: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    directory = _cache_policy(tmp_path / "policy", num_tokens=64)
    code = cli_main([*command, "--model", str(tiny_checkpoint), "--cache-policy", str(directory),
                     *(["--out", str(tmp_path / "eval")] if command[0] == "sim-eval" else [])])
    assert code == 2
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and f"the cache policy {directory} was trained for 64 tokens" in errors[0], errors
    assert "starting the policy server" not in captured.out and not (tmp_path / "eval").exists()


def test_a_policy_refuses_a_cache_policy_for_another_model_when_attached(tmp_path: Path,
                                                                         tiny_checkpoint: Path) -> None:
    """CachedVLAPolicy (node, bench, replay, server) refuses it at construction, naming the policy's
    directory, rather than at the first learned step."""
    from vla_cache_ros.models.vla import load_vla
    from vla_cache_ros.policy import CachedVLAPolicy

    tiny_model = load_vla(tiny_checkpoint)

    wrong = _cache_policy(tmp_path / "policy", num_tokens=64)
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'policy'}.*64 tokens of a 224 px frame"):
        CachedVLAPolicy(tiny_model, unnorm_key="tiny_sim", cache_policy=wrong)
    fits = _cache_policy(tmp_path / "fits")
    assert "learned" in CachedVLAPolicy(tiny_model, unnorm_key="tiny_sim", cache_policy=fits).available_modes()
