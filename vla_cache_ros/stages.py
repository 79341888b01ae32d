"""The stages of one policy step, named in one place, and the clock that times them.

A step (``CachedVLAPolicy.step``) runs preprocess -> vision -> select -> prefill -> decode;
``total`` is the whole step, un-normalising the action and committing the cache included. Every
report of step times (the policy's ``StepStats.times_s``, the node's telemetry, diagnostics and
per-step :class:`StepRecord`, the benchmark, the replay comparison, sim-eval and the offline
demo) uses these names, in this order.
Light: no torch import unless a CUDA device has to be synchronised.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vla_cache_ros.errors import InvalidInputError

STAGES: tuple[str, ...] = ("preprocess", "vision", "select", "prefill", "decode", "total")


def _no_sync() -> None:
    """Nothing queued to wait for (CPU work is finished when a call returns)."""


def device_sync(device: Any) -> Callable[[], None]:
    """A function that waits until queued work on ``device`` (a ``torch.device`` or its name) is
    done, so that wall times cover it: ``torch.cuda.synchronize`` on CUDA, a no-op elsewhere."""
    kind = getattr(device, "type", str(device).partition(":")[0])
    if kind == "cuda":
        import torch

        return torch.cuda.synchronize
    return _no_sync


class StageClock:
    """Wall times (s, ``time.perf_counter``) of consecutive stages of one step.

    Created at the start of a step; :meth:`lap` closes the named stage (started when the
    previous one closed), :meth:`finish` adds ``total`` and returns the times.
    """

    def __init__(self, sync: Callable[[], None] = _no_sync) -> None:
        self._sync = sync
        self._start = self._mark = time.perf_counter()
        self.times_s: dict[str, float] = {}

    def lap(self, stage: str, sync: bool = False) -> None:
        """Close ``stage`` (one of :data:`STAGES`); ``sync``: wait for the device first.

        Raises:
            ValueError: ``stage`` is not a stage name (a bug).
        """
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")
        if sync:
            self._sync()
        now = time.perf_counter()
        self.times_s[stage] = now - self._mark
        self._mark = now

    def finish(self) -> dict[str, float]:
        """Record ``total`` (since construction) and return every stage's time in seconds."""
        self.times_s["total"] = time.perf_counter() - self._start
        return self.times_s


@dataclass(frozen=True)
class StepRecord:
    """What one step did, as the node publishes it per step on ``~/step_stats`` (JSON in a
    ``std_msgs/String``) and ``sim-eval`` reads it: the mode and target ratio in force, the share of
    visual tokens actually reused, whether the cache was (re)initialised, and each stage's wall
    time in milliseconds (keys of :data:`STAGES`; ``total`` is the whole step).
    """

    mode: str
    target_ratio: float
    actual_ratio: float
    times_ms: dict[str, float]
    cache_reset: bool = False

    def to_json(self) -> str:
        """One line of JSON: ``{"mode": ..., "target_ratio": ..., "actual_ratio": ...,
        "cache_reset": ..., "times_ms": {"preprocess": ..., ..., "total": ...}}``."""
        return json.dumps({"mode": self.mode, "target_ratio": self.target_ratio, "actual_ratio": self.actual_ratio,
                           "cache_reset": self.cache_reset, "times_ms": self.times_ms})

    @classmethod
    def from_json(cls, text: str) -> "StepRecord":
        """Parse :meth:`to_json`'s output.

        Raises:
            InvalidInputError: not JSON, or a field missing or of the wrong type.
        """
        try:
            data = json.loads(text)
            times = {str(stage): float(value) for stage, value in data["times_ms"].items()}
            return cls(str(data["mode"]), float(data["target_ratio"]), float(data["actual_ratio"]), times,
                       bool(data.get("cache_reset", False)))
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise InvalidInputError(f"not a step record ({type(error).__name__}: {error}): {text[:200]!r}") from None
