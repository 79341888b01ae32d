"""Every command interface of the simulated arm moves it as commanded, within joint limits."""
from __future__ import annotations

import numpy as np
import pytest

from vla_cache_ros.errors import SimCommandError, UserFacingError
from vla_cache_ros.geometry import euler_from_matrix, rot_z
from vla_cache_ros.sim.env import TabletopSim
from vla_cache_ros.sim.scene import ARM_JOINTS, GRIPPER_MAX_OPENING_M, HOME_JOINT_POSITIONS


@pytest.fixture()
def fresh(sim: TabletopSim) -> TabletopSim:
    sim.reset(seed=0, family="touch")
    return sim


def test_the_arm_holds_still_without_commands(fresh: TabletopSim) -> None:
    start = fresh.ee_position()
    fresh.advance(1.0)
    np.testing.assert_allclose(fresh.joint_positions(), HOME_JOINT_POSITIONS, atol=2e-3)
    assert np.linalg.norm(fresh.ee_position() - start) < 2e-3


def test_joint_position_command_reaches_the_target(fresh: TabletopSim) -> None:
    target = np.array([0.4, 0.3, 0.5, -0.6, 0.8])
    fresh.controller.command_joint_positions(target)
    fresh.advance(1.0)
    np.testing.assert_allclose(fresh.joint_positions(), target, atol=0.02)


def test_joint_trajectory_passes_its_points_on_time(fresh: TabletopSim) -> None:
    t0 = fresh.time
    fresh.controller.command_trajectory(t0, ["elbow", "waist"], [1.0, 2.0], [[0.6, 0.3], [0.2, -0.3]])
    fresh.advance(1.0)
    q = fresh.joint_positions()
    assert q[ARM_JOINTS.index("elbow")] == pytest.approx(0.6, abs=0.05)
    assert q[ARM_JOINTS.index("waist")] == pytest.approx(0.3, abs=0.05)
    assert q[ARM_JOINTS.index("shoulder")] == pytest.approx(0.0, abs=0.01)  # not in the message: held
    fresh.advance(1.5)
    q = fresh.joint_positions()
    assert q[ARM_JOINTS.index("elbow")] == pytest.approx(0.2, abs=0.02)
    assert q[ARM_JOINTS.index("waist")] == pytest.approx(-0.3, abs=0.02)


def test_base_frame_twist_moves_the_end_effector_at_that_velocity(fresh: TabletopSim) -> None:
    start, start_rotation = fresh.ee_position(), fresh.ee_rotation()
    velocity = np.array([0.03, -0.05, -0.04])
    for _ in range(10):  # re-sent like a servo client does, 10 x 0.1 s
        fresh.controller.command_twist(fresh.time, velocity, [0.0, 0.0, 0.0])
        fresh.advance(0.1)
    fresh.controller.stop()
    fresh.advance(0.3)  # let the arm catch up with its targets
    moved = fresh.ee_position() - start
    assert np.linalg.norm(moved - velocity * 1.0) < 0.006
    np.testing.assert_allclose(fresh.ee_rotation(), start_rotation, atol=0.03)


def test_twist_stops_after_its_timeout(fresh: TabletopSim) -> None:
    fresh.controller.command_twist(fresh.time, [0.0, 0.05, 0.0], [0.0, 0.0, 0.0])
    timeout = fresh.controller.settings.twist_timeout_s
    fresh.advance(timeout + 0.3)
    after_timeout = fresh.ee_position()
    fresh.advance(1.0)
    assert np.linalg.norm(fresh.ee_position() - after_timeout) < 2e-3
    assert after_timeout[1] == pytest.approx(0.05 * timeout, abs=0.01)


def test_angular_twist_turns_the_gripper_about_the_vertical(fresh: TabletopSim) -> None:
    fresh.controller.command_twist(fresh.time, [0.0, 0.0, 0.0], [0.0, 0.0, 0.6])
    fresh.advance(0.5)
    fresh.controller.stop()
    fresh.advance(0.5)
    assert euler_from_matrix(fresh.ee_rotation())[2] == pytest.approx(0.3, abs=0.03)


def test_tool_frame_twist_is_rotated_into_the_base_frame(fresh: TabletopSim) -> None:
    # Turn the gripper by 90 degrees about z: tool x then points along base y.
    q = fresh.joint_positions()
    q[ARM_JOINTS.index("wrist_roll")] = np.pi / 2
    fresh.controller.command_joint_positions(q)
    fresh.advance(1.5)
    np.testing.assert_allclose(fresh.ee_rotation(), rot_z(np.pi / 2), atol=0.02)
    start = fresh.ee_position()
    fresh.controller.command_twist(fresh.time, [0.05, 0.0, 0.0], [0.0, 0.0, 0.0], tool_frame=True)
    fresh.advance(0.4)
    fresh.controller.stop()
    fresh.advance(0.4)
    moved = fresh.ee_position() - start
    assert moved[1] == pytest.approx(0.02, abs=0.006) and abs(moved[0]) < 0.006


def test_gripper_closes_and_opens(fresh: TabletopSim) -> None:
    assert fresh.finger_position() == pytest.approx(GRIPPER_MAX_OPENING_M, abs=1e-3)
    fresh.controller.command_gripper(0.0)
    fresh.advance(0.5)
    assert fresh.finger_position() < 1e-3 and fresh.gripper_opening() < 0.03
    fresh.controller.command_gripper(0.5)
    fresh.advance(0.5)
    assert fresh.gripper_opening() == pytest.approx(0.5, abs=0.05)


def test_apply_action_executes_an_end_effector_delta(fresh: TabletopSim) -> None:
    start = fresh.ee_position()
    delta = np.array([0.01, 0.015, -0.02])
    fresh.apply_action(np.concatenate([delta, [0.0, 0.0, 0.1], [0.0]]))
    fresh.controller.stop()
    fresh.advance(0.3)
    np.testing.assert_allclose(fresh.ee_position() - start, delta, atol=3e-3)
    assert euler_from_matrix(fresh.ee_rotation())[2] == pytest.approx(0.1, abs=0.01)
    assert fresh.gripper_opening() < 0.1


def test_joint_limits_hold_for_every_command(fresh: TabletopSim) -> None:
    lower, upper = fresh.ik.lower, fresh.ik.upper
    beyond = np.array([10.0, 0.0, 0.0, 0.0, -10.0])  # waist and wrist roll far out of range
    fresh.controller.command_joint_positions(beyond)
    fresh.advance(2.5)
    expected = np.clip(beyond, lower, upper)
    np.testing.assert_allclose(fresh.controller.q_target, expected)
    np.testing.assert_allclose(fresh.joint_positions(), expected, atol=0.02)
    # A twist driving far out of reach: the targets never leave the ranges.
    for _ in range(30):
        fresh.controller.command_twist(fresh.time, [0.5, 0.0, 0.5], [0.0, 3.0, 0.0])
        fresh.advance(0.1)
        assert np.all(fresh.controller.q_target <= upper + 1e-9)
        assert np.all(fresh.controller.q_target >= lower - 1e-9)
    at_limit = np.isclose(fresh.controller.q_target, upper) | np.isclose(fresh.controller.q_target, lower)
    assert at_limit.any()  # the twist did drive some joint into its limit


@pytest.mark.parametrize("command", [
    lambda c, t: c.command_joint_positions([0.0, 0.1]),
    lambda c, t: c.command_joint_positions([np.nan] * 5),
    lambda c, t: c.command_trajectory(t, ["knee"], [1.0], [[0.0]]),
    lambda c, t: c.command_trajectory(t, ["elbow"], [1.0, 0.5], [[0.0], [0.1]]),
    lambda c, t: c.command_trajectory(t, ["elbow"], [1.0], [[0.0, 0.2]]),
    lambda c, t: c.command_trajectory(t, ["elbow"], [], []),
    lambda c, t: c.command_twist(t, [0.0, 0.0], [0.0, 0.0, 0.0]),
    lambda c, t: c.command_gripper(float("inf")),
])
def test_malformed_commands_are_refused_clearly(fresh: TabletopSim, command) -> None:
    before = fresh.controller.q_target.copy()
    with pytest.raises(SimCommandError) as raised:
        command(fresh.controller, fresh.time)
    assert isinstance(raised.value, UserFacingError) and str(raised.value)
    fresh.advance(0.2)
    np.testing.assert_allclose(fresh.controller.q_target, before, atol=1e-6)


def test_ik_solves_a_reachable_pose_and_reports_an_unreachable_one(sim: TabletopSim) -> None:
    target = np.array([0.28, -0.1, 0.05])
    q, converged = sim.ik.solve(np.zeros(len(ARM_JOINTS)), target, rot_z(0.4))
    assert converged
    position, rotation = sim.ik.forward(q)
    np.testing.assert_allclose(position, target, atol=2e-4)
    np.testing.assert_allclose(rotation, rot_z(0.4), atol=3e-3)
    q, converged = sim.ik.solve(np.zeros(len(ARM_JOINTS)), np.array([1.5, 0.0, 0.1]), np.eye(3))
    assert not converged
    assert np.all(q <= sim.ik.upper) and np.all(q >= sim.ik.lower)
