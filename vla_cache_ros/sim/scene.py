"""The MuJoCo tabletop scene: a small 5-joint arm with a parallel gripper, coloured objects, a camera.

The MJCF is generated here (no asset files), so the scene is versioned with the code. Frames:
the world frame is the arm's ``base_link`` frame (x forward, y left, z up; the table top is z=0).
The end-effector frame is the ``tcp`` site between the fingertips; at the home pose (all joints
zero) it is aligned with the world frame and the gripper points down (-z), so "gripper pointing
down with yaw psi" is exactly the rotation ``Rz(psi)``. The fingers close along the tcp's y axis.

Rendering is tuned for speed: no shadows, no reflections (REFERENCE §6: ~450 fps at 224x224).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ARM_JOINTS: tuple[str, ...] = ("waist", "shoulder", "elbow", "wrist_pitch", "wrist_roll")
"""Position-controlled arm joints, base to tip; also the actuator names."""

GRIPPER_JOINT = "finger_left"
"""The actuated finger joint (metres of travel per finger); ``finger_right`` mirrors it."""

GRIPPER_ACTUATOR = "gripper"
GRIPPER_MAX_OPENING_M = 0.04
"""Travel of one finger: the gap between the fingers is twice the joint position."""

TCP_SITE = "tcp"
CAMERA_NAME = "third_person"
IMAGE_SIZE = 224
BASE_FRAME = "base_link"
GRIPPER_BODIES: tuple[str, ...] = ("hand", "finger_left", "finger_right")
"""Bodies whose geoms count as 'the gripper' for touch / grasp detection."""


@dataclass(frozen=True)
class SceneObject:
    """A coloured object on the table: ``name`` is the MuJoCo body, ``phrase`` its words."""

    name: str
    phrase: str
    shape: str  # "box" | "sphere" | "pad"
    half_size: float
    rgba: tuple[float, float, float, float]
    movable: bool = True

    @property
    def rest_height(self) -> float:
        """Height of the object's centre when it rests on the table."""
        return self.half_size


OBJECTS: tuple[SceneObject, ...] = (
    SceneObject("red_cube", "red cube", "box", 0.02, (0.85, 0.12, 0.1, 1.0)),
    SceneObject("blue_cube", "blue cube", "box", 0.02, (0.1, 0.3, 0.9, 1.0)),
    SceneObject("yellow_ball", "yellow ball", "sphere", 0.02, (0.95, 0.8, 0.1, 1.0)),
    SceneObject("green_square", "green square", "pad", 0.05, (0.15, 0.7, 0.25, 1.0), movable=False),
)
OBJECTS_BY_NAME: dict[str, SceneObject] = {obj.name: obj for obj in OBJECTS}

HOME_JOINT_POSITIONS = np.zeros(len(ARM_JOINTS))
"""Upper arm vertical, forearm horizontal, gripper pointing down above the table."""

CAMERA_EYE = (0.60, -0.24, 0.44)
CAMERA_TARGET = (0.22, 0.0, 0.05)
CAMERA_FOVY_DEG = 46.0
"""Camera framing: the workspace (``tasks.WORKSPACE_X/Y``) fills most of the 224 px image, so a
4 cm cube spans ~18 px (more than a 14 px ViT patch). The first framing (eye 0.64/-0.36/0.46,
fovy 50) left the objects at ~10 px, and a policy trained on it never learned to locate them
(issue 12)."""


def _camera_axes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit (right, up, forward) vectors of the camera in the world frame."""
    forward = np.asarray(CAMERA_TARGET, float) - np.asarray(CAMERA_EYE, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    return right, np.cross(right, forward), forward


def project_to_image(points: np.ndarray) -> np.ndarray:
    """Pixel coordinates of world points in the camera image (pinhole, as MuJoCo renders it).

    Args:
        points: (..., 3) positions in the base frame, metres.

    Returns:
        (..., 2) float64 (column, row) in pixels of the ``IMAGE_SIZE`` square image, origin at the
        top-left corner (row 0 is the top). Points behind the camera give NaN.

    MuJoCo's camera: vertical field of view ``fovy``, square pixels, principal point at the
    image centre (focal length ``H / (2 tan(fovy / 2))`` pixels).
    """
    right, up, forward = _camera_axes()
    relative = np.asarray(points, float) - np.asarray(CAMERA_EYE, float)
    depth = relative @ forward
    focal = IMAGE_SIZE / (2.0 * np.tan(np.radians(CAMERA_FOVY_DEG) / 2.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        column = IMAGE_SIZE / 2.0 + focal * (relative @ right) / depth
        row = IMAGE_SIZE / 2.0 - focal * (relative @ up) / depth
    pixels = np.stack([column, row], axis=-1)
    pixels[depth <= 0] = np.nan
    return pixels


def _look_at_xyaxes() -> str:
    """MJCF ``xyaxes`` of the camera at ``CAMERA_EYE`` looking at ``CAMERA_TARGET``, world z up."""
    right, up, _ = _camera_axes()
    return " ".join(f"{value:.6f}" for value in (*right, *up))


def _object_xml(obj: SceneObject) -> str:
    rgba = " ".join(f"{c:g}" for c in obj.rgba)
    h = obj.half_size
    if obj.shape == "pad":
        # A flat marker on the table: visible, never collides; moved per episode as a mocap body.
        return (
            f'<body name="{obj.name}" mocap="true" pos="0.25 0 0.0008">'
            f'<geom name="{obj.name}" type="box" size="{h} {h} 0.0008" rgba="{rgba}" '
            f'contype="0" conaffinity="0"/></body>'
        )
    if obj.shape == "box":
        geom = f'type="box" size="{h} {h} {h}" mass="0.05" condim="4" friction="1.2 0.01 0.001"'
    else:
        # Rolling friction keeps the ball from wandering off after a touch.
        geom = f'type="sphere" size="{h}" mass="0.04" condim="6" friction="1.2 0.02 0.01"'
    return (
        f'<body name="{obj.name}" pos="0.25 0 {h}"><freejoint name="{obj.name}"/>'
        f'<geom name="{obj.name}" {geom} rgba="{rgba}"/></body>'
    )


def build_scene_xml() -> str:
    """Return the MJCF of the whole scene (arm, table, objects, camera, lights)."""
    objects = "\n    ".join(_object_xml(obj) for obj in OBJECTS)
    xyaxes = _look_at_xyaxes()
    eye = " ".join(f"{v:g}" for v in CAMERA_EYE)
    return f"""<mujoco model="vla_cache_tabletop">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="0.002" cone="elliptic" impratio="10" integrator="implicitfast"/>
  <visual>
    <global offwidth="{IMAGE_SIZE}" offheight="{IMAGE_SIZE}"/>
    <quality shadowsize="0"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.55 0.55 0.55" specular="0 0 0"/>
  </visual>
  <asset>
    <texture name="sky" type="skybox" builtin="gradient" rgb1="0.75 0.8 0.86" rgb2="0.45 0.5 0.56"
             width="64" height="64"/>
    <texture name="wood" type="2d" builtin="checker" rgb1="0.66 0.53 0.4" rgb2="0.6 0.48 0.36"
             width="128" height="128" mark="random" random="0.08" markrgb="0.5 0.4 0.3"/>
    <texture name="floor" type="2d" builtin="checker" rgb1="0.3 0.3 0.32" rgb2="0.25 0.25 0.27"
             width="64" height="64"/>
    <material name="table" texture="wood" texrepeat="6 6" reflectance="0"/>
    <material name="floor" texture="floor" texrepeat="10 10" reflectance="0"/>
    <material name="link" rgba="0.25 0.27 0.3 1" reflectance="0"/>
    <material name="joint" rgba="0.75 0.75 0.78 1" reflectance="0"/>
    <material name="finger" rgba="0.15 0.15 0.16 1" reflectance="0"/>
  </asset>
  <default>
    <joint damping="1.0" armature="0.01"/>
    <geom friction="1 0.01 0.001" solref="0.01 1"/>
    <position dampratio="1" inheritrange="1"/>
  </default>
  <worldbody>
    <light name="key" pos="0.4 -0.4 1.6" dir="-0.2 0.25 -1" directional="true" castshadow="false"
           diffuse="0.5 0.5 0.5" specular="0 0 0"/>
    <geom name="floor" type="plane" pos="0 0 -0.75" size="3 3 0.1" material="floor"/>
    <geom name="table" type="box" pos="0.22 0 -0.02" size="0.42 0.5 0.02" material="table"/>
    <camera name="{CAMERA_NAME}" pos="{eye}" xyaxes="{xyaxes}" fovy="{CAMERA_FOVY_DEG:g}"/>
    <body name="{BASE_FRAME}" pos="0 0 0">
      <geom type="cylinder" size="0.06 0.025" pos="0 0 0.025" material="link"/>
      <body name="turret" pos="0 0 0.05" gravcomp="1">
        <joint name="waist" axis="0 0 1" range="-2.8 2.8"/>
        <geom type="cylinder" size="0.045 0.025" pos="0 0 0.025" material="joint"/>
        <body name="upper_arm" pos="0 0 0.05" gravcomp="1">
          <joint name="shoulder" axis="0 1 0" range="-1.5 1.5"/>
          <geom type="capsule" fromto="0 0 0 0 0 0.22" size="0.024" material="link"/>
          <body name="forearm" pos="0 0 0.22" gravcomp="1">
            <joint name="elbow" axis="0 1 0" range="-1.5 2.2"/>
            <geom type="sphere" size="0.03" material="joint"/>
            <geom type="capsule" fromto="0 0 0 0.22 0 0" size="0.02" material="link"/>
            <body name="wrist" pos="0.22 0 0" gravcomp="1">
              <joint name="wrist_pitch" axis="0 1 0" range="-2.2 2.2"/>
              <geom type="sphere" size="0.025" material="joint"/>
              <geom type="capsule" fromto="0 0 0 0 0 -0.035" size="0.018" material="link"/>
              <body name="hand" pos="0 0 -0.04" gravcomp="1">
                <joint name="wrist_roll" axis="0 0 1" range="-2.9 2.9"/>
                <geom name="palm" type="box" size="0.018 0.056 0.01" pos="0 0 -0.01" material="joint"/>
                <body name="finger_left" pos="0 0.006 -0.02" gravcomp="1">
                  <joint name="finger_left" type="slide" axis="0 1 0" range="0 {GRIPPER_MAX_OPENING_M}"
                         damping="5"/>
                  <geom name="finger_left" type="box" size="0.011 0.006 0.027" pos="0 0 -0.027"
                        material="finger" condim="4" friction="1.5 0.02 0.002"/>
                </body>
                <body name="finger_right" pos="0 -0.006 -0.02" gravcomp="1">
                  <joint name="finger_right" type="slide" axis="0 -1 0" range="0 {GRIPPER_MAX_OPENING_M}"
                         damping="5"/>
                  <geom name="finger_right" type="box" size="0.011 0.006 0.027" pos="0 0 -0.027"
                        material="finger" condim="4" friction="1.5 0.02 0.002"/>
                </body>
                <site name="{TCP_SITE}" pos="0 0 -0.059" size="0.005" rgba="1 0 1 0"/>
              </body>
            </body>
          </body>
        </body>
      </body>
    </body>
    {objects}
  </worldbody>
  <equality>
    <joint joint1="finger_right" joint2="finger_left" polycoef="0 1 0 0 0" solref="0.005 1"/>
  </equality>
  <contact>
    <exclude body1="{BASE_FRAME}" body2="turret"/>
    <exclude body1="turret" body2="upper_arm"/>
    <exclude body1="hand" body2="finger_left"/>
    <exclude body1="hand" body2="finger_right"/>
  </contact>
  <actuator>
    <position name="waist" joint="waist" kp="120"/>
    <position name="shoulder" joint="shoulder" kp="250"/>
    <position name="elbow" joint="elbow" kp="180"/>
    <position name="wrist_pitch" joint="wrist_pitch" kp="60"/>
    <position name="wrist_roll" joint="wrist_roll" kp="30"/>
    <position name="{GRIPPER_ACTUATOR}" joint="{GRIPPER_JOINT}" kp="400"/>
  </actuator>
</mujoco>
"""
