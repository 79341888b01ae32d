"""Safety guard: clamps keep direction, never push further out, and are counted per kind."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vla_cache_ros.control.safety import CLAMP_KINDS, SafetyGuard, SafetyLimits
from vla_cache_ros.errors import InvalidInputError


def test_unlimited_guard_passes_through_and_counts_nothing() -> None:
    guard = SafetyGuard()
    delta = [0.3, -0.2, 0.1, 0.5, 0.0, -0.4]
    np.testing.assert_array_equal(guard.limit_ee_delta(delta), delta)
    np.testing.assert_array_equal(guard.limit_joint_targets([5.0, -5.0], [0.0, 0.0]), [5.0, -5.0])
    assert guard.clamp_counts == {kind: 0 for kind in CLAMP_KINDS}


def test_translation_and_rotation_norms_clamped_keeping_direction() -> None:
    guard = SafetyGuard(SafetyLimits(max_translation_m=0.01, max_rotation_rad=0.1))
    result = guard.limit_ee_delta([0.03, 0.04, 0.0, 0.0, 0.0, 0.2])
    np.testing.assert_allclose(result[:3], [0.006, 0.008, 0.0])
    np.testing.assert_allclose(result[3:], [0.0, 0.0, 0.1])
    guard.limit_ee_delta([0.001, 0.0, 0.0, 0.0, 0.0, 0.0])  # within limits
    assert guard.clamp_counts["translation"] == 1
    assert guard.clamp_counts["rotation"] == 1


def test_workspace_box_blocks_leaving_but_allows_returning() -> None:
    limits = SafetyLimits(workspace_min=(0.0, -0.5, 0.0), workspace_max=(1.0, 0.5, 1.0))
    guard = SafetyGuard(limits)
    inside = np.array([0.95, 0.0, 0.5])
    result = guard.limit_ee_delta([0.1, 0.1, 0.0, 0.0, 0.0, 0.0], inside)
    np.testing.assert_allclose(result[:3], [0.05, 0.1, 0.0])
    assert guard.clamp_counts["workspace"] == 1
    # Already outside on x: moving further out is stopped, moving back in is allowed.
    outside = np.array([1.2, 0.0, 0.5])
    np.testing.assert_allclose(guard.limit_ee_delta([0.1, 0, 0, 0, 0, 0], outside)[:3], 0.0)
    np.testing.assert_allclose(guard.limit_ee_delta([-0.1, 0, 0, 0, 0, 0], outside)[:3],
                               [-0.1, 0.0, 0.0])
    assert guard.clamp_counts["workspace"] == 2


def test_workspace_then_norm_both_hold() -> None:
    limits = SafetyLimits(max_translation_m=0.05, workspace_min=(0, 0, 0),
                          workspace_max=(1, 1, 1))
    guard = SafetyGuard(limits)
    rng = np.random.default_rng(0)
    for _ in range(200):
        start = rng.uniform(-0.2, 1.2, 3)
        delta = np.concatenate([rng.normal(0, 0.2, 3), np.zeros(3)])
        safe = guard.limit_ee_delta(delta, start)[:3]
        assert np.linalg.norm(safe) <= 0.05 + 1e-12
        end = start + safe
        assert np.all(end >= np.minimum(0.0, start) - 1e-12)
        assert np.all(end <= np.maximum(1.0, start) + 1e-12)


def test_workspace_without_position_zeroes_translation() -> None:
    guard = SafetyGuard(SafetyLimits(workspace_min=(0, 0, 0), workspace_max=(1, 1, 1)))
    result = guard.limit_ee_delta([0.1, 0.0, 0.0, 0.0, 0.2, 0.0])
    np.testing.assert_allclose(result, [0, 0, 0, 0, 0.2, 0])
    assert guard.clamp_counts["workspace_unknown"] == 1


def test_joint_limits_and_delta() -> None:
    limits = SafetyLimits(max_joint_delta_rad=0.1, joint_lower=(-1.0, -1.0),
                          joint_upper=(1.0, 1.0))
    guard = SafetyGuard(limits)
    measured = np.array([0.95, 0.0])
    result = guard.limit_joint_targets([2.0, 0.05], measured)
    np.testing.assert_allclose(result, [1.0, 0.05])
    assert guard.clamp_counts == {**{k: 0 for k in CLAMP_KINDS}, "joint_limit": 1}
    result = guard.limit_joint_targets([0.0, 0.5], measured)
    np.testing.assert_allclose(result, [0.85, 0.1])
    assert guard.clamp_counts["joint_delta"] == 1
    # Measured beyond a limit: holding there is allowed, going further out is not.
    np.testing.assert_allclose(guard.limit_joint_targets([1.3, 0.0], [1.2, 0.0]), [1.2, 0.0])
    guard.reset_counts()
    assert sum(guard.clamp_counts.values()) == 0


@pytest.mark.parametrize("kwargs, fragment", [
    ({"max_translation_m": 0.0}, "max_translation_m must be > 0"),
    ({"max_rotation_rad": math.nan}, "max_rotation_rad"),
    ({"joint_lower": (0.0,), "joint_upper": (1.0, 1.0)}, "joint_lower has 1 values"),
    ({"joint_lower": (1.0, -1.0), "joint_upper": (0.0, 1.0)},
     "joint_lower [1, -1] must not exceed joint_upper [0, 1] (joint indices [0])"),
    ({"joint_upper": (0.0, math.inf)}, "joint_upper contains non-finite"),
    ({"workspace_min": (0, 0, 0), "workspace_max": (1, 0, 1)},
     "workspace_min [0, 0, 0] must be below workspace_max [1, 0, 1] on every axis (not on y)"),
    ({"workspace_min": (0, 0), "workspace_max": (1, 1)}, "workspace_min must have 3"),
    ({"workspace_max": (1, 1)}, "workspace_max must have 3"),
])
def test_invalid_limits_rejected(kwargs: dict, fragment: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        SafetyLimits(**kwargs)
    assert fragment in str(info.value)


def test_guard_rejects_bad_inputs() -> None:
    guard = SafetyGuard(SafetyLimits(joint_lower=(0.0,), joint_upper=(1.0,)))
    with pytest.raises(InvalidInputError, match="EE delta contains non-finite"):
        guard.limit_ee_delta([math.nan, 0, 0, 0, 0, 0])
    with pytest.raises(InvalidInputError, match="limits are configured for 1 joints but the command "
                                                "has 2"):
        guard.limit_joint_targets([0.5, 0.5], [0.5, 0.5])
    with pytest.raises(InvalidInputError, match="measured joint positions must have 1"):
        guard.limit_joint_targets([0.5], [0.5, 0.5])


def test_one_sided_limits_are_valid() -> None:
    """rqt sets one parameter per request: each side of a pair is meaningful alone."""
    floor = SafetyLimits(workspace_min=(0.0, -1.0, 0.1))
    assert floor.has_workspace and floor.workspace_max is None
    assert SafetyLimits(workspace_max=(1.0, 1.0, 1.0)).has_workspace
    assert SafetyLimits(joint_lower=(-1.0, -2.0)).has_joint_limits
    assert SafetyLimits(joint_upper=(1.0, 2.0)).has_joint_limits
    assert not SafetyLimits().has_workspace and not SafetyLimits().has_joint_limits


def test_workspace_with_only_a_minimum_blocks_going_below_it_only() -> None:
    guard = SafetyGuard(SafetyLimits(workspace_min=(0.0, -0.5, 0.1)))
    start = np.array([0.2, 0.0, 0.12])
    # Down by 5 cm would end below the floor (z 0.1): clipped to the floor.
    np.testing.assert_allclose(guard.limit_ee_delta([0, 0, -0.05, 0, 0, 0], start)[:3],
                               [0.0, 0.0, -0.02])
    assert guard.clamp_counts["workspace"] == 1
    # Far up and far out in +x / +y: no maximum, nothing clipped.
    np.testing.assert_allclose(guard.limit_ee_delta([5.0, 5.0, 5.0, 0, 0, 0], start)[:3],
                               [5.0, 5.0, 5.0])
    assert guard.clamp_counts["workspace"] == 1
    # Already below the floor: may not go further down, may come back up.
    below = np.array([0.2, 0.0, 0.05])
    np.testing.assert_allclose(guard.limit_ee_delta([0, 0, -0.01, 0, 0, 0], below)[:3], 0.0)
    np.testing.assert_allclose(guard.limit_ee_delta([0, 0, 0.01, 0, 0, 0], below)[:3],
                               [0, 0, 0.01])
    # Still needs the EE position to apply.
    np.testing.assert_allclose(guard.limit_ee_delta([0.1, 0, 0, 0, 0, 0])[:3], 0.0)
    assert guard.clamp_counts["workspace_unknown"] == 1


def test_workspace_with_only_a_maximum() -> None:
    guard = SafetyGuard(SafetyLimits(workspace_max=(1.0, 1.0, 0.5)))
    start = np.array([0.0, 0.0, 0.45])
    np.testing.assert_allclose(guard.limit_ee_delta([-3, -3, 0.1, 0, 0, 0], start)[:3],
                               [-3.0, -3.0, 0.05])


def test_one_sided_joint_limits_clamp_only_that_side() -> None:
    guard = SafetyGuard(SafetyLimits(joint_lower=(-1.0, -1.0)))
    np.testing.assert_allclose(guard.limit_joint_targets([-2.0, 5.0], [0.0, 0.0]), [-1.0, 5.0])
    guard = SafetyGuard(SafetyLimits(joint_upper=(1.0, 1.0)))
    np.testing.assert_allclose(guard.limit_joint_targets([-2.0, 5.0], [0.0, 0.0]), [-2.0, 1.0])
    assert guard.clamp_counts["joint_limit"] == 1
    with pytest.raises(InvalidInputError, match="upper limits are configured for 2 joints"):
        guard.limit_joint_targets([0.0] * 3, [0.0] * 3)
