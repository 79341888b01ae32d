"""RemotePolicy against stand-in servers (standard library, no Ray): failures become
PolicyServerError, the next request after one asks for a fresh cache, lost sessions are counted."""
from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from vla_cache_ros.errors import CacheModeError, ConfigurationError, PolicyServerError
from vla_cache_ros.serving.client import RemotePolicy
from vla_cache_ros.serving.wire import SESSION_HEADER

FRAME = np.zeros((8, 8, 3), dtype=np.uint8)


def answer(steps: int, restarted: str | None, session: str = "robot") -> dict:
    stats = {"mode": "fixed", "target_ratio": 0.5, "actual_ratio": 0.0, "reused_tokens": 0,
             "recomputed_tokens": 256, "times_ms": {"total": 5.0}, "flops": 1.0, "flops_uncached": 1.0,
             "prefill_flops": 1.0, "prefill_flops_uncached": 1.0, "token_layer_computations": 1,
             "reuse_indices": [], "action_tokens": [1] * 7, "cache_reset": restarted is not None}
    return {"action": [0.1] * 7, "stats": stats,
            "session": {"session_id": session, "restarted": restarted, "replica": "r", "steps": steps}}


class StandIn:
    """An HTTP server answering queued (status, JSON) pairs and recording request bodies."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict]] = []
        self.requests: list[tuple[str, dict | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                outer.requests.append((self.headers.get(SESSION_HEADER), body))
                status, data = outer.answers.pop(0)
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = _reply

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in():
    server = StandIn()
    yield server
    server.close()


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
