"""The node over real DDS, in its own process: joint_trajectory commands, live parameters as rqt
sets them, watchdog (stale camera, overrun), bad inputs, and clean SIGINT with a safety command.

One node process serves the whole module (starting one costs seconds); each test leaves it
running with good inputs. The miniature checkpoint's joint deltas are small but non-zero, so a
policy command never equals the measured joints, while the ``hold`` safety command does.
"""
from __future__ import annotations

import math
import time
from typing import Iterator

import numpy as np
import pytest
from sensor_msgs.msg import Image
from std_msgs.msg import Float32, Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from test.ros.node_harness import (
    JOINTS,
    MEASURED,
    NodeProcess,
    Peer,
    joint_arm_parameters,
    make_checkpoint,
    positions,
    start_node,
    wait_until,
)
from vla_cache_ros.stamps import stamp_nanoseconds

NAME = "vla_node_jtc"
MAX_DELTA = 0.2
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    peer = Peer("vla_test_peer_jtc")
    peer.record("/joint_trajectory", JointTrajectory)
    peer.record("/gripper_command", Float64MultiArray)
    peer.record(f"/{NAME}/cache_ratio", Float32)
    peer.record(f"/{NAME}/inference_latency_ms", Float32)
    peer.record(f"/{NAME}/reused_tokens", Image)
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, peer: Peer) -> Iterator[NodeProcess]:
    workdir = tmp_path_factory.mktemp("jtc")
    checkpoint = make_checkpoint(workdir / "tiny")
    process = start_node(NAME, joint_arm_parameters(
        checkpoint, "joint_trajectory", action_period_s=0.2, max_joint_delta_rad=MAX_DELTA),
        workdir=workdir)
    yield process
    process.stop()


def is_hold(message: JointTrajectory) -> bool:
    return bool(np.allclose(positions(message), MEASURED, atol=1e-12, rtol=0))


def policy_commands(peer: Peer, since: float) -> list[JointTrajectory]:
    return [m for m in peer.recorded["/joint_trajectory"].since(since) if not is_hold(m)]


@pytest.fixture
def running(peer: Peer, node: NodeProcess) -> Peer:
    """Good inputs flowing and policy commands coming out."""
    peer.image_override = None
    peer.joint_names, peer.joint_positions = list(JOINTS), list(MEASURED)
    peer.camera_on = peer.joints_on = True
    peer.publish_instruction("pick up the red cube")
    start = time.monotonic()
    wait_until(lambda: len(policy_commands(peer, start)) >= 3, 60, "policy commands", node.log)
    return peer


def test_commands_out_at_control_rate(running: Peer, node: NodeProcess) -> None:
    peer = running
    start = time.monotonic()
    time.sleep(2.0)
    commands = policy_commands(peer, start)
    # 20 Hz over 2 s is 40 messages; allow a loaded machine a wide margin.
    assert len(commands) >= 10, f"only {len(commands)} commands in 2 s"
    for message in commands:
        assert list(message.joint_names) == JOINTS
        point = message.points[0]
        duration = point.time_from_start.sec + point.time_from_start.nanosec * 1e-9
        assert 0.0 < duration <= 0.2 + 1e-9
        delta = positions(message) - np.array(MEASURED)
        assert np.all(np.abs(delta) <= MAX_DELTA + 1e-9) and np.any(delta != 0.0)
    grippers = {m.data[0] for m in peer.recorded["/gripper_command"].since(start)}
    assert grippers and grippers <= {0.0, 1.0}
    assert peer.recorded[f"/{NAME}/cache_ratio"].since(start)
    latencies = [m.data for m in peer.recorded[f"/{NAME}/inference_latency_ms"].since(start)]
    assert latencies and all(value > 0.0 for value in latencies)
    status = peer.wait_status(NAME, lambda s, v: v.get("state") == "running", 10,
                              "a running status", node)
    values = {kv.key: kv.value for kv in status.values}
    assert status.level in (b"\x00", b"\x01"), status.message  # WARN: e.g. a step refused
    assert values["actuation_enabled"] == "true" and values["inference_hz"] != "n/a"
    assert values["control_hz"] != "n/a" and values["latency_total_p95_ms"] != "n/a"
    assert values["instruction"] == "pick up the red cube"
    assert "below 512" in values["decoder_weights"]  # the miniature decoder runs on plain weights
    assert values["lm_head"].startswith("screened (") and "rows without the full head" in values["lm_head"]


def test_reuse_masks_per_step_stamped_like_their_camera_frame(running: Peer, node: NodeProcess) -> None:
    """~/reused_tokens: per step a 16x16 mono8 image (255 = reused) with the camera frame's
    stamp and frame id; the share of 255 is the step's cache ratio (fixed 0.5 by default)."""
    peer = running
    start = time.monotonic()
    masks = wait_until(lambda: peer.recorded[f"/{NAME}/reused_tokens"].since(start)[3:], 60,
                       "reuse masks", node.log)
    sent = peer.sent_image_stamps_ns()
    for message in masks:
        assert (message.encoding, message.height, message.width, message.step) == ("mono8", 16, 16, 16)
        assert set(bytes(message.data)) <= {0, 255}
        assert message.header.frame_id == "test_camera"
        stamp = stamp_nanoseconds(message.header.stamp)
        assert min(abs(stamp - s) for s in sent) < 1_000  # the frame's stamp (float seconds inside)
    reused = [bytes(message.data).count(255) for message in masks]
    assert all(count <= 128 for count in reused) and any(count == 128 for count in reused), reused


def test_parameters_through_services_like_rqt(running: Peer, node: NodeProcess) -> None:
    peer = running
    descriptors = peer.describe_parameters(NAME, ["cache_ratio", "model_path", "cache_mode",
                                                  "max_token_age", "max_obs_age_s",
                                                  "latency_budget_ms"])
    ratio_range = descriptors["cache_ratio"].floating_point_range[0]
    assert (ratio_range.from_value, ratio_range.to_value, ratio_range.step) == (0.0, 1.0, 0.0)
    assert descriptors["cache_ratio"].description and not descriptors["cache_ratio"].read_only
    budget_range = descriptors["latency_budget_ms"].floating_point_range[0]
    assert (budget_range.from_value, budget_range.to_value) == (0.0, 1000.0)
    assert not descriptors["latency_budget_ms"].read_only
    assert descriptors["model_path"].read_only
    assert "learned" in descriptors["cache_mode"].additional_constraints
    assert descriptors["max_token_age"].integer_range[0].from_value == 1
    assert descriptors["max_obs_age_s"].floating_point_range

    [result] = peer.set_parameters(NAME, cache_ratio=0.25)
    assert result.successful, result.reason
    peer.wait_status(NAME, lambda s, v: v.get("target_ratio") == "0.250", 10,
                     "target_ratio 0.250 in diagnostics", node)
    [result] = peer.set_parameters(NAME, cache_mode="vla_cache")
    assert result.successful, result.reason
    peer.wait_status(NAME, lambda s, v: v.get("cache_mode") == "vla_cache", 10,
                     "cache_mode vla_cache in diagnostics", node)

    refusals = {
        "cache_ratio": (1.5, ""),  # out of range: rclpy refuses before the node's callback
        "cache_mode": ("turbo", "unknown cache mode 'turbo'"),
        "model_path": ("/elsewhere", "read-only"),
        "instruction": ("   ", "must not be empty"),
        "max_inference_s": (-1.0, ""),
    }
    for name, (value, fragment) in refusals.items():
        [result] = peer.set_parameters(NAME, **{name: value})
        assert not result.successful, name
        assert result.reason and fragment in result.reason, (name, result.reason)
    [result] = peer.set_parameters(NAME, cache_mode="learned")
    assert not result.successful and "no trained cache policy" in result.reason
    [result] = peer.set_parameters(NAME, joint_lower_limits=[-1.0])
    assert not result.successful and "joint" in result.reason
    peer.wait_status(NAME, lambda s, v: v.get("target_ratio") == "0.250"
                     and v.get("cache_mode") == "vla_cache", 10, "unchanged settings", node)

    # A live clamp change takes effect on the next steps and is counted.
    [result] = peer.set_parameters(NAME, max_joint_delta_rad=0.001)
    assert result.successful, result.reason
    time.sleep(0.5)
    start = time.monotonic()
    wait_until(lambda: len(policy_commands(peer, start)) >= 3, 30, "clamped commands", node.log)
    for message in policy_commands(peer, start):
        assert np.all(np.abs(positions(message) - MEASURED) <= 0.001 + 1e-9)
    peer.wait_status(NAME, lambda s, v: int(v.get("clamp_joint_delta", "0")) > 0, 10,
                     "clamp_joint_delta counted", node)
    results = peer.set_parameters(NAME, max_joint_delta_rad=MAX_DELTA, cache_mode="fixed",
                                  cache_ratio=0.5)
    assert all(result.successful for result in results), results


def test_stale_camera_sends_hold_then_recovers(running: Peer, node: NodeProcess) -> None:
    peer = running
    peer.camera_on = False
    stopped = time.monotonic()
    hold = wait_until(lambda: next((m for m in peer.recorded["/joint_trajectory"].since(stopped)
                                    if is_hold(m)), None), 15, "the hold command", node.log)
    first_hold = next(t for t, m in peer.recorded["/joint_trajectory"].messages if m is hold)
    status = peer.wait_status(NAME, lambda s, v: s.level == b"\x02", 10, "ERROR status", node)
    assert "camera is stale" in status.message
    time.sleep(0.5)
    assert not policy_commands(peer, first_hold), "policy output after the safety command"
    assert peer.recorded["/joint_trajectory"].since(first_hold + 0.3), "hold is not re-sent"

    peer.camera_on = True
    start = time.monotonic()
    wait_until(lambda: policy_commands(peer, start), 30, "recovery", node.log)
    peer.wait_status(NAME, lambda s, v: v.get("state") == "running", 10, "running again", node)


def test_overrun_faults_then_recovers(running: Peer, node: NodeProcess) -> None:
    peer = running
    [result] = peer.set_parameters(NAME, max_inference_s=0.01)  # the range minimum; a step takes longer
    assert result.successful, result.reason
    status = peer.wait_status(NAME, lambda s, v: s.level == b"\x02", 15, "ERROR status", node)
    assert "overran" in status.message
    changed = time.monotonic()
    wait_until(lambda: any(is_hold(m) for m in peer.recorded["/joint_trajectory"].since(changed)),
               10, "the hold command", node.log)
    [result] = peer.set_parameters(NAME, max_inference_s=10.0)
    assert result.successful, result.reason
    start = time.monotonic()
    wait_until(lambda: policy_commands(peer, start), 30, "recovery", node.log)


def bad_encoding_image() -> Image:
    return Image(height=4, width=4, encoding="yuv422", step=8, data=bytes(32))


def short_step_image() -> Image:
    return Image(height=4, width=4, encoding="rgb8", step=10, data=bytes(40))


@pytest.mark.parametrize("stream, setup, fragment, kind", [
    ("camera", lambda p: setattr(p, "image_override", bad_encoding_image),
     "unsupported image encoding 'yuv422'", "image"),
    ("camera", lambda p: setattr(p, "image_override", short_step_image),
     "step 10 is shorter than a row", "image"),
    ("joints", lambda p: p.joint_positions.__setitem__(2, math.nan),
     "non-finite positions for ['joint_3']", "joint_states"),
    ("joints", lambda p: setattr(p, "joint_names", JOINTS[:5] + ["joint_1"]),
     "duplicate joint names", "joint_states"),
    ("joints", lambda p: setattr(p, "joint_positions", MEASURED[:5]),
     "6 names but 5 positions", "joint_states"),
])
def test_bad_inputs_rejected_without_commands(running: Peer, node: NodeProcess, stream: str,
                                              setup: object, fragment: str, kind: str) -> None:
    peer = running
    setup(peer)
    changed = time.monotonic()
    status = peer.wait_status(NAME, lambda s, v: fragment in v.get("last_error", ""), 15,
                              f"diagnostic {fragment!r}", node)
    values = {kv.key: kv.value for kv in status.values}
    assert int(values[f"rejected_{kind}"]) >= 1
    assert fragment in node.log()  # logged too
    # Only bad data on that stream: it goes stale, policy output stops, hold goes out.
    wait_until(lambda: any(is_hold(m) for m in peer.recorded["/joint_trajectory"].since(changed)),
               15, "the hold command", node.log)
    settled = time.monotonic() + 0.3
    time.sleep(1.0)
    for message in peer.recorded["/joint_trajectory"].since(settled):
        assert is_hold(message) and np.all(np.isfinite(positions(message)))
    assert node.alive()


def test_empty_instruction_rejected(running: Peer, node: NodeProcess) -> None:
    peer = running
    peer.publish_instruction("   ")
    status = peer.wait_status(NAME, lambda s, v: "instruction message is empty"
                              in v.get("last_error", ""), 15, "empty-instruction diagnostic",
                              node)
    values = {kv.key: kv.value for kv in status.values}
    assert values["instruction"] == "pick up the red cube" and values["rejected_instruction"]
    assert status.level == b"\x01"  # running, with a recent warning
    start = time.monotonic()
    wait_until(lambda: policy_commands(peer, start), 15, "commands continue", node.log)


def test_sigint_sends_safety_command_and_exits_cleanly(running: Peer, node: NodeProcess) -> None:
    peer = running
    stopped = time.monotonic()
    code, log = node.stop()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log
    assert "safety command sent" in log
    wait_until(lambda: any(is_hold(m) for m in peer.recorded["/joint_trajectory"].since(stopped)),
               5, "the safety command after SIGINT", node.log)
