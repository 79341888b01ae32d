"""The live-running schedule used by the ROS node: camera rate, status updates, monotonic clock."""
from __future__ import annotations

import pytest

from vla_cache_ros.errors import ConfigurationError, SimCommandError
from vla_cache_ros.sim.env import TabletopSim
from vla_cache_ros.sim.runtime import SimRuntime, twist_in_tool_frame


def test_camera_frames_come_at_the_camera_rate(sim: TabletopSim) -> None:
    runtime = SimRuntime(sim, tick_s=0.01, camera_period_s=0.1)
    runtime.reset(seed=0)
    outputs = [runtime.tick() for _ in range(99)]  # up to t = 0.99 s: frames at 0.01, 0.1, ..., 0.9
    images = [o.image for o in outputs if o.image is not None]
    assert len(images) == 10
    assert images[0].shape == (224, 224, 3)
    statuses = [o.status for o in outputs if o.status is not None]
    assert 2 <= len(statuses) <= 3  # first tick, then every 0.5 s


def test_status_is_published_as_soon_as_the_episode_ends(sim: TabletopSim) -> None:
    runtime = SimRuntime(sim, tick_s=0.01, camera_period_s=0.1, status_period_s=100.0)
    runtime.reset(seed=2, family="touch")
    assert runtime.tick().status is not None  # the new episode's first status
    sim.controller.command_gripper(0.0)
    above = sim.object_position(sim.status().target) + [0.0, 0.0, 0.005]
    q, _ = sim.ik.solve(sim.joint_positions(), above, sim.ee_rotation())
    sim.controller.command_joint_positions(q)
    published = []
    for _ in range(300):
        output = runtime.tick()
        if output.status is not None:
            published.append(output.status)
    assert len(published) == 1 and published[0].success


def test_clock_is_monotonic_across_resets(sim: TabletopSim) -> None:
    runtime = SimRuntime(sim, tick_s=0.01, camera_period_s=0.1)
    runtime.reset(seed=0)
    for _ in range(50):
        runtime.tick()
    before = runtime.clock_s
    runtime.reset(seed=1)
    assert sim.time == 0.0 and runtime.clock_s == pytest.approx(before)
    runtime.tick()
    assert runtime.clock_s > before


def test_camera_faster_than_the_tick_is_refused(sim: TabletopSim) -> None:
    with pytest.raises(ConfigurationError):
        SimRuntime(sim, tick_s=0.02, camera_period_s=0.01)


def test_twist_frames() -> None:
    assert twist_in_tool_frame("") is False and twist_in_tool_frame("base_link") is False
    assert twist_in_tool_frame("tcp") is True and twist_in_tool_frame("tool0") is True
    with pytest.raises(SimCommandError, match="camera_link"):
        twist_in_tool_frame("camera_link")
