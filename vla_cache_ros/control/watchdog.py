"""Watchdog state machine on ROS-clock times (float seconds), so bag replay with sim time works.

States:

- ``WAITING``: no step has been accepted yet; nothing is commanded.
- ``RUNNING``: the last accepted step came from a fresh observation; policy commands go out.
- ``FAULT``: an input went stale, inference raised, a step overran ``max_inference_s``, the
  observation behind the current command grew older than ``max_obs_age_s``, or the clock jumped.
  Policy output stops and the safety command goes out. Recovery needs a step that *succeeds* on
  an observation received *after* the fault began (a fresh observation and a successful step,
  together).

Times are whatever clock the caller uses consistently (the node passes ROS time). Every age is
taken with :func:`~vla_cache_ros.control.clock.elapsed_s`: a time later than "now" (the clock
went back) is stale, never fresh.

Input times. An input's time is the effective stamp (:func:`effective_stamp`) of its newest
message: the stamp, never later than the message's arrival (a zero or future stamp from a
badly-synchronised driver counts from arrival and cannot keep an input alive). A message
delivered out of order (stamped before the time already held, which is itself not in the
future) does not rewind it. An input may consist of *parts* that arrive separately (the
configured joints of ``joint_states``, from several publishers): it is missing until every part
has arrived and is as old as its oldest part.

Clock jumps (:meth:`Watchdog.clock_jumped`): a backward jump, or a forward one longer than
``max_obs_age_s``, starts a new *clock generation*: every input time is forgotten, a step begun
or an observation taken before the jump cannot produce a command, and (unless still WAITING,
when nothing has been commanded yet) a new FAULT episode begins with a reason naming the jump.
Messages stamped after their own arrival but not after the time the clock jumped back from are
from before the jump (queued in transit) and do not count as fresh; a forward jump after it (a
starved node whose next /clock is already far on) does not make that jump forgotten.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Iterable, Mapping, Sequence

from vla_cache_ros.control.clock import elapsed_s, is_fresh, went_back
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
    """The time an input's age counts from: its stamp, unless zero or later than its arrival.

    Raises:
        InvalidInputError: a stamp or arrival time that is NaN or infinite.
    """
    stamp_s = finite_scalar(stamp_s, "input stamp")
    received_s = finite_scalar(received_s, "input arrival time")
    return received_s if stamp_s <= 0.0 else min(stamp_s, received_s)


def clock_jump_reason(delta_s: float) -> str:
    """The fault reason for a clock jump of ``delta_s`` seconds (negative: backwards)."""
    if delta_s < 0.0:
        what = f"jumped back by {-delta_s:.3f} s (bag loop or simulator reset)"
    else:
        what = f"jumped forward by {delta_s:.3f} s (playback skipped ahead)"
    return f"ROS clock {what}; holding until fresh observations arrive"


def _age_text(age_s: float) -> str:
    """How old something dated ``age_s`` ago is, in words (negative: the clock went back)."""
    if age_s < 0.0:
        return f"dated {-age_s:.3f} s ahead of the clock: the clock went back"
    return f"{age_s:.3f} s old"


class Watchdog:
    """Tracks input freshness, inference health and the observation behind the live command.

    Not thread-safe by itself; :class:`~vla_cache_ros.control.controller.Controller` serialises
    access.

    Args:
        config: thresholds.
        required_inputs: names of the inputs that must stay fresh while running (the camera,
            plus joint states / EE pose when the command mapping uses them).
        input_parts: inputs made of separately arriving parts, with their part names (the
            node's configured joints for ``joint_states``); other inputs are one part.

    Attributes:
        generation: clock generation, incremented by each clock jump acted on.
        fault_count: number of fault episodes so far (a clock jump always starts a new one).
    """

    def __init__(self, config: WatchdogConfig, required_inputs: Iterable[str] = ("camera",),
                 input_parts: Mapping[str, Sequence[str]] | None = None) -> None:
        self.config = config
        self.required_inputs = tuple(required_inputs)
        self.input_parts = {name: tuple(parts) for name, parts in (input_parts or {}).items()}
        self.state = WatchdogState.WAITING
        self.fault_reason: str | None = None
        self.fault_since: float | None = None
        self.fault_count = 0
        self.generation = 0
        self._times: dict[str, dict[str, float]] = {}  # input -> part -> effective stamp
        self._jumped_from: float | None = None  # clock time before the latest backward jump (kept across forward ones)
        self._step_started: float | None = None
        self._step_generation: int | None = None
        self._command_stamp: float | None = None

    # ----------------------------------------------------------------------------- inputs
    def input_received(self, name: str, stamp_s: float, now_s: float) -> bool:
        """Record that input ``name`` arrived at ``now_s`` carrying header stamp ``stamp_s``.

        Returns whether the message is now the input's newest data (False: delivered out of
        order, or stamped before the latest clock jump).

        Raises:
            InvalidInputError: a NaN or infinite stamp or arrival time.
        """
        return bool(self.parts_received(name, (name,), stamp_s, now_s))

    def parts_received(self, name: str, parts: Iterable[str], stamp_s: float,
                       now_s: float) -> list[str]:
        """Record one message carrying ``parts`` of input ``name``; return the parts it updated.

        A part is not updated when the message is older than what is held for it (out of
        order) or stamped before the latest clock jump.

        Raises:
            InvalidInputError: a NaN or infinite stamp or arrival time.
        """
        stamp = effective_stamp(stamp_s, now_s)
        if self._dated_before_jump(stamp_s, now_s):
            return []
        times = self._times.setdefault(name, {})
        updated = []
        for part in parts:
            previous = times.get(part)
            if previous is not None and stamp < previous and not went_back(now_s, previous):
                continue  # delivered out of order: older than the data already held
            times[part] = stamp
            updated.append(part)
        return updated

    def _dated_before_jump(self, stamp_s: float, received_s: float) -> bool:
        """Whether a message stamped ``stamp_s`` and received at ``received_s`` predates the
        latest backward clock jump: stamped after its arrival, and either not after the jump or
        more than ``max_obs_age_s`` ahead of its arrival (a frame from the end of the previous bag
        pass, stamped a little after the clock value at which the jump was noticed)."""
        if self._jumped_from is None or not went_back(received_s, stamp_s):
            return False
        return (not went_back(self._jumped_from, stamp_s)
                or stamp_s - received_s > self.config.max_obs_age_s)

    def _parts_of(self, name: str) -> tuple[str, ...]:
        return self.input_parts.get(name, (name,))

    def _missing_parts(self, name: str) -> list[str]:
        times = self._times.get(name, {})
        return [part for part in self._parts_of(name) if part not in times]

    def input_age(self, name: str, now_s: float) -> float | None:
        """Seconds since input ``name``'s time (its oldest part's), or None while missing.

        Missing: never received, a part never received, or forgotten at a clock jump. A
        negative age means the clock went back since the input arrived: it is stale.
        """
        if self._missing_parts(name):
            return None
        times = self._times[name]
        ages = [elapsed_s(now_s, times[part]) for part in self._parts_of(name)]
        return min(ages) if min(ages) < 0.0 else max(ages)

    def missing_inputs(self) -> list[str]:
        """Required inputs not (or, after a clock jump, no longer) received.

        An input of parts of which some have arrived is listed with the missing parts, e.g.
        ``"joint_states (j5, j6 not seen yet)"``.
        """
        missing = []
        for name in self.required_inputs:
            parts = self._missing_parts(name)
            if parts and name in self.input_parts and len(parts) < len(self._parts_of(name)):
                missing.append(f"{name} ({', '.join(parts)} not seen yet)")
            elif parts:
                missing.append(name)
        return missing

    def _staleness(self, name: str, now_s: float) -> str | None:
        """Why input ``name`` is missing or too old (None if fresh)."""
        limit = self.config.max_obs_age_s
        missing = self._missing_parts(name)
        if missing:
            stale = missing
            shown = "not received since the clock jump" if self.generation else "never received"
        else:
            times = self._times[name]
            ages = {part: elapsed_s(now_s, times[part]) for part in self._parts_of(name)}
            stale = [part for part, age in ages.items() if not is_fresh(age, limit)]
            if not stale:
                return None
            worst = min(ages[part] for part in stale)
            shown = _age_text(worst if worst < 0.0 else max(ages[part] for part in stale))
        which = f"{', '.join(stale)}: " if name in self.input_parts else ""
        return f"{name} is stale ({which}{shown}, max_obs_age_s {limit:g})"

    def _stale_input(self, now_s: float) -> str | None:
        """Why a required input is missing or too old (None if all are fresh)."""
        for name in self.required_inputs:
            reason = self._staleness(name, now_s)
            if reason is not None:
                return reason
        return None

    # ------------------------------------------------------------------------------ steps
    def step_started(self, now_s: float) -> None:
        """An inference step began at ``now_s``."""
        self._step_started = now_s
        self._step_generation = self.generation

    def check_step(self, now_s: float, obs_stamp_s: float, obs_received_s: float,
                   generation: int | None = None) -> str | None:
        """Decide whether a finished step's result may be used; return why not (None: it may).

        Refused, entering FAULT: the step took longer than ``max_inference_s``; the clock went
        back during the step; its observation is older than ``max_obs_age_s`` or dated ahead of
        the clock; a required input is stale. Refused without a new fault: the step began, or
        its observation (``generation``, from the clock generation current when it arrived) was
        taken, before a clock jump; the observation predates the latest jump or, in FAULT, the
        fault. On None, call :meth:`accept_step` once the action has been mapped.
        """
        started, self._step_started = self._step_started, None
        began_in, self._step_generation = self._step_generation, None
        if began_in not in (None, self.generation) or generation not in (None, self.generation):
            return "the inference step or its observation predates the clock jump; discarded"
        if self._dated_before_jump(obs_stamp_s, obs_received_s):
            return "the observation is stamped before the clock jump; discarded"
        if started is not None:
            took = elapsed_s(now_s, started)
            if took < 0.0:
                return self._refuse(now_s, f"the clock went back by {-took:.3f} s during the "
                                           "inference step")
            if took > self.config.max_inference_s:
                return self._refuse(now_s, self._overrun_reason(took, "took"))
        stamp = effective_stamp(obs_stamp_s, obs_received_s)
        arrived = elapsed_s(now_s, obs_received_s)
        age = arrived if arrived < 0.0 else elapsed_s(now_s, stamp)
        if not is_fresh(age, self.config.max_obs_age_s):
            return self._refuse(now_s, self._obs_age_reason(age, "inference result came from "
                                                                 "an observation"))
        stale = self._stale_input(now_s)
        if stale is not None:
            return self._refuse(now_s, stale)
        if self.state is WatchdogState.FAULT:
            assert self.fault_since is not None
            if obs_received_s <= self.fault_since:
                return "observation predates the current fault; waiting for a fresh one"
        return None

    def accept_step(self, now_s: float, obs_stamp_s: float, obs_received_s: float) -> None:
        """Adopt a step that :meth:`check_step` passed: RUNNING, and its observation now dates
        the live command."""
        if self.state is WatchdogState.FAULT:
            self.fault_reason = None
            self.fault_since = None
        self.state = WatchdogState.RUNNING
        self._command_stamp = effective_stamp(obs_stamp_s, obs_received_s)

    def step_succeeded(self, now_s: float, obs_stamp_s: float, obs_received_s: float,
                       generation: int | None = None) -> bool:
        """:meth:`check_step`, then :meth:`accept_step` if it passed; return whether it did."""
        if self.check_step(now_s, obs_stamp_s, obs_received_s, generation) is not None:
            return False
        self.accept_step(now_s, obs_stamp_s, obs_received_s)
        return True

    def step_failed(self, now_s: float, reason: str) -> None:
        """An inference step raised or its output was unusable."""
        self._step_started = None
        self._step_generation = None
        self.fault(now_s, reason)

    # ---------------------------------------------------------------------------- faults
    def fault(self, now_s: float, reason: str) -> bool:
        """Enter FAULT (keeping the first reason of an ongoing fault); return True if new."""
        self._command_stamp = None
        if self.state is WatchdogState.FAULT:
            return False
        self._enter_fault(now_s, reason)
        return True

    def _enter_fault(self, now_s: float, reason: str) -> None:
        self.state = WatchdogState.FAULT
        self.fault_reason = reason
        self.fault_since = now_s
        self.fault_count += 1
        self._command_stamp = None

    def _refuse(self, now_s: float, reason: str) -> str:
        """Fault with ``reason`` and return it (the refusal reason of a step)."""
        self.fault(now_s, reason)
        return reason

    def clock_jumped(self, delta_s: float, now_s: float) -> bool:
        """The clock jumped by ``delta_s`` seconds and now reads ``now_s``; return whether acted.

        Acts on any backward jump and on forward jumps longer than ``max_obs_age_s`` (shorter
        ones only age the inputs, which the staleness checks handle): starts a new clock
        generation, forgets every input time and the running step, and, from RUNNING or FAULT,
        enters a new FAULT episode whose reason names the jump. WAITING stays WAITING: nothing
        was commanded yet (with ``use_sim_time`` the first /clock message is such a jump), and
        the first step still has to pass every check.

        Raises:
            ValueError: ``delta_s`` or ``now_s`` is NaN or infinite (a caller bug).
        """
        if not (math.isfinite(delta_s) and math.isfinite(now_s)):
            raise ValueError(f"clock jump of {delta_s} s at {now_s} s")
        if 0.0 <= delta_s <= self.config.max_obs_age_s:
            return False
        self.generation += 1
        if delta_s < 0.0:  # a later forward jump keeps it: frames of the old timeline stay old
            self._jumped_from = now_s - delta_s
        self._times.clear()
        self._step_started = None
        if self.state is not WatchdogState.WAITING:
            self._enter_fault(now_s, clock_jump_reason(delta_s))
        return True

    def _overrun_reason(self, seconds: float, verb: str) -> str:
        return (f"inference step overran: {verb} {seconds:.3f} s "
                f"(> max_inference_s {self.config.max_inference_s:g})")

    def _obs_age_reason(self, age_s: float, what: str) -> str:
        limit = self.config.max_obs_age_s
        if age_s < 0.0:
            return f"{what} {_age_text(age_s)} (max_obs_age_s {limit:g})"
        return (f"{what} {age_s:.3f} s old (> max_obs_age_s {limit:g}); inference is too slow "
                "for max_obs_age_s or the camera stalled")

    def tick(self, now_s: float) -> WatchdogState:
        """Check inputs, the running step and the live command at ``now_s``; return the state."""
        if self.state is not WatchdogState.RUNNING:
            return self.state
        stale = self._stale_input(now_s)
        if stale is not None:
            self.fault(now_s, stale)
            return self.state
        if self._step_started is not None:
            running = elapsed_s(now_s, self._step_started)
            if running < 0.0:
                self.fault(now_s, f"the clock went back by {-running:.3f} s while an inference "
                                  "step was running")
                return self.state
            if running > self.config.max_inference_s:
                self.fault(now_s, self._overrun_reason(running, "running"))
                return self.state
        if self._command_stamp is not None:
            age = elapsed_s(now_s, self._command_stamp)
            if not is_fresh(age, self.config.max_obs_age_s):
                self.fault(now_s, self._obs_age_reason(age, "the observation behind the "
                                                            "current command is"))
        return self.state
