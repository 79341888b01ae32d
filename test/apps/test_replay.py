"""Offline comparison of cache modes on synthetic bags with the miniature checkpoint."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from vla_cache_ros.apps.replay import ReplayOptions, parse_modes, reuse_mask, run_replay
from vla_cache_ros.errors import BagError, ConfigurationError
from vla_cache_ros.replay.synthetic_bag import SyntheticBagSpec, synthetic_action, write_synthetic_bag
from vla_cache_ros.synthetic import SyntheticScene

pytest.importorskip("torch")
FRAMES = 6
MODES = "off,fixed:0.0,fixed:0.75,vla_cache"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vla_cache_ros.models.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory):
    spec = SyntheticBagSpec(num_frames=FRAMES, height=60, width=80, commands=True)
    return write_synthetic_bag(tmp_path_factory.mktemp("bags") / "with_commands", "mcap", spec)


def _options(bag_path: Path, model_dir: Path, **overrides) -> ReplayOptions:
    fields = dict(bag=bag_path, model=str(model_dir), modes=MODES, unnorm_key="tiny_sim", progress=False)
    return ReplayOptions(**{**fields, **overrides})


def test_replay_is_deterministic_exact_at_ratio_zero_and_writes_outputs(bag, model_dir: Path, tmp_path: Path) -> None:
    report = run_replay(_options(bag.path, model_dir, out=tmp_path / "out"), log=lambda _: None)
    again = run_replay(_options(bag.path, model_dir, plots=False), log=lambda _: None)

    # deterministic: the same actions and action tokens, step by step
    assert [(s.mode, s.frame_index, s.action, s.action_tokens, s.reused_tokens) for s in report.steps] == \
        [(s.mode, s.frame_index, s.action, s.action_tokens, s.reused_tokens) for s in again.steps]

    summaries = {mode.spec: mode for mode in report.modes}
    assert list(summaries) == MODES.split(",")
    assert report.frames == FRAMES and all(m.steps == FRAMES for m in summaries.values())
    assert report.instruction == "pick up the block"

    exact = summaries["fixed:0.0"]
    assert exact.token_agreement == 1.0 and exact.identical_action_fraction == 1.0
    assert exact.vs_off.l2_mean == 0.0 and exact.vs_off.max_abs_error == [0.0] * 7
    assert exact.mean_actual_ratio == 0.0 and exact.flops_ratio == pytest.approx(1.0)

    off = summaries["off"]
    assert off.speedup_total == 1.0 and off.vs_off is None and off.mean_actual_ratio == 0.0
    cached = summaries["fixed:0.75"]
    assert 0.5 < cached.mean_actual_ratio <= 0.75  # the first, cold step reuses nothing
    assert cached.flops_ratio < 0.95
    assert 0.0 <= cached.token_agreement <= 1.0 and len(cached.vs_off.max_abs_error) == 7
    for mode in summaries.values():
        assert np.isfinite(mode.speedup_total) and mode.speedup_total > 0
        assert np.isfinite(mode.speedup_prefill) and mode.speedup_prefill > 0
        assert set(mode.median_ms) == {"preprocess", "vision", "select", "prefill", "decode", "total"}
        assert mode.timed_steps == FRAMES - 1

    # against the commands recorded in the bag
    scene = SyntheticScene(height=60, width=80)
    recorded = np.array([synthetic_action(scene, i) for i in range(FRAMES)])
    actions = np.array([s.action for s in report.steps if s.mode == "off"])
    assert off.vs_recorded.steps == FRAMES
    assert off.vs_recorded.l2_mean == pytest.approx(np.linalg.norm(actions - recorded, axis=1).mean())
    assert off.vs_recorded.max_abs_error == pytest.approx(np.abs(actions - recorded).max(axis=0).tolist())

    out = tmp_path / "out"
    data = json.loads((out / "replay.json").read_text())
    assert [m["spec"] for m in data["modes"]] == MODES.split(",")
    assert len(data["steps"]) == FRAMES * 4 and "speedup_definition" in data
    with (out / "steps.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == FRAMES * 4
    assert {row["mode"] for row in rows} == set(MODES.split(","))
    assert float(rows[0]["command_6"]) == recorded[0][6]
    for name in ("actions.png", "ratio_latency.png", "reuse_overlay.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bag_without_joint_states_or_instruction(model_dir: Path, tmp_path: Path) -> None:
    spec = SyntheticBagSpec(num_frames=3, height=40, width=40, joint_states=False, instruction=None)
    info = write_synthetic_bag(tmp_path / "bare", "sqlite3", spec)
    with pytest.raises(ConfigurationError, match="--instruction"):
        run_replay(_options(info.path, model_dir, modes="off"))
    report = run_replay(_options(info.path, model_dir, modes="fixed:0.5", instruction="open the drawer"))
    assert [m.spec for m in report.modes] == ["off", "fixed:0.5"]  # off added as the baseline
    assert report.frames == 3 and report.topics["joint_states"] is None
    assert report.modes[1].vs_recorded is None


def test_frames_recorded_before_the_first_instruction_are_skipped(model_dir: Path, tmp_path: Path) -> None:
    """A live recording often starts before the instruction is published (the demo's bag did,
    now and then, and its printed replay command failed): those frames are skipped and counted,
    --max-frames counts replayed frames; a bag whose every frame precedes it names the fix."""
    spec = SyntheticBagSpec(num_frames=6, height=40, width=40, instruction_after_frames=2)
    info = write_synthetic_bag(tmp_path / "late", "mcap", spec)
    lines: list[str] = []
    report = run_replay(_options(info.path, model_dir, modes="fixed:0.5", max_frames=3), log=lines.append)
    assert report.frames == 3 and report.instruction == "pick up the block"
    assert any("skipped 2 frames recorded before the first message on /instruction" in line for line in lines)
    never = write_synthetic_bag(tmp_path / "never", "mcap", SyntheticBagSpec(num_frames=3, height=40, width=40,
                                                                             instruction_after_frames=3))
    with pytest.raises(BagError, match="all 3 camera frames .* come before the first message on /instruction; "
                                       "pass --instruction"):
        run_replay(_options(never.path, model_dir, modes="off"))
    assert run_replay(_options(never.path, model_dir, modes="off", instruction="open the drawer")).frames == 3


def test_missing_topic_and_unknown_mode_are_clear_errors(bag, model_dir: Path) -> None:
    with pytest.raises(BagError) as error:
        run_replay(_options(bag.path, model_dir, image_topic="/wrist/image_raw"))
    assert "/camera/image_raw" in str(error.value) and "sensor_msgs/msg/JointState" in str(error.value)
    with pytest.raises(ConfigurationError, match="'learned' is not available: no trained cache policy"):
        run_replay(_options(bag.path, model_dir, modes="off,learned"))
    with pytest.raises(ConfigurationError, match="unknown cache mode 'turbo'; available: off, fixed, vla_cache"):
        run_replay(_options(bag.path, model_dir, modes="off,turbo"))


def test_parse_modes() -> None:
    assert parse_modes("fixed:0.5,off") == [("off", "off", 0.0), ("fixed:0.5", "fixed", 0.5)]
    assert parse_modes("vla_cache:0.8") == [("off", "off", 0.0), ("vla_cache:0.8", "vla_cache", 0.8)]
    assert parse_modes("vla_cache")[0][0] == "off"
    with pytest.raises(ConfigurationError):
        parse_modes("off,off")
    with pytest.raises(ConfigurationError):
        parse_modes("fixed:half")


def test_reuse_mask_maps_patch_ids_to_the_frame() -> None:
    mask = reuse_mask(256, np.array([0, 255]), 32, 48)
    assert mask.shape == (32, 48)
    assert mask[:2, :3].all() and mask[-2:, -3:].all()
    assert mask.sum() == 2 * 2 * 3


def test_replay_command_line(bag, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from vla_cache_ros.apps.bag_commands import main

    code = main(["replay", str(bag.path), "--model", str(model_dir), "--modes", "off,fixed:0.5",
                 "--unnorm-key", "tiny_sim", "--out", str(tmp_path / "cli"), "--no-plots", "--no-progress",
                 "--max-frames", "3", "--joint-topic", "none"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "fixed:0.5" in printed and "speedup" in printed
    data = json.loads((tmp_path / "cli" / "replay.json").read_text())
    assert data["frames"] == 3 and data["topics"]["joint_states"] is None
    assert not (tmp_path / "cli" / "actions.png").exists()


def test_learned_mode_replays_with_a_cache_policy(bag, model_dir: Path, tmp_path: Path) -> None:
    import torch

    from vla_cache_ros.cache.learned import CachePolicyConfig, CacheSelectorNet, save_cache_policy
    from vla_cache_ros.errors import CacheModeError

    with pytest.raises(CacheModeError, match="no trained cache policy is loaded"):
        run_replay(_options(bag.path, model_dir, modes="off,learned:0.5", plots=False), log=lambda _: None)
    torch.manual_seed(0)
    policy = save_cache_policy(tmp_path / "cp", CacheSelectorNet(CachePolicyConfig(width=4)))
    report = run_replay(_options(bag.path, model_dir, modes="off,learned:0.5", plots=False, cache_policy=str(policy)),
                        log=lambda _: None)
    learned = [step for step in report.steps if step.mode == "learned:0.5"]
    assert len(learned) == FRAMES and all(step.reused_tokens <= 128 for step in learned)
    assert any(step.reused_tokens for step in learned[1:])


def test_a_broken_cache_policy_is_one_error_before_any_output(bag, model_dir: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    """replay loads --cache-policy in-process before the first frame: one line naming the file."""
    from vla_cache_ros.apps.bag_commands import main

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cache_policy.json").write_text("{")
    (tmp_path / "bad" / "cache_policy.safetensors").write_bytes(b"")
    code = main(["replay", str(bag.path), "--model", str(model_dir), "--modes", "off,learned:0.5",
                 "--unnorm-key", "tiny_sim", "--cache-policy", str(tmp_path / "bad"), "--out", str(tmp_path / "out"),
                 "--no-progress"])
    assert code == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and f"cache policy {tmp_path / 'bad' / 'cache_policy.json'}: not readable JSON" in \
        errors[0], errors
    assert not (tmp_path / "out").exists()


def test_speculative_decoding_replays_beside_greedy_with_the_same_tokens(bag, model_dir: Path, tmp_path: Path) -> None:
    from vla_cache_ros.errors import ConfigurationError

    report = run_replay(_options(bag.path, model_dir, modes="off,fixed:0.5", decodes="greedy,speculative",
                                 out=tmp_path / "out", plots=False), log=lambda _: None)
    summaries = {mode.spec: mode for mode in report.modes}
    assert list(summaries) == ["off", "off speculative", "fixed:0.5", "fixed:0.5 speculative"]
    for spec in ("off", "fixed:0.5"):
        greedy, speculative = summaries[spec], summaries[f"{spec} speculative"]
        assert greedy.decode == "greedy" and speculative.decode == "speculative"
        assert greedy.mean_decode_passes == 6 and speculative.mean_decode_passes < 6  # a random model repeats
        greedy_tokens = [s.action_tokens for s in report.steps if s.mode == spec]
        assert greedy_tokens == [s.action_tokens for s in report.steps if s.mode == f"{spec} speculative"]
    header = (tmp_path / "out" / "steps.csv").read_text().splitlines()[0].split(",")
    assert "decode_passes" in header and "accepted_draft_tokens" in header
    with pytest.raises(ConfigurationError, match="must start with greedy"):
        run_replay(_options(bag.path, model_dir, decodes="speculative"), log=lambda _: None)


def test_speculative_replay_drafts_with_a_drafter(bag, tmp_path: Path) -> None:
    """--drafter DIR drafts the speculative runs; without it a model directory's own drafter/ is
    found; 'none' falls back to the previous step's tokens. Tokens stay the greedy ones."""
    import torch

    from vla_cache_ros.cache.drafter import DrafterConfig, DrafterNet, save_drafter
    from vla_cache_ros.errors import CheckpointError
    from vla_cache_ros.models.tiny import make_tiny_checkpoint

    model_dir = make_tiny_checkpoint(tmp_path / "tiny", seed=0)
    torch.manual_seed(0)
    net = DrafterNet(DrafterConfig(hidden_size=64, token_offset=31744, width=8))
    save_drafter(tmp_path / "mine", net)
    lines: list[str] = []
    runs = {}
    for name, drafter in (("given", str(tmp_path / "mine")), ("own", None), ("none", "none")):
        if name == "own":
            save_drafter(model_dir / "drafter", net)
        report = run_replay(_options(bag.path, model_dir, modes="off", decodes="greedy,speculative", plots=False,
                                     drafter=drafter), log=lines.append)
        runs[name] = report
        greedy = [s.action_tokens for s in report.steps if s.mode == "off"]
        assert greedy == [s.action_tokens for s in report.steps if s.mode == "off speculative"]
    assert any(f"speculative draft by {tmp_path / 'mine'}" in line for line in lines)
    assert any(f"speculative draft by {model_dir / 'drafter'}" in line for line in lines)
    # The drafter drafts the first step too; the previous-step draft cannot.
    first = {name: next(s for s in report.steps if s.mode == "off speculative") for name, report in runs.items()}
    assert first["given"].decode_passes == first["own"].decode_passes
    assert first["none"].decode_passes == 6 and first["none"].accepted_draft_tokens == 0
    (model_dir / "drafter" / "drafter.safetensors").write_bytes(b"broken")
    with pytest.raises(CheckpointError, match="drafter .*safetensors: not a readable safetensors file"):
        run_replay(_options(bag.path, model_dir, modes="off", decodes="greedy,speculative"), log=lambda _: None)


def test_default_output_directory_names_the_bag_and_the_model() -> None:
    """From a new user's trial: replays of one bag with two models wrote to the same
    out/replay/<bag> and the second overwrote the first."""
    from vla_cache_ros.apps.bag_commands import default_replay_out
    from vla_cache_ros.models.catalog import DEFAULT_MODEL

    assert default_replay_out("bags/run1", "/models/policy_a/") == Path("out/replay/run1/policy_a")
    assert default_replay_out("bags/run1", "/models/policy_b") != default_replay_out("bags/run1", "/models/policy_a")
    assert default_replay_out("run1.mcap", None) == Path("out/replay/run1.mcap") / DEFAULT_MODEL
