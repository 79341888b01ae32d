"""Differential inverse kinematics for the arm: end-effector twists -> joint motion.

Damped least squares on a weighted 6-D task (linear velocity in m/s, angular velocity in rad/s,
rotation rows scaled down so that positions win where the 5-joint arm cannot do both), with
joint-limit handling by clamping: a joint that would leave its range is pinned at the limit and
the remaining joints are re-solved for what is left of the task. Kinematics run on a private
``MjData`` so the physics state is never touched.
"""
from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from vla_cache_ros.geometry import rotvec_from_matrix


@dataclass(frozen=True)
class IKSettings:
    """Tuning of the solver.

    Attributes:
        damping: Levenberg-Marquardt damping (lambda) of the least-squares solve.
        rotation_weight: weight of the angular rows relative to the linear rows (m vs rad).
        limit_margin_rad: joints are kept this far inside their limits.
    """

    damping: float = 2e-3
    rotation_weight: float = 0.25
    limit_margin_rad: float = 0.02


class DifferentialIK:
    """Kinematics of one site over a chain of hinge joints of a MuJoCo model."""

    def __init__(self, model: mujoco.MjModel, site_name: str, joint_names: tuple[str, ...],
                 settings: IKSettings = IKSettings()) -> None:
        self.model = model
        self.settings = settings
        self._data = mujoco.MjData(model)
        self._site_id = model.site(site_name).id
        joint_ids = [model.joint(name).id for name in joint_names]
        self._qpos_adr = np.array([model.jnt_qposadr[j] for j in joint_ids])
        self._dof_adr = np.array([model.jnt_dofadr[j] for j in joint_ids])
        ranges = np.array([model.jnt_range[j] for j in joint_ids])
        self.lower = ranges[:, 0] + settings.limit_margin_rad
        self.upper = ranges[:, 1] - settings.limit_margin_rad
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))
        self._weights = np.array([1.0, 1.0, 1.0] + [settings.rotation_weight] * 3)

    @property
    def num_joints(self) -> int:
        return len(self._qpos_adr)

    def _set(self, q: np.ndarray) -> None:
        self._data.qpos[self._qpos_adr] = q
        mujoco.mj_kinematics(self.model, self._data)
        mujoco.mj_comPos(self.model, self._data)

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Site position (3,) and rotation matrix (3, 3) at joint positions ``q``."""
        self._set(q)
        return (self._data.site_xpos[self._site_id].copy(),
                self._data.site_xmat[self._site_id].reshape(3, 3).copy())

    def jacobian(self, q: np.ndarray) -> np.ndarray:
        """6 x n Jacobian (linear rows first) of the site at ``q``, in the base frame."""
        self._set(q)
        mujoco.mj_jacSite(self.model, self._data, self._jacp, self._jacr, self._site_id)
        return np.vstack([self._jacp[:, self._dof_adr], self._jacr[:, self._dof_adr]])

    def clamp(self, q: np.ndarray) -> np.ndarray:
        """``q`` clipped into the joint ranges (minus the safety margin)."""
        return np.clip(q, self.lower, self.upper)

    def _solve(self, jac: np.ndarray, error: np.ndarray) -> np.ndarray:
        jw = jac * self._weights[:, None]
        ew = error * self._weights
        lam2 = self.settings.damping ** 2
        return jw.T @ np.linalg.solve(jw @ jw.T + lam2 * np.eye(6), ew)

    def step(self, q: np.ndarray, displacement: np.ndarray) -> np.ndarray:
        """Joint positions after moving the site by a small 6-D ``displacement``.

        ``displacement`` is (dx, dy, dz, rx, ry, rz): a translation in metres and a rotation
        vector in radians, both in the base frame (a twist times a time step). The result
        always lies within the joint limits.
        """
        q = np.asarray(q, float)
        jac = self.jacobian(q)
        free = np.ones(self.num_joints, bool)
        dq = np.zeros(self.num_joints)
        remaining = np.asarray(displacement, float).copy()
        for _ in range(self.num_joints):
            dq_free = np.zeros(self.num_joints)
            if free.any():
                dq_free[free] = self._solve(jac[:, free], remaining)
            candidate = q + dq + dq_free
            violating = free & ((candidate < self.lower) | (candidate > self.upper))
            if not violating.any():
                dq += dq_free
                break
            # Pin the violating joints at their limits and re-solve the rest for what remains.
            pinned = np.clip(candidate[violating], self.lower[violating], self.upper[violating])
            dq_pinned = np.zeros(self.num_joints)
            dq_pinned[violating] = pinned - (q + dq)[violating]
            remaining -= jac @ dq_pinned
            dq += dq_pinned
            free &= ~violating
        return self.clamp(q + dq)

    def solve(self, q_start: np.ndarray, target_position: np.ndarray, target_rotation: np.ndarray,
              max_iterations: int = 200, tolerance_m: float = 1e-4,
              max_step: float = 0.05) -> tuple[np.ndarray, bool]:
        """Joint positions placing the site at a pose, by iterating :meth:`step` from ``q_start``.

        Returns (q, converged); ``converged`` is false when the pose is out of reach, in which
        case q is the closest configuration found.
        """
        q = self.clamp(np.asarray(q_start, float))
        for _ in range(max_iterations):
            position, rotation = self.forward(q)
            error = np.concatenate([target_position - position,
                                    rotvec_from_matrix(target_rotation @ rotation.T)])
            if np.linalg.norm(error[:3]) < tolerance_m and np.linalg.norm(error[3:]) < 10 * tolerance_m:
                return q, True
            norm = np.linalg.norm(error)
            q = self.step(q, error if norm <= max_step else error * (max_step / norm))
        return q, False
