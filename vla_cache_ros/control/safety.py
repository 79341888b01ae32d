"""Safety guard: per-step clamps, joint limits and a workspace box, with every clamp counted.

The guard sits between the policy's action and the arm. It never makes a command less safe:

- EE deltas: the workspace box is applied first (per axis, a step may not take the end effector
  further outside the box; a step that is already outside may move back in), then the
  translation and rotation norms are scaled down to their per-step maxima, keeping direction.
  Both constraint sets are convex and contain "no motion", so the result satisfies both.
- Joint targets: joint limits first (same "never further outside" rule relative to the measured
  position, so a slightly-out-of-range reading does not cause a jump), then each joint's step
  is clipped to ``max_joint_delta_rad`` around the measured position.

Limits come in pairs (``workspace_min`` / ``workspace_max``, ``joint_lower`` / ``joint_upper``)
and either side of a pair may be set alone: a missing side is unbounded, so a box with only a
minimum keeps the end effector above a floor and nothing else. This is what lets rqt_reconfigure,
which sends one parameter per request, set a pair one side at a time; when both sides are set,
each is checked against the other.

A clamp kind is counted once per step in which it changed the command. Counts are cumulative
since construction (or :meth:`SafetyGuard.reset_counts`) and reported on /diagnostics.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vla_cache_ros.control.validation import finite_vector
from vla_cache_ros.errors import InvalidInputError

CLAMP_KINDS = ("translation", "rotation", "workspace", "workspace_unknown", "joint_delta",
               "joint_limit")
"""Every kind of clamp the guard counts (``workspace_unknown``: box set but EE position unknown,
so translation was zeroed)."""


def _listed(values: np.ndarray) -> str:
    """A short printable list of limit values, e.g. ``[0, -0.5, 1.25]``."""
    return "[" + ", ".join(f"{value:g}" for value in values) + "]"


@dataclass(frozen=True)
class SafetyLimits:
    """Limits applied to every command. ``inf`` / empty / None means "not limited".

    Attributes:
        max_translation_m: largest EE translation per policy step (Euclidean norm, metres).
        max_rotation_rad: largest EE rotation per step (norm of [droll, dpitch, dyaw], radians).
        max_joint_delta_rad: largest change of any joint target from its measured position.
        joint_lower / joint_upper: per-joint position limits, radians (each empty, or one value
            per joint; either may be set alone; when both are, lower <= upper per joint).
        workspace_min / workspace_max: axis-aligned EE box corners in the command frame, metres
            (each None or 3 values; either may be set alone, the other side is then open; when
            both are, min < max on every axis).

    Raises:
        InvalidInputError: a non-positive or NaN maximum, a non-finite limit, a wrong count,
            or a pair whose sides cross (the message names both sides' values).
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
        lower = finite_vector(self.joint_lower, "joint_lower")
        upper = finite_vector(self.joint_upper, "joint_upper")
        if lower.size and upper.size:
            if lower.size != upper.size:
                raise InvalidInputError(
                    f"joint_lower has {lower.size} values but joint_upper has {upper.size}")
            bad = np.flatnonzero(lower > upper).tolist()
            if bad:
                raise InvalidInputError(
                    f"joint_lower {_listed(lower)} must not exceed joint_upper {_listed(upper)} "
                    f"(joint indices {bad})")
        object.__setattr__(self, "joint_lower", tuple(lower.tolist()))
        object.__setattr__(self, "joint_upper", tuple(upper.tolist()))
        low = high = None
        if self.workspace_min is not None:
            low = finite_vector(self.workspace_min, "workspace_min", size=3)
            object.__setattr__(self, "workspace_min", tuple(low.tolist()))
        if self.workspace_max is not None:
            high = finite_vector(self.workspace_max, "workspace_max", size=3)
            object.__setattr__(self, "workspace_max", tuple(high.tolist()))
        if low is not None and high is not None and np.any(low >= high):
            axes = ", ".join("xyz"[i] for i in np.flatnonzero(low >= high))
            raise InvalidInputError(
                f"workspace_min {_listed(low)} must be below workspace_max {_listed(high)} on "
                f"every axis (not on {axes})")

    @property
    def has_workspace(self) -> bool:
        """Whether a workspace box (or one side of it) is configured."""
        return self.workspace_min is not None or self.workspace_max is not None

    @property
    def has_joint_limits(self) -> bool:
        """Whether joint limits (or one side of them) are configured."""
        return bool(self.joint_lower or self.joint_upper)

    def workspace_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The box as (low, high) arrays of 3, an unset side as -inf / +inf."""
        low = np.full(3, -math.inf) if self.workspace_min is None else np.array(self.workspace_min)
        high = np.full(3, math.inf) if self.workspace_max is None else np.array(self.workspace_max)
        return low, high

    def joint_bounds(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Joint limits for ``count`` joints as (low, high) arrays, an unset side as -inf / +inf.

        Raises:
            InvalidInputError: a set side has another number of values than ``count``.
        """
        bounds = []
        sides = (("lower", self.joint_lower, -math.inf), ("upper", self.joint_upper, math.inf))
        for name, values, unset in sides:
            if values and len(values) != count:
                raise InvalidInputError(
                    f"joint {name} limits are configured for {len(values)} joints but the "
                    f"command has {count}")
            bounds.append(np.array(values) if values else np.full(count, unset))
        return bounds[0], bounds[1]


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
        (or one side of it) is set; without it the translation is zeroed and
        ``workspace_unknown`` counted.

        Raises:
            InvalidInputError: a delta or position that is not 6 / 3 finite values.
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
                goal, clipped = _clip_no_further_out(start, start + translation,
                                                     *limits.workspace_bounds())
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
        """Return safe joint targets given the measured joint positions (same order/length).

        Raises:
            InvalidInputError: NaN / inf values, lengths that differ, or joint limits configured
                for another number of joints.
        """
        targets = finite_vector(targets, "joint targets")
        measured = finite_vector(measured, "measured joint positions", size=targets.shape[0])
        limits = self.limits
        if limits.has_joint_limits:
            low, high = limits.joint_bounds(targets.shape[0])
            targets, clipped = _clip_no_further_out(measured, targets, low, high)
            self._count("joint_limit", clipped)
        if math.isfinite(limits.max_joint_delta_rad):
            step = limits.max_joint_delta_rad
            clipped_targets = np.clip(targets, measured - step, measured + step)
            self._count("joint_delta", bool(np.any(clipped_targets != targets)))
            targets = clipped_targets
        return targets
