"""The simulated tabletop arm: physics, controllers, camera and episode bookkeeping in one object.

:class:`TabletopSim` is what both the ROS node and the data collection drive. Time is simulated
time (``sim.time``, seconds since the episode's reset); nothing here reads a wall clock.

- ``reset(seed, family)`` lays out a new episode; ``advance(seconds)`` runs physics with the
  controllers updating at ``controller_period_s``; commands go through ``sim.controller``.
- ``apply_action(a)`` executes one 7-D OpenVLA-style end-effector delta action over one
  ``control_period_s`` (see :mod:`vla_cache_ros.geometry` for the rotation convention).
- ``render()`` gives the 224x224 RGB third-person camera image.
- ``status()`` reports the episode: success is latched when first detected; the episode
  times out after ``episode_timeout_s`` without success.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import mujoco
import numpy as np

from vla_cache_ros.errors import RenderingUnavailableError, SimCommandError, UserFacingError
from vla_cache_ros.geometry import euler_from_matrix, euler_to_rotvec, quat_from_matrix
from vla_cache_ros.sim.controller import ArmController, ControllerSettings
from vla_cache_ros.sim.ik import DifferentialIK
from vla_cache_ros.sim.scene import (
    ARM_JOINTS,
    CAMERA_NAME,
    GRIPPER_ACTUATOR,
    GRIPPER_BODIES,
    GRIPPER_JOINT,
    GRIPPER_MAX_OPENING_M,
    HOME_JOINT_POSITIONS,
    IMAGE_SIZE,
    OBJECTS,
    TCP_SITE,
    build_scene_xml,
)
from vla_cache_ros.sim.tasks import Task, family_of, sample_episode

ACTION_DIM = 7


@dataclass(frozen=True)
class SimConfig:
    """Timing of the simulation.

    Attributes:
        control_period_s: duration of one :meth:`TabletopSim.apply_action` (one dataset step).
        controller_period_s: update period of the joint-target controllers (like ros2_control).
        episode_timeout_s: an episode without success ends (timed out) after this long.
        settle_s: physics run at reset so that objects rest before time 0.
    """

    control_period_s: float = 0.1
    controller_period_s: float = 0.01
    episode_timeout_s: float = 20.0
    settle_s: float = 0.2
    controller: ControllerSettings = field(default_factory=ControllerSettings)

    def __post_init__(self) -> None:
        for name in ("control_period_s", "controller_period_s", "episode_timeout_s"):
            if not getattr(self, name) > 0:
                raise UserFacingError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class EpisodeStatus:
    """Where the current episode stands; ``done`` once it succeeded or timed out."""

    episode: int
    seed: int
    family: str
    target: str
    instruction: str
    elapsed_s: float
    success: bool
    timed_out: bool
    success_time_s: float | None

    @property
    def done(self) -> bool:
        return self.success or self.timed_out

    def to_dict(self) -> dict:
        return {**asdict(self), "done": self.done}


class TabletopSim:
    """The arm, the table and the objects; see the module docstring."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.model = mujoco.MjModel.from_xml_string(build_scene_xml())
        self.data = mujoco.MjData(self.model)
        model = self.model
        self._substeps_per_update = max(1, round(self.config.controller_period_s / model.opt.timestep))
        arm_ids = [model.joint(name).id for name in ARM_JOINTS]
        self._arm_qpos = np.array([model.jnt_qposadr[j] for j in arm_ids])
        self._arm_dof = np.array([model.jnt_dofadr[j] for j in arm_ids])
        self._arm_actuators = np.array([model.actuator(name).id for name in ARM_JOINTS])
        self._gripper_actuator = model.actuator(GRIPPER_ACTUATOR).id
        self._gripper_qpos = model.jnt_qposadr[model.joint(GRIPPER_JOINT).id]
        self._gripper_dof = model.jnt_dofadr[model.joint(GRIPPER_JOINT).id]
        self._site = model.site(TCP_SITE).id
        self._gripper_body_ids = {model.body(name).id for name in GRIPPER_BODIES}
        self._body_ids = {obj.name: model.body(obj.name).id for obj in OBJECTS}
        self.ik = DifferentialIK(model, TCP_SITE, ARM_JOINTS)
        self.controller = ArmController(self.ik, ARM_JOINTS, self.config.controller)
        self._renderer: mujoco.Renderer | None = None
        self.task: Task | None = None
        self.seed = -1
        self.episode = -1
        self._next_update = 0.0
        self._success_time: float | None = None
        self._timed_out = False

    # ------------------------------------------------------------------ episodes
    def reset(self, seed: int, family: str | None = None, target: str | None = None) -> Task:
        """Start a new episode for ``seed``; returns its task. Arm at home, gripper open."""
        task, layout = sample_episode(int(seed), family, target)
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[self._arm_qpos] = HOME_JOINT_POSITIONS
        opening = GRIPPER_MAX_OPENING_M
        self.data.qpos[self._gripper_qpos] = opening
        self.data.qpos[self.model.jnt_qposadr[self.model.joint("finger_right").id]] = opening
        for obj in OBJECTS:
            x, y = layout.positions[obj.name]
            if obj.movable:
                adr = self.model.jnt_qposadr[self.model.joint(obj.name).id]
                yaw = layout.yaws[obj.name]
                self.data.qpos[adr:adr + 7] = [x, y, obj.rest_height, np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]
            else:
                mocap = self.model.body_mocapid[self._body_ids[obj.name]]
                self.data.mocap_pos[mocap] = [x, y, self.data.mocap_pos[mocap][2]]
        self.controller.reset(HOME_JOINT_POSITIONS, gripper_opening=1.0)
        self._write_controls()
        mujoco.mj_forward(self.model, self.data)
        self.task, self.seed = task, int(seed)
        self.episode += 1
        self._next_update = 0.0
        self._run_physics(self.config.settle_s, check_status=False)
        self.data.time = 0.0
        self._next_update = 0.0
        self._success_time, self._timed_out = None, False
        return task

    def _require_episode(self) -> Task:
        if self.task is None:
            raise UserFacingError("the simulator has no episode yet: call reset(seed) first")
        return self.task

    def status(self) -> EpisodeStatus:
        task = self._require_episode()
        return EpisodeStatus(
            episode=self.episode, seed=self.seed, family=task.family, target=task.target,
            instruction=task.instruction, elapsed_s=float(self.data.time),
            success=self._success_time is not None, timed_out=self._timed_out,
            success_time_s=self._success_time)

    def _update_status(self) -> None:
        if self._success_time is not None or self._timed_out or self.task is None:
            return
        if family_of(self.task).is_success(self.task, self):
            self._success_time = float(self.data.time)
        elif self.data.time >= self.config.episode_timeout_s:
            self._timed_out = True

    # ------------------------------------------------------------------ stepping
    @property
    def time(self) -> float:
        return float(self.data.time)

    def _write_controls(self) -> None:
        self.data.ctrl[self._arm_actuators] = self.controller.q_target
        self.data.ctrl[self._gripper_actuator] = self.controller.gripper_opening * GRIPPER_MAX_OPENING_M

    def _run_physics(self, duration_s: float, check_status: bool) -> None:
        end = self.data.time + duration_s - 1e-9
        update_period = self._substeps_per_update * self.model.opt.timestep
        while self.data.time < end:
            if self.data.time >= self._next_update - 1e-9:
                self.controller.update(self.data.time, update_period, self.joint_positions())
                self._write_controls()
                self._next_update += update_period
                if check_status:
                    self._update_status()
            mujoco.mj_step(self.model, self.data)
        if check_status:
            self._update_status()

    def advance(self, duration_s: float) -> None:
        """Run physics and controllers for ``duration_s`` seconds of simulated time."""
        self._require_episode()
        self._run_physics(duration_s, check_status=True)

    def command_action(self, action: np.ndarray) -> None:
        """Command one 7-D end-effector delta action, to be executed over the next control period.

        ``action`` = (dx, dy, dz, roll, pitch, yaw, gripper): the translation (m) and rotation
        (Euler, base frame) to add to the end-effector pose over one ``control_period_s``, and
        the gripper opening (0 = close, 1 = open). Becomes a constant twist plus a gripper
        command; :meth:`advance` executes it.
        """
        values = np.asarray(action, float).ravel()
        if values.shape != (ACTION_DIM,):
            raise SimCommandError(f"an action has {ACTION_DIM} values, got {values.size}")
        period = self.config.control_period_s
        self.controller.command_twist(self.time, values[:3] / period, euler_to_rotvec(values[3:6]) / period)
        self.controller.command_gripper(values[6])

    def apply_action(self, action: np.ndarray) -> None:
        """:meth:`command_action` then :meth:`advance` by one control period."""
        self.command_action(action)
        self.advance(self.config.control_period_s)

    # ------------------------------------------------------------------ observations
    def joint_positions(self) -> np.ndarray:
        return self.data.qpos[self._arm_qpos].copy()

    def joint_velocities(self) -> np.ndarray:
        return self.data.qvel[self._arm_dof].copy()

    def finger_position(self) -> float:
        """Measured travel of one finger in metres (0 = closed)."""
        return float(self.data.qpos[self._gripper_qpos])

    def finger_velocity(self) -> float:
        return float(self.data.qvel[self._gripper_dof])

    def gripper_opening(self) -> float:
        """Measured opening, normalised like the command: 0 = closed, 1 = fully open."""
        return float(np.clip(self.finger_position() / GRIPPER_MAX_OPENING_M, 0.0, 1.0))

    def ee_position(self) -> np.ndarray:
        return self.data.site_xpos[self._site].copy()

    def ee_rotation(self) -> np.ndarray:
        return self.data.site_xmat[self._site].reshape(3, 3).copy()

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """End-effector (tcp) position and quaternion (w, x, y, z) in the base frame."""
        return self.ee_position(), quat_from_matrix(self.ee_rotation())

    def object_position(self, name: str) -> np.ndarray:
        if name not in self._body_ids:
            raise UserFacingError(f"unknown object {name!r}; objects are {sorted(self._body_ids)}")
        return self.data.xpos[self._body_ids[name]].copy()

    def object_rotation(self, name: str) -> np.ndarray:
        self.object_position(name)  # validates the name
        return self.data.xmat[self._body_ids[name]].reshape(3, 3).copy()

    def gripper_touches(self, name: str) -> bool:
        """Whether any gripper geom is in contact with object ``name``."""
        body = self._body_ids[name]
        geom_body = self.model.geom_bodyid
        for contact in self.data.contact[: self.data.ncon]:
            pair = {int(geom_body[contact.geom1]), int(geom_body[contact.geom2])}
            if body in pair and pair & self._gripper_body_ids:
                return True
        return False

    def proprio(self) -> np.ndarray:
        """(x, y, z, roll, pitch, yaw, gripper opening): the dataset's proprioceptive state."""
        return np.concatenate([self.ee_position(), euler_from_matrix(self.ee_rotation()),
                               [self.gripper_opening()]])

    # ------------------------------------------------------------------ camera
    def render(self) -> np.ndarray:
        """The third-person camera image: (224, 224, 3) uint8 RGB."""
        if self._renderer is None:
            _load_triton_before_gl()
            try:
                self._renderer = mujoco.Renderer(self.model, IMAGE_SIZE, IMAGE_SIZE)
            except Exception as error:  # GL errors come in many types
                raise RenderingUnavailableError(
                    f"MuJoCo could not create an offscreen OpenGL context ({error}); "
                    "install libegl1 libgl1 libegl-mesa0 (EGL) or libosmesa6 and set MUJOCO_GL=osmesa"
                ) from error
            flags = self._renderer.scene.flags
            flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        self._renderer.update_scene(self.data, CAMERA_NAME)
        return self._renderer.render().copy()

    def close(self) -> None:
        """Release the OpenGL context (safe to call twice)."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> "TabletopSim":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _load_triton_before_gl() -> None:
    """Import triton (if installed) before the first GL context exists.

    Seen here: once Mesa's EGL has rendered in a process, a later ``import triton`` (which timm
    and transformers trigger) segfaults; imported first, both work. Rendering and model
    loading in one process (a notebook, a test) is therefore only safe with this order.
    """
    import importlib.util

    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401
