"""Elapsed time on a clock that can jump: the one rule every age and expiry in control/ follows.

The node passes ROS time, which is sim time during bag replay and in simulation. That clock goes
back when a bag loops (``vla-cache play --loop``) or a simulator resets, and forward when playback
skips. A difference "now - then" of two such times is therefore an age only when it is not
negative: a "then" later than "now" means the clock went back since "then" (or the stamp came
from another clock), and whatever it dates is stale, never fresh, and never "time remaining".

Threads sample the clock a little apart (the inference worker reads it, then waits for the
controller's lock while the executor records an input that arrived meanwhile), so a "then" at
most :data:`CLOCK_SKEW_TOLERANCE_S` later than "now" counts as "just now". A backward jump
smaller than that is indistinguishable from this skew and is not treated as a jump.
"""
from __future__ import annotations

CLOCK_SKEW_TOLERANCE_S = 0.05
"""Seconds by which a "then" may lie after "now" and still count as simultaneous (thread skew;
well below any sensible ``max_obs_age_s`` and one 20 Hz control period)."""


def elapsed_s(now_s: float, then_s: float) -> float:
    """Seconds from ``then_s`` to ``now_s`` on the caller's clock.

    Returns ``now_s - then_s``, except that a ``then_s`` at most :data:`CLOCK_SKEW_TOLERANCE_S`
    after ``now_s`` gives 0.0. A negative result means the clock went back since ``then_s``:
    callers must treat it as stale or expired.
    """
    elapsed = now_s - then_s
    if -CLOCK_SKEW_TOLERANCE_S <= elapsed < 0.0:
        return 0.0
    return elapsed


def is_fresh(age_s: float | None, max_age_s: float) -> bool:
    """Whether an age from :func:`elapsed_s` is known, not negative and at most ``max_age_s``."""
    return age_s is not None and 0.0 <= age_s <= max_age_s


def went_back(now_s: float, then_s: float) -> bool:
    """Whether the clock went back since ``then_s`` (by more than the skew tolerance)."""
    return elapsed_s(now_s, then_s) < 0.0
