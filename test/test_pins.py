"""The pins hold for every Python a supported ROS 2 distro runs (issue 15, item 1).

requirements/constraints.txt is Python 3.11 without a system ROS 2 (this machine, CI);
constraints-py3.10.txt (Humble) and constraints-py3.12.txt (Jazzy, Kilted) are what
tools/bootstrap.sh installs with a sourced ROS 2. The slow test asks PyPI that each pin exists as
a wheel for that Python and that the pinned packages' own requirements accept each other's pins
(e.g. numpy 1.x with OpenCV: 4.12 and later require numpy 2).
"""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements"
ROS_PYTHONS = {"3.10": "constraints-py3.10.txt", "3.12": "constraints-py3.12.txt"}
ALL_PYTHONS = {"3.11": "constraints.txt", **ROS_PYTHONS}
HEAVY = {"torch"}
"""Checked with `pip index versions` only: their wheels are hundreds of MB, and their
requirements name nothing else we pin."""


def read_pins(name: str) -> dict[str, str]:
    """``{distribution: version}`` of a constraints file (names lower-case)."""
    pins = {}
    for line in (REQUIREMENTS / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            distribution, _, version = line.partition("==")
            assert version, f"{name}: '{line}' is not an exact pin"
            pins[distribution.strip().lower()] = version.strip()
    return pins


def read_in(name: str) -> set[str]:
    """Distribution names of a requirements file (extras such as ``[serve]`` dropped)."""
    return {re.split(r"[\[<>=;]", line.strip().lower())[0] for line in (REQUIREMENTS / name).read_text().splitlines()
            if line.strip() and not line.startswith("#")}


def python_requires() -> str:
    tree = ast.parse((ROOT / "setup.py").read_text())
    values = [keyword.value.value for node in ast.walk(tree) if isinstance(node, ast.Call)
              for keyword in node.keywords if keyword.arg == "python_requires"]
    assert len(values) == 1, "setup.py declares no python_requires"
    return values[0]


@pytest.mark.parametrize("python", sorted(ALL_PYTHONS))
def test_every_requirement_is_pinned(python):
    pins = read_pins(ALL_PYTHONS[python])
    wanted = read_in("base.in") | read_in("serve.in")  # the server may run on any of them
    if python == "3.11":
        wanted |= read_in("dev.in") | read_in("ros.in") | read_in("ros-jazzy.in")
    assert wanted <= pins.keys(), f"not pinned for Python {python}: {sorted(wanted - pins.keys())}"
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"


@pytest.mark.parametrize("python", sorted(ROS_PYTHONS))
def test_with_a_system_ros_numpy_stays_1x(python):
    """The distros' compiled Python modules were built against apt numpy 1.21 (Humble) or 1.26
    (Jazzy, Kilted) and fail under numpy 2."""
    pins = read_pins(ROS_PYTHONS[python])
    assert pins["numpy"].startswith("1."), pins["numpy"]
    assert not any(name.startswith("ros-") for name in pins)  # the distro brings its own ROS


def test_python_requires_covers_the_pinned_pythons():
    specifiers = pytest.importorskip("packaging.specifiers")
    allowed = specifiers.SpecifierSet(python_requires())
    for python in ALL_PYTHONS:
        assert allowed.contains(python), python
    assert not allowed.contains("3.9")


def _pip(*arguments: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *arguments, "--disable-pip-version-check"],
                          capture_output=True, text=True, timeout=timeout)


def _index_versions(python: str, distribution: str) -> list[str]:
    result = _pip("index", "versions", distribution, "--python-version", python, "--only-binary=:all:")
    for line in result.stdout.splitlines():
        if line.startswith("Available versions:"):
            return [version.strip() for version in line.partition(":")[2].split(",")]
    return []


def _metadata(python: str, pins: dict[str, str], target: Path) -> dict[str, dict]:
    """Each pin's wheel metadata for ``python`` (pip resolves them without dependencies)."""
    requirements = [f"{name}=={version}" for name, version in pins.items() if name not in HEAVY]
    result = _pip("install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet", "--report", "-",
                  "--only-binary=:all:", "--python-version", python, "--target", str(target), *requirements)
    assert result.returncode == 0, f"Python {python}: a pin has no wheel:\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout)
    return {item["metadata"]["name"].lower(): item["metadata"] for item in report["install"]}


@pytest.mark.slow
def test_every_ros_pin_is_a_wheel_for_its_python_and_they_agree(tmp_path):
    requirements = pytest.importorskip("packaging.requirements")
    probe = _pip("index", "versions", "pip", timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"PyPI is unreachable: {probe.stderr.strip().splitlines()[-1:]}")
    sets = {python: read_pins(name) for python, name in ROS_PYTHONS.items()}
    with ThreadPoolExecutor(max_workers=4) as pool:
        heavy = {(python, name): pool.submit(_index_versions, python, name)
                 for python, pins in sets.items() for name in pins if name in HEAVY}
        metadata = {python: pool.submit(_metadata, python, pins, tmp_path / python)
                    for python, pins in sets.items()}
        for (python, name), versions in heavy.items():
            assert sets[python][name] in versions.result(), f"{name}=={sets[python][name]}: no wheel for {python}"
        for python, future in metadata.items():
            pins = sets[python]
            found = future.result()
            assert found.keys() == pins.keys() - HEAVY
            environment = {"python_version": python, "python_full_version": f"{python}.0", "extra": ""}
            for name, data in found.items():
                for text in data.get("requires_dist") or ():
                    requirement = requirements.Requirement(text)
                    pinned = pins.get(requirement.name.lower())
                    if pinned is None or (requirement.marker and not requirement.marker.evaluate(environment)):
                        continue
                    assert requirement.specifier.contains(pinned, prereleases=True), (
                        f"Python {python}: {name}=={pins[name]} requires {text}, "
                        f"but {requirement.name} is pinned to {pinned}")
