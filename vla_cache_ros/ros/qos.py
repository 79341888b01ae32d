"""Every QoS profile this package uses, in one place.

- Camera, joint states and EE pose: sensor data (best effort, keep last 5), as camera drivers
  and joint_state_broadcaster publish them; a best-effort subscriber also hears reliable
  publishers.
- Commands: reliable, keep last 10 (controllers subscribe reliably).
- Instruction: a transient-local depth-1 profile hears a latched instruction published before
  the node started; a volatile one matches volatile publishers (``ros2 topic pub`` since Jazzy),
  which a transient-local subscription cannot. The simulator latches its success flag the same
  way.
- /clock, /diagnostics, the node's per-step telemetry and the simulator's status: reliable, keep
  last 10 (what ``create_publisher(..., 10)`` gives).
- A monitor that must not miss a burst of status messages (sim-eval): reliable, keep last 50.

Bag play and record derive their profiles from the recorded or offered QoS with :func:`profile`.
The same profiles in ``rosbags``' form, for a bag's metadata, are in
:mod:`vla_cache_ros.replay.bag_writer`.
"""
from __future__ import annotations

from typing import Any

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

try:  # Jazzy and later
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks


def profile(depth: int, *, reliable: bool = True, latched: bool = False) -> QoSProfile:
    """Keep-last ``depth``; reliable or best effort; transient local (``latched``) or volatile."""
    return QoSProfile(
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
    )


SENSOR_QOS = qos_profile_sensor_data
COMMAND_QOS = profile(10)
LATCHED_QOS = profile(1, latched=True)
VOLATILE_QOS = profile(10)
CLOCK_QOS = profile(10)
DIAGNOSTICS_QOS = profile(10)
TELEMETRY_QOS = profile(10)
STATUS_QOS = profile(10)
MONITOR_QOS = profile(50)


def ignore_incompatible_qos() -> Any:
    """Event callbacks for a subscription that is expected not to match some publishers (the
    latched instruction subscription beside its volatile twin): no warning per publisher."""
    return SubscriptionEventCallbacks(incompatible_qos=lambda event: None)
