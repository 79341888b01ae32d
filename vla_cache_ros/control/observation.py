"""A one-slot mailbox for the newest camera observation, shared by the executor and the worker.

The subscription callback puts every valid frame; the inference worker takes the newest one it
has not seen yet, waiting when there is none. A frame replaced before the worker took it is a
dropped frame (the policy is slower than the camera), and ``put`` reports it so telemetry can
count it. Inference therefore always starts on the newest frame as soon as the previous step
finishes. Each frame carries the controller's clock generation from its arrival
(:meth:`~vla_cache_ros.control.controller.Controller.on_observation`), so a frame from before a
clock jump can be told apart from a later one whatever their times.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Observation:
    """One camera frame with its timing on the caller's (ROS) clock and its clock generation."""

    image: np.ndarray
    stamp_s: float
    received_s: float
    seq: int
    generation: int = 0


class LatestObservation:
    """Thread-safe newest-frame slot with drop counting and a close for shutdown."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._latest: Observation | None = None
        self._taken_seq = 0
        self._next_seq = 1
        self._closed = False

    def put(self, image: np.ndarray, stamp_s: float, received_s: float,
            generation: int = 0) -> int:
        """Store a frame as the newest; return how many untaken frames it replaced (0 or 1).

        ``generation`` is what ``Controller.on_observation`` returned for the frame.
        """
        with self._condition:
            dropped = int(self._latest is not None and self._latest.seq > self._taken_seq)
            self._latest = Observation(image, float(stamp_s), float(received_s), self._next_seq,
                                       int(generation))
            self._next_seq += 1
            self._condition.notify_all()
            return dropped

    def take(self, timeout_s: float | None = None) -> Observation | None:
        """Return the newest frame not taken before; None on timeout or after :meth:`close`."""
        with self._condition:
            self._condition.wait_for(
                lambda: self._closed or (self._latest is not None
                                         and self._latest.seq > self._taken_seq),
                timeout=timeout_s)
            if self._closed or self._latest is None or self._latest.seq <= self._taken_seq:
                return None
            self._taken_seq = self._latest.seq
            return self._latest

    def clear(self) -> None:
        """Forget the stored frame (after the instruction changed or the clock jumped)."""
        with self._condition:
            if self._latest is not None:
                self._taken_seq = self._latest.seq

    def close(self) -> None:
        """Wake every waiting :meth:`take`; later takes return None at once."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        with self._condition:
            return self._closed
