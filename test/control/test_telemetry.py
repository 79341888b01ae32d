"""Telemetry and diagnostics: percentiles, rates, ratio mean over a window, status levels."""
from __future__ import annotations

import pytest

from vla_cache_ros.control.diagnostics import Level, build_status, one_line
from vla_cache_ros.control.telemetry import STAGES, Telemetry
from vla_cache_ros.control.watchdog import WatchdogState
from vla_cache_ros.errors import InvalidInputError


def filled_telemetry() -> Telemetry:
    telemetry = Telemetry(window=10)
    for i in range(20):  # only the last 10 count
        times = {stage: (i + 1) / 1000.0 for stage in STAGES}
        telemetry.record_step(i * 0.25, times, mode="fixed", target_ratio=0.5,
                              actual_ratio=0.4 if i >= 10 else 0.0, reused_tokens=100 + i,
                              recomputed_tokens=156 - i, flops=50.0, flops_uncached=100.0)
    for i in range(11):
        telemetry.record_tick(i * 0.1)
    telemetry.record_dropped_frames(3)
    telemetry.record_rejected("image")
    telemetry.record_rejected("image")
    return telemetry


def test_snapshot_over_window() -> None:
    snapshot = filled_telemetry().snapshot()
    assert snapshot.steps == 20
    total = snapshot.latency["total"]
    assert total.max_ms == pytest.approx(20.0)
    assert total.p50_ms == pytest.approx(15.5)  # median of 11..20 ms
    assert 19.0 < total.p95_ms < 20.0
    assert snapshot.inference_hz == pytest.approx(4.0)
    assert snapshot.control_hz == pytest.approx(10.0)
    assert snapshot.mean_actual_ratio == pytest.approx(0.4)
    assert snapshot.flops_saved_fraction == pytest.approx(0.5)
    assert snapshot.last_reused_tokens == 119 and snapshot.last_mode == "fixed"
    assert snapshot.dropped_frames == 3 and snapshot.rejected_inputs == {"image": 2}


def test_empty_snapshot_and_bad_window() -> None:
    snapshot = Telemetry().snapshot()
    assert snapshot.latency == {} and snapshot.inference_hz is None
    assert snapshot.mean_actual_ratio is None
    with pytest.raises(InvalidInputError, match="window must be >= 1"):
        Telemetry(window=0)


@pytest.mark.parametrize("state, reason, level, fragment", [
    (WatchdogState.RUNNING, None, Level.OK, "running"),
    (WatchdogState.WAITING, "waiting for camera", Level.WARN, "waiting for camera"),
    (WatchdogState.FAULT, "camera is stale", Level.ERROR, "FAULT: camera is stale"),
])
def test_status_levels_and_values(state: WatchdogState, reason: str | None, level: Level,
                                  fragment: str) -> None:
    report = build_status(state=state, reason=reason, telemetry=filled_telemetry().snapshot(),
                          clamp_counts={"translation": 2}, actuation_enabled=False,
                          input_ages={"camera": 0.05}, cache_mode="fixed", target_ratio=0.5,
                          last_error="bad image encoding 'yuv422'")
    assert report.level is level
    assert fragment in report.message and "dry run" in report.message
    values = report.as_dict()
    assert values["cache_mode"] == "fixed" and values["target_ratio"] == "0.500"
    assert values["actual_ratio_mean"] == "0.400"
    assert values["latency_total_p50_ms"] == "15.5"
    assert values["clamp_translation"] == "2" and values["dropped_frames"] == "3"
    assert values["camera_age_s"] == "0.050" and values["rejected_image"] == "2"
    assert values["actuation_enabled"] == "false"
    assert values["last_error"] == "bad image encoding 'yuv422'"
    assert "mode=fixed" in one_line(report) and "inference=4.00Hz" in one_line(report)
