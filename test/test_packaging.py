"""The package builds as ament_python with colcon, puts its commands on PATH in a sourced
workspace, and installs the way the README says (issue 15, items 1 and 2)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXECUTABLES = ("vla_cache_node", "sim_arm_node", "vla-cache")


def test_package_xml_declares_format3_ament_python_and_dependencies():
    catkin_pkg = pytest.importorskip("catkin_pkg.package", reason="catkin_pkg (from colcon-ros) is not installed")
    package = catkin_pkg.parse_package(str(ROOT / "package.xml"))
    assert package.package_format == 3
    assert package.name == "vla_cache_ros"
    assert package.get_build_type() == "ament_python"
    exec_deps = {d.name for d in package.exec_depends}
    for name in ("rclpy", "sensor_msgs", "std_msgs", "std_srvs", "geometry_msgs", "trajectory_msgs",
                 "diagnostic_msgs", "rcl_interfaces", "rosgraph_msgs", "ament_index_python", "launch",
                 "launch_ros", "ros2launch", "python3-numpy"):
        assert name in exec_deps, name
    assert {d.name for d in package.test_depends} == {"python3-pytest", "python3-pytest-timeout"}


def copy_source_tree(destination: Path) -> None:
    """What a clone holds: the files git tracks or would track (no venvs, no data/, no out/)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True)
    if listed.returncode != 0:  # not a git checkout: everything but the usual generated folders
        shutil.copytree(ROOT, destination, symlinks=True, ignore=shutil.ignore_patterns(
            ".venv*", ".git", "build", "install", "log", "__pycache__", "*.egg-info", "out", "data"))
        return
    for name in filter(None, listed.stdout.split("\0")):
        if (ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A colcon workspace with this package built into install/ by this interpreter."""
    if importlib.util.find_spec("colcon_core") is None or importlib.util.find_spec("colcon_ros") is None:
        pytest.skip("colcon is not installed in this environment (requirements/dev.in)")
    workspace = tmp_path_factory.mktemp("ws")
    copy_source_tree(workspace / "src" / "vla_cache_ros")
    env = dict(os.environ, AMENT_PREFIX_PATH="", COLCON_HOME=str(workspace / ".colcon"))
    result = subprocess.run([sys.executable, "-m", "colcon", "build", "--packages-select", "vla_cache_ros"],
                            cwd=workspace, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return workspace


def test_colcon_build_installs_executables_launch_and_config(workspace: Path):
    install = workspace / "install" / "vla_cache_ros"
    for executable in EXECUTABLES:
        script = install / "lib" / "vla_cache_ros" / executable
        assert script.is_file(), executable  # ros2 run finds these
        # the interpreter colcon ran on (the venv's, so torch imports): README says to build with it
        assert script.read_text().splitlines()[0] == f"#!{sys.executable}"
    assert (install / "share" / "ament_index" / "resource_index" / "packages" / "vla_cache_ros").is_file()
    assert (install / "share" / "vla_cache_ros" / "package.xml").is_file()
    for folder, pattern in (("launch", "*.launch.py"), ("config", "*.yaml")):
        expected = sorted(p.name for p in (ROOT / folder).glob(pattern))
        installed = sorted(p.name for p in (install / "share" / "vla_cache_ros" / folder).glob(pattern))
        assert installed == expected
    site = next((install / "lib").glob("python3*/site-packages"))
    assert (site / "vla_cache_ros" / "policy.py").is_file()


def test_the_path_hook_is_installed_and_registered(workspace: Path):
    share = workspace / "install" / "vla_cache_ros" / "share" / "vla_cache_ros"
    for hook in ("vla_cache_ros_path.dsv", "vla_cache_ros_path.sh"):
        assert (share / "hook" / hook).is_file(), hook
        assert f"source;share/vla_cache_ros/hook/{hook}" in (share / "package.dsv").read_text().splitlines()
    assert "prepend-non-duplicate;PATH;lib/vla_cache_ros" in (share / "hook" / "vla_cache_ros_path.dsv").read_text()


@pytest.mark.parametrize("setup_script", ["setup.bash", "local_setup.bash"])
def test_commands_are_on_path_after_sourcing_the_workspace(workspace: Path, setup_script: str):
    """`source install/setup.bash` and then `vla-cache ...`, `vla_cache_node`, without activating
    any venv (a clean PATH: nothing but the system's directories)."""
    script = (f"source install/{setup_script} && for c in {' '.join(EXECUTABLES)}; do command -v $c; done "
              "&& vla-cache --help")
    result = subprocess.run(["bash", "-c", script], cwd=workspace, capture_output=True, text=True, timeout=120,
                            env={"HOME": os.environ.get("HOME", "/root"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    lib = workspace / "install" / "vla_cache_ros" / "lib" / "vla_cache_ros"
    assert lines[:len(EXECUTABLES)] == [str(lib / name) for name in EXECUTABLES]
    assert "usage: vla-cache" in result.stdout


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


def test_bootstrap_names_a_full_disk_before_installing(tmp_path):
    """Regression (a CI run on a nearly full disk): pip failed half-way through torch's CUDA
    libraries with '[Errno 28] No space left on device'. The bootstrap now checks the free space
    first, says how much it needs and creates nothing."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "requirements", copy / "requirements")
    (copy / "tools").mkdir()
    shutil.copy2(ROOT / "tools" / "bootstrap.sh", copy / "tools" / "bootstrap.sh")
    shutil.copy2(ROOT / "setup.py", copy / "setup.py")
    env = {key: value for key, value in os.environ.items() if key not in ("ROS_DISTRO", "PYTHON")}
    env.update(PYTHON=sys.executable, BOOTSTRAP_NEED_FREE_GB="1000000")  # a million GB: never free
    result = subprocess.run(["bash", str(copy / "tools" / "bootstrap.sh")], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    assert "not enough free disk" in result.stderr and "1000000 GB needed" in result.stderr
    assert not (copy / ".venv").exists()


def bootstrap_dry_run(tmp_path: Path, python_version: str, ros_distro: str | None) -> subprocess.CompletedProcess:
    """tools/bootstrap.sh --dry-run with a stand-in `python3` of ``python_version`` first on PATH
    (and named by PYTHON without a ROS 2, where the bootstrap would look for python3.11 first)."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "python3").write_text(f"#!/bin/sh\necho {python_version}\n")
    (fake / "python3").chmod(0o755)
    env = {key: value for key, value in os.environ.items() if key not in ("ROS_DISTRO", "PYTHON")}
    env["PATH"] = f"{fake}:/usr/bin:/bin"
    if ros_distro:
        env["ROS_DISTRO"] = ros_distro
    else:
        env["PYTHON"] = str(fake / "python3")
    return subprocess.run(["bash", str(ROOT / "tools" / "bootstrap.sh"), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=60)


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


WORKSPACE_SECTION = "In a ROS 2 workspace (Humble / Jazzy / Kilted)"


@pytest.mark.parametrize(("distro", "python"), [("humble", "3.10"), ("jazzy", "3.12"), ("kilted", "3.12")])
def test_readme_workspace_recipe_is_what_bootstrap_runs(tmp_path, distro, python):
    result = bootstrap_dry_run(tmp_path, python, distro)
    assert result.returncode == 0, result.stderr
    steps = result.stdout.splitlines()
    assert steps[0] == "python3 -m venv --system-site-packages .venv"  # the ROS docs' venv
    assert steps[1] == "touch .venv/COLCON_IGNORE"
    assert f"-c requirements/constraints-py{python}.txt" in steps[3]
    assert "ros.in" not in result.stdout  # the distro's own rclpy, no PyPI ROS wheels
    recipe = readme_section(WORKSPACE_SECTION)
    recipe_lines = {line.strip().lstrip("#").strip() for line in recipe.splitlines()}
    for step in steps:  # the README shows Jazzy/Kilted's file and names Humble's
        assert step.replace("py3.10", "py3.12") in recipe_lines, step
    assert f"requirements/constraints-py{python}.txt" in recipe
    for command in ("source /opt/ros/", "tools/bootstrap.sh", "python -m colcon build", "source install/setup.bash",
                    "vla-cache --help", "ros2 run vla_cache_ros vla-cache", "ros2 run vla_cache_ros vla_cache_node"):
        assert command in recipe, command


def test_bootstrap_without_ros_is_python_3_11_and_the_kilted_wheels(tmp_path):
    result = bootstrap_dry_run(tmp_path, "3.11", None)
    assert result.returncode == 0, result.stderr
    assert "--system-site-packages" not in result.stdout and "COLCON_IGNORE" not in result.stdout
    assert "-r requirements/ros.in -r requirements/serve.in -c requirements/constraints.txt" in result.stdout
    refused = bootstrap_dry_run(tmp_path, "3.12", None)
    assert refused.returncode == 1 and "Python 3.11" in refused.stderr


def test_bootstrap_with_ros_refuses_a_python_without_pins(tmp_path):
    result = bootstrap_dry_run(tmp_path, "3.11", "jazzy")
    assert result.returncode == 1
    assert "constraints-py3.10.txt" in result.stderr and "PYTHON=/usr/bin/python3" in result.stderr


def test_bootstrap_refuses_a_python_the_distro_does_not_run(tmp_path):
    """Regression (a new user's trial): Humble with a 3.12 interpreter only warned and set up a
    venv in which the distro's rclpy cannot import; an unknown distro says which pins it uses."""
    result = bootstrap_dry_run(tmp_path, "3.12", "humble")
    assert result.returncode == 1 and "ROS 2 humble runs Python 3.10" in result.stderr
    rolling = bootstrap_dry_run(tmp_path, "3.12", "rolling")
    assert rolling.returncode == 0 and "'rolling' is not one the pins were checked for" in rolling.stderr


def test_pip_install_e_is_documented_as_installing_no_dependencies():
    section = " ".join(readme_section(WORKSPACE_SECTION).split())
    assert "`pip install -e .` installs the package and its `vla-cache`" in section
    assert "**without their dependencies**" in section
