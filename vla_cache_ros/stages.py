"""The stages of one policy step, named in one place, and the clock that times them.

A step (``CachedVLAPolicy.step``) runs preprocess -> vision -> select -> prefill -> decode;
``total`` is the whole step, un-normalising the action and committing the cache included. Every
report of step times (the policy's ``StepStats.times_s``, the node's telemetry and diagnostics,
the benchmark, the replay comparison and the offline demo) uses these names, in this order.
Light: no torch import unless a CUDA device has to be synchronised.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

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
