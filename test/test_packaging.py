"""The package builds as ament_python with colcon and declares what ROS tooling expects."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_package_xml_declares_format3_ament_python_and_dependencies():
    catkin_pkg = pytest.importorskip("catkin_pkg.package", reason="catkin_pkg (from colcon-ros) is not installed")
    package = catkin_pkg.parse_package(str(ROOT / "package.xml"))
    assert package.package_format == 3
    assert package.name == "vla_cache_ros"
    assert package.get_build_type() == "ament_python"
    exec_deps = {d.name for d in package.exec_depends}
    for name in ("rclpy", "sensor_msgs", "std_msgs", "std_srvs", "geometry_msgs", "trajectory_msgs",
                 "diagnostic_msgs", "rcl_interfaces", "launch", "launch_ros"):
        assert name in exec_deps, name
    test_deps = {d.name for d in package.test_depends}
    assert {"python3-pytest", "ament_flake8", "ament_pep257", "ament_copyright"} <= test_deps


def test_colcon_build_installs_executables_launch_and_config(tmp_path):
    colcon = Path(sys.executable).parent / "colcon"
    if not colcon.exists():
        pytest.skip("colcon is not installed in this environment (colcon-core, colcon-ros)")
    source = tmp_path / "src" / "vla_cache_ros"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "install", "log",
                                                                "__pycache__", "*.egg-info", "out"))
    env = dict(os.environ, AMENT_PREFIX_PATH="", COLCON_HOME=str(tmp_path / ".colcon"))
    result = subprocess.run([str(colcon), "build", "--packages-select", "vla_cache_ros"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    install = tmp_path / "install" / "vla_cache_ros"
    for executable in ("vla_cache_node", "sim_arm_node", "vla-cache"):
        assert (install / "lib" / "vla_cache_ros" / executable).is_file(), executable  # ros2 run finds these
    assert (install / "share" / "ament_index" / "resource_index" / "packages" / "vla_cache_ros").is_file()
    assert (install / "share" / "vla_cache_ros" / "package.xml").is_file()
    for folder, pattern in (("launch", "*.launch.py"), ("config", "*.yaml")):
        expected = sorted(p.name for p in (ROOT / folder).glob(pattern))
        installed = sorted(p.name for p in (install / "share" / "vla_cache_ros" / folder).glob(pattern))
        assert installed == expected
    site = next((install / "lib").glob("python3*/site-packages"))
    assert (site / "vla_cache_ros" / "policy.py").is_file()


def test_bootstrap_second_run_reinstalls_nothing():
    """The README's commands call tools/bootstrap.sh every time; once set up it must be a no-op."""
    if not (ROOT / ".venv" / ".bootstrap-stamp").is_file():
        pytest.skip("this environment was not set up by tools/bootstrap.sh (no .venv/.bootstrap-stamp)")
    stamp_before = (ROOT / ".venv" / ".bootstrap-stamp").stat().st_mtime
    result = subprocess.run(["bash", str(ROOT / "tools" / "bootstrap.sh")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""  # no apt, no pip, nothing to say
    assert (ROOT / ".venv" / ".bootstrap-stamp").stat().st_mtime == stamp_before
