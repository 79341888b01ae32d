"""Watchdog state machine on ROS-clock times (float seconds), so bag replay with sim time works.

States:

- ``WAITING``: no step has been accepted yet; nothing is commanded.
- ``RUNNING``: the last accepted step came from a fresh observation; policy commands go out.
- ``FAULT``: an input went stale, inference raised, a step overran ``max_inference_s``, or the
  observation behind the current command grew older than ``max_obs_age_s``. Policy output stops
  and the safety command goes out. Recovery needs a step that *succeeds* on an observation
  received *after* the fault began (a fresh observation and a successful step, together).

Times are whatever clock the caller uses consistently (the node passes ROS time). An input's
age counts from the earlier of its header stamp and its arrival (a zero or future stamp from a
badly-synchronised driver therefore counts from arrival and cannot keep an input alive).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Iterable

from vla_cache_ros.control.validation import finite_scalar, positive_scalar


class WatchdogState(str, Enum):
    """Where the control loop stands."""

    WAITING = "waiting"
    RUNNING = "running"
    FAULT = "fault"


@dataclass(frozen=True)
class WatchdogConfig:
    """Watchdog thresholds in seconds of the caller's clock."""

    max_obs_age_s: float = 0.5
    max_inference_s: float = 2.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_obs_age_s", positive_scalar(self.max_obs_age_s,
                                                                  "max_obs_age_s"))
        object.__setattr__(self, "max_inference_s", positive_scalar(self.max_inference_s,
                                                                    "max_inference_s"))


def effective_stamp(stamp_s: float, received_s: float) -> float:
    """The time an input's age counts from: its stamp, unless zero or later than its arrival."""
    stamp_s = finite_scalar(stamp_s, "input stamp")
    received_s = finite_scalar(received_s, "input arrival time")
    return received_s if stamp_s <= 0.0 else min(stamp_s, received_s)


class Watchdog:
    """Tracks input freshness, inference health and the observation behind the live command.

    Not thread-safe by itself; :class:`~vla_cache_ros.control.controller.Controller` serialises
    access.

    Args:
        config: thresholds.
        required_inputs: names of the inputs that must stay fresh while running (the camera,
            plus joint states / EE pose when the command mapping uses them).
    """

    def __init__(self, config: WatchdogConfig, required_inputs: Iterable[str] = ("camera",)) -> None:
        self.config = config
        self.required_inputs = tuple(required_inputs)
        self.state = WatchdogState.WAITING
        self.fault_reason: str | None = None
        self.fault_since: float | None = None
        self._input_stamps: dict[str, float] = {}
        self._step_started: float | None = None
        self._command_stamp: float | None = None

    # ----------------------------------------------------------------------------- inputs
    def input_received(self, name: str, stamp_s: float, now_s: float) -> None:
        """Record that input ``name`` arrived at ``now_s`` carrying header stamp ``stamp_s``."""
        stamp = effective_stamp(stamp_s, now_s)
        previous = self._input_stamps.get(name)
        self._input_stamps[name] = stamp if previous is None else max(previous, stamp)

    def input_age(self, name: str, now_s: float) -> float | None:
        """Seconds since input ``name``'s latest stamp, or None if it never arrived."""
        stamp = self._input_stamps.get(name)
        return None if stamp is None else now_s - stamp

    def missing_inputs(self) -> list[str]:
        """Required inputs that have never arrived."""
        return [name for name in self.required_inputs if name not in self._input_stamps]

    # ------------------------------------------------------------------------------ steps
    def step_started(self, now_s: float) -> None:
        """An inference step began at ``now_s``."""
        self._step_started = now_s

    def step_succeeded(self, now_s: float, obs_stamp_s: float, obs_received_s: float) -> bool:
        """An inference step on the given observation finished; return whether to use it.

        The result is refused (and FAULT entered) when the step took longer than
        ``max_inference_s``, its observation is already older than ``max_obs_age_s``, or a
        required input is stale; it is also refused while in FAULT if the observation arrived
        before the fault began. An accepted result moves WAITING or FAULT to RUNNING.
        """
        started, self._step_started = self._step_started, None
        if started is not None and now_s - started > self.config.max_inference_s:
            self.fault(now_s, self._overrun_reason(now_s - started, "took"))
            return False
        stamp = effective_stamp(obs_stamp_s, obs_received_s)
        age = now_s - stamp
        if age > self.config.max_obs_age_s:
            self.fault(now_s, f"inference result came from an observation {age:.3f} s old "
                              f"(> max_obs_age_s {self.config.max_obs_age_s:g}); inference is "
                              "too slow for max_obs_age_s or the camera stalled")
            return False
        stale = self._stale_input(now_s)
        if stale is not None:
            self.fault(now_s, stale)
            return False
        if self.state is WatchdogState.FAULT:
            assert self.fault_since is not None
            if obs_received_s <= self.fault_since:
                return False
            self.fault_reason = None
            self.fault_since = None
        self.state = WatchdogState.RUNNING
        self._command_stamp = stamp
        return True

    def step_failed(self, now_s: float, reason: str) -> None:
        """An inference step raised or its output was unusable."""
        self._step_started = None
        self.fault(now_s, reason)

    # ---------------------------------------------------------------------------- faults
    def fault(self, now_s: float, reason: str) -> bool:
        """Enter FAULT (keeping the first reason of an ongoing fault); return True if new."""
        self._command_stamp = None
        if self.state is WatchdogState.FAULT:
            return False
        self.state = WatchdogState.FAULT
        self.fault_reason = reason
        self.fault_since = now_s
        return True

    def _stale_input(self, now_s: float) -> str | None:
        """Why a required input is missing or too old (None if all are fresh)."""
        limit = self.config.max_obs_age_s
        for name in self.required_inputs:
            age = self.input_age(name, now_s)
            if age is None or age > limit:
                shown = "never received" if age is None else f"{age:.3f} s old"
                return f"{name} is stale ({shown}, max_obs_age_s {limit:g})"
        return None

    def _overrun_reason(self, seconds: float, verb: str) -> str:
        return (f"inference step overran: {verb} {seconds:.3f} s "
                f"(> max_inference_s {self.config.max_inference_s:g})")

    def tick(self, now_s: float) -> WatchdogState:
        """Check inputs, the running step and the live command at ``now_s``; return the state."""
        if self.state is not WatchdogState.RUNNING:
            return self.state
        limit = self.config.max_obs_age_s
        stale = self._stale_input(now_s)
        if stale is not None:
            self.fault(now_s, stale)
            return self.state
        if self._step_started is not None:
            running = now_s - self._step_started
            if running > self.config.max_inference_s:
                self.fault(now_s, self._overrun_reason(running, "running"))
                return self.state
        if self._command_stamp is not None and now_s - self._command_stamp > limit:
            self.fault(now_s, f"the observation behind the current command is "
                              f"{now_s - self._command_stamp:.3f} s old (> max_obs_age_s "
                              f"{limit:g}); inference is too slow for max_obs_age_s")
        return self.state
