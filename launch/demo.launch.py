"""The demo for ROS users: the MuJoCo arm, the policy node driving it, and ``ros2 bag record``.

    ros2 launch vla_cache_ros demo.launch.py [model_path:=tiny|sim_policy|<dir>] [unnorm_key:=KEY] \
        [cache_mode:=vla_cache|fixed|off] [cache_ratio:=0.5] [task_family:=pick|place|touch] \
        [seed:=100000] [record:=true] [bag:=out/demo_bag]

The same processes as ``vla-cache demo --live`` on the MuJoCo arm: ``sim_arm_node`` (episodes
one after another: ``auto_reset``, starting at the held-out evaluation seed, family drawn from
the seed unless ``task_family`` is given), ``vla_cache_node`` on ``config/miniature_demo.yaml``
with actuation on (the arm is simulated) and the demo's topic remaps, and a recorder of the
demo's topics (``vla_cache_ros.apps.demo.RECORDED_TOPICS``) into ``bag`` with
``ros2 bag record`` (rosbag2, part of every ROS 2 desktop install). Tune the cache live with
``rqt`` (Plugins > Configuration > Dynamic Reconfigure > /vla_cache_node); watch
``/diagnostics`` and ``/sim/episode_status``. The bag replays offline with
``vla-cache replay <bag> --model <model>``.

Without a ROS install (no ``ros2 launch``), ``vla-cache demo`` does the same and also prints one
line per episode and writes a GIF. Unknown launch arguments are warned about by name.
"""
from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.logging import get_logger
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from vla_cache_ros.apps.demo import CONFIG_NAME, NODE_REMAPS, RECORDED_TOPICS
from vla_cache_ros.models.catalog import DEFAULT_MODEL
from vla_cache_ros.sim.evaluate import DEFAULT_EVAL_SEED

PACKAGE = "vla_cache_ros"

# (name, default, description)
ARGUMENTS = (
    ("model_path", DEFAULT_MODEL, "checkpoint directory or short name (tiny: random weights; "
                                  "sim_policy: the trained policy once it ships)"),
    ("unnorm_key", "", "dataset statistics key; empty: the short name's, or the checkpoint's only one"),
    ("cache_mode", "vla_cache", "initial cache mode (live: rqt)"),
    ("cache_ratio", "0.5", "initial cache ratio or cap (live: rqt)"),
    ("task_family", "", "pick | place | touch; empty: drawn from each episode's seed"),
    ("seed", str(DEFAULT_EVAL_SEED), "seed of the first episode (held out from training data)"),
    ("episode_timeout_s", "30.0", "simulated seconds before an episode counts as failed"),
    ("record", "true", "record the demo's topics with ros2 bag record"),
    ("bag", "out/demo_bag", "rosbag2 output directory (must not exist)"),
)
NAMES = tuple(name for name, _, _ in ARGUMENTS)


def _processes(context: LaunchContext) -> list:
    """The arm, the node and (with ``record``) the recorder, from the given arguments."""
    def value(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    def number(name: str, kind: type) -> float | int:
        try:
            return kind(value(name))
        except ValueError:
            raise ValueError(f"launch argument {name}:={value(name)!r} is not "
                             f"{'an integer' if kind is int else 'a number'}") from None

    unknown = sorted(set(context.launch_configurations) - set(NAMES))
    if unknown:
        get_logger("demo.launch").warning(
            f"ignoring launch arguments this file does not declare: {', '.join(unknown)} "
            f"(declared: {', '.join(NAMES)})")
    config = os.path.join(get_package_share_directory(PACKAGE), "config", CONFIG_NAME)
    arm = Node(package=PACKAGE, executable="sim_arm_node", name="sim_arm_node", output="screen",
               parameters=[{"auto_reset": True, "seed": number("seed", int),
                            "task_family": value("task_family"),
                            "episode_timeout_s": number("episode_timeout_s", float)}])
    policy = Node(package=PACKAGE, executable="vla_cache_node", name="vla_cache_node",
                  output="screen", emulate_tty=True, remappings=list(NODE_REMAPS),
                  parameters=[config, {"model_path": value("model_path"), "unnorm_key": value("unnorm_key"),
                                       "enable_actuation": True, "cache_mode": value("cache_mode"),
                                       "cache_ratio": number("cache_ratio", float)}])
    processes = [arm, policy]
    if value("record").lower() == "true":
        processes.append(ExecuteProcess(
            cmd=["ros2", "bag", "record", "-o", value("bag"), *RECORDED_TOPICS], output="screen"))
    return processes


def generate_launch_description() -> LaunchDescription:
    """Arguments: see ARGUMENTS."""
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, default, description in ARGUMENTS] + [OpaqueFunction(function=_processes)])
