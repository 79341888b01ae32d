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


def check_for(interface: Any, node: Any = None) -> None:
    """Check that every package the configured interfaces need imports, and (given ``node``)
    that the servo service and gripper action names are valid ROS names.

    Args:
        interface: the node's :class:`~vla_cache_ros.runtime.config.InterfaceConfig`.
        node: the node that will resolve the names (None: names not checked).

    Raises:
        ConfigurationError: a selected feature's package is missing (see :func:`require`), or
            a name rcl cannot resolve (the reason is rcl's).
    """
    names = []
    if interface.publish_gripper and interface.gripper_interface != "topic":
        require("control_msgs.action", f"gripper_interface {interface.gripper_interface}")
        names.append(("gripper_action_name", interface.gripper_action_name, "resolve_topic_name"))
    if interface.reads_ee_pose and interface.ee_pose_source == "tf":
        require("tf2_ros", "ee_pose_source tf")
    if interface.servo_start_service:
        if interface.servo_start_type == "switch_command_type":
            require("moveit_msgs.srv", "servo_start_type switch_command_type (use trigger for "
                    "Humble's ~/start_servo)")
        names.append(("servo_start_service", interface.servo_start_service,
                      "resolve_service_name"))
    for parameter, name, resolve in names if node is not None else ():
        try:
            getattr(node, resolve)(name)
        except Exception as error:  # noqa: BLE001 - rclpy raises its RCLError for a bad name
            reason = str(error).splitlines()[0].split(", at /")[0]
            raise ConfigurationError(f"parameter {parameter}: {name!r} is not a valid ROS name "
                                     f"({reason})") from None
