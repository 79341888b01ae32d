"""Every documented ``ros2 launch`` command uses only arguments the launch file declares, and the
values reach the node's remappings; unknown arguments are warned about by name.

The ``launch`` / ``launch_ros`` packages are not on PyPI, so this test runs the real launch file
against small stand-ins that record what it constructs: ``DeclareLaunchArgument`` (name,
default), ``LaunchConfiguration.perform`` (a lookup in the context), ``launch_ros`` ``Node`` (its
keyword arguments) and the ``launch.logging`` logger (the warnings). Where the real packages are
installed, test_node_configs.py builds the description with them as well.
"""
from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path
from typing import Any, Iterator

import pytest

from test.ros.node_harness import REPO

LAUNCH_FILE = REPO / "launch" / "vla_cache.launch.py"
DOCUMENTS = [REPO / "README.md", LAUNCH_FILE, *sorted((REPO / "config").glob("*.yaml"))]
COMMAND = "ros2 launch vla_cache_ros vla_cache.launch.py"


class Recorder:
    """Stand-in for a launch class: keeps its constructor arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


class DeclareLaunchArgument(Recorder):
    @property
    def name(self) -> str:
        return self.args[0]


class LaunchConfiguration(Recorder):
    def perform(self, context: Any) -> str:
        return context.launch_configurations[self.args[0]]


class Logger:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, message: str) -> None:
        self.warnings.append(message)


def load_launch_file(path: Path, monkeypatch: pytest.MonkeyPatch, share: Path) -> Any:
    """Execute a launch file against the stand-ins; its logger's warnings land in
    ``module.test_logger.warnings``."""
    logger = Logger()
    stand_ins = {
        "launch": {"LaunchContext": object, "LaunchDescription": Recorder},
        "launch.actions": {"DeclareLaunchArgument": DeclareLaunchArgument,
                           "OpaqueFunction": Recorder, "ExecuteProcess": Recorder},
        "launch.logging": {"get_logger": lambda name: logger},
        "launch.substitutions": {"LaunchConfiguration": LaunchConfiguration},
        "launch_ros": {}, "launch_ros.actions": {"Node": Recorder},
        "ament_index_python": {},
        "ament_index_python.packages": {"get_package_share_directory": lambda name: str(share)},
    }
    for name, attributes in stand_ins.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location(f"launch_under_test_{path.stem.replace('.', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.test_logger = logger
    return module


@pytest.fixture
def launch_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    yield load_launch_file(LAUNCH_FILE, monkeypatch, tmp_path)


def declared(module: Any) -> dict[str, str]:
    """Declared argument names -> default values."""
    description = module.generate_launch_description()
    return {entity.name: entity.kwargs.get("default_value", "")
            for entity in description.args[0] if isinstance(entity, DeclareLaunchArgument)}


def documented_commands() -> list[tuple[str, dict[str, str]]]:
    """Every ``ros2 launch`` command in the docs: (where, {argument: value})."""
    found = []
    for path in DOCUMENTS:
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if COMMAND not in line:
                continue
            text = line[line.index(COMMAND) + len(COMMAND):]
            while text.rstrip().endswith("\\") and number + 1 < len(lines):
                number += 1
                text = text.rstrip()[:-1] + " " + lines[number].lstrip("# ")
            arguments = dict(re.findall(r"(?<![\w-])([A-Za-z_]\w*):=(\S+)", text))
            found.append((f"{path.name}:{number + 1}", arguments))
    return found


def test_docs_contain_launch_commands() -> None:
    places = [where for where, _ in documented_commands()]
    assert any(where.startswith("README.md") for where in places)
    assert len(places) >= 4, places


def test_documented_arguments_are_declared(launch_module: Any) -> None:
    names = set(declared(launch_module))
    for where, arguments in documented_commands():
        unknown = sorted(set(arguments) - names)
        assert not unknown, f"{where}: `ros2 launch` would silently ignore {unknown}"


def test_documented_values_reach_the_node(launch_module: Any) -> None:
    defaults = declared(launch_module)
    for where, arguments in documented_commands():
        context = types.SimpleNamespace(launch_configurations={**defaults, **arguments})
        [node] = launch_module._node(context)
        remappings = dict(node.kwargs["remappings"])
        for inner, argument, _ in launch_module.REMAPS:
            assert remappings[inner] == context.launch_configurations[argument], where
        overrides = node.kwargs["parameters"][1]
        if "model_path" in arguments:
            assert overrides["model_path"] == arguments["model_path"], where
        assert node.kwargs["executable"] == "vla_cache_node"
        assert not launch_module.test_logger.warnings, (where, launch_module.test_logger.warnings)


def test_unknown_arguments_are_warned_about_by_name(launch_module: Any) -> None:
    """The README once said ``image:=``: launch ignored it and the node kept its default."""
    context = types.SimpleNamespace(launch_configurations={
        **declared(launch_module), "image": "/camera/color/image_raw",
        "joint_states": "/joint_states"})
    [node] = launch_module._node(context)
    assert dict(node.kwargs["remappings"])["image"] == "/camera/image_raw"  # the default
    [warning] = launch_module.test_logger.warnings
    assert "image, joint_states" in warning and "image_topic" in warning
