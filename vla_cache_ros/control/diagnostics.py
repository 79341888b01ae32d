"""Builds the node's diagnostic status (level, message, key-values) from plain data, ROS-free.

The node turns a :class:`StatusReport` into a ``diagnostic_msgs/DiagnosticStatus``; the demo
prints :func:`one_line` once a second. Keeping the wording here makes it testable without ROS.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Mapping

from vla_cache_ros.control.budget import BudgetSnapshot
from vla_cache_ros.control.telemetry import STAGES, TelemetrySnapshot
from vla_cache_ros.control.watchdog import WatchdogState


class Level(IntEnum):
    """diagnostic_msgs/DiagnosticStatus levels."""

    OK = 0
    WARN = 1
    ERROR = 2
    STALE = 3


@dataclass(frozen=True)
class StatusReport:
    """One diagnostic status: level, one-line message, ordered key-values (all strings)."""

    level: Level
    message: str
    values: list[tuple[str, str]]

    def as_dict(self) -> dict[str, str]:
        """Key-values as a dict (for tests and logs)."""
        return dict(self.values)


def _fmt_age(age_s: float | None) -> str:
    """An input age for /diagnostics: seconds, ``n/a`` when missing, and ``stale (...)``, never
    a negative number, when dated ahead of the clock (the clock went back)."""
    if age_s is not None and age_s < 0.0:
        return f"stale (dated {-age_s:.3f} s ahead of the clock)"
    return _fmt(age_s)


def _fmt(value: float | int | str | None, spec: str = ".3f") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return format(value, spec)


def budget_values(budget: BudgetSnapshot | None, cache_mode: str) -> list[tuple[str, str]]:
    """The latency budget's /diagnostics values.

    ``latency_budget_ms``: ``off`` (no budget, or no controller: None), the budget in ms, or the
    budget with ``(idle: cache_mode ...)`` when the runtime does not steer (mode ``off``);
    ``budget_ratio``: the ratio chosen for the next step; ``budget_set_point_ms``: the step time
    aimed at (the budget less the jitter margin); ``budget_hits`` / ``budget_misses``: steps at
    or under / over the budget since it was set. All but the first are ``n/a`` unless the ratio
    is being steered.
    """
    if budget is None or budget.budget_ms <= 0.0:
        shown = "off"
    elif not budget.steering:
        shown = f"{budget.budget_ms:.1f} (idle: cache_mode {cache_mode})"
    else:
        shown = f"{budget.budget_ms:.1f}"
    steering = budget is not None and budget.steering
    return [("latency_budget_ms", shown),
            ("budget_ratio", _fmt(budget.ratio if steering else None)),
            ("budget_set_point_ms", _fmt(budget.set_point_ms if steering else None, ".1f")),
            ("budget_hits", _fmt(budget.hits if steering else None, "d")),
            ("budget_misses", _fmt(budget.misses if steering else None, "d"))]


def build_status(*, state: WatchdogState, reason: str | None, telemetry: TelemetrySnapshot,
                 clamp_counts: Mapping[str, int], actuation_enabled: bool,
                 input_ages: Mapping[str, float | None], cache_mode: str,
                 target_ratio: float, last_error: str | None,
                 recent_warning: str | None = None,
                 extra: Mapping[str, str] | None = None,
                 budget: BudgetSnapshot | None = None) -> StatusReport:
    """Summarise the node's state for /diagnostics.

    Level: ERROR in FAULT; WARN while waiting for inputs or the first step, while running with
    an input dated ahead of the clock (a negative age in ``input_ages``: the clock went back, and
    the watchdog faults at its next check), or while running with a ``recent_warning`` (e.g. an
    input rejected in the last seconds); else OK. Input ages are shown in seconds, ``n/a`` when
    missing and ``stale (...)`` when negative. ``target_ratio`` is the ratio the policy runs
    with (with a latency budget, the controller's choice; ``budget``: see :func:`budget_values`).
    """
    ahead = [name for name, age in input_ages.items() if age is not None and age < 0.0]
    if state is WatchdogState.FAULT:
        level, message = Level.ERROR, f"FAULT: {reason}"
    elif state is WatchdogState.WAITING:
        level, message = Level.WARN, reason or "waiting"
    elif ahead:
        level, message = Level.WARN, (f"running; {', '.join(ahead)} dated ahead of the clock "
                                      "(the clock went back): stale")
    elif recent_warning:
        level, message = Level.WARN, f"running; {recent_warning}"
    else:
        level, message = Level.OK, "running"
    if not actuation_enabled:
        message += " (dry run: actuation disabled)"
    values: list[tuple[str, str]] = [
        ("state", state.value),
        ("actuation_enabled", str(bool(actuation_enabled)).lower()),
        ("cache_mode", cache_mode),
        ("target_ratio", _fmt(target_ratio)),
        *budget_values(budget, cache_mode),
        ("actual_ratio_mean", _fmt(telemetry.mean_actual_ratio)),
        ("reused_tokens", _fmt(telemetry.last_reused_tokens, "d")),
        ("recomputed_tokens", _fmt(telemetry.last_recomputed_tokens, "d")),
        ("predicted_ratio", _fmt(telemetry.last_predicted_ratio)),
        ("recovered_tokens", _fmt(telemetry.last_recovered_tokens, "d")),
        ("flops_saved_fraction", _fmt(telemetry.flops_saved_fraction)),
        ("inference_hz", _fmt(telemetry.inference_hz, ".2f")),
        ("control_hz", _fmt(telemetry.control_hz, ".2f")),
        ("steps", str(telemetry.steps)),
    ]
    for stage in STAGES:
        summary = telemetry.latency.get(stage)
        for label, attribute in (("p50", "p50_ms"), ("p95", "p95_ms"), ("max", "max_ms")):
            values.append((f"latency_{stage}_{label}_ms",
                           _fmt(getattr(summary, attribute) if summary else None, ".1f")))
    for name, age in input_ages.items():
        values.append((f"{name}_age_s", _fmt_age(age)))
    values.append(("dropped_frames", str(telemetry.dropped_frames)))
    for kind, count in sorted(telemetry.rejected_inputs.items()):
        values.append((f"rejected_{kind}", str(count)))
    for kind, count in clamp_counts.items():
        values.append((f"clamp_{kind}", str(count)))
    values.append(("last_error", last_error or ""))
    for key, value in (extra or {}).items():
        values.append((key, value))
    return StatusReport(level, message, values)


def one_line(report: StatusReport) -> str:
    """A compact status line: state, mode, ratio, latency, inference and control rate."""
    values = report.as_dict()
    return (f"[{report.level.name}] {values.get('state', '?')} mode={values.get('cache_mode')} "
            f"ratio={values.get('target_ratio')}/{values.get('actual_ratio_mean')} "
            f"latency_p50={values.get('latency_total_p50_ms')}ms "
            f"inference={values.get('inference_hz')}Hz control={values.get('control_hz')}Hz"
            + ("" if report.level is Level.OK else f" | {report.message}"))
