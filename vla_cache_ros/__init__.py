"""vla_cache_ros: VLA policies on ROS 2 arms, accelerated by adaptive visual-token KV caching.

The package is layered (see docs/architecture in README): ``models`` loads OpenVLA-format
checkpoints, ``cache`` reuses visual-token keys/values between frames, ``policy`` wraps both,
``control`` maps actions to safe commands, and only ``ros`` touches rclpy.
"""

__version__ = "0.1.0"
