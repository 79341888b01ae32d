"""The end-effector position from TF (``ee_pose_source: tf``), for the workspace box.

Most arms publish TF (robot_state_publisher from joint states), not a pose topic. A
:class:`TfPose` listens to ``/tf`` and ``/tf_static`` (``tf2_ros.TransformListener`` on the
node, no thread of its own) and, from a timer at the control rate, looks up the newest
transform of ``tool_frame`` in ``base_frame``: its translation is the tool's position [x, y, z]
(m) in the base frame, and its stamp (the newest time the whole chain is known at) is the
position's time, from which /diagnostics shows the age. A lookup that fails (a frame not
published yet, no connection between the frames) is reported and the position goes stale, which
faults the watchdog when the workspace box needs it. tf2_ros is not on PyPI: this needs a
system ROS 2.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from rclpy.node import Node
from rclpy.time import Time

from vla_cache_ros.ros.optional_packages import require
from vla_cache_ros.stamps import stamp_seconds


class TfPose:
    """Periodic TF lookups of one frame pair.

    Args:
        node: the node that owns the listener's subscriptions and the timer.
        base_frame, tool_frame: the lookup (tool in base).
        period_s: seconds between lookups (the node's timer, ROS clock).
        on_position: receives ([x, y, z] in m, stamp in s) after each successful lookup.
        on_problem: receives why a lookup failed.

    Raises:
        ConfigurationError: tf2_ros is not installed.
    """

    def __init__(self, node: Node, base_frame: str, tool_frame: str, period_s: float,
                 on_position: Callable[[Sequence[float], float], None],
                 on_problem: Callable[[str], None]) -> None:
        tf2_ros = require("tf2_ros", "ee_pose_source tf")
        self._errors = (tf2_ros.TransformException,)
        self._node, self.base_frame, self.tool_frame = node, base_frame, tool_frame
        self._on_position, self._on_problem = on_position, on_problem
        self._buffer = tf2_ros.Buffer()
        self._listener = tf2_ros.TransformListener(self._buffer, node, spin_thread=False)
        self._timer = node.create_timer(period_s, self.poll)

    def lookup(self) -> tuple[list[float], float]:
        """The newest tool position in the base frame (m) and its stamp (s).

        Raises:
            tf2_ros.TransformException: the transform is not known (yet).
        """
        transform: Any = self._buffer.lookup_transform(self.base_frame, self.tool_frame, Time())
        translation = transform.transform.translation
        return ([translation.x, translation.y, translation.z],
                stamp_seconds(transform.header.stamp))

    def poll(self) -> None:
        """One lookup: the position goes to ``on_position``, a failure to ``on_problem``."""
        try:
            position, stamp_s = self.lookup()
            self._on_position(position, stamp_s)
        except self._errors as error:
            self._on_problem(f"no transform {self.base_frame} -> {self.tool_frame}: "
                             f"{type(error).__name__}: {error}")
        except Exception as error:  # noqa: BLE001 - a timer callback must not end the executor
            self._on_problem(f"EE pose from TF failed: {type(error).__name__}: {error}")

    def close(self) -> None:
        """Stop the lookups and the listener's subscriptions."""
        self._node.destroy_timer(self._timer)
        unregister = getattr(self._listener, "unregister", None)
        if unregister is not None:
            unregister()
        else:  # older tf2_ros
            self._node.destroy_subscription(self._listener.tf_sub)
            self._node.destroy_subscription(self._listener.tf_static_sub)
