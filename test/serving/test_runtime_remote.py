"""PolicyRuntime with ``inference_backend: remote`` against a stand-in server (no model, no Ray):
configure checks the server, the session is the node's name, a failed request faults like a
failed inference (policy output stops, the safety command goes out), and the next answer after
the server is back resumes with a fresh cache."""
from __future__ import annotations

import numpy as np
import pytest

from test.serving.stand_in import answer
from vla_cache_ros.errors import PolicyServerError
from vla_cache_ros.runtime.config import NodeConfig
from vla_cache_ros.runtime.loop import PolicyRuntime, check_policy_source
from vla_cache_ros.runtime.reporting import ProblemLog
from vla_cache_ros.serving.client import RemotePolicy

JOINTS = ["j1", "j2", "j3", "j4", "j5", "j6"]
MEASURED = [0.1, -0.2, 0.3, -0.4, 0.5, -0.6]
FRAME = np.zeros((16, 16, 3), dtype=np.uint8)
HEALTH = {"status": "ok", "modes": ["off", "fixed", "vla_cache"]}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def remote_config(url: str, **values) -> NodeConfig:
    return NodeConfig.from_values({
        "inference_backend": "remote", "server_url": url, "request_timeout_s": 5.0,
        "command_interface": "joint_positions", "action_semantics": "joint_delta", "joint_names": JOINTS,
        "enable_actuation": True, "max_obs_age_s": 0.5, "instruction": "pick up the block", **values})


def step(runtime: PolicyRuntime, clock: Clock):
    clock.now += 0.001
    runtime.on_joint_state(JOINTS, MEASURED, clock.now)
    runtime.on_image(lambda: FRAME, clock.now)
    stats = runtime.serve_one(timeout_s=0.0)
    clock.now += 0.05
    return stats


def test_remote_backend_faults_on_failure_and_resumes_with_a_fresh_cache(stand_in) -> None:
    config = remote_config(stand_in.url)
    check_policy_source(config)  # no model_path needed
    clock, errors = Clock(), []
    runtime = PolicyRuntime(config, clock, ProblemLog(lambda line: None, errors.append),
                            session_name="/arm_a/vla_cache_node")
    stand_in.answers = [(200, HEALTH)]
    runtime.load()
    assert isinstance(runtime.policy, RemotePolicy)
    runtime.activate()
    stand_in.answers = [(200, answer(1, "new", "/arm_a/vla_cache_node")),
                        (503, {"error": "overloaded"}), (503, {"error": "overloaded"}),
                        (200, answer(1, "new", "/arm_a/vla_cache_node"))]
    assert step(runtime, clock) is not None
    publication = runtime.tick()
    assert publication.arm is not None and not publication.arm.is_safety
    assert step(runtime, clock) is None and step(runtime, clock) is None
    publication = runtime.tick()
    assert publication.entered_fault and publication.arm.is_safety
    assert "answered 503: overloaded" in publication.reason
    assert step(runtime, clock) is not None  # the server is back
    assert not runtime.tick().arm.is_safety
    sessions = {session for session, _ in stand_in.requests[1:]}
    assert sessions == {"/arm_a/vla_cache_node"}
    assert [body["reset"] for _, body in stand_in.requests[1:]] == [True, False, True, True]
    values = runtime.status_report().as_dict()
    assert values["inference_backend"] == "remote" and values["server_url"] == stand_in.url
    assert values["server_failures"] == "2" and "round_trip_p50_ms" in values


def test_configure_fails_when_the_server_is_unreachable() -> None:
    runtime = PolicyRuntime(remote_config("http://127.0.0.1:1"), Clock(), ProblemLog(print, print))
    with pytest.raises(PolicyServerError, match="unreachable"):
        runtime.load()


def test_session_id_parameter_wins_over_the_node_name(stand_in) -> None:
    runtime = PolicyRuntime(remote_config(stand_in.url, session_id="arm_7"), Clock(), ProblemLog(print, print),
                            session_name="/ns/node")
    stand_in.answers = [(200, HEALTH)]
    runtime.load()
    assert runtime.policy.session_id == "arm_7"
