"""Latency-budget steering of the cache ratio, ROS-free: the least reuse whose steps meet a budget.

With ``latency_budget_ms`` set, the cache ratio a step runs with is not the ``cache_ratio``
parameter but a choice in ``[0, cache_ratio]`` made by :class:`LatencyBudget` from the measured
times of the steps before: as little reuse (as close to the uncached model) as meets the budget,
e.g. the control period. The parameter ``cache_ratio`` stays the cap.

Control law: a clamped integral controller on the relative overrun with asymmetric gains,
aiming a jitter-sized margin under the budget. After each step that ran with ratio ``r`` and
took ``t`` against the budget ``B``::

    sigma = mean |t_k - t_(k-1)| / 1.128       # step-time jitter: running mean over steps
    T = max(B - MARGIN_JITTERS * sigma, B / 2) # the set point
    e = t / T - 1                              # > 0: over the set point by that fraction
    r_next = clip(r + k * e, 0, cap)           # k = RAISE_GAIN if e > 0 else LOWER_GAIN

(the running mean weighs each new step by :data:`JITTER_WEIGHT`; 1.128 = 2 / sqrt(pi) turns the
mean absolute difference of two independent normal step times into their standard deviation,
since E|N(0, 2 s^2)| = 2 s / sqrt(pi)).

Why this one: it needs no model of step time against ratio, only that more reuse is not slower,
so it works unchanged for every mode (in ``vla_cache`` and ``learned`` the ratio is an upper
bound, and the reuse actually achieved, hence the slope, depends on the scene), for a remote
policy whose time includes the network, and when the load of the machine drifts. An online fit
of time against ratio would converge in fewer steps but needs the ratio to vary to identify the
slope, and fails where the slope is flat or the relation is not linear. The asymmetry makes it
approach from the safe side: a miss raises the ratio at once by about what the overrun asks
(with gain 1 and a step time that falls by the set point's size over the full ratio range, one
step lands on the boundary), while slack lowers it by a tenth of that, so the ratio approaches
the least one meeting the set point from above, with hits. With a step-time slope of ``s`` set
points per unit of ratio, the distance to that ratio shrinks by ``1 - LOWER_GAIN * s`` per step
when lowering (monotonically for ``s < 10``). With steady step times the jitter decays to 0
(only the ratio's own changes move the time) and the ratio converges to the least one meeting
the budget itself. With noisy ones the asymmetric gains alone would settle where the misses'
total overrun is a tenth of the hits' total slack, with the mean step time about 0.9 standard
deviations under the set point, and miss ~19 % of steps whatever the noise level; the jitter
margin moves that one standard deviation lower. Driving this class with
``t(r) = 100 ms - 80 ms * r`` against a 60 ms budget (3000 steps, the first 300 left out), it
missed 3 % of the steps under normal noise of 1, 3 or 6 ms, 5 % under skewed (exponential,
3 ms) noise, and, with 5 % of the steps 30 ms late, 5 %: only the late ones
(test/control/test_budget.py checks the 3 ms case).

Edge cases. A budget the cap cannot meet: the ratio rises to the cap and stays there; every
step counts as a miss (a step is a hit when it takes at most the budget; the set point only
steers). A budget met with no reuse: the ratio falls to 0. Budget 0 means off: the ratio is the
cap (the ``cache_ratio`` parameter, as without this module), nothing is counted. A step whose
cache was (re)initialised computed every token whatever the ratio, so its time is counted as a
hit or miss but moves neither the ratio nor the jitter. A step that began before the settings
changed (a ticket of an older generation) is neither counted nor steered on: applying a new
budget or cap is never undone by a step that was in flight.

Reconfiguring: a new budget (or turning steering on or off, see :meth:`LatencyBudget.configure`)
restarts at the cap with zero counts and no jitter (the safe start: the most reuse, then back
off); a new cap alone clamps the current ratio into ``[0, cap]`` and keeps the counts and the
jitter, since the relation of time to ratio and the budget are unchanged.

Thread-safe: the inference worker takes tickets and records steps while the executor thread
reconfigures and reads snapshots.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

RAISE_GAIN = 1.0
"""Ratio added per unit of relative overrun of the set point (see the module docstring)."""
LOWER_GAIN = 0.1
"""Ratio removed per unit of relative slack under the set point: a tenth of :data:`RAISE_GAIN`."""
MARGIN_JITTERS = 1.0
"""The set point lies this many step-time standard deviations under the budget."""
JITTER_WEIGHT = 0.1
"""Weight of the newest step in the running mean of step-time differences (~10 steps' memory)."""
MEAN_ABS_DIFF_PER_SIGMA = 2.0 / math.sqrt(math.pi)
"""E|t_k - t_(k-1)| / s for independent normal step times of standard deviation s (~1.128)."""


@dataclass(frozen=True)
class BudgetTicket:
    """The ratio one step is to run with, and the settings generation it was chosen under."""

    ratio: float
    generation: int


@dataclass(frozen=True)
class BudgetSnapshot:
    """The controller's state for /diagnostics.

    Attributes:
        budget_ms: the budget in milliseconds (0: off).
        steering: whether the ratio is being steered (a budget is set and steering is on).
        ratio: the ratio chosen for the next step, in [0, cap] (None when not steering).
        cap: the largest ratio allowed (the ``cache_ratio`` parameter).
        set_point_ms: the step time aimed at: the budget less the jitter margin (None when not
            steering).
        hits: steps at or under the budget since the budget was set (0 when not steering).
        misses: steps over the budget since then.
    """

    budget_ms: float
    steering: bool
    ratio: float | None
    cap: float
    set_point_ms: float | None
    hits: int
    misses: int


def _check_settings(budget_ms: float, cap: float) -> tuple[float, float]:
    """The budget and cap as floats; they come from validated parameters, so a bad one is a bug.

    Raises:
        ValueError: a budget that is negative or not finite, or a cap outside [0, 1].
    """
    budget_ms, cap = float(budget_ms), float(cap)
    if not (math.isfinite(budget_ms) and budget_ms >= 0.0):
        raise ValueError(f"latency budget must be a finite number of ms >= 0, got {budget_ms}")
    if not 0.0 <= cap <= 1.0:
        raise ValueError(f"cache ratio cap must lie in [0, 1], got {cap}")
    return budget_ms, cap


class LatencyBudget:
    """Chooses each step's cache ratio in ``[0, cap]`` so that steps meet ``budget_ms``.

    Args:
        budget_ms: the step-time budget in milliseconds; 0 turns steering off.
        cap: the largest ratio allowed, in [0, 1].
        steering: False keeps the controller idle even with a budget (the runtime passes False
            in cache mode ``off``, where the ratio has no effect).
        raise_gain, lower_gain: the gains of the control law (module docstring), > 0.

    Raises:
        ValueError: a bad budget, cap or gain (all come from validated settings: a bug).
    """

    def __init__(self, budget_ms: float = 0.0, cap: float = 1.0, *, steering: bool = True,
                 raise_gain: float = RAISE_GAIN, lower_gain: float = LOWER_GAIN) -> None:
        if not (raise_gain > 0.0 and lower_gain > 0.0):
            raise ValueError(f"gains must be > 0, got {raise_gain}, {lower_gain}")
        self._raise_gain, self._lower_gain = float(raise_gain), float(lower_gain)
        self._lock = threading.Lock()
        self._budget_ms, self._cap = _check_settings(budget_ms, cap)
        self._steering = bool(steering)
        self._generation = 0
        self._ratio = self._cap
        self._hits = self._misses = 0
        self._jitter_s: float | None = None  # running mean |t_k - t_(k-1)|
        self._last_s: float | None = None  # the previous steered step's time

    def configure(self, budget_ms: float, cap: float, steering: bool = True) -> None:
        """Take new settings, effective for the next ticket.

        A changed budget or ``steering`` restarts (:meth:`restart`); a changed cap alone clamps
        the current ratio into ``[0, cap]`` and keeps the counts. Either way, steps in flight
        (older tickets) no longer count. Unchanged settings change nothing.

        Raises:
            ValueError: a negative or non-finite budget, or a cap outside [0, 1].
        """
        budget_ms, cap = _check_settings(budget_ms, cap)
        with self._lock:
            if (budget_ms, cap, bool(steering)) == (self._budget_ms, self._cap, self._steering):
                return
            restart = budget_ms != self._budget_ms or bool(steering) != self._steering
            self._budget_ms, self._cap, self._steering = budget_ms, cap, bool(steering)
            if restart:
                self._restart_locked()
            else:
                self._ratio = min(self._ratio, cap)
                self._generation += 1

    def restart(self) -> None:
        """Start over under the same settings: the ratio back at the cap, zero counts, steps in
        flight ignored (the runtime calls it when the cache mode or the policy changes, which
        changes how step time depends on the ratio)."""
        with self._lock:
            self._restart_locked()

    def _restart_locked(self) -> None:
        self._ratio = self._cap
        self._hits = self._misses = 0
        self._jitter_s = self._last_s = None
        self._generation += 1

    @property
    def steering(self) -> bool:
        """Whether the ratio is being steered: a budget is set and steering is on."""
        with self._lock:
            return self._steering_locked()

    def _steering_locked(self) -> bool:
        return self._steering and self._budget_ms > 0.0

    @property
    def ratio(self) -> float:
        """The ratio for the next step: the controller's choice when steering, else the cap."""
        with self._lock:
            return self._ratio if self._steering_locked() else self._cap

    def next_step(self) -> BudgetTicket | None:
        """The ratio the next step should run with, as a ticket to hand back to :meth:`record`;
        None when not steering (the policy keeps the cap)."""
        with self._lock:
            if not self._steering_locked():
                return None
            return BudgetTicket(self._ratio, self._generation)

    def record(self, ticket: BudgetTicket, total_s: float, *, ratio_effective: bool = True) -> None:
        """Count one finished step against the budget and choose the next ratio.

        Args:
            ticket: what :meth:`next_step` gave before the step (its ratio is the one the step
                ran with); one from before the last reconfiguration is ignored.
            total_s: the step's measured wall time in seconds (``StepStats.times_s["total"]``).
            ratio_effective: False when the ratio could not act on this step (its cache was
                reset, every token computed): counted, but neither the ratio nor the jitter
                moves.

        Raises:
            ValueError: a negative or non-finite ``total_s`` (step times come from a clock: a bug).
        """
        total_s = float(total_s)
        if not (math.isfinite(total_s) and total_s >= 0.0):
            raise ValueError(f"step time must be a finite number of seconds >= 0, got {total_s}")
        with self._lock:
            if ticket.generation != self._generation or not self._steering_locked():
                return
            budget_s = self._budget_ms / 1000.0
            if total_s <= budget_s:
                self._hits += 1
            else:
                self._misses += 1
            if not ratio_effective:
                return
            if self._last_s is not None:
                change = abs(total_s - self._last_s)
                self._jitter_s = change if self._jitter_s is None else (
                    (1.0 - JITTER_WEIGHT) * self._jitter_s + JITTER_WEIGHT * change)
            self._last_s = total_s
            overrun = total_s / self._set_point_locked(budget_s) - 1.0
            gain = self._raise_gain if overrun > 0.0 else self._lower_gain
            self._ratio = min(max(ticket.ratio + gain * overrun, 0.0), self._cap)

    def _set_point_locked(self, budget_s: float) -> float:
        """The step time aimed at (s): a jitter margin under the budget, at least half of it."""
        sigma_s = (self._jitter_s or 0.0) / MEAN_ABS_DIFF_PER_SIGMA
        return max(budget_s - MARGIN_JITTERS * sigma_s, budget_s / 2.0)

    def snapshot(self) -> BudgetSnapshot:
        """The current settings, choice and counts (see :class:`BudgetSnapshot`)."""
        with self._lock:
            steering = self._steering_locked()
            set_point_ms = 1000.0 * self._set_point_locked(self._budget_ms / 1000.0)
            return BudgetSnapshot(budget_ms=self._budget_ms, steering=steering,
                                  ratio=self._ratio if steering else None, cap=self._cap,
                                  set_point_ms=set_point_ms if steering else None,
                                  hits=self._hits, misses=self._misses)
