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

Users change the input subscriptions' QoS with ROS 2's standard override parameters
(:func:`overridable`): ``qos_overrides.<full topic>.subscription.<policy>`` for history, depth and
reliability on the image, joint_states and ee_pose subscriptions, read once when the
subscriptions are created (configure) and read-only afterwards. The typical case is a large
image: a 4K rgb8 frame (25 MB) over default Fast DDS never reached a best-effort subscription,
all arrived on a reliable one (set ``reliable``, or use CompressedImage). A reliable subscription
does not match a best-effort publisher. The instruction topic takes no overrides: it has two
subscriptions with different durability (latched and volatile), which would share one set of
override parameters. :func:`check_overrides` checks the given values before anything is created.

Bag play and record derive their profiles from the recorded or offered QoS with :func:`profile`.
The same profiles in ``rosbags``' form, for a bag's metadata, are in
:mod:`vla_cache_ros.replay.bag_writer`.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable, Mapping

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.qos_overriding_options import QoSOverridingOptions

from vla_cache_ros import topics
from vla_cache_ros.errors import ConfigurationError, clip_text

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


OVERRIDABLE_TOPICS = (topics.IMAGE, topics.JOINT_STATES, topics.EE_POSE)
"""The node's subscriptions that take QoS override parameters (before remapping)."""
FIXED_TOPICS = (topics.INSTRUCTION,)
"""The node's subscriptions that do not (see the module docstring)."""
OVERRIDE_PREFIX = "qos_overrides."
_POLICY_WORDS = {"reliability": ReliabilityPolicy, "history": HistoryPolicy}


def overridable() -> QoSOverridingOptions:
    """Override options for an input subscription: history, depth and reliability."""
    return QoSOverridingOptions.with_default_policies()


def sensor_profile() -> QoSProfile:
    """A fresh copy of :data:`SENSOR_QOS`: rclpy writes QoS overrides into the profile it is
    given, which must not be the shared one."""
    return copy.copy(SENSOR_QOS)


def _allowed_words(policy: str) -> list[str]:
    return [item.name.lower() for item in _POLICY_WORDS[policy] if item.name != "UNKNOWN"]


def check_overrides(values: Mapping[str, Any], overridable_topics: Iterable[str],
                    fixed_topics: Iterable[str] = ()) -> None:
    """Check the ``qos_overrides.*`` values given to the node (params file, ``-p``).

    Args:
        values: parameter name -> value, for every given parameter (others are ignored).
        overridable_topics: the resolved (full, remapped) names of the subscriptions that take
            overrides.
        fixed_topics: resolved names of subscriptions that take none.

    Raises:
        ConfigurationError: a topic that is not a full name (``qos_overrides.image...``: rclpy
            looks overrides up by the resolved name, ``/image``), an override of one of these
            subscriptions other than ``subscription.{history,depth,reliability}``, a policy
            value rclpy does not know, or a depth that is not a whole number >= 0.
    """
    overridable_topics, fixed_topics = set(overridable_topics), set(fixed_topics)
    for name, value in values.items():
        if not name.startswith(OVERRIDE_PREFIX):
            continue
        shown = clip_text(name)
        parts = name[len(OVERRIDE_PREFIX):].rsplit(".", 2)  # topic names hold no dots
        if len(parts) != 3 or not all(parts):
            raise ConfigurationError(f"parameter {shown}: expected qos_overrides.<full topic "
                                     f"name>.subscription.<policy>")
        topic, entity, policy = parts
        if not topic.startswith("/"):
            raise ConfigurationError(
                f"parameter {shown}: QoS overrides name the full topic, e.g. "
                f"qos_overrides./{topic}.{entity}.{policy} (after remapping)")
        if topic in fixed_topics:
            raise ConfigurationError(
                f"parameter {shown}: the instruction subscriptions take no QoS overrides (a "
                f"latched and a volatile one listen on {topic})")
        if topic not in overridable_topics:
            continue  # e.g. an entity of rclpy itself
        if entity != "subscription" or policy not in ("history", "depth", "reliability"):
            raise ConfigurationError(
                f"parameter {shown}: the node's {topic} subscription takes "
                f"qos_overrides.{topic}.subscription.<history | depth | reliability>")
        if policy == "depth":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigurationError(f"parameter {shown}: got {clip_text(repr(value))}, "
                                         f"expected a whole number >= 0")
        elif not isinstance(value, str) or value.lower() not in _allowed_words(policy):
            raise ConfigurationError(f"parameter {shown}: got {clip_text(repr(value))}, "
                                     f"expected one of {', '.join(_allowed_words(policy))}")
