"""``synthetic_camera``: a stand-in robot for machines where the MuJoCo arm cannot render.

Publishes what the policy node reads, on the same topic names as ``sim_arm_node`` (and the
usual ros2_control / MoveIt Servo setup): generated camera frames from
:class:`~vla_cache_ros.synthetic.SyntheticScene` (a static textured scene with one moving
block, rgb8), joint states and an end-effector pose that drift slowly, and the instruction
(transient local, so a late subscriber still gets it). Nothing moves in response to commands:
run the policy node in dry run against it.

    python -m vla_cache_ros.ros.synthetic_camera [--ros-args -p camera_rate_hz:=10.0 ...]

Used by ``vla-cache demo`` when the simulator is unavailable.
"""
from __future__ import annotations

import math
import sys
from typing import Any, Sequence

from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from vla_cache_ros import topics
from vla_cache_ros.errors import ConfigurationError
from vla_cache_ros.image_conversion import fill_message, rgb_to_image_fields
from vla_cache_ros.ros.process import run_node
from vla_cache_ros.ros.qos import LATCHED_QOS, SENSOR_QOS
from vla_cache_ros.stamps import stamp_seconds
from vla_cache_ros.synthetic import SyntheticScene

NODE_NAME = "synthetic_camera"
BASE_FRAME = "base_link"
JOINT_NAMES = ("joint_1", "joint_2", "joint_3", "joint_4", "joint_5", "gripper")
EE_CENTRE = (0.25, 0.0, 0.15)  # metres in base_link; inside the miniature demo's workspace box


class SyntheticCameraNode(Node):
    """Publishes synthetic camera frames, joint states, an EE pose and the instruction."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        camera_hz = float(self.declare_parameter("camera_rate_hz", 10.0).value)
        joint_hz = float(self.declare_parameter("joint_state_rate_hz", 50.0).value)
        height = int(self.declare_parameter("height", 224).value)
        width = int(self.declare_parameter("width", 224).value)
        seed = int(self.declare_parameter("seed", 7).value)
        instruction = str(self.declare_parameter("instruction", "pick up the red cube").value)
        if camera_hz <= 0 or joint_hz <= 0 or height < 14 or width < 14:
            raise ConfigurationError("camera_rate_hz and joint_state_rate_hz must be > 0, "
                                     "height and width >= 14")
        self._scene = SyntheticScene(height=height, width=width, seed=seed)
        self._frame_index = 0
        self._image_pub = self.create_publisher(Image, topics.CAMERA_TOPIC, SENSOR_QOS)
        self._joint_pub = self.create_publisher(JointState, topics.JOINT_STATES_TOPIC, SENSOR_QOS)
        self._pose_pub = self.create_publisher(PoseStamped, topics.EE_POSE_TOPIC, SENSOR_QOS)
        self._instruction_pub = self.create_publisher(String, topics.INSTRUCTION_TOPIC, LATCHED_QOS)
        self._instruction_pub.publish(String(data=instruction))
        self.create_timer(1.0 / camera_hz, self._publish_frame)
        self.create_timer(1.0 / joint_hz, self._publish_state)
        self.get_logger().info(
            f"publishing {width}x{height} frames at {camera_hz:g} Hz on {topics.CAMERA_TOPIC}, "
            f"{topics.JOINT_STATES_TOPIC} and {topics.EE_POSE_TOPIC} at {joint_hz:g} Hz; "
            f"instruction {instruction!r} on {topics.INSTRUCTION_TOPIC}")

    def _publish_frame(self) -> None:
        message = fill_message(Image(), rgb_to_image_fields(self._scene.frame(self._frame_index)))
        message.header.stamp = self.get_clock().now().to_msg()
        message.header.frame_id = topics.CAMERA_FRAME
        self._image_pub.publish(message)
        self._frame_index += 1

    def _publish_state(self) -> None:
        stamp = self.get_clock().now().to_msg()
        phase = stamp_seconds(stamp) * 0.5
        joints = JointState(name=list(JOINT_NAMES),
                            position=[0.2 * math.sin(phase + i) for i in range(len(JOINT_NAMES))])
        joints.header.stamp = stamp
        self._joint_pub.publish(joints)
        pose = PoseStamped()
        pose.header.stamp, pose.header.frame_id = stamp, BASE_FRAME
        position = pose.pose.position
        position.x = EE_CENTRE[0] + 0.02 * math.cos(phase)
        position.y = EE_CENTRE[1] + 0.02 * math.sin(phase)
        position.z = EE_CENTRE[2]
        pose.pose.orientation.w = 1.0
        self._pose_pub.publish(pose)


def main(args: Sequence[str] | None = None) -> int:
    """Entry point: spin until Ctrl-C / SIGTERM; returns the exit code."""
    return run_node(SyntheticCameraNode, NODE_NAME, args)


if __name__ == "__main__":
    sys.exit(main())
