"""Every ROS topic name this package uses, in one place.

Two kinds of names:

- The node's own names (``IMAGE``, ``JOINT_STATES``, ..., ``GRIPPER_COMMAND``) are relative, so
  they resolve in the node's namespace and a launch file or ``--ros-args -r`` remaps them onto an
  arm's topics; ``CACHE_RATIO``, ``INFERENCE_LATENCY_MS``, ``STEP_STATS``, ``REUSED_TOKENS`` and
  :func:`preview` are private (``~/``); ``CLOCK`` and ``DIAGNOSTICS`` are the global ROS topics.
- The arm's names (``*_TOPIC``) are absolute: those of the usual camera driver,
  joint_state_broadcaster, ros2_control and MoveIt Servo setup, which the simulated arm
  (``sim_arm_node``) and the synthetic camera offer too, so a node configured for a real arm
  talks to them unchanged. :data:`ARM_TOPICS` pairs each node name with its arm topic: the
  launch file's default remaps.

Plain strings, no ROS import: the simulator's bag recorder, the bag tools and the launch file
use them as well as the nodes.
"""
from __future__ import annotations

from collections.abc import Iterable

# -- the node's names (relative; remapped onto an arm's topics) ------------------------------
VLA_CACHE_NODE = "vla_cache_node"  # the policy runner's default node name

IMAGE = "image"  # sensor_msgs/Image or CompressedImage in
JOINT_STATES = "joint_states"  # sensor_msgs/JointState in
INSTRUCTION = "instruction"  # std_msgs/String in (latched or volatile)
EE_POSE = "ee_pose"  # geometry_msgs/PoseStamped in (optional)
JOINT_TRAJECTORY = "joint_trajectory"  # trajectory_msgs/JointTrajectory out
JOINT_COMMANDS = "joint_commands"  # std_msgs/Float64MultiArray out
TWIST_CMD = "twist_cmd"  # geometry_msgs/TwistStamped out
GRIPPER_COMMAND = "gripper_command"  # std_msgs/Float64MultiArray [opening 0..1] out
CACHE_RATIO = "~/cache_ratio"  # std_msgs/Float32 per step
INFERENCE_LATENCY_MS = "~/inference_latency_ms"  # std_msgs/Float32 per step
REUSED_TOKENS = "~/reused_tokens"  # sensor_msgs/Image mono8 grid x grid per step, 255 = reused
STEP_STATS = "~/step_stats"  # std_msgs/String per step: stages.StepRecord as JSON (mode, ratios, stage ms)
CLOCK = "/clock"  # rosgraph_msgs/Clock (sim time)
DIAGNOSTICS = "/diagnostics"  # diagnostic_msgs/DiagnosticArray


def preview(topic: str) -> str:
    """The private topic on which the node mirrors command ``topic`` (also in dry run)."""
    return f"~/preview/{topic}"


def of_node(node_name: str, private_topic: str) -> str:
    """The absolute name of a node's private topic: ``("vla_cache_node", "~/cache_ratio")`` ->
    ``"/vla_cache_node/cache_ratio"`` (a node in the root namespace). Raises ValueError for a
    name that is not private (a bug)."""
    if not private_topic.startswith("~/"):
        raise ValueError(f"{private_topic!r} is not a private topic name (~/...)")
    return f"/{node_name}/{private_topic[2:]}"


# -- the arm's names (absolute) ---------------------------------------------------------------
CAMERA_TOPIC = "/camera/image_raw"  # sensor_msgs/Image, rgb8
CAMERA_FRAME = "camera"
JOINT_STATES_TOPIC = "/joint_states"  # sensor_msgs/JointState (arm joints + both fingers)
EE_POSE_TOPIC = "/ee_pose"  # geometry_msgs/PoseStamped of the tcp in base_link
INSTRUCTION_TOPIC = "/instruction"  # std_msgs/String, transient local
JOINT_TRAJECTORY_TOPIC = "/arm_controller/joint_trajectory"  # trajectory_msgs/JointTrajectory
JOINT_POSITIONS_TOPIC = "/forward_position_controller/commands"  # std_msgs/Float64MultiArray
TWIST_TOPIC = "/servo_node/delta_twist_cmds"  # geometry_msgs/TwistStamped
GRIPPER_TOPIC = "/gripper_controller/commands"  # std_msgs/Float64MultiArray [opening 0..1]
ACTION_TOPIC = "/vla/action"  # std_msgs/Float64MultiArray: the 7-D action (recorded in bags)

# The simulated arm's own interfaces.
EPISODE_STATUS_TOPIC = "/sim/episode_status"  # std_msgs/String holding a JSON object
EPISODE_SUCCESS_TOPIC = "/sim/success"  # std_msgs/Bool, transient local: latched success flag
PRIVILEGED_STATE_TOPIC = "/sim/privileged_state"  # std_msgs/String JSON (SceneSnapshot), opt-in
RESET_SERVICE = "/sim/reset"  # std_srvs/Trigger: new episode with the next seed

ARM_TOPICS = {
    IMAGE: CAMERA_TOPIC,
    JOINT_STATES: JOINT_STATES_TOPIC,
    INSTRUCTION: INSTRUCTION_TOPIC,
    EE_POSE: EE_POSE_TOPIC,
    JOINT_TRAJECTORY: JOINT_TRAJECTORY_TOPIC,
    JOINT_COMMANDS: JOINT_POSITIONS_TOPIC,
    TWIST_CMD: TWIST_TOPIC,
    GRIPPER_COMMAND: GRIPPER_TOPIC,
}
"""Node name -> the arm topic it is remapped onto by default (the launch file's defaults)."""


def remap_arguments(remaps: Iterable[tuple[str, str]]) -> list[str]:
    """``--ros-args`` remap arguments ``["-r", "inner:=outer", ...]`` for (inner, outer) pairs."""
    arguments: list[str] = []
    for inner, outer in remaps:
        arguments += ["-r", f"{inner}:={outer}"]
    return arguments
