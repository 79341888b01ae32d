"""Test-wide settings: isolate ROS 2 discovery per run, keep torch small and deterministic, and
let no test module leave a ROS process behind (it would talk to the next modules' nodes)."""
from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

# Isolation between concurrent runs on one machine: discovery stays on this host and each run
# gets its own domain (tools/test.sh exports one; a plain `pytest` picks one here).
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))
os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """A seeded random miniature OpenVLA-format checkpoint, written once per test session."""
    from vla_cache_ros.models.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint"), seed=0)


TIERS = ("ros", "sim", "slow")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests under test/ros are ``ros`` and under test/sim ``sim``; a test with none of the
    tier markers is ``unit`` (``tools/test.sh -m unit`` runs only those)."""
    for item in items:
        parts = item.path.parts
        if "ros" in parts[parts.index("test"):]:
            item.add_marker(pytest.mark.ros)
        if "sim" in parts[parts.index("test"):]:
            item.add_marker(pytest.mark.sim)
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(pytest.mark.unit)


def descendants(root: int) -> dict[int, str]:
    """Live (not zombie) descendants of process ``root``: pid -> command line (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry))
        except (OSError, ValueError, IndexError):  # ended meanwhile
            continue
    found: dict[int, str] = {}
    pending = list(children.get(root, []))
    while pending:
        pid = pending.pop()
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                found[pid] = cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        pending.extend(children.get(pid, []))
    return found


def still_running(pid: int, cmdline: str) -> bool:
    """Process ``pid`` still runs ``cmdline`` (as :func:`descendants` read it): not ended, not a
    zombie, not a reused pid. For processes that may have outlived their parent (orphans)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rpartition(")")[2].split()[0] == "Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip() == cmdline
    except (OSError, IndexError):
        return False


def signal_once_ready(child: Any, ready: Callable[[dict[int, str]], bool], signum: int,
                      timeout_s: float = 90.0) -> dict[int, str]:
    """Poll ``child``'s (a ``ChildProcess``) descendants until ``ready(descendants)`` holds, send it
    ``signum`` and wait for it to end (it is killed in any case). Returns the descendants seen
    that outlived it (killed now, so that no test leaves them behind). Fails the test if it never
    became ready."""
    children: dict[int, str] = {}
    try:
        deadline = time.monotonic() + timeout_s
        while child.alive() and time.monotonic() < deadline:
            children = descendants(child.process.pid)
            if ready(children):
                break
            time.sleep(0.02)
        assert ready(children), child.log()[-3000:]
        child.process.send_signal(signum)
        child.process.wait(timeout=60)
    finally:
        child.kill()
        left = {pid: command for pid, command in children.items() if still_running(pid, command)}
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    return left


def _is_ros_process(cmdline: str) -> bool:
    """A process of this package or of ROS 2 (Ray's own workers and daemons are left to Ray)."""
    return ("vla_cache" in cmdline or "ros2" in cmdline) and "ray" not in cmdline.lower()


@pytest.fixture(scope="module", autouse=True)
def no_leaked_ros_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test module (and its fixtures) finished, no node, player or recorder it started may
    still run: one left behind publishes /clock or camera frames into later modules' nodes over
    the shared ROS domain. Leftovers are killed and reported as an error of the module."""
    before = set(descendants(os.getpid()))
    yield
    leaked = {pid: cmd for pid, cmd in descendants(os.getpid()).items()
              if pid not in before and _is_ros_process(cmd)}
    for pid in leaked:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if leaked:
        pytest.fail(f"{request.module.__name__} left processes running (killed now): "
                    + "; ".join(f"{pid}: {cmd[:160]}" for pid, cmd in leaked.items()), pytrace=False)
