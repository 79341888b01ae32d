"""ROS 2 packages that only a system ROS 2 install provides, imported where a feature needs them.

``control_msgs`` (gripper actions), ``tf2_ros`` (EE pose from TF) and ``moveit_msgs`` (MoveIt
Servo's ``ServoCommandType``) are not on PyPI, so a pip-only environment lacks them. The node
imports them only when a parameter selects the feature, and :func:`check_for` turns a missing
one into a configuration error at configure, before the model is loaded.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from vla_cache_ros.errors import ConfigurationError

APT_NAMES = {"control_msgs": "control-msgs", "tf2_ros": "tf2-ros", "moveit_msgs": "moveit-msgs"}
"""Import name -> the Debian package's middle part (``ros-<distro>-<name>``)."""


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` (e.g. ``control_msgs.action``) for ``feature``.

    Raises:
        ConfigurationError: the package is not installed; the message names the feature that
            needs it and how to get it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = module.split(".")[0]
        raise ConfigurationError(
            f"{feature} needs the ROS 2 package {package} ({type(error).__name__}: {error}); "
            f"it is not on PyPI: install it with the system ROS 2 (apt install "
            f"ros-$ROS_DISTRO-{APT_NAMES.get(package, package.replace('_', '-'))}) and run the "
            f"node from a sourced workspace") from None


def check_for(interface: Any) -> None:
    """Check that every package the configured interfaces need imports.

    Args:
        interface: the node's :class:`~vla_cache_ros.runtime.config.InterfaceConfig`.

    Raises:
        ConfigurationError: a selected feature's package is missing (see :func:`require`).
    """
    if interface.publish_gripper and interface.gripper_interface != "topic":
        require("control_msgs.action", f"gripper_interface {interface.gripper_interface}")
    if interface.reads_ee_pose and interface.ee_pose_source == "tf":
        require("tf2_ros", "ee_pose_source tf")
    if interface.servo_start_service and interface.servo_start_type == "switch_command_type":
        require("moveit_msgs.srv", "servo_start_type switch_command_type (use trigger for "
                "Humble's ~/start_servo)")
