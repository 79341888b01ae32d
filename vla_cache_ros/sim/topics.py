"""Names of the simulated arm's ROS interfaces, shared by the node, the bags and the evaluation.

Kept free of ROS imports so that bag recording and tests can use them. The command topics are
those of the usual ros2_control / MoveIt Servo setup, so that a policy node configured for a
real arm talks to the simulator unchanged.
"""
from __future__ import annotations

CAMERA_TOPIC = "/camera/image_raw"  # sensor_msgs/Image, rgb8
CAMERA_FRAME = "camera"
JOINT_STATES_TOPIC = "/joint_states"  # sensor_msgs/JointState (arm joints + both fingers)
EE_POSE_TOPIC = "/ee_pose"  # geometry_msgs/PoseStamped of the tcp in base_link
INSTRUCTION_TOPIC = "/instruction"  # std_msgs/String, transient local
EPISODE_STATUS_TOPIC = "/sim/episode_status"  # std_msgs/String holding a JSON object
EPISODE_SUCCESS_TOPIC = "/sim/success"  # std_msgs/Bool, transient local: latched success flag
PRIVILEGED_STATE_TOPIC = "/sim/privileged_state"  # std_msgs/String JSON (SceneSnapshot), opt-in
RESET_SERVICE = "/sim/reset"  # std_srvs/Trigger: new episode with the next seed

JOINT_TRAJECTORY_TOPIC = "/arm_controller/joint_trajectory"  # trajectory_msgs/JointTrajectory
JOINT_POSITIONS_TOPIC = "/forward_position_controller/commands"  # std_msgs/Float64MultiArray
TWIST_TOPIC = "/servo_node/delta_twist_cmds"  # geometry_msgs/TwistStamped
GRIPPER_TOPIC = "/gripper_controller/commands"  # std_msgs/Float64MultiArray [opening 0..1]
ACTION_TOPIC = "/vla/action"  # std_msgs/Float64MultiArray: the 7-D action (recorded in bags)
