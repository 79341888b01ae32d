"""Rotation conventions shared by the simulator, the dataset and the action mapping (numpy only).

Conventions (the OpenVLA / Bridge convention for end-effector deltas):
- quaternions are (w, x, y, z), as in MuJoCo and geometry_msgs order-mapped by the ROS layer;
- Euler angles are (roll, pitch, yaw), extrinsic about the fixed x, y, z axes, i.e.
  ``R = Rz(yaw) @ Ry(pitch) @ Rx(roll)``;
- a rotation delta between two orientations is ``R_delta = R_next @ R_current.T`` (expressed in
  the base frame); as an action it is stored as Euler angles, and executed as the angular
  velocity ``rotvec(R_delta) / period``.
"""
from __future__ import annotations

import numpy as np


def rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def matrix_from_euler(euler: np.ndarray) -> np.ndarray:
    """Rotation matrix from (roll, pitch, yaw), extrinsic xyz."""
    roll, pitch, yaw = (float(v) for v in euler)
    return rot_z(yaw) @ rot_y(pitch) @ rot_x(roll)


def euler_from_matrix(matrix: np.ndarray) -> np.ndarray:
    """(roll, pitch, yaw), extrinsic xyz, of a rotation matrix; pitch in [-pi/2, pi/2]."""
    r = np.asarray(matrix, float)
    pitch = np.arcsin(np.clip(-r[2, 0], -1.0, 1.0))
    if abs(r[2, 0]) < 1.0 - 1e-9:
        roll = np.arctan2(r[2, 1], r[2, 2])
        yaw = np.arctan2(r[1, 0], r[0, 0])
    else:  # gimbal lock: fold everything into yaw
        roll = 0.0
        yaw = np.arctan2(-r[0, 1], r[1, 1])
    return np.array([roll, pitch, yaw])


def matrix_from_rotvec(rotvec: np.ndarray) -> np.ndarray:
    """Rodrigues' formula: rotation of ``|rotvec|`` radians about ``rotvec``."""
    v = np.asarray(rotvec, float)
    angle = float(np.linalg.norm(v))
    if angle < 1e-12:
        return np.eye(3)
    k = v / angle
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(angle) * kx + (1.0 - np.cos(angle)) * (kx @ kx)


def rotvec_from_matrix(matrix: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle, angle in [0, pi]) of a rotation matrix."""
    r = np.asarray(matrix, float)
    cos_angle = np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)
    angle = float(np.arccos(cos_angle))
    if angle < 1e-9:
        return 0.5 * np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    if np.pi - angle < 1e-6:
        # Near a half turn the antisymmetric part vanishes; take the axis from the symmetric part.
        axis = np.sqrt(np.clip((np.diag(r) + 1.0) / 2.0, 0.0, None))
        largest = int(np.argmax(axis))
        for other in range(3):
            if other != largest and r[largest, other] + r[other, largest] < 0:
                axis[other] = -axis[other]
        return axis / np.linalg.norm(axis) * angle
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / (2.0 * np.sin(angle))
    return axis * angle


def euler_to_rotvec(euler: np.ndarray) -> np.ndarray:
    return rotvec_from_matrix(matrix_from_euler(euler))


def rotvec_to_euler(rotvec: np.ndarray) -> np.ndarray:
    return euler_from_matrix(matrix_from_rotvec(rotvec))


def quat_from_matrix(matrix: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) with w >= 0 of a rotation matrix."""
    r = np.asarray(matrix, float)
    trace = np.trace(r)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = np.array([0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s])
    else:
        i = int(np.argmax(np.diag(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + r[i, i] - r[j, j] - r[k, k])
        q = np.empty(4)
        q[0] = (r[k, j] - r[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (r[j, i] + r[i, j]) / s
        q[1 + k] = (r[k, i] + r[i, k]) / s
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def matrix_from_quat(quat: np.ndarray) -> np.ndarray:
    """Rotation matrix of a quaternion (w, x, y, z); normalises its input."""
    w, x, y, z = np.asarray(quat, float) / np.linalg.norm(quat)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def wrap_angle(angle: float) -> float:
    """Angle wrapped into [-pi, pi)."""
    return float((angle + np.pi) % (2.0 * np.pi) - np.pi)


def clip_norm(vector: np.ndarray, max_norm: float) -> np.ndarray:
    """``vector`` scaled down, if needed, so that its Euclidean norm is at most ``max_norm``."""
    v = np.asarray(vector, float)
    norm = float(np.linalg.norm(v))
    return v if norm <= max_norm or norm == 0.0 else v * (max_norm / norm)
