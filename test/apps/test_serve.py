"""`vla-cache serve` as a process: a SIGTERM at any point of its start-up stops it cleanly.

Skips when ray[serve] is not installed.
"""
from __future__ import annotations

import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from test.conftest import descendants, still_running
from vla_cache_ros.subprocesses import python_module, start_child

pytest.importorskip("ray.serve", reason="ray[serve] is not installed (requirements/serve.in)")
pytest.importorskip("json_numpy", reason="json-numpy is not installed (requirements/serve.in)")
pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
@pytest.mark.parametrize("after", ["Started a local Ray instance", "Started Serve"])
def test_sigterm_while_the_server_starts_stops_it_and_its_ray_daemons(after, tiny_checkpoint, tmp_path) -> None:
    """Regression (a CI run): a SIGTERM after Ray started but before the deployment was ready met
    Ray's own handlers, which aborted the server (exit -6) and left Ray's daemons running. Sent as
    soon as ``after`` is logged: at the end of ``ray.init``, or while the model loads."""
    server = start_child("policy_server", python_module(
        "vla_cache_ros.apps.cli", "serve", "--model", str(tiny_checkpoint), "--unnorm-key", "tiny_sim",
        "--port", str(free_port()), "--ray-cpus", "1", "--num-threads", "1"), tmp_path, cwd=REPO,
        die_with_parent=True)
    try:
        deadline = time.monotonic() + 120
        while after not in server.log() and server.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.alive() and "policy server ready" not in server.log(), server.log()[-3000:]
        daemons = descendants(server.process.pid)
        assert daemons, "Ray started no daemons under the server"
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=90)
    finally:
        if server.process.poll() is None:
            server.process.kill()
    log = server.log()
    assert server.process.returncode == 0 and "SIGTERM received" not in log, log[-3000:]
    assert "stopped while Ray was starting" in log or "stopped before the policy server was ready" in log, log[-3000:]
    deadline = time.monotonic() + 30
    while any(still_running(pid, cmd) for pid, cmd in daemons.items()) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {pid: cmd[:120] for pid, cmd in daemons.items() if still_running(pid, cmd)}
    assert not left, f"Ray's processes outlived the server: {left}"
