"""Build ROS 2 messages as ``rosbags`` message objects, without ROS: for writing bags.

Each builder returns a message of the ROS 2 typestore (:func:`~vla_cache_ros.replay.bag_reader.ros2_typestore`)
ready for :meth:`vla_cache_ros.replay.bag_writer.BagWriter.write`: images (raw and compressed,
through the node's own conversion in :mod:`vla_cache_ros.image_conversion`), joint states,
strings, ``Float64MultiArray`` commands, stamped poses and twists, headers and times. Used by
the synthetic bag, the simulator's episode recorder and tests. Stamps are integer nanoseconds.

The message type names used across the bag modules are defined here too.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vla_cache_ros import stamps
from vla_cache_ros.replay.bag_reader import ros2_typestore

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE)
JOINT_STATE_TYPE = "sensor_msgs/msg/JointState"
STRING_TYPE = "std_msgs/msg/String"
FLOAT64_ARRAY_TYPE = "std_msgs/msg/Float64MultiArray"
POSE_STAMPED_TYPE = "geometry_msgs/msg/PoseStamped"
TWIST_STAMPED_TYPE = "geometry_msgs/msg/TwistStamped"


def _types() -> dict[str, Any]:
    return ros2_typestore().types


def time_message(stamp_ns: int) -> Any:
    """``builtin_interfaces/Time`` for ``stamp_ns``."""
    return stamps.time_message(stamp_ns, _types()["builtin_interfaces/msg/Time"])


def header_message(stamp_ns: int, frame_id: str = "") -> Any:
    """``std_msgs/Header`` with the given stamp and frame."""
    return _types()["std_msgs/msg/Header"](stamp=time_message(stamp_ns), frame_id=frame_id)


def image_message(rgb: np.ndarray, stamp_ns: int, frame_id: str = "camera", encoding: str = "rgb8") -> Any:
    """``sensor_msgs/Image`` from an (H, W, 3) uint8 RGB array, stored in ``encoding``
    (``rgb8``, ``bgr8``, ``rgba8``, ``bgra8`` or ``mono8``)."""
    from vla_cache_ros.image_conversion import rgb_to_image_fields

    fields = rgb_to_image_fields(rgb, encoding)
    fields["data"] = np.frombuffer(fields["data"], dtype=np.uint8)
    return _types()[IMAGE_TYPE](header=header_message(stamp_ns, frame_id), **fields)


def compressed_image_message(rgb: np.ndarray, stamp_ns: int, frame_id: str = "camera", fmt: str = "jpeg") -> Any:
    """``sensor_msgs/CompressedImage`` (``jpeg`` or ``png``) from an (H, W, 3) uint8 RGB array."""
    from vla_cache_ros.image_conversion import rgb_to_compressed_fields

    fields = rgb_to_compressed_fields(rgb, fmt)
    fields["data"] = np.frombuffer(fields["data"], dtype=np.uint8)
    return _types()[COMPRESSED_IMAGE_TYPE](header=header_message(stamp_ns, frame_id), **fields)


def joint_state_message(
    names: Sequence[str],
    position: Sequence[float],
    stamp_ns: int,
    velocity: Sequence[float] = (),
    effort: Sequence[float] = (),
) -> Any:
    """``sensor_msgs/JointState``; empty ``velocity``/``effort`` are allowed, as in ROS."""
    return _types()[JOINT_STATE_TYPE](
        header=header_message(stamp_ns),
        name=list(names),
        position=np.asarray(position, dtype=np.float64),
        velocity=np.asarray(velocity, dtype=np.float64),
        effort=np.asarray(effort, dtype=np.float64),
    )


def string_message(text: str) -> Any:
    """``std_msgs/String``."""
    return _types()[STRING_TYPE](data=text)


def float64_array_message(values: Sequence[float]) -> Any:
    """``std_msgs/Float64MultiArray`` with an empty layout (as forward_command_controller expects)."""
    types = _types()
    layout = types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    return types[FLOAT64_ARRAY_TYPE](layout=layout, data=np.asarray(values, dtype=np.float64))


def _xyz(values: Sequence[float]) -> dict[str, float]:
    """The fields of a Point or Vector3 from exactly three values."""
    x, y, z = (float(v) for v in values)
    return {"x": x, "y": y, "z": z}


def pose_stamped_message(position: Sequence[float], quat_wxyz: Sequence[float], stamp_ns: int, frame_id: str) -> Any:
    """``geometry_msgs/PoseStamped``: ``position`` (x, y, z) in metres and the orientation quaternion
    given as (w, x, y, z), in ``frame_id``."""
    types = _types()
    qw, qx, qy, qz = (float(v) for v in quat_wxyz)
    pose = types["geometry_msgs/msg/Pose"](
        position=types["geometry_msgs/msg/Point"](**_xyz(position)),
        orientation=types["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw))
    return types[POSE_STAMPED_TYPE](header=header_message(stamp_ns, frame_id), pose=pose)


def twist_stamped_message(linear: Sequence[float], angular: Sequence[float], stamp_ns: int, frame_id: str) -> Any:
    """``geometry_msgs/TwistStamped``: ``linear`` (x, y, z) in m/s and ``angular`` (x, y, z) in rad/s,
    in ``frame_id``."""
    types = _types()
    vector = types["geometry_msgs/msg/Vector3"]
    twist = types["geometry_msgs/msg/Twist"](
        linear=vector(**_xyz(linear)), angular=vector(**_xyz(angular)))
    return types[TWIST_STAMPED_TYPE](header=header_message(stamp_ns, frame_id), twist=twist)
