"""package.xml declares what the code imports (issue 15, item 7).

Every top-level name imported by vla_cache_ros/ or launch/ (``import``/``from`` statements, and
string literals given to ``importlib.import_module``, ``find_spec`` or the optional-package
helper ``require``) is either the standard library, this package, a Python library listed below
(installed from requirements/base.in, and declared with its rosdep key where one is used), or a
ROS package, which package.xml must declare as an exec_depend. (The policy server's optional
libraries are listed apart.)
"""
from __future__ import annotations

import ast
import re
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "vla_cache_ros").rglob("*.py")) + sorted((ROOT / "launch").glob("*.py"))

PYTHON_LIBRARIES = {
    # import name: (distribution in requirements/base.in, rosdep key declared in package.xml;
    #               None = left to pip, package.xml's comment says why)
    "numpy": ("numpy", "python3-numpy"),
    "cv2": ("opencv-python-headless", "python3-opencv"),
    "PIL": ("pillow", "python3-pil"),
    "matplotlib": ("matplotlib", "python3-matplotlib"),
    "rich": ("rich", "python3-rich"),
    "tqdm": ("tqdm", "python3-tqdm"),
    "yaml": ("pyyaml", "python3-yaml"),
    "torch": ("torch", None),
    "torchvision": ("torchvision", None),
    "timm": ("timm", None),
    "transformers": ("transformers", None),
    "tokenizers": ("tokenizers", None),
    "safetensors": ("safetensors", None),
    "rosbags": ("rosbags", None),
    "mujoco": ("mujoco", None),
    "triton": ("torch", None),  # installed with torch; imported only where present
}
"""Non-ROS imports. A new Python library goes into requirements/base.in, every constraints file
and this table; anything imported that is not here counts as a ROS package."""

OPTIONAL_PYTHON_LIBRARIES = {"ray": "ray[serve]", "starlette": "ray[serve]", "json_numpy": "json-numpy"}
"""Imported only by `vla-cache serve` (vla_cache_ros/serving/server.py): requirements/serve.in (which
tools/bootstrap.sh installs without a system ROS 2), not base.in; package.xml's comment names them."""

NOT_IMPORTED_ROS_DEPENDS = {
    "ros2launch": "provides `ros2 launch` for the files in launch/",
    "ros2bag": "provides `ros2 bag record`, which launch/demo.launch.py runs",
    "rosbag2_storage_default_plugins": "the storage `ros2 bag record` writes with",
}
"""exec_depends no module imports, and why they are declared anyway."""

IMPORT_CALLS = {"import_module", "find_spec", "require"}


def imported_names(path: Path) -> set[str]:
    """Top-level module names ``path`` imports, statically or by a literal module name."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and node.args:
            function = node.func
            called = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)
            argument = node.args[0]
            if called in IMPORT_CALLS and isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                names.add(argument.value.split(".")[0])
    return names


def imports_by_name() -> dict[str, list[str]]:
    """Each non-stdlib top-level import -> the files importing it (relative to the repository)."""
    found: dict[str, list[str]] = {}
    for path in SOURCES:
        for name in imported_names(path):
            if name not in sys.stdlib_module_names and name != "vla_cache_ros":
                found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def declared(kind: str) -> set[str]:
    return {element.text.strip() for element in ElementTree.parse(ROOT / "package.xml").getroot().iter(kind)}


def base_in_names() -> set[str]:
    lines = (ROOT / "requirements" / "base.in").read_text().splitlines()
    return {re.split(r"[\s;=<>!~\[]", line.strip())[0].lower() for line in lines
            if line.strip() and not line.startswith("#")}


def test_the_scan_sees_static_dynamic_and_launch_imports():
    found = imports_by_name()
    assert {"rclpy", "rosgraph_msgs", "ament_index_python", "torch"} <= set(found)
    assert {"launch", "launch_ros"} <= set(found)  # from launch/*.launch.py
    assert "triton" in found  # importlib.util.find_spec("triton") in sim/env.py


def test_every_imported_ros_package_is_an_exec_depend():
    exec_depends = declared("exec_depend")
    missing = {name: files for name, files in imports_by_name().items()
               if name not in PYTHON_LIBRARIES and name not in OPTIONAL_PYTHON_LIBRARIES
               and name not in exec_depends}
    assert not missing, (
        f"imported but not declared in package.xml: {missing}. A ROS package needs an "
        "<exec_depend>; a Python library goes into requirements/base.in, the constraints files "
        "and PYTHON_LIBRARIES in this test")


def test_every_declared_ros_package_is_used():
    found = imports_by_name()
    rosdep_keys = {key for _, key in PYTHON_LIBRARIES.values() if key}
    unused = {name for name in declared("exec_depend") - rosdep_keys
              if name not in found and name not in NOT_IMPORTED_ROS_DEPENDS}
    assert not unused, f"package.xml declares {sorted(unused)}, which nothing imports"


def test_python_libraries_come_from_base_in_with_their_rosdep_keys():
    found = imports_by_name()
    base_in = base_in_names()
    exec_depends = declared("exec_depend")
    for name in found.keys() & PYTHON_LIBRARIES.keys():
        distribution, key = PYTHON_LIBRARIES[name]
        assert distribution in base_in, f"{name} ({distribution}) is imported but not in requirements/base.in"
        if key:
            assert key in exec_depends, f"{name}: package.xml lacks <exec_depend>{key}</exec_depend>"
    left_to_pip = {distribution for distribution, key in PYTHON_LIBRARIES.values() if key is None}
    left_to_pip |= set(OPTIONAL_PYTHON_LIBRARIES.values())
    comment = (ROOT / "package.xml").read_text()
    for distribution in sorted(left_to_pip):
        assert distribution in comment, f"package.xml does not say why {distribution} is left to pip"


def test_test_depends_are_what_the_tests_use():
    """The ament lint test_depends were never run: only pytest (with pytest-timeout in CI) is."""
    assert declared("test_depend") == {"python3-pytest", "python3-pytest-timeout"}
    assert "--timeout=" in (ROOT / ".ci" / "run").read_text()


def test_the_server_libraries_come_from_serve_in():
    lines = (ROOT / "requirements" / "serve.in").read_text().splitlines()
    serve_in = {line.strip().lower() for line in lines if line.strip() and not line.startswith("#")}
    assert set(OPTIONAL_PYTHON_LIBRARIES.values()) <= serve_in
    assert "requirements/serve.in" in (ROOT / "tools" / "bootstrap.sh").read_text()
