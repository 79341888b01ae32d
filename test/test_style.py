"""Code style gates: ruff clean (lint and import order), and every module says what it is for in a docstring."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("vla_cache_ros", "test", "tools", "launch")


def python_files() -> list[Path]:
    files = [ROOT / "setup.py"]
    for folder in SOURCE_DIRS:
        files.extend(sorted((ROOT / folder).rglob("*.py")))
    return files


def test_ruff_clean():
    """Lint and import order (ruff.toml): pyflakes, pycodestyle and isort rules."""
    pytest.importorskip("ruff", reason="ruff is not installed")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", *SOURCE_DIRS, "setup.py"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_package_module_has_a_docstring():
    missing = []
    for path in python_files():
        if "vla_cache_ros" not in path.parts or path.name == "__init__.py" and path.stat().st_size == 0:
            continue
        if ast.get_docstring(ast.parse(path.read_text())) is None:
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"modules without a docstring: {missing}"


def test_core_modules_never_import_rclpy():
    """Only vla_cache_ros/ros/ may talk to ROS; the core stays ROS-free."""
    offenders = []
    for path in (ROOT / "vla_cache_ros").rglob("*.py"):
        relative = path.relative_to(ROOT / "vla_cache_ros").parts
        if relative[0] == "ros":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] in ("rclpy", "sensor_msgs", "std_msgs", "geometry_msgs", "trajectory_msgs",
                                       "diagnostic_msgs", "rcl_interfaces") for n in names):
                offenders.append("/".join(relative))
                break
    assert not offenders, f"core modules importing ROS: {sorted(set(offenders))}"
