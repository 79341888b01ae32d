"""Safety guard: per-step clamps, joint limits and a workspace box, with every clamp counted.

The guard sits between the policy's action and the arm. It never makes a command less safe:

- EE deltas: the workspace box is applied first (per axis, a step may not take the end effector
  further outside the box; a step that is already outside may move back in), then the
  translation and rotation norms are scaled down to their per-step maxima, keeping direction.
  Both constraint sets are convex and contain "no motion", so the result satisfies both.
- Joint targets: joint limits first (same "never further outside" rule relative to the measured
  position, so a slightly-out-of-range reading does not cause a jump), then each joint's step
  is clipped to ``max_joint_delta_rad`` around the measured position.

A clamp kind is counted once per step in which it changed the command. Counts are cumulative
since construction (or :meth:`SafetyGuard.reset_counts`) and reported on /diagnostics.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vla_cache_ros.control.validation import InvalidInputError, finite_vector

CLAMP_KINDS = ("translation", "rotation", "workspace", "workspace_unknown", "joint_delta",
               "joint_limit")
"""Every kind of clamp the guard counts (``workspace_unknown``: box set but EE position unknown,
so translation was zeroed)."""


@dataclass(frozen=True)
class SafetyLimits:
    """Limits applied to every command. ``inf`` / empty / None means "not limited".

    Attributes:
        max_translation_m: largest EE translation per policy step (Euclidean norm, metres).
        max_rotation_rad: largest EE rotation per step (norm of [droll, dpitch, dyaw], radians).
        max_joint_delta_rad: largest change of any joint target from its measured position.
        joint_lower / joint_upper: per-joint position limits (both empty or both one per joint).
        workspace_min / workspace_max: axis-aligned EE box in the command frame (3 values each,
            or both None).
    """

    max_translation_m: float = math.inf
    max_rotation_rad: float = math.inf
    max_joint_delta_rad: float = math.inf
    joint_lower: tuple[float, ...] = ()
    joint_upper: tuple[float, ...] = ()
    workspace_min: tuple[float, float, float] | None = None
    workspace_max: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        for name in ("max_translation_m", "max_rotation_rad", "max_joint_delta_rad"):
            value = float(getattr(self, name))
            if math.isnan(value) or value <= 0.0:
                raise InvalidInputError(f"{name} must be > 0 (inf = unlimited), got {value}")
            object.__setattr__(self, name, value)
        lower = tuple(finite_vector(self.joint_lower, "joint_lower"))
        upper = tuple(finite_vector(self.joint_upper, "joint_upper"))
        if len(lower) != len(upper):
            raise InvalidInputError(
                f"joint_lower has {len(lower)} values but joint_upper has {len(upper)}")
        bad = [i for i, (lo, hi) in enumerate(zip(lower, upper)) if lo > hi]
        if bad:
            raise InvalidInputError(f"joint_lower > joint_upper for joint indices {bad}")
        object.__setattr__(self, "joint_lower", lower)
        object.__setattr__(self, "joint_upper", upper)
        if (self.workspace_min is None) != (self.workspace_max is None):
            raise InvalidInputError("workspace_min and workspace_max must be set together")
        if self.workspace_min is not None and self.workspace_max is not None:
            low = finite_vector(self.workspace_min, "workspace_min", size=3)
            high = finite_vector(self.workspace_max, "workspace_max", size=3)
            if np.any(low >= high):
                raise InvalidInputError(
                    f"workspace_min {low.tolist()} must be below workspace_max {high.tolist()} "
                    "on every axis")
            object.__setattr__(self, "workspace_min", tuple(low))
            object.__setattr__(self, "workspace_max", tuple(high))

    @property
    def has_workspace(self) -> bool:
        """Whether a workspace box is configured."""
        return self.workspace_min is not None


def _scale_to_norm(vector: np.ndarray, max_norm: float) -> tuple[np.ndarray, bool]:
    """Scale ``vector`` down (keeping direction) so its norm is at most ``max_norm``."""
    norm = float(np.linalg.norm(vector))
    if norm <= max_norm:
        return vector, False
    return vector * (max_norm / norm), True


def _clip_no_further_out(start: np.ndarray, goal: np.ndarray, low: np.ndarray,
                         high: np.ndarray) -> tuple[np.ndarray, bool]:
    """Clip ``goal`` to the box, widened to include ``start`` so nothing moves further out."""
    clipped = np.clip(goal, np.minimum(low, start), np.maximum(high, start))
    return clipped, bool(np.any(clipped != goal))


class SafetyGuard:
    """Applies :class:`SafetyLimits` to EE deltas and joint targets and counts every clamp.

    Not thread-safe by itself; :class:`~vla_cache_ros.control.controller.Controller` serialises
    access.
    """

    def __init__(self, limits: SafetyLimits | None = None) -> None:
        self.limits = limits or SafetyLimits()
        self._counts = {kind: 0 for kind in CLAMP_KINDS}

    @property
    def clamp_counts(self) -> dict[str, int]:
        """Steps in which each clamp kind changed the command (a copy)."""
        return dict(self._counts)

    def reset_counts(self) -> None:
        """Set every clamp counter back to zero."""
        self._counts = {kind: 0 for kind in CLAMP_KINDS}

    def _count(self, kind: str, happened: bool) -> None:
        if happened:
            self._counts[kind] += 1

    def limit_ee_delta(self, delta: Sequence[float],
                       ee_position: Sequence[float] | None = None) -> np.ndarray:
        """Return a safe copy of a 6-D EE delta [dx, dy, dz, droll, dpitch, dyaw].

        ``ee_position`` (3 values, same frame as the box) is needed only when a workspace box
        is set; without it the translation is zeroed and ``workspace_unknown`` counted.
        """
        delta = finite_vector(delta, "EE delta", size=6)
        translation, rotation = delta[:3], delta[3:]
        limits = self.limits
        if limits.has_workspace:
            if ee_position is None:
                self._count("workspace_unknown", bool(np.any(translation != 0.0)))
                translation = np.zeros(3)
            else:
                start = finite_vector(ee_position, "EE position", size=3)
                goal, clipped = _clip_no_further_out(
                    start, start + translation, np.asarray(limits.workspace_min),
                    np.asarray(limits.workspace_max))
                self._count("workspace", clipped)
                if clipped:
                    translation = goal - start
        translation, clamped = _scale_to_norm(translation, limits.max_translation_m)
        self._count("translation", clamped)
        rotation, clamped = _scale_to_norm(rotation, limits.max_rotation_rad)
        self._count("rotation", clamped)
        return np.concatenate([translation, rotation])

    def limit_joint_targets(self, targets: Sequence[float],
                            measured: Sequence[float]) -> np.ndarray:
        """Return safe joint targets given the measured joint positions (same order/length)."""
        targets = finite_vector(targets, "joint targets")
        measured = finite_vector(measured, "measured joint positions", size=targets.shape[0])
        limits = self.limits
        if limits.joint_lower:
            if len(limits.joint_lower) != targets.shape[0]:
                raise InvalidInputError(
                    f"joint limits are configured for {len(limits.joint_lower)} joints but the "
                    f"command has {targets.shape[0]}")
            targets, clipped = _clip_no_further_out(
                measured, targets, np.asarray(limits.joint_lower), np.asarray(limits.joint_upper))
            self._count("joint_limit", clipped)
        if math.isfinite(limits.max_joint_delta_rad):
            step = limits.max_joint_delta_rad
            clipped_targets = np.clip(targets, measured - step, measured + step)
            self._count("joint_delta", bool(np.any(clipped_targets != targets)))
            targets = clipped_targets
        return targets
