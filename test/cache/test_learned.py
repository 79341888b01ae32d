"""The learned cache's modules and its inference selector: inputs, files, the ratio cap, the
staleness guard, stochastic recovery and what the policy reports."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from vla_cache_ros.cache.learned import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CachePolicyConfig,
    CacheSelectorNet,
    LearnedSelector,
    load_cache_policy,
    load_learned_selector,
    motion_signal,
    reference_frame,
    save_cache_policy,
    selector_input,
)
from vla_cache_ros.cache.selectors import SelectionContext
from vla_cache_ros.cache.tokens import extract_patches
from vla_cache_ros.errors import CheckpointError, ConfigurationError
from vla_cache_ros.policy import CachedVLAPolicy
from vla_cache_ros.synthetic import SyntheticScene

N = 256


def textured(seed: int = 0, size: int = 224) -> np.ndarray:
    """A smooth random texture (flow needs gradients to track)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)


def net(seed: int = 0, **config) -> CacheSelectorNet:
    torch.manual_seed(seed)
    return CacheSelectorNet(CachePolicyConfig(**config)).eval()


def context(frame: np.ndarray, reference: np.ndarray | None, ratio: float,
            eligible: np.ndarray | None = None) -> SelectionContext:
    patches = extract_patches(frame, N)
    return SelectionContext(
        frame=frame, patches=patches, similarity=np.ones(N), ages=np.zeros(N, np.int64),
        eligible=np.ones(N, bool) if eligible is None else eligible, previous_attention=None,
        target_ratio=ratio, num_layers=2,
        reference_patches=None if reference is None else extract_patches(reference, N))


def test_bad_configs_are_refused_with_the_setting_named() -> None:
    for changes, message in [({"ratios": (0.5, 0.2)}, "ascending"), ({"ratios": (0.2, 1.5)}, r"\[0, 1\]"),
                             ({"motion": "raft"}, "unknown motion signal 'raft'"),
                             ({"recovery_probability": 1.0}, "recovery probability"),
                             ({"num_tokens": 200}, "square grid")]:
        with pytest.raises(ConfigurationError, match=message):
            CachePolicyConfig(**changes)


def test_reference_frame_puts_every_patch_back_in_place() -> None:
    frame = textured(1)
    np.testing.assert_array_equal(reference_frame(extract_patches(frame, N), 224), frame)


def test_motion_signals_see_change_and_nothing_else() -> None:
    frame = textured(2)
    assert motion_signal("frame_difference", frame, frame).shape == (224, 224, 1)
    assert not motion_signal("frame_difference", frame, frame).any()
    changed = frame.copy()
    changed[:14, :14] = 255 - changed[:14, :14]
    difference = motion_signal("frame_difference", changed, frame)[..., 0]
    assert difference[:14, :14].min() > 0 and not difference[14:, :].any()
    # DIS flow of a 7 px shift to the right reads about half a patch side in x.
    shifted = np.roll(frame, 7, axis=1)
    flow = motion_signal("flow", shifted, frame)
    assert flow.shape == (224, 224, 2)
    assert np.median(flow[40:-40, 40:-40, 0]) == pytest.approx(0.5, abs=0.1)
    assert abs(np.median(flow[40:-40, 40:-40, 1])) < 0.1
    with pytest.raises(ConfigurationError, match="differ"):
        motion_signal("flow", frame, frame[:112])


def test_network_shapes_and_saved_files_round_trip(tmp_path: Path) -> None:
    for motion, channels in (("frame_difference", 4), ("flow", 5)):
        module = net(motion=motion)
        inputs = selector_input(module.config, textured(3), textured(4))
        assert inputs.shape == (1, channels, 224, 224)
        scores, ratios = module(inputs)
        assert scores.shape == (1, N) and ratios.shape == (1, len(module.config.ratios))
        out = save_cache_policy(tmp_path / motion, module)
        loaded = load_cache_policy(out)
        assert loaded.config == module.config
        for mine, theirs in zip(module(inputs), loaded(inputs)):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
        assert not any(path.suffix in (".pt", ".pkl", ".bin") for path in out.iterdir())


def test_broken_cache_policies_are_checkpoint_errors(tmp_path: Path) -> None:
    good = save_cache_policy(tmp_path / "good", net())
    with pytest.raises(CheckpointError, match=f"cache policy {tmp_path / 'nowhere'}: no such directory"):
        load_cache_policy(tmp_path / "nowhere")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(CheckpointError, match=f"cache policy {tmp_path / 'a_file'}: is not a directory"):
        load_cache_policy(tmp_path / "a_file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="cache_policy.json is missing"):
        load_cache_policy(tmp_path / "empty")
    cases = {
        "not json": (CONFIG_FILE, b"{", "not readable JSON"),
        "foreign": (CONFIG_FILE, json.dumps({"format": "other"}).encode(), "format is not"),
        "bad setting": (CONFIG_FILE, None, "unknown motion signal"),
        "truncated weights": (WEIGHTS_FILE, b"\x00" * 10, "cache_policy.safetensors: not a readable safetensors file"),
        "garbage weights": (WEIGHTS_FILE, b"garbage" * 20, "cache_policy.safetensors: not a readable safetensors file"),
    }
    for name, (file, content, message) in cases.items():
        broken = tmp_path / name.replace(" ", "_")
        broken.mkdir()
        for part in (CONFIG_FILE, WEIGHTS_FILE):
            (broken / part).write_bytes((good / part).read_bytes())
        if content is None:
            document = json.loads((good / CONFIG_FILE).read_text())
            document["motion"] = "raft"
            content = json.dumps(document).encode()
        (broken / file).write_bytes(content)
        with pytest.raises(CheckpointError, match=message) as raised:
            load_cache_policy(broken)
        assert "do not fit" not in str(raised.value), raised.value
        if file == WEIGHTS_FILE:  # the message names the file, not only its directory
            assert f"{broken / WEIGHTS_FILE}: not a readable safetensors file" in str(raised.value)
    wider = save_cache_policy(tmp_path / "wider", net(width=8))
    (wider / WEIGHTS_FILE).write_bytes((good / WEIGHTS_FILE).read_bytes())
    with pytest.raises(CheckpointError, match="do not fit its config"):
        load_cache_policy(wider)


def test_selection_respects_the_cap_eligibility_and_the_lowest_scores() -> None:
    selector = LearnedSelector(net(), recovery_probability=0.0)
    frame, reference = textured(5), textured(5)
    scores, predicted = selector.scores(frame, reference)
    assert scores.shape == (N,) and np.all((scores >= 0) & (scores <= 1)) and predicted in selector.config.ratios
    for cap in (0.0, 0.2, 1.0):
        chosen = selector.select(context(frame, reference, cap))
        expected = round(min(predicted, cap) * N)
        assert len(chosen) == expected and list(chosen) == sorted(chosen)
        assert set(chosen) == set(np.argsort(scores, kind="stable")[:expected])  # lowest scores
        report = selector.last_report
        assert report.predicted_ratio == predicted and report.ratio_cap == cap and report.recovered_tokens == 0
    eligible = np.zeros(N, bool)
    eligible[::2] = True
    chosen = selector.select(context(frame, reference, 1.0, eligible))
    assert eligible[chosen].all()
    # No cache yet (first step, or after a reset): nothing reused, the prediction is unknown.
    assert selector.select(context(frame, None, 1.0)).size == 0 and np.isnan(selector.last_report.predicted_ratio)
    with pytest.raises(ConfigurationError, match="trained for 256 tokens"):
        selector.select(replace(context(frame, reference, 1.0), frame=frame[:112, :112]))


def test_stochastic_recovery_fires_at_its_rate_and_repeats_with_the_seed() -> None:
    module = net()
    ratios = torch.zeros(len(module.config.ratios))
    ratios[-1] = 10.0
    with torch.no_grad():  # always predict the largest ratio (0.9), so there is plenty to recover
        module.ratio_head[-1].weight.zero_()
        module.ratio_head[-1].bias.copy_(ratios)
    frame = textured(6)
    step = context(frame, frame, 1.0)

    def run(seed: int) -> tuple[list[np.ndarray], int]:
        selector = LearnedSelector(module, seed=seed, recovery_probability=0.1)
        sets = [selector.select(step) for _ in range(40)]
        return sets, sum(len(s) for s in sets)

    sets, reused = run(seed=3)
    due = 40 * round(0.9 * N)
    assert 1 - reused / due == pytest.approx(0.1, abs=0.02)  # 9216 draws: sd 0.003
    again, _ = run(seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(sets, again))
    other, _ = run(seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(sets, other))
    with pytest.raises(ConfigurationError, match="recovery probability"):
        LearnedSelector(module, recovery_probability=1.0)


def test_the_policy_runs_learned_mode_under_the_cap_and_the_staleness_guard(tiny_model, tmp_path: Path) -> None:
    selector = load_learned_selector(save_cache_policy(tmp_path / "cp", net()), seed=0, recovery_probability=0.0)
    policy = CachedVLAPolicy(tiny_model, mode="learned", cache_ratio=0.3, selectors={"learned": selector},
                             unnorm_key="tiny_sim", max_token_age=2)
    frames = list(SyntheticScene(seed=2, height=60, width=80).frames(5))
    stats = [policy.step(frame, "pick up the cube")[1] for frame in frames]
    assert stats[0].reused_tokens == 0 and np.isnan(stats[0].predicted_ratio)
    for step in stats:
        assert step.ratio_cap == 0.3 and step.recovered_tokens == 0
        assert step.reused_tokens <= round(0.3 * N)
    assert any(step.reused_tokens for step in stats[1:])
    # A token reused twice in a row (max_token_age 2) is recomputed at the next step.
    for earlier, middle, later in zip(stats, stats[1:], stats[2:]):
        twice = np.intersect1d(earlier.reuse_indices, middle.reuse_indices)
        assert not np.intersect1d(twice, later.reuse_indices).size
    # Other modes report no prediction.
    policy.set_mode("fixed")
    assert policy.step(frames[0], "pick up the cube")[1].predicted_ratio is None


def test_a_reset_restarts_the_recovery_draws(tiny_model, tmp_path: Path) -> None:
    module = net()
    with torch.no_grad():  # always the largest ratio, so recovery has tokens to draw from
        module.ratio_head[-1].weight.zero_()
        module.ratio_head[-1].bias.copy_(torch.arange(len(module.config.ratios), dtype=torch.float32))
    policy = CachedVLAPolicy(tiny_model, mode="learned", cache_ratio=1.0, unnorm_key="tiny_sim",
                             selectors={"learned": LearnedSelector(module, seed=1, recovery_probability=0.3)})
    frames = list(SyntheticScene(seed=4, height=60, width=80).frames(3))

    def episode() -> list[list[int]]:
        policy.reset()
        return [policy.step(frame, "pick up the cube")[1].reuse_indices.tolist() for frame in frames]

    first, second = episode(), episode()
    assert first == second and any(first[1:])  # the same draws in every episode
