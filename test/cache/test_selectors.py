"""Selectors and bounded staleness (issue 3 §5 d-e): hand-built cases with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from vla_cache_ros.cache.selectors import (
    FixedRatioSelector,
    OffSelector,
    SelectionContext,
    VLACacheSelector,
    stable_descending,
)
from vla_cache_ros.cache.tokens import TokenStates, cosine_similarity, extract_patches
from vla_cache_ros.policy import CachedVLAPolicy
from vla_cache_ros.synthetic import SyntheticScene

N = 256


def context(similarity: np.ndarray, attention: np.ndarray | None = None, ratio: float = 1.0,
            eligible: np.ndarray | None = None) -> SelectionContext:
    n = similarity.shape[0]
    return SelectionContext(frame=np.zeros((224, 224, 3), np.uint8), patches=np.zeros((n, 588), np.float32),
                            similarity=similarity, ages=np.zeros(n, np.int64),
                            eligible=np.ones(n, bool) if eligible is None else eligible,
                            previous_attention=attention, target_ratio=ratio, num_layers=4)


def test_patch_layout_and_cosine_rule():
    frame = np.zeros((224, 224, 3), np.uint8)
    frame[14:28, 28:42] = [10, 20, 30]  # patch row 1, col 2 -> id 18
    patches = extract_patches(frame, N)
    assert patches.shape == (N, 588)
    assert np.count_nonzero(patches.any(axis=1)) == 1 and patches[18, :3].tolist() == [10, 20, 30]
    a = np.array([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    b = np.array([[2.0, 4.0, 4.0], [0.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    np.testing.assert_allclose(cosine_similarity(a, b), [18.0 / (3 * 6 + 1e-8), 0.0, 0.0])


def test_vla_cache_rule_hand_built():
    """(e) static = sim >= 0.996 (inclusive), top-130 most similar (ties -> lower id), minus top-120 attended."""
    similarity = np.full(N, 0.5)
    similarity[:200] = 1.0  # 200 static candidates, all tied
    similarity[210] = 0.996  # exactly at the threshold: static too, but ranks after the ties at 1.0
    attention = np.zeros(N)
    attention[50:170] = np.linspace(1.0, 0.5, 120)  # the 120 most relevant tokens
    chosen = VLACacheSelector().select(context(similarity, attention))
    np.testing.assert_array_equal(chosen, np.arange(0, 50))  # top-130 = 0..129 minus 50..169
    # Without attention (first step) the static top-130 is reused as is.
    np.testing.assert_array_equal(VLACacheSelector().select(context(similarity)), np.arange(130))
    # Threshold inclusive: a token at exactly 0.996 is static when few others are.
    few = np.full(N, 0.2)
    few[[7, 9]] = [0.996, 0.9959]
    np.testing.assert_array_equal(VLACacheSelector().select(context(few)), [7])
    # The cache ratio caps the static set, keeping the most similar.
    graded = np.linspace(1.0, 0.997, N)
    np.testing.assert_array_equal(VLACacheSelector().select(context(graded, ratio=10 / N)), np.arange(10))


def test_vla_cache_scales_top_k_with_token_count():
    n = 64  # 130 * 64/256 = 32.5 -> 32 static; 120 * 64/256 = 30 relevant
    similarity = np.ones(n)
    attention = np.zeros(n)
    attention[:30] = 1.0 + np.arange(30)
    chosen = VLACacheSelector().select(context(similarity, attention))
    np.testing.assert_array_equal(chosen, [30, 31])


def test_vla_cache_empty_set_is_normal():
    assert VLACacheSelector().select(context(np.full(N, 0.3))).size == 0
    assert VLACacheSelector().relevance_layer(4) == 3  # default layer 15 clamped to depth
    assert OffSelector().select(context(np.ones(N))).size == 0


def test_fixed_ratio_picks_most_static_eligible():
    similarity = np.linspace(0.0, 1.0, N)
    eligible = np.ones(N, bool)
    eligible[-10:] = False  # the 10 most similar are too old
    chosen = FixedRatioSelector().select(context(similarity, ratio=0.25, eligible=eligible))
    assert chosen.size == 64
    np.testing.assert_array_equal(chosen, np.arange(N - 10 - 64, N - 10))
    assert stable_descending(np.array([1.0, 2.0, 2.0, 0.0])).tolist() == [1, 2, 0, 3]


def test_slow_drift_is_refreshed_against_reference_patch():
    """(d) Each step changes a patch below the threshold, yet it is refreshed once it drifts."""
    rng = np.random.default_rng(0)
    base = rng.integers(60, 200, size=(224, 224, 3)).astype(np.float64)
    states = TokenStates(N)
    selector = VLACacheSelector(top_k_static=N, top_k_relevant=0)  # only the threshold decides
    direction = rng.normal(0.0, 1.0, size=(14, 14, 3))
    refreshed_at = []
    per_step_similarity = []
    previous = None
    for step in range(40):
        frame = base.copy()
        frame[0:14, 0:14] += 1.5 * step * direction  # token 0 drifts a little each step
        frame = np.clip(frame, 0, 255).astype(np.uint8)
        patches = extract_patches(frame, N)
        if previous is not None:
            per_step_similarity.append(cosine_similarity(patches[:1], previous[:1])[0])
        eligible = np.full(N, states.valid)
        reuse = selector.select(SelectionContext(frame, patches, states.similarity(patches), states.ages.copy(),
                                                 eligible, None, 1.0, 4))
        if states.valid and 0 not in reuse:
            refreshed_at.append(step)
        states.commit(patches, reuse)
        previous = patches
    assert min(per_step_similarity) >= 0.996  # no single step crosses the threshold
    assert len(refreshed_at) >= 2  # but drift against the reference patch does, repeatedly
    assert all(b - a > 1 for a, b in zip(refreshed_at, refreshed_at[1:])), (refreshed_at, per_step_similarity)


def test_max_token_age_forces_refresh(tiny_model):
    frame = SyntheticScene(seed=5).frame(0)
    policy = CachedVLAPolicy(tiny_model, mode="fixed", cache_ratio=1.0, unnorm_key="tiny_sim", max_token_age=3)
    reused = [policy.step(frame, "touch the yellow ball")[1].reused_tokens for _ in range(9)]
    assert reused == [0, 256, 256, 256, 0, 256, 256, 256, 0]
    policy.set_max_token_age(1)
    assert [policy.step(frame, "touch the yellow ball")[1].reused_tokens for _ in range(3)] == [256, 0, 256]


@pytest.mark.parametrize("mode", ["fixed", "vla_cache"])
def test_moving_object_tokens_are_recomputed(tiny_model, mode):
    scene = SyntheticScene(seed=2, speed_px=9.0)
    policy = CachedVLAPolicy(tiny_model, mode=mode, cache_ratio=0.75, unnorm_key="tiny_sim")
    policy.step(scene.frame(0), "touch the yellow ball")
    _, stats = policy.step(scene.frame(1), "touch the yellow ball")
    moved = np.flatnonzero(np.any(extract_patches(policy.model.preprocess(scene.frame(0)).model_input_rgb, N)
                                  != extract_patches(policy.model.preprocess(scene.frame(1)).model_input_rgb, N),
                                  axis=1))
    assert moved.size > 0
    assert not np.isin(moved, stats.reuse_indices).any()
