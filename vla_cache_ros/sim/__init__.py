"""A simulated tabletop arm in MuJoCo (ROS-free): scene, tasks, controllers, expert, data collection.

Importing this package picks MuJoCo's offscreen OpenGL backend before ``mujoco`` is imported:
``MUJOCO_GL`` if the user set it, else EGL when libEGL is installed, else OSMesa when libOSMesa
is. (MuJoCo reads the variable once, at import.)
"""
from __future__ import annotations

import ctypes.util
import os


def _choose_gl_backend() -> None:
    if os.environ.get("MUJOCO_GL"):
        return
    if ctypes.util.find_library("EGL"):
        os.environ["MUJOCO_GL"] = "egl"
    elif ctypes.util.find_library("OSMesa"):
        os.environ["MUJOCO_GL"] = "osmesa"


_choose_gl_backend()
