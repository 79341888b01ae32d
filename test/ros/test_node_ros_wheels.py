"""The node tests run against the rclpy they claim to: Kilted's wheels in .venv, Jazzy's in
.venv-jazzy (`tools/test.sh --jazzy` sets VLA_CACHE_TEST_ROS_WHEELS=jazzy), each with the C
libraries of its own environment, never the other's."""
from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

import pytest

RCLPY_MAJOR = {"kilted": "9", "jazzy": "7"}


def test_rclpy_and_its_libraries_come_from_this_environment():
    wheels = os.environ.get("VLA_CACHE_TEST_ROS_WHEELS", "kilted")
    try:
        version = importlib.metadata.version("ros-rclpy")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("rclpy is not from the PyPI wheels (a system ROS 2)")
    from rclpy.impl.implementation_singleton import rclpy_implementation

    assert rclpy_implementation is not None
    assert version.split(".")[0] == RCLPY_MAJOR[wheels], f"{wheels} expected, ros-rclpy is {version}"
    maps = Path("/proc/self/maps").read_text().splitlines()
    librcl = {line.split()[-1] for line in maps if line.rstrip().endswith("/librcl.so")}
    assert librcl, "librcl.so is not loaded"
    prefix = Path(sys.prefix).resolve()
    assert all(Path(path).resolve().is_relative_to(prefix) for path in librcl), (librcl, prefix)
