"""Action statistics (``norm_stats``) of an OpenVLA checkpoint, validated once when it loads.

OpenVLA un-normalises each decoded action dimension ``i`` whose ``mask[i]`` is true as
``0.5 * (x + 1) * (high - low) + low`` with ``low, high = q01, q99`` of the chosen dataset
(``predict_action`` in OpenVLA's HF export); masked-out dimensions (the gripper) pass through.
Fine-tuning pipelines differ in what they save: some write only ``mean/std/min/max``. This
module checks every dataset entry at load time and turns it into :class:`ActionStats`, or a
one-line reason why it cannot un-normalise actions, so nothing fails per inference step:

- bounds: ``q01``/``q99`` when both are present; otherwise ``min``/``max`` (documented fallback:
  OpenVLA's training code also normalises with min/max, its ``BOUNDS`` normalisation type, where
  ``BOUNDS_Q99`` uses the quantiles). A fallback is reported with a ``logging`` warning. A present
  but broken ``q01``/``q99`` is refused rather than silently replaced.
- each bound: a list of ``action_dim`` finite numbers, and ``low <= high`` per dimension;
  ``mask`` (optional): ``action_dim`` booleans (JSON ``true``/``false`` or 0/1).

A checkpoint with no usable entry at all is refused at load (:meth:`NormStats.require_usable`);
with several datasets, an unusable one is refused only when selected by ``unnorm_key``, and
the error lists the other unusable ones.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from vla_cache_ros.errors import CheckpointError, ConfigurationError

ACTION_DIM = 7
"""Action dimensions (= action tokens per step) of OpenVLA: xyz, roll/pitch/yaw, gripper."""

QUANTILE_BOUNDS = ("q01", "q99")
MINMAX_BOUNDS = ("min", "max")
SHOWN_REASONS = 3  # reasons spelled out in one error line; the rest are counted

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActionStats:
    """Validated un-normalisation statistics of one dataset's actions.

    Attributes:
        dataset: the norm_stats key (OpenVLA's ``unnorm_key``).
        low: (D,) float64 lower bounds (``q01``, or ``min`` on fallback), robot units.
        high: (D,) float64 upper bounds (``q99`` or ``max``), ``low <= high``.
        mask: (D,) bool, True where the dimension is un-normalised.
        bounds: the statistics used, ``("q01", "q99")`` or ``("min", "max")``.
    """

    dataset: str
    low: np.ndarray
    high: np.ndarray
    mask: np.ndarray
    bounds: tuple[str, str] = QUANTILE_BOUNDS

    @property
    def fallback(self) -> bool:
        """True when min/max stand in for missing q01/q99."""
        return self.bounds != QUANTILE_BOUNDS

    def unnormalize(self, normalized: np.ndarray) -> np.ndarray:
        """(..., D) normalised actions in [-1, 1] -> robot units (float64).

        ``0.5 * (x + 1) * (high - low) + low`` where ``mask`` is true, ``x`` elsewhere.
        Raises ValueError (a bug, not user input) when the last axis is not D long.
        """
        normalized = np.asarray(normalized, dtype=np.float64)
        if normalized.shape[-1] != self.low.shape[0]:
            raise ValueError(
                f"action has {normalized.shape[-1]} dimensions but the statistics have {self.low.shape[0]}")
        return np.where(self.mask, 0.5 * (normalized + 1.0) * (self.high - self.low) + self.low, normalized)


def _numbers(action: Mapping[str, Any], name: str, action_dim: int) -> np.ndarray | str:
    """``action[name]`` as a (action_dim,) float64 array of finite numbers, or why it is not one."""
    values = action[name]
    if not isinstance(values, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return f"action {name} is not a list of numbers"
    if len(values) != action_dim:
        return f"action {name} has {len(values)} values, expected {action_dim}"
    for index, value in enumerate(values):
        if not math.isfinite(value):
            return f"action {name}[{index}] is {value}, not a finite number"
    return np.asarray(values, dtype=np.float64)


def _mask(action: Mapping[str, Any], action_dim: int) -> np.ndarray | str:
    """``action['mask']`` as (action_dim,) bool (all True when absent), or why it is unusable."""
    if "mask" not in action:
        return np.ones(action_dim, dtype=bool)
    values = action["mask"]
    if not isinstance(values, list) or not all(
            isinstance(v, bool) or (isinstance(v, int) and v in (0, 1)) for v in values):
        return "action mask is not a list of booleans"
    if len(values) != action_dim:
        return f"action mask has {len(values)} values, expected {action_dim}"
    return np.asarray(values, dtype=bool)


def parse_action_stats(dataset: str, entry: Any, action_dim: int = ACTION_DIM) -> ActionStats | str:
    """Validate one norm_stats entry (``{"action": {...}, ...}``); ActionStats or a one-line reason.

    Never raises for bad content: the caller decides whether an unusable entry is an error.
    """
    if not isinstance(entry, dict):
        return "is not an object"
    action = entry.get("action")
    if not isinstance(action, dict):
        return "has no 'action' statistics"
    if all(name in action for name in QUANTILE_BOUNDS):
        bounds = QUANTILE_BOUNDS
    elif all(name in action for name in MINMAX_BOUNDS):
        bounds = MINMAX_BOUNDS
    else:
        found = ", ".join(sorted(action)) or "nothing"
        return f"action statistics have neither q01/q99 nor min/max (found: {found})"
    low, high, mask = (_numbers(action, bounds[0], action_dim), _numbers(action, bounds[1], action_dim),
                       _mask(action, action_dim))
    for checked in (low, high, mask):
        if isinstance(checked, str):
            return checked
    assert isinstance(low, np.ndarray) and isinstance(high, np.ndarray) and isinstance(mask, np.ndarray)
    above = np.flatnonzero(low > high)
    if above.size:
        i = int(above[0])
        return f"action {bounds[0]}[{i}] = {low[i]:g} is above {bounds[1]}[{i}] = {high[i]:g}"
    for array in (low, high, mask):
        array.setflags(write=False)  # shared by every step; never to be edited in place
    return ActionStats(dataset=dataset, low=low, high=high, mask=mask, bounds=bounds)


class NormStats:
    """Every dataset of a checkpoint's norm_stats, each usable (:class:`ActionStats`) or not (a reason).

    Build with :meth:`build`; pick one dataset with :meth:`select`. ``sources`` maps dataset
    keys to the file they came from (config.json or dataset_statistics.json), for messages.
    """

    def __init__(self, usable: dict[str, ActionStats], unusable: dict[str, str],
                 sources: Mapping[str, str] | None = None) -> None:
        self.usable = dict(usable)
        self.unusable = dict(unusable)
        self.sources = dict(sources or {})

    @classmethod
    def build(cls, norm_stats: Mapping[str, Any], action_dim: int = ACTION_DIM,
              sources: Mapping[str, str] | None = None) -> "NormStats":
        """Validate every entry of ``norm_stats`` (see :func:`parse_action_stats`)."""
        usable: dict[str, ActionStats] = {}
        unusable: dict[str, str] = {}
        for key in sorted(norm_stats):
            parsed = parse_action_stats(key, norm_stats[key], action_dim)
            if isinstance(parsed, ActionStats):
                usable[key] = parsed
            else:
                unusable[key] = parsed
        return cls(usable, unusable, sources)

    @property
    def keys(self) -> list[str]:
        """Every dataset key, usable or not, sorted."""
        return sorted([*self.usable, *self.unusable])

    @property
    def fallbacks(self) -> list[str]:
        """Usable datasets that un-normalise with min/max because q01/q99 are missing."""
        return [key for key, stats in self.usable.items() if stats.fallback]

    def _describe(self, key: str) -> str:
        source = self.sources.get(key)
        return f"{source}: norm_stats[{key!r}]" if source else f"norm_stats[{key!r}]"

    def _reasons(self, keys: list[str]) -> str:
        shown = "; ".join(f"{key!r} {self.unusable[key]}" for key in keys[:SHOWN_REASONS])
        more = len(keys) - SHOWN_REASONS
        return shown + (f"; and {more} more" if more > 0 else "")

    def require_usable(self) -> None:
        """Raise CheckpointError when datasets exist but none can un-normalise actions."""
        if self.unusable and not self.usable:
            keys = sorted(self.unusable)
            source = self.sources.get(keys[0])
            prefix = f"{source}: " if source else ""
            raise CheckpointError(
                f"{prefix}no usable action statistics in norm_stats: {self._reasons(keys)}")

    def log_warnings(self) -> None:
        """Log (``logging`` WARNING) the min/max fallbacks and the unusable datasets, once."""
        if self.fallbacks:
            logger.warning(
                "norm_stats %s: no action q01/q99; un-normalising with min/max instead (OpenVLA's BOUNDS "
                "normalisation; the range includes outliers)", ", ".join(repr(k) for k in self.fallbacks))
        if self.unusable and self.usable:
            logger.warning("norm_stats: unusable dataset(s), refused if selected as unnorm_key: %s",
                           self._reasons(sorted(self.unusable)))

    def select(self, unnorm_key: str | None) -> ActionStats:
        """The statistics for ``unnorm_key`` (None: the only dataset).

        Raises:
            ConfigurationError: no datasets at all, ``unnorm_key`` missing while several
                datasets exist, or an unknown key (the message lists the available ones).
            CheckpointError: the selected dataset's statistics are unusable (the message says
                why and lists the other unusable datasets).
        """
        keys = self.keys
        if not keys:
            raise ConfigurationError("the checkpoint has no norm_stats; actions cannot be un-normalised")
        if unnorm_key is None:
            if len(keys) != 1:
                raise ConfigurationError(
                    f"unnorm_key is required: the checkpoint has statistics for several datasets: "
                    f"{', '.join(keys)}")
            unnorm_key = keys[0]
        if unnorm_key in self.usable:
            return self.usable[unnorm_key]
        if unnorm_key in self.unusable:
            others = sorted(k for k in self.unusable if k != unnorm_key)
            also = f" (also unusable: {', '.join(others)})" if others else ""
            raise CheckpointError(
                f"{self._describe(unnorm_key)} cannot un-normalise actions: {self.unusable[unnorm_key]}{also}")
        unusable = f"; unusable: {', '.join(sorted(self.unusable))}" if self.unusable else ""
        raise ConfigurationError(
            f"unknown unnorm_key {unnorm_key!r}; available: {', '.join(sorted(self.usable))}{unusable}")
