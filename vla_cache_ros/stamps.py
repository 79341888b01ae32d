"""Conversions between ``builtin_interfaces/Time`` (or ``Duration``) and seconds or nanoseconds.

One home for the arithmetic every layer needs: the node reads header stamps as float seconds,
the bag reader as integer nanoseconds, the bag message builders, the bag player's /clock and the
simulator write stamps from nanoseconds or seconds. The functions work on any object with
integer ``sec`` and ``nanosec`` fields, so on rclpy messages (``builtin_interfaces.msg.Time``)
and ``rosbags`` messages alike; nothing here imports ROS, so the ROS-free layers (bags,
simulator) use it too.

Nanoseconds are the exact form; seconds are float (about 0.2 us resolution at today's epoch
times, plenty for stamps and ages). A stamp's ``nanosec`` is always in [0, 1e9), also for
negative times, as ROS requires: -0.25 s is ``sec=-1, nanosec=750_000_000``.
"""
from __future__ import annotations

from typing import Protocol, TypeVar

NS_PER_S = 1_000_000_000


class Stamp(Protocol):
    """What a ``builtin_interfaces/Time`` or ``Duration`` message offers, in rclpy and rosbags."""

    sec: int
    nanosec: int


T = TypeVar("T")


def stamp_seconds(stamp: Stamp) -> float:
    """Float seconds of a Time/Duration message."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def stamp_nanoseconds(stamp: Stamp) -> int:
    """Integer nanoseconds of a Time/Duration message (exact)."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def seconds_to_nanoseconds(seconds: float) -> int:
    """Float seconds rounded to the nearest integer nanosecond."""
    return int(round(seconds * NS_PER_S))


def time_message(time_ns: int, message_class: type[T]) -> T:
    """A ``message_class(sec=..., nanosec=...)`` for ``time_ns`` integer nanoseconds.

    ``message_class`` is the Time (or Duration) class of the caller's world: rclpy's
    ``builtin_interfaces.msg.Time`` or the ``rosbags`` typestore's ``builtin_interfaces/msg/Time``.
    ``nanosec`` is in [0, 1e9) whatever the sign of ``time_ns``.
    """
    sec, nanosec = divmod(int(time_ns), NS_PER_S)
    return message_class(sec=sec, nanosec=nanosec)  # type: ignore[call-arg]
