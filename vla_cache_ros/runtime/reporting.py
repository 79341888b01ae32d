"""Problem reporting for a long-running loop: every problem logged, none flooding the log.

A bad camera stream or a failing model repeats the same problem many times a second. Each
problem is logged at once when it is new for its key (numbers aside), then at most every
:data:`LOG_REPEAT_S` with the count of repeats since; the problems of the last
few seconds (one line per key) are kept for /diagnostics.
Every line is cut to :data:`MESSAGE_LIMIT` characters, so no user text (an instruction, a bad
parameter value) can make a log line or a diagnostics value huge.

rclpy refuses to change a log call site's severity between calls, so warnings and errors go
through separate sinks, and each sink is called from its own line here.
"""
from __future__ import annotations

import re
import threading
import time
import traceback
from typing import Callable

from vla_cache_ros.errors import clip_text

LOG_REPEAT_S = 10.0
"""An unchanged problem is logged again at most this often (seconds), with a count."""
MESSAGE_LIMIT = 600
"""Characters of any one log line / diagnostics value built from inputs."""
RECENT_S = 5.0
"""How long (seconds) a warning keeps the status at WARN."""


class ProblemLog:
    """Throttled warning / error reporting with the last problem kept for diagnostics.

    Thread-safe: the executor and the inference worker both report.

    Args:
        warn: sink for warning lines (e.g. an rclpy logger's ``warning``).
        error: sink for error lines.
        clock: monotonic seconds (throttling uses wall time, not the ROS clock, which can stop
            or jump during bag replay).
    """

    def __init__(self, warn: Callable[[str], None], error: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._warn_sink = warn
        self._error_sink = error
        self._clock = clock
        self._lock = threading.Lock()
        self._logged: dict[str, tuple[str, float, int]] = {}  # key -> (shape, time, repeats)
        self._last: tuple[str, float] | None = None
        self._latest: dict[str, tuple[str, float]] = {}  # key -> its last message, when

    def _line(self, key: str, message: str) -> str | None:
        """Record ``message``; return the line to log now, or None to stay quiet."""
        message = clip_text(message, MESSAGE_LIMIT)
        now = self._clock()
        shape = re.sub(r"\d+(\.\d+)?", "#", message)  # same message, other numbers
        with self._lock:
            self._last = self._latest[key] = (message, now)
            shape_before, logged_at, repeats = self._logged.get(key, ("", -LOG_REPEAT_S, 0))
            if shape_before == shape and now - logged_at < LOG_REPEAT_S:
                self._logged[key] = (shape, logged_at, repeats + 1)
                return None
            self._logged[key] = (shape, now, 0)
        return message + (f" (and {repeats} more like it)" if shape_before == shape and repeats
                          else "")

    def warn(self, key: str, message: str) -> None:
        """Report a warning (bad input, a refused change, an unused step)."""
        line = self._line(key, message)
        if line is not None:
            self._warn_sink(line)

    def error(self, key: str, message: str) -> None:
        """Report an error (a failed step, a fault)."""
        line = self._line(key, message)
        if line is not None:
            self._error_sink(line)

    def exception(self, where: str, error: BaseException) -> str:
        """Report an unexpected exception (a bug or an unforeseen input) as an error, with its
        traceback the first time this kind is seen; return the one-line reason."""
        reason = clip_text(f"internal error in {where}: {type(error).__name__}: {error}",
                           MESSAGE_LIMIT)
        key = f"internal:{where}:{type(error).__name__}"
        with self._lock:
            first = key not in self._logged
        self.error(key, reason)
        if first:  # the traceback once per kind: enough to file a bug, not a flood
            self._error_sink("".join(traceback.format_exception(error)).rstrip())
        return reason

    @property
    def last(self) -> str | None:
        """The last problem reported (None if none yet)."""
        with self._lock:
            return None if self._last is None else self._last[0]

    def current(self, within_s: float = RECENT_S) -> str | None:
        """Every problem (one line per key) reported in the last ``within_s`` seconds, the most
        recent first, joined by " | " and cut to :data:`MESSAGE_LIMIT`; the last problem ever if
        none is that recent (None if none yet).

        Regression (a CI flake): /diagnostics showed only the last problem, and a consequence
        reported more often (each control step's "joint_states is stale") hid its cause (the
        rejected messages that made the stream stale) from most diagnostics messages.
        """
        with self._lock:
            now = self._clock()
            lines = sorted((entry for entry in self._latest.values() if now - entry[1] < within_s),
                           key=lambda entry: entry[1], reverse=True)
            if not lines:
                return None if self._last is None else self._last[0]
            return clip_text(" | ".join(message for message, _ in lines), MESSAGE_LIMIT)

    def recent(self, within_s: float = RECENT_S) -> str | None:
        """The last problem if it was reported in the last ``within_s`` seconds."""
        with self._lock:
            if self._last is None or self._clock() - self._last[1] >= within_s:
                return None
            return self._last[0]
