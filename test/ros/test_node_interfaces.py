"""The node's other command interfaces over real DDS, one node process per test:

- ``ee_twist`` in dry run on sim time: only preview topics carry commands, stamped with the
  /clock time; enabling actuation puts them on the command topics, disabling sends a stop.
- ``joint_positions`` with absolute joint targets from JPEG (CompressedImage) frames.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from geometry_msgs.msg import TwistStamped
from std_msgs.msg import Float64MultiArray

from test.ros.node_harness import JOINTS, MEASURED, Peer, make_checkpoint, positions, start_node, wait_until

pytestmark = pytest.mark.timeout(120)
COMMON = {"unnorm_key": "tiny_sim", "num_threads": 1, "max_obs_age_s": 1.0,
          "max_inference_s": 10.0, "control_rate_hz": 20.0}


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    peer = Peer("vla_test_peer_interfaces")
    for topic, message_type in (("/twist_cmd", TwistStamped),
                                ("/vla_node_twist/preview/twist_cmd", TwistStamped),
                                ("/gripper_command", Float64MultiArray),
                                ("/vla_node_twist/preview/gripper_command", Float64MultiArray),
                                ("/joint_commands", Float64MultiArray)):
        peer.record(topic, message_type)
    peer.joints_on = True
    peer.publish_instruction("push the blue block to the left")
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("tiny"))


def test_ee_twist_dry_run_on_sim_time(peer: Peer, checkpoint: Path) -> None:
    peer.sim_time = 1000.0
    peer.camera_on = True
    node = start_node("vla_node_twist", {
        **COMMON, "model_path": str(checkpoint), "use_sim_time": True,
        "command_interface": "ee_twist", "action_semantics": "ee_delta",
        "twist_frame_id": "tool_base", "max_translation_m": 0.02, "action_period_s": 0.25})
    try:
        preview = peer.recorded["/vla_node_twist/preview/twist_cmd"]
        start = time.monotonic()
        wait_until(lambda: len([m for m in preview.since(start) if m.twist.linear.x != 0.0]) >= 5,
                   60, "preview twists", node.log)
        moving = [m for m in preview.since(start) if m.twist.linear.x != 0.0]
        for message in moving:
            assert message.header.frame_id == "tool_base"
            assert 1000 <= message.header.stamp.sec < 1600  # the /clock time, not wall time
            linear = np.array([message.twist.linear.x, message.twist.linear.y,
                               message.twist.linear.z])
            assert np.linalg.norm(linear) <= 0.02 / 0.25 + 1e-9
        assert peer.recorded["/vla_node_twist/preview/gripper_command"].since(start)
        assert not peer.recorded["/twist_cmd"].since(0.0), "dry run published a command"
        assert not peer.recorded["/gripper_command"].since(0.0), "dry run published a gripper"
        status = peer.wait_status("vla_node_twist", lambda s, v: v.get("state") == "running",
                                  10, "running status", node)
        assert "dry run" in status.message
        assert {kv.key: kv.value for kv in status.values}["actuation_enabled"] == "false"

        [result] = peer.set_parameters("vla_node_twist", enable_actuation=True)
        assert result.successful, result.reason
        enabled = time.monotonic()
        wait_until(lambda: len(peer.recorded["/twist_cmd"].since(enabled)) >= 3, 15,
                   "twists on the command topic", node.log)
        wait_until(lambda: peer.recorded["/gripper_command"].since(enabled), 15,
                   "gripper commands", node.log)

        [result] = peer.set_parameters("vla_node_twist", enable_actuation=False)
        assert result.successful, result.reason
        time.sleep(0.5)
        quiet = time.monotonic()
        time.sleep(1.0)
        assert not peer.recorded["/twist_cmd"].since(quiet), "commands after actuation off"
        last = peer.recorded["/twist_cmd"].since(enabled)[-1]
        assert (last.twist.linear.x, last.twist.linear.y, last.twist.linear.z,
                last.twist.angular.z) == (0.0, 0.0, 0.0, 0.0), "no stop when actuation went off"
        code, log = node.stop()
        assert code == 0 and "Traceback" not in log, log[-3000:]
    finally:
        node.stop()
        peer.sim_time = None
        peer.camera_on = False


def test_joint_positions_with_absolute_targets_from_jpeg(peer: Peer, checkpoint: Path) -> None:
    peer.compressed_on = True
    node = start_node("vla_node_positions", {
        **COMMON, "model_path": str(checkpoint), "image_type": "compressed",
        "command_interface": "joint_positions", "action_semantics": "joint_absolute",
        "joint_names": JOINTS, "enable_actuation": True, "max_joint_delta_rad": 0.05},
        extra_args=["-r", "image:=camera/compressed"])
    try:
        commands = peer.recorded["/joint_commands"]
        start = time.monotonic()
        wait_until(lambda: len(commands.since(start)) >= 5, 60, "joint position commands",
                   node.log)
        measured = np.array(MEASURED)
        for message in commands.since(start):
            targets = positions(message)
            assert targets.shape == (6,)
            # The miniature policy's absolute targets are near 0: each joint steps toward 0 by
            # at most the clamp.
            np.testing.assert_allclose(np.abs(targets - measured), 0.05, atol=1e-9)
            assert np.all(np.sign(targets - measured) == -np.sign(measured))
        peer.wait_status("vla_node_positions",
                         lambda s, v: int(v.get("clamp_joint_delta", "0")) > 0, 10,
                         "clamp counts", node)
    finally:
        code, log = node.stop()
        peer.compressed_on = False
    assert code == 0 and "Traceback" not in log, log[-3000:]
