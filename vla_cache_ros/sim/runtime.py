"""Running the simulator as a live robot: ticks, publication schedule, sim clock, pacing (ROS-free).

The ROS node (:mod:`vla_cache_ros.ros.sim_node`) owns one :class:`SimRuntime` and calls
:meth:`SimRuntime.tick` from its loop thread; each tick advances physics by ``tick_s`` and says
what is due for publication (joint states every tick, a camera image at the camera rate, the
episode status when it changed or periodically). :class:`Pacer` keeps ticks in step with the
wall clock at a real-time factor. The runtime keeps a monotonic simulated clock across episodes
(``clock_s``) for ``/clock``, since the simulator's own time restarts at every reset.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from vla_cache_ros.errors import ConfigurationError, SimCommandError
from vla_cache_ros.sim.env import EpisodeStatus, TabletopSim
from vla_cache_ros.sim.scene import BASE_FRAME, TCP_SITE
from vla_cache_ros.sim.tasks import Task

BASE_FRAME_IDS = ("", BASE_FRAME, "world", "base")
TOOL_FRAME_IDS = (TCP_SITE, "tool0", "ee_link", "end_effector")


def twist_in_tool_frame(frame_id: str) -> bool:
    """Whether a twist stamped with ``frame_id`` is in the tool frame (else the base frame).

    There is no tf here: other frames are refused with a :class:`SimCommandError`.
    """
    if frame_id in BASE_FRAME_IDS:
        return False
    if frame_id in TOOL_FRAME_IDS:
        return True
    raise SimCommandError(f"twist frame_id {frame_id!r} is not supported; use one of "
                          f"{[f for f in BASE_FRAME_IDS if f]} (base) or {list(TOOL_FRAME_IDS)} (tool)")


@dataclass
class TickOutput:
    """What a tick made due: the image to publish (or None) and the status (or None)."""

    image: np.ndarray | None
    status: EpisodeStatus | None


class SimRuntime:
    """Ticks a :class:`TabletopSim` and schedules publications; see the module docstring."""

    def __init__(self, sim: TabletopSim, tick_s: float, camera_period_s: float,
                 status_period_s: float = 0.5) -> None:
        self.sim = sim
        self.tick_s = tick_s
        self.camera_period_s = camera_period_s
        self.status_period_s = status_period_s
        self._clock_base = 0.0
        self._next_camera = 0.0
        self._next_status = 0.0
        self._last_status: tuple[int, bool, bool] | None = None
        self.check_periods()

    def check_periods(self) -> None:
        if not self.tick_s > 0 or not self.camera_period_s > 0:
            raise ConfigurationError("tick and camera periods must be positive")
        if self.camera_period_s < self.tick_s:
            raise ConfigurationError(f"the camera period ({self.camera_period_s:.4f} s) cannot be shorter "
                                     f"than the physics tick ({self.tick_s:.4f} s)")

    @property
    def clock_s(self) -> float:
        """Simulated seconds since the runtime started (monotonic across episodes)."""
        return self._clock_base + self.sim.time

    def reset(self, seed: int, family: str | None = None) -> Task:
        """Start a new episode; the camera and status are due at once."""
        self._clock_base += self.sim.time
        task = self.sim.reset(seed, family)
        self._next_camera = self._next_status = 0.0
        self._last_status = None
        return task

    def tick(self) -> TickOutput:
        """Advance by ``tick_s``; return the image and status due now (if any)."""
        self.sim.advance(self.tick_s)
        now = self.sim.time
        image = None
        if now >= self._next_camera - 1e-9:
            image = self.sim.render()
            # Keep the camera on its grid; skip missed frames instead of bursting.
            self._next_camera = max(self._next_camera + self.camera_period_s, now + 0.5 * self.camera_period_s)
        return TickOutput(image, self.status_if_due())

    def status_if_due(self) -> EpisodeStatus | None:
        status = self.sim.status()
        key = (status.episode, status.success, status.timed_out)
        if key != self._last_status or self.sim.time >= self._next_status - 1e-9:
            self._last_status = key
            self._next_status = self.sim.time + self.status_period_s
            return status
        return None


class Pacer:
    """Sleeps so that simulated time advances at ``real_time_factor`` x the wall clock.

    When the loop falls behind by more than ``max_lag_s`` of wall time, it stops trying to
    catch up (``lagging`` counts those events) instead of running flat out.
    """

    def __init__(self, real_time_factor: float = 1.0, max_lag_s: float = 0.25) -> None:
        self.real_time_factor = real_time_factor
        self.max_lag_s = max_lag_s
        self.lagging = 0
        self._deadline: float | None = None

    def wait(self, sim_seconds: float) -> None:
        """Block until ``sim_seconds`` more simulated time may have passed."""
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now
        self._deadline += sim_seconds / self.real_time_factor
        delay = self._deadline - now
        if delay > 0:
            time.sleep(delay)
        elif -delay > self.max_lag_s:
            self.lagging += 1
            self._deadline = now
