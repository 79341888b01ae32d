"""Rotation conventions: Euler (extrinsic xyz), rotation vectors and quaternions agree."""
from __future__ import annotations

import numpy as np
import pytest

from vla_cache_ros import geometry as g


@pytest.mark.parametrize("euler", [(0.1, -0.2, 0.3), (0.0, 0.0, 2.5), (-1.0, 1.2, -3.0), (0.0, 0.0, 0.0)])
def test_euler_matrix_quaternion_rotvec_round_trips(euler: tuple[float, float, float]) -> None:
    matrix = g.matrix_from_euler(np.array(euler))
    np.testing.assert_allclose(g.euler_from_matrix(matrix), euler, atol=1e-9)
    np.testing.assert_allclose(g.matrix_from_quat(g.quat_from_matrix(matrix)), matrix, atol=1e-9)
    np.testing.assert_allclose(g.matrix_from_rotvec(g.rotvec_from_matrix(matrix)), matrix, atol=1e-9)


def test_euler_is_extrinsic_xyz() -> None:
    roll, pitch, yaw = 0.3, -0.4, 1.1
    expected = g.rot_z(yaw) @ g.rot_y(pitch) @ g.rot_x(roll)
    np.testing.assert_allclose(g.matrix_from_euler(np.array([roll, pitch, yaw])), expected)


def test_single_axis_euler_equals_rotation_vector() -> None:
    np.testing.assert_allclose(g.euler_to_rotvec(np.array([0.0, 0.0, 0.25])), [0.0, 0.0, 0.25], atol=1e-12)
    np.testing.assert_allclose(g.rotvec_to_euler(np.array([0.2, 0.0, 0.0])), [0.2, 0.0, 0.0], atol=1e-12)


def test_half_turn_rotation_vector() -> None:
    rotvec = g.rotvec_from_matrix(g.rot_x(np.pi))
    np.testing.assert_allclose(np.abs(rotvec), [np.pi, 0.0, 0.0], atol=1e-6)


def test_clip_norm_and_wrap() -> None:
    np.testing.assert_allclose(g.clip_norm(np.array([3.0, 4.0]), 1.0), [0.6, 0.8])
    np.testing.assert_allclose(g.clip_norm(np.array([0.3, 0.4]), 1.0), [0.3, 0.4])
    assert g.wrap_angle(3 * np.pi / 2) == pytest.approx(-np.pi / 2)
