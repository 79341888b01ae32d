"""RemotePolicy against stand-in servers (standard library, no Ray): failures become
PolicyServerError, the next request after one asks for a fresh cache, lost sessions are counted."""
from __future__ import annotations

import socket

import numpy as np
import pytest

from test.serving.stand_in import answer
from vla_cache_ros.errors import CacheModeError, ConfigurationError, PolicyServerError
from vla_cache_ros.serving.client import RemotePolicy

FRAME = np.zeros((8, 8, 3), dtype=np.uint8)


def test_error_answers_fail_the_step_and_the_next_one_resets(stand_in) -> None:
    client = RemotePolicy(stand_in.url, "robot", timeout_s=5.0)
    stand_in.answers = [(200, answer(1, "new")), (200, answer(2, None)), (503, {"error": "overloaded"}),
                        (200, answer(3, None)), (200, answer(1, "new"))]
    client.step(FRAME, "go")
    action, stats = client.step(FRAME, "go")
    assert action.shape == (7,) and stats.times_s["total"] >= stats.network_s >= 0.0
    with pytest.raises(PolicyServerError, match="answered 503: overloaded"):
        client.step(FRAME, "go")
    client.step(FRAME, "go")
    client.step(FRAME, "go")  # the server lost the session (restarted: new on a used session)
    resets = [body["reset"] for _, body in stand_in.requests]
    assert resets == [True, False, False, True, False]
    assert {session for session, _ in stand_in.requests} == {"robot"}
    values = client.diagnostic_values()
    assert values["server_failures"] == "1" and values["server_session_restarts"] == "1"
    assert "round_trip_p50_ms" in values and "overloaded" in values["server_last_error"]


def test_an_answer_for_another_session_is_refused(stand_in) -> None:
    stand_in.answers = [(200, answer(1, "new", session="other"))]
    with pytest.raises(PolicyServerError, match="answered for session 'other'"):
        RemotePolicy(stand_in.url, "robot").step(FRAME, "go")


def test_warm_up_learns_the_servers_modes(stand_in) -> None:
    stand_in.answers = [(200, {"status": "ok", "modes": ["off", "fixed"]})]
    client = RemotePolicy(stand_in.url, "robot", mode="fixed")
    client.warm_up()
    assert client.available_modes() == ["off", "fixed"]
    with pytest.raises(CacheModeError):
        client.set_mode("vla_cache")


def test_refused_connection_and_timeout() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(PolicyServerError, match="unreachable"):
        RemotePolicy(f"http://127.0.0.1:{port}", "robot", timeout_s=2.0).step(FRAME, "go")
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(PolicyServerError, match="no answer within 0.3 s"):
            RemotePolicy(url, "robot", timeout_s=0.3).step(FRAME, "go")


@pytest.mark.parametrize("kwargs, reason", [({"server_url": "ftp://x"}, "http://"),
                                            ({"session_id": ""}, "session id"),
                                            ({"timeout_s": 0.0}, "timeout"), ({"encoding": "gif"}, "encoding"),
                                            ({"cache_ratio": 1.5}, r"\[0, 1\]")])
def test_bad_client_settings(kwargs: dict, reason: str) -> None:
    with pytest.raises(ConfigurationError, match=reason):
        RemotePolicy(**{"server_url": "http://127.0.0.1:1", "session_id": "robot", **kwargs})
