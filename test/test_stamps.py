"""Stamp conversions: exact nanoseconds, nanosec kept in [0, 1e9), rclpy and rosbags messages alike."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from vla_cache_ros.stamps import NS_PER_S, seconds_to_nanoseconds, stamp_nanoseconds, stamp_seconds, time_message


@dataclass
class Time:
    sec: int
    nanosec: int


@pytest.mark.parametrize("time_ns", [0, 1, NS_PER_S - 1, NS_PER_S, 1_700_000_000_123_456_789, -250_000_000])
def test_nanoseconds_round_trip_exactly(time_ns: int) -> None:
    stamp = time_message(time_ns, Time)
    assert 0 <= stamp.nanosec < NS_PER_S
    assert stamp_nanoseconds(stamp) == time_ns


def test_negative_time_borrows_a_second() -> None:
    assert time_message(-250_000_000, Time) == Time(-1, 750_000_000)
    assert stamp_seconds(Time(-1, 750_000_000)) == pytest.approx(-0.25)


def test_seconds_round_to_the_nearest_nanosecond() -> None:
    assert seconds_to_nanoseconds(1.5) == 1_500_000_000
    assert seconds_to_nanoseconds(1.9999999999) == 2 * NS_PER_S
    assert time_message(seconds_to_nanoseconds(1.9999999999), Time) == Time(2, 0)  # never a second early
    assert stamp_seconds(Time(3, 250_000_000)) == pytest.approx(3.25)


def test_works_with_rosbags_and_rclpy_messages() -> None:
    from vla_cache_ros.replay.bag_reader import ros2_typestore

    rosbags_time = time_message(5_000_000_007, ros2_typestore().types["builtin_interfaces/msg/Time"])
    assert (rosbags_time.sec, rosbags_time.nanosec) == (5, 7)
    builtin_interfaces = pytest.importorskip("builtin_interfaces.msg")
    rclpy_time = time_message(5_000_000_007, builtin_interfaces.Time)
    assert stamp_nanoseconds(rclpy_time) == 5_000_000_007
