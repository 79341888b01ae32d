"""Rolling telemetry for diagnostics: per-stage latency percentiles, rates, cache ratio, drops.

Fed by the node after every inference step and control tick; read ~1 Hz for /diagnostics and
the demo's one-line status. Windows are bounded (the last ``window`` steps / ticks), so the
figures describe recent behaviour and memory stays constant. Rates use the timestamps passed in
(ROS time in the node), so they are in sim-time units during bag replay. A rate never spans a
clock jump: a time earlier than the previous one of its window (the clock went back, see
:mod:`vla_cache_ros.control.clock`) restarts that window, and :meth:`Telemetry.clock_jumped`
restarts both (for jumps either way, reported by the node).
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from vla_cache_ros.control.clock import went_back
from vla_cache_ros.errors import InvalidInputError
from vla_cache_ros.stages import STAGES

"""The stages a policy step reports in ``StepStats.times_s``."""


@dataclass(frozen=True)
class LatencySummary:
    """Latency of one stage over the window, milliseconds."""

    p50_ms: float
    p95_ms: float
    max_ms: float


@dataclass(frozen=True)
class TelemetrySnapshot:
    """A consistent copy of the telemetry at one moment."""

    steps: int
    latency: dict[str, LatencySummary]
    inference_hz: float | None
    control_hz: float | None
    mean_actual_ratio: float | None
    last_mode: str | None
    last_target_ratio: float | None
    last_reused_tokens: int | None
    last_recomputed_tokens: int | None
    flops_saved_fraction: float | None
    dropped_frames: int
    rejected_inputs: dict[str, int] = field(default_factory=dict)
    last_predicted_ratio: float | None = None  # learned mode: the ratio predicted before the cap
    last_recovered_tokens: int | None = None  # learned mode: tokens recomputed by stochastic recovery


def _append_time(times: deque[float], now_s: float) -> None:
    """Append ``now_s`` to a window of event times, restarting it if the clock went back."""
    if times and went_back(now_s, times[-1]):
        times.clear()
    times.append(now_s)


def _rate(times: deque[float]) -> float | None:
    """Events per second over the stored timestamps (None with fewer than two)."""
    if len(times) < 2:
        return None
    span = times[-1] - times[0]
    return (len(times) - 1) / span if span > 0 else None


class Telemetry:
    """Thread-safe rolling statistics over the last ``window`` steps and control ticks."""

    def __init__(self, window: int = 100) -> None:
        if int(window) < 1:
            raise InvalidInputError(f"telemetry window must be >= 1, got {window}")
        self.window = int(window)
        self._lock = threading.Lock()
        self._latency = {stage: deque(maxlen=self.window) for stage in STAGES}
        self._step_times: deque[float] = deque(maxlen=self.window)
        self._tick_times: deque[float] = deque(maxlen=self.window)
        self._ratios: deque[float] = deque(maxlen=self.window)
        self._flops: deque[tuple[float, float]] = deque(maxlen=self.window)
        self._steps = 0
        self._dropped = 0
        self._rejected: dict[str, int] = {}
        self._last_mode: str | None = None
        self._last_target: float | None = None
        self._last_reused: int | None = None
        self._last_recomputed: int | None = None
        self._last_predicted: float | None = None
        self._last_recovered: int | None = None

    def record_step(self, now_s: float, times_s: Mapping[str, float], *, mode: str | None = None,
                    target_ratio: float | None = None, actual_ratio: float | None = None,
                    reused_tokens: int | None = None, recomputed_tokens: int | None = None,
                    flops: float | None = None, flops_uncached: float | None = None,
                    predicted_ratio: float | None = None, recovered_tokens: int | None = None) -> None:
        """Record one finished inference step (stage times in seconds; unknown stages ignored;
        ``predicted_ratio`` / ``recovered_tokens``: the learned mode's decision, None otherwise)."""
        with self._lock:
            self._steps += 1
            _append_time(self._step_times, float(now_s))
            for stage, seconds in times_s.items():
                if stage in self._latency and seconds is not None:
                    self._latency[stage].append(float(seconds) * 1000.0)
            if actual_ratio is not None:
                self._ratios.append(float(actual_ratio))
            if flops is not None and flops_uncached:
                self._flops.append((float(flops), float(flops_uncached)))
            self._last_mode, self._last_target = mode, target_ratio
            self._last_reused, self._last_recomputed = reused_tokens, recomputed_tokens
            self._last_predicted, self._last_recovered = predicted_ratio, recovered_tokens

    def record_tick(self, now_s: float) -> None:
        """Record one control-timer tick."""
        with self._lock:
            _append_time(self._tick_times, float(now_s))

    def clock_jumped(self) -> None:
        """Restart the inference and control rate windows (the clock jumped either way)."""
        with self._lock:
            self._step_times.clear()
            self._tick_times.clear()

    def record_dropped_frames(self, count: int = 1) -> None:
        """Count camera frames replaced by a newer one before inference used them."""
        with self._lock:
            self._dropped += int(count)

    def record_rejected(self, kind: str) -> None:
        """Count one rejected input (bad image, bad joint state, empty instruction, ...)."""
        with self._lock:
            self._rejected[kind] = self._rejected.get(kind, 0) + 1

    def snapshot(self) -> TelemetrySnapshot:
        """Summaries over the current windows."""
        with self._lock:
            latency = {}
            for stage, values in self._latency.items():
                if values:
                    data = np.fromiter(values, dtype=np.float64)
                    p50, p95 = np.percentile(data, [50, 95])
                    latency[stage] = LatencySummary(float(p50), float(p95), float(data.max()))
            saved = None
            if self._flops:
                done = sum(item[0] for item in self._flops)
                full = sum(item[1] for item in self._flops)
                saved = 1.0 - done / full if full > 0 else None
            return TelemetrySnapshot(
                steps=self._steps,
                latency=latency,
                inference_hz=_rate(self._step_times),
                control_hz=_rate(self._tick_times),
                mean_actual_ratio=float(np.mean(self._ratios)) if self._ratios else None,
                last_mode=self._last_mode,
                last_target_ratio=self._last_target,
                last_reused_tokens=self._last_reused,
                last_recomputed_tokens=self._last_recomputed,
                flops_saved_fraction=saved,
                dropped_frames=self._dropped,
                rejected_inputs=dict(self._rejected),
                last_predicted_ratio=self._last_predicted,
                last_recovered_tokens=self._last_recovered,
            )
