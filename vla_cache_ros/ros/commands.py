"""Arm commands as ROS messages: which message type and topic each command interface uses, and
the conversion of a ROS-free :class:`~vla_cache_ros.control.actions.ArmCommand` into it.

- ``joint_trajectory``: trajectory_msgs/JointTrajectory with one point and ``time_from_start``
  (joint_trajectory_controller replaces its running trajectory with every new message).
- ``joint_positions``: std_msgs/Float64MultiArray (forward_command_controller).
- ``ee_twist``: geometry_msgs/TwistStamped (MoveIt Servo), stamped with the node's clock.
"""
from __future__ import annotations

from typing import Any, Sequence

from builtin_interfaces.msg import Time
from geometry_msgs.msg import TwistStamped
from rclpy.duration import Duration
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_cache_ros.control.actions import ArmCommand, CommandInterface
from vla_cache_ros.topics import JOINT_COMMANDS, JOINT_TRAJECTORY, TWIST_CMD

COMMAND_TOPICS = {
    CommandInterface.JOINT_TRAJECTORY: (JOINT_TRAJECTORY, JointTrajectory),
    CommandInterface.JOINT_POSITIONS: (JOINT_COMMANDS, Float64MultiArray),
    CommandInterface.EE_TWIST: (TWIST_CMD, TwistStamped),
}
"""Command interface -> (node-side topic name, message type)."""


def command_message(command: ArmCommand, joint_names: Sequence[str], frame_id: str,
                    stamp: Time) -> Any:
    """``command`` as the message of its interface.

    Args:
        command: what to send.
        joint_names: joint order of ``command.joint_positions`` (JointTrajectory only).
        frame_id: frame of the twist (TwistStamped only; MoveIt Servo's planning frame).
        stamp: header stamp of the twist (the node's clock now).
    """
    if command.interface is CommandInterface.EE_TWIST:
        message = TwistStamped()
        message.header.stamp = stamp
        message.header.frame_id = frame_id
        linear, angular = message.twist.linear, message.twist.angular
        linear.x, linear.y, linear.z = (float(v) for v in command.linear)
        angular.x, angular.y, angular.z = (float(v) for v in command.angular)
        return message
    positions = [float(v) for v in command.joint_positions]
    if command.interface is CommandInterface.JOINT_POSITIONS:
        return Float64MultiArray(data=positions)
    point = JointTrajectoryPoint(
        positions=positions,
        time_from_start=Duration(seconds=max(command.duration_s, 0.0)).to_msg())
    return JointTrajectory(joint_names=list(joint_names), points=[point])
