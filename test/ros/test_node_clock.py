"""Time that goes backwards, over real DDS with ``use_sim_time``: a /clock publisher jumps back
while an input stalls, and ``vla-cache play --loop`` restarts a bag whose camera starts 2 s in.

Reported faults pinned here: after a 15 s jump back with the camera stalled, an expired non-zero
twist was re-published for 14.6 s while /diagnostics said OK; at each bag-loop restart 39
non-zero twists went out before any frame; after a 10 s jump back with joint states stopping,
commands were built on stale joints for 8.5 s and diagnostics showed a negative age.

Twists carry the node's clock in their header, so "after the jump" is read from the stamps of
the node's own output, not from arrival times.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from geometry_msgs.msg import TwistStamped
from std_msgs.msg import Float64MultiArray

from test.ros.node_harness import JOINTS, MEASURED, REPO, Peer, make_checkpoint, positions, start_node, wait_until
from vla_cache_ros.replay.synthetic_bag import SyntheticBagSpec, write_synthetic_bag
from vla_cache_ros.subprocesses import interrupt

pytestmark = pytest.mark.timeout(180)
SIM_START = 5000.0
COMMON = {"unnorm_key": "tiny_sim", "num_threads": 1, "use_sim_time": True,
          "max_obs_age_s": 1.0, "max_inference_s": 10.0, "control_rate_hz": 20.0,
          "instruction": "push the blue block to the left"}
TWIST = "/vla_node_clock_twist/preview/twist_cmd"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def peer() -> Iterator[Peer]:
    peer = Peer("vla_test_peer_clock")
    yield peer
    peer.close()


def stamp_s(message: Any) -> float:
    return message.header.stamp.sec + message.header.stamp.nanosec * 1e-9


def clock_events(log: str, bag_start_s: float, limit: int = 60) -> str:
    """The node log's lines about clock jumps, faults and refused steps (the last ``limit``),
    so that a failure shows what the node saw, with the bag start for reading the times."""
    lines = [line for line in log.splitlines()
             if any(word in line for word in ("clock", "FAULT", "step not used", "running"))]
    return f"(bag start {bag_start_s:.3f} s)\n" + "\n".join(lines[-limit:])


def moving(message: TwistStamped) -> bool:
    linear, angular = message.twist.linear, message.twist.angular
    values = (linear.x, linear.y, linear.z, angular.x, angular.y, angular.z)
    return any(abs(v) > 0.0 for v in values)


def test_jump_back_with_stalled_camera_stops_the_twist(peer: Peer, checkpoint: Path,
                                                       tmp_path: Path) -> None:
    twists = peer.record(TWIST, TwistStamped)
    peer.sim_time = SIM_START
    peer.camera_on = True
    node = start_node("vla_node_clock_twist", {
        **COMMON, "model_path": str(checkpoint), "command_interface": "ee_twist",
        "action_period_s": 10.0}, workdir=tmp_path)  # each twist lasts 10 s of sim time
    try:
        wait_until(lambda: any(moving(m) for m in twists.since(0.0)), 60, "moving twists",
                   node.log)
        peer.camera_on = False  # the camera stalls ...
        time.sleep(0.2)
        jumped_from = peer.jump_clock(-15.0)  # ... and the clock goes back 15 s
        status = peer.wait_status("vla_node_clock_twist", lambda s, v: s.level == b"\x02", 15,
                                  "ERROR after the jump", node)
        assert "jumped back by" in status.message
        time.sleep(2.0)  # 40 control periods on the new timeline
        after = [m for m in twists.since(0.0) if stamp_s(m) < jumped_from - 1.0]
        assert len(after) >= 3, "the node stopped publishing instead of holding"
        assert not any(moving(m) for m in after), "a non-zero twist after the jump"

        peer.camera_on = True  # a fresh frame, processed: policy output resumes
        wait_until(lambda: any(moving(m) for m in twists.since(0.0)
                               if stamp_s(m) < jumped_from - 1.0), 30,
                   "moving twists after fresh frames", node.log)
        assert node.alive()
    finally:
        code, log = node.stop()
    assert code == 0 and "Traceback" not in log, log[-3000:]


def test_jump_back_then_joints_stop_holds_at_once(peer: Peer, checkpoint: Path,
                                                  tmp_path: Path) -> None:
    commands = peer.record("/joint_commands", Float64MultiArray)
    peer.sim_time = SIM_START
    peer.camera_on = peer.joints_on = True
    name = "vla_node_clock_joints"
    node = start_node(name, {
        **COMMON, "model_path": str(checkpoint), "command_interface": "joint_positions",
        "action_semantics": "joint_delta", "joint_names": JOINTS, "enable_actuation": True},
        workdir=tmp_path)
    try:
        start = time.monotonic()
        wait_until(lambda: sum(not is_hold(m) for m in commands.since(start)) >= 3, 60,
                   "policy commands", node.log)
        peer.joints_on = False  # joint states stop ...
        peer.jump_clock(-10.0)  # ... as the clock goes back 10 s
        jumped = time.monotonic()
        status = peer.wait_status(name, lambda s, v: s.level == b"\x02", 15,
                                  "ERROR after the jump", node)
        assert "jumped back by" in status.message
        time.sleep(2.0)
        settled = [m for m in commands.since(jumped + 0.3)]
        assert len(settled) >= 3 and all(is_hold(m) for m in settled)
        for status in peer.statuses(name, jumped):
            values = {kv.key: kv.value for kv in status.values}
            age = values.get("joint_states_age_s", "n/a")
            assert not age.startswith("-"), age  # never a negative age shown as a number
        assert node.alive()
    finally:
        code, log = node.stop()
        peer.camera_on = peer.joints_on = False
    assert code == 0 and "Traceback" not in log, log[-3000:]


def is_hold(message: Float64MultiArray) -> bool:
    return bool(np.array_equal(positions(message), MEASURED))


def test_bag_loop_sends_no_twist_before_the_first_frame(peer: Peer, checkpoint: Path,
                                                        tmp_path: Path) -> None:
    """``vla-cache play --loop`` on a 5 s bag whose camera starts 2 s in."""
    spec = SyntheticBagSpec(num_frames=30, camera_hz=10.0, joint_hz=20.0, joint_offset_s=-2.0,
                            height=64, width=80)
    info = write_synthetic_bag(tmp_path / "bag", spec=spec)
    first_frame_s = info.frame_times_ns[0] * 1e-9
    bag_start_s = first_frame_s - 2.0
    twists = peer.record("/vla_node_clock_loop/preview/twist_cmd", TwistStamped)
    node = start_node("vla_node_clock_loop", {
        **COMMON, "model_path": str(checkpoint), "command_interface": "ee_twist",
        "action_period_s": 1.0}, workdir=tmp_path,
        extra_args=["-r", "image:=/camera/image_raw"])
    play = None
    try:
        wait_until(lambda: "ready:" in node.log(), 60, "the node", node.log)
        play = subprocess.Popen([sys.executable, "-m", "vla_cache_ros.apps.bag_commands", "play",
                                 str(info.path), "--loop", "--rate", "2"], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Three restarts at rate 2 take ~8 s of wall time.
        wait_until(lambda: sum(1 for m in twists.since(0.0)
                               if stamp_s(m) < first_frame_s - 0.5) >= 60, 60,
                   "twists before the first frame of later passes", node.log)
        moving_before_frame = [stamp_s(m) - bag_start_s for m in twists.since(0.0)
                               if moving(m) and stamp_s(m) < first_frame_s]
        assert not moving_before_frame, (
            f"non-zero twists at bag time {moving_before_frame[:5]}; the node's clock and step "
            f"events:\n{clock_events(node.log(), bag_start_s)}")
        assert any(moving(m) for m in twists.since(0.0)), "the policy never ran"
    finally:
        if play is not None:
            interrupt(play, 15)
        code, log = node.stop()
    assert code == 0 and "Traceback" not in log, log[-3000:]
