"""The managed node's transitions over real DDS, driven as a lifecycle manager drives them
(``autostart: false``, ``~/change_state`` and ``~/get_state`` services from another process).

Pinned: nothing is commanded before activation; deactivation stops policy output first and the
last command on the command topic is the safety command (the hold); cleanup releases the model
and the node can be configured again; parameters answer in every state.
"""
from __future__ import annotations

import time
from typing import Iterator

import numpy as np
import pytest
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from std_msgs.msg import Float64MultiArray

from test.ros.node_harness import (
    MEASURED,
    NodeProcess,
    Peer,
    joint_arm_parameters,
    make_checkpoint,
    positions,
    start_node,
    wait_until,
)

NAME = "vla_node_lifecycle"
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    peer = Peer("vla_test_peer_lifecycle")
    peer.record("/joint_commands", Float64MultiArray)
    peer.camera_on = peer.joints_on = True
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    workdir = tmp_path_factory.mktemp("lifecycle")
    process = start_node(NAME, joint_arm_parameters(
        make_checkpoint(workdir / "tiny"), autostart=False, instruction="pick up the red cube"),
        workdir=workdir)
    yield process
    process.stop()


def state(peer: Peer) -> str:
    return peer._call(GetState, f"/{NAME}/get_state", GetState.Request(), 15).current_state.label


def transition(peer: Peer, transition_id: int) -> bool:
    request = ChangeState.Request()
    request.transition.id = transition_id
    return peer._call(ChangeState, f"/{NAME}/change_state", request, 60).success


def is_hold(message: Float64MultiArray) -> bool:
    return bool(np.array_equal(positions(message), MEASURED))


def test_unconfigured_until_told(peer: Peer, node: NodeProcess) -> None:
    wait_until(lambda: state(peer) == "unconfigured", 30, "the lifecycle services", node.log)
    start = time.monotonic()
    [result] = peer.set_parameters(NAME, cache_ratio=0.3)  # parameters answer before configure
    assert result.successful, result.reason
    peer.wait_status(NAME, lambda s, v: "unconfigured (lifecycle)" in s.message, 10,
                     "unconfigured status", node)
    time.sleep(1.0)
    assert not peer.recorded["/joint_commands"].since(start)  # nothing commanded
    assert "ready:" not in node.log()


def test_configure_then_activate_runs_the_policy(peer: Peer, node: NodeProcess) -> None:
    assert transition(peer, Transition.TRANSITION_CONFIGURE)
    assert state(peer) == "inactive" and "ready:" in node.log()
    start = time.monotonic()
    time.sleep(1.0)
    assert not peer.recorded["/joint_commands"].since(start)  # inactive: no output
    status = peer.wait_status(NAME, lambda s, v: "inactive (lifecycle)" in s.message, 10,
                              "inactive status", node)
    assert {kv.key: kv.value for kv in status.values}["target_ratio"] == "0.300"
    assert transition(peer, Transition.TRANSITION_ACTIVATE) and state(peer) == "active"
    wait_until(lambda: sum(not is_hold(m) for m in peer.recorded["/joint_commands"].since(start))
               >= 3, 30, "policy commands", node.log)


def test_deactivate_stops_policy_output_then_sends_the_hold(peer: Peer, node: NodeProcess) -> None:
    start = time.monotonic()
    wait_until(lambda: any(not is_hold(m) for m in peer.recorded["/joint_commands"].since(start)),
               30, "policy commands while active", node.log)
    assert transition(peer, Transition.TRANSITION_DEACTIVATE) and state(peer) == "inactive"
    time.sleep(1.0)  # camera and joints keep coming: still nothing but the one hold
    after = peer.recorded["/joint_commands"].since(start)
    last_policy = max(i for i, m in enumerate(after) if not is_hold(m))
    assert after[last_policy + 1:] and all(is_hold(m) for m in after[last_policy + 1:])
    assert is_hold(after[-1])


def test_cleanup_releases_and_configure_again(peer: Peer, node: NodeProcess) -> None:
    assert transition(peer, Transition.TRANSITION_CLEANUP) and state(peer) == "unconfigured"
    peer.wait_status(NAME, lambda s, v: "unconfigured (lifecycle)" in s.message, 10,
                     "unconfigured after cleanup", node)
    assert transition(peer, Transition.TRANSITION_CONFIGURE)
    assert transition(peer, Transition.TRANSITION_ACTIVATE)
    start = time.monotonic()
    wait_until(lambda: any(not is_hold(m) for m in peer.recorded["/joint_commands"].since(start)),
               30, "policy commands after reconfiguring", node.log)
    code, log = node.stop()
    assert code == 0 and "Traceback" not in log, log[-3000:]
