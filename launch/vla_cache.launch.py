"""Launch ``vla_cache_node`` with a config file, a model, topic remaps and sim time.

    ros2 launch vla_cache_ros vla_cache.launch.py config:=<yaml> model_path:=<dir> \
        [command_interface:=ee_twist|joint_trajectory|joint_positions] [use_sim_time:=true] \
        [image_topic:=/camera/image_raw] [twist_topic:=/servo_node/delta_twist_cmds] ...

``model_path`` and ``command_interface`` override the config file only when given. The topic
defaults are those of the usual ros2_control / MoveIt Servo setup (and of ``sim_arm_node``).
``ros2 launch`` silently ignores arguments a launch file does not declare, so a misspelt one
(``image:=`` for ``image_topic:=``) would leave the node on its default topic: this file warns
about every given argument it does not know, naming the ones it does.
"""
from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.logging import get_logger
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from vla_cache_ros import topics

PACKAGE = "vla_cache_ros"

# (node-side name, launch argument, default topic); names and defaults from vla_cache_ros.topics
REMAPS = tuple((inner, argument, topics.ARM_TOPICS[inner]) for inner, argument in (
    (topics.IMAGE, "image_topic"),
    (topics.JOINT_STATES, "joint_states_topic"),
    (topics.INSTRUCTION, "instruction_topic"),
    (topics.EE_POSE, "ee_pose_topic"),
    (topics.JOINT_TRAJECTORY, "joint_trajectory_topic"),
    (topics.JOINT_COMMANDS, "joint_commands_topic"),
    (topics.TWIST_CMD, "twist_topic"),
    (topics.GRIPPER_COMMAND, "gripper_topic"),
))


ARGUMENTS = ("config", "model_path", "command_interface", "use_sim_time", "node_name") + tuple(
    argument for _, argument, _ in REMAPS)


def _warn_unknown_arguments(context: LaunchContext) -> None:
    unknown = sorted(set(context.launch_configurations) - set(ARGUMENTS))
    if unknown:
        get_logger("vla_cache.launch").warning(
            f"ignoring launch arguments this file does not declare: {', '.join(unknown)} "
            f"(declared: {', '.join(ARGUMENTS)}; topics are remapped with <name>_topic:=...)")


def _node(context: LaunchContext) -> list[Node]:
    """Build the node with only the overrides that were given."""
    def value(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    _warn_unknown_arguments(context)

    overrides: dict[str, object] = {"use_sim_time": value("use_sim_time").lower() == "true"}
    if value("model_path"):
        overrides["model_path"] = value("model_path")
    if value("command_interface"):
        overrides["command_interface"] = value("command_interface")
    return [Node(
        package=PACKAGE, executable="vla_cache_node", name=value("node_name"), output="screen",
        emulate_tty=True, parameters=[value("config"), overrides],
        remappings=[(inner, value(argument)) for inner, argument, _ in REMAPS])]


def generate_launch_description() -> LaunchDescription:
    """Arguments: config, model_path, command_interface, use_sim_time, node_name, topic remaps."""
    default_config = os.path.join(get_package_share_directory(PACKAGE), "config",
                                  "miniature_demo.yaml")
    arguments = [
        DeclareLaunchArgument("config", default_value=default_config,
                              description="parameter YAML (see the package's config/)"),
        DeclareLaunchArgument("model_path", default_value="",
                              description="OpenVLA-format checkpoint directory (overrides config)"),
        DeclareLaunchArgument("command_interface", default_value="",
                              description="ee_twist | joint_trajectory | joint_positions "
                                          "(overrides config)"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock (bag replay, simulation)"),
        DeclareLaunchArgument("node_name", default_value="vla_cache_node"),
    ]
    arguments += [DeclareLaunchArgument(argument, default_value=default,
                                        description=f"topic for the node's '{inner}'")
                  for inner, argument, default in REMAPS]
    return LaunchDescription(arguments + [OpaqueFunction(function=_node)])
