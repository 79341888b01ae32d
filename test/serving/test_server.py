"""The Ray Serve policy server over loopback: /act equals the local model, sessions are isolated
and reuse tokens, bad requests get 4xx with the reason and the server stays up, LRU eviction.

One server (one local Ray instance, 2 CPUs, 200 MB object store) for the whole module, stopped
at its end. Skips when ray[serve] is not installed.
"""
from __future__ import annotations

import base64
import json
import socket
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason="ray[serve] is not installed (requirements/serve.in)")
json_numpy = pytest.importorskip("json_numpy", reason="json-numpy is not installed (requirements/serve.in)")

from test.serving.conftest import UNNORM_KEY, stream  # noqa: E402
from vla_cache_ros.policy import CachedVLAPolicy  # noqa: E402
from vla_cache_ros.serving.client import RemotePolicy  # noqa: E402
from vla_cache_ros.serving.sessions import SessionLimits  # noqa: E402
from vla_cache_ros.serving.wire import SESSION_HEADER, Limits, SessionSettings, step_request_body  # noqa: E402

TOKEN = "test-token"
INSTRUCTION = "pick up the red block"
pytestmark = pytest.mark.timeout(300)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tiny_checkpoint):
    from vla_cache_ros.serving import server

    options = server.ServerOptions(
        model_path=str(tiny_checkpoint), unnorm_key=UNNORM_KEY, device="cpu", num_threads=1,
        port=free_port(), local_cpus=2, limits=Limits(max_request_bytes=2 * 2**20, max_image_pixels=640 * 480),
        sessions=SessionLimits(max_sessions=3), token=TOKEN, max_ongoing_requests=1, max_queued_requests=2)
    try:
        yield server.start(options)
    finally:
        server.stop()


def post(url: str, body: bytes, headers: dict | None = None, token: str | None = TOKEN,
         method: str = "POST") -> tuple[int, bytes]:
    headers = dict(headers or {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body if method == "POST" else None, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_act_equals_the_local_model(server_url, tiny_model) -> None:
    """OpenVLA deploy.py's request, both forms; the answer is the local uncached action."""
    frame = stream(7)[0]
    expected, _ = CachedVLAPolicy(tiny_model, mode="off", unnorm_key=UNNORM_KEY).step(frame, INSTRUCTION)
    payload = {"image": frame, "instruction": INSTRUCTION, "unnorm_key": UNNORM_KEY}
    status, body = post(server_url + "/act", json_numpy.dumps(payload).encode())
    assert status == 200, body
    assert np.array_equal(json_numpy.loads(body), expected)
    status, body = post(server_url + "/act", json.dumps({"encoded": json_numpy.dumps(payload)}).encode())
    assert status == 200, body
    assert np.array_equal(json_numpy.loads(json.loads(body)), expected)


def test_sessions_are_isolated_and_reuse_tokens(server_url, tiny_model) -> None:
    robots = {"robot_a": (stream(1), "pick up the red block"), "robot_b": (stream(2), "push the blue block")}
    clients = {name: RemotePolicy(server_url, name, timeout_s=60.0, token=TOKEN) for name in robots}
    local = {name: CachedVLAPolicy(tiny_model, mode="fixed", cache_ratio=0.5, unnorm_key=UNNORM_KEY)
             for name in robots}
    for step in range(3):
        for name, (frames, instruction) in robots.items():
            action, stats = clients[name].step(frames[step], instruction)
            expected, local_stats = local[name].step(frames[step], instruction)
            assert np.array_equal(action, expected)
            assert stats.reuse_indices.tolist() == local_stats.reuse_indices.tolist()
            assert stats.cache_reset == (step == 0) and (stats.reused_tokens > 0) == (step > 0)
            assert stats.session_steps == step + 1


def _step_body(**changes) -> bytes:
    body = json.loads(step_request_body(stream(3)[0], INSTRUCTION, SessionSettings("fixed", 0.5)))
    return json.dumps({**body, **changes}).encode()


def _raw_image(shape: list, size: int) -> dict:
    return {"encoding": "raw", "shape": shape, "data": base64.b64encode(bytes(size)).decode()}


@pytest.mark.parametrize("path, body, headers, token, method, status, reason", [
    ("/step", b"{oops", {SESSION_HEADER: "bad"}, TOKEN, "POST", 400, "not valid JSON"),
    ("/step", _step_body(image=_raw_image([4, 4, 4], 64)), {SESSION_HEADER: "bad"}, TOKEN, "POST", 400, "[H, W, 3]"),
    ("/step", _step_body(image=_raw_image([4000, 4000, 3], 3)), {SESSION_HEADER: "bad"}, TOKEN, "POST", 400,
     "exceeds the server's limit of 307200 pixels"),
    ("/step", b" " * (3 * 2**20), {SESSION_HEADER: "bad"}, TOKEN, "POST", 413, "exceeds the server's limit"),
    ("/step", _step_body(settings={"speed": 2}), {SESSION_HEADER: "bad"}, TOKEN, "POST", 400,
     "unknown session settings: speed"),
    ("/step", _step_body(settings={"mode": "telepathy"}), {SESSION_HEADER: "bad"}, TOKEN, "POST", 400, "telepathy"),
    ("/step", _step_body(), {}, TOKEN, "POST", 400, SESSION_HEADER),
    ("/act", json_numpy.dumps({"image": np.zeros((4, 4), np.uint8), "instruction": "go"}).encode(), {}, TOKEN,
     "POST", 400, "(H, W, 3)"),
    ("/act", json.dumps({"image": {"__numpy__": "AAAA", "dtype": "|O", "shape": [3]}}).encode(), {}, TOKEN,
     "POST", 400, "(H, W, 3)"),
    ("/act", b"{oops", {}, TOKEN, "POST", 400, "not valid JSON"),
    # Regression: /act decoded any image within the body limit; the pixel limit held only for /step.
    ("/act", json_numpy.dumps({"image": np.zeros((500, 700, 3), np.uint8), "instruction": "go"}).encode(), {},
     TOKEN, "POST", 400, "image of 500 x 700 pixels exceeds the server's limit of 307200 pixels"),
    ("/act", json_numpy.dumps({"image": np.zeros((4, 4, 3), np.uint8), "instruction": "go",
                               "unnorm_key": "nope"}).encode(), {}, TOKEN, "POST", 400, "nope"),
    ("/step", _step_body(), {SESSION_HEADER: "bad"}, None, "POST", 401, "bearer token"),
    ("/step", _step_body(), {SESSION_HEADER: "bad"}, "wrong", "POST", 401, "bearer token"),
    ("/nothing", b"{}", {}, TOKEN, "POST", 404, "no endpoint"),
    ("/step", b"", {SESSION_HEADER: "bad"}, TOKEN, "GET", 405, "takes POST"),
])
def test_bad_requests_get_4xx_with_the_reason(server_url, path, body, headers, token, method, status,
                                              reason) -> None:
    got, answer = post(server_url + path, body, headers, token, method)
    assert got == status, answer
    assert reason in json.loads(answer)["error"]
    health = RemotePolicy(server_url, "probe", token=TOKEN).health()  # still up
    assert health["status"] == "ok"


def test_lru_eviction_beyond_max_sessions(server_url) -> None:
    probe = RemotePolicy(server_url, "probe", timeout_s=60.0, token=TOKEN)
    before = probe.health()["counters"]["evictions"]
    for index in range(4):
        RemotePolicy(server_url, f"evict_{index}", timeout_s=60.0, token=TOKEN).step(stream(9)[0], INSTRUCTION)
    health = probe.health()
    assert health["counters"]["evictions"] - before >= 1
    assert len(health["sessions"]) <= 3


def test_a_full_queue_gets_503_and_the_server_carries_on(server_url) -> None:
    """One request running and two queued per replica (this module's server): a burst beyond that
    is refused with 503 by Serve, not queued without bound. Bursts repeat (at most 5) until one
    overlaps enough to be refused."""
    body = json_numpy.dumps({"image": stream(8, 1)[0], "instruction": INSTRUCTION}).encode()
    seen: set[int] = set()
    for _ in range(5):
        statuses: list[int] = []
        start = threading.Barrier(8)

        def fire() -> None:
            start.wait()
            statuses.append(post(server_url + "/act", body)[0])

        threads = [threading.Thread(target=fire) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        seen |= set(statuses)
        assert set(statuses) <= {200, 503}, statuses
        if 503 in seen:
            break
    assert {200, 503} <= seen, seen
    assert RemotePolicy(server_url, "probe", token=TOKEN).health()["status"] == "ok"


def test_bounded_load_test_answers_everything_right(server_url, tiny_checkpoint, monkeypatch) -> None:
    """``vla-cache serve-load`` in small: 2 concurrent sessions x 4 steps, every answer checked
    (step counts) and compared with a local policy."""
    from argparse import Namespace

    from vla_cache_ros.apps.serve import format_report, load_test

    monkeypatch.setenv("VLA_CACHE_SERVE_TOKEN", TOKEN)
    args = Namespace(sessions=2, steps=4, encoding="raw", mode="fixed", ratio=0.5, timeout_s=60.0, cache_policy=None,
                     verify_model=str(tiny_checkpoint), verify_steps=4, unnorm_key=UNNORM_KEY)
    report = load_test(server_url, args)
    assert report["answered"] == report["requests"] == 8, format_report(report)
    assert not report["wrong"] and not report["errors"] and report["session_restarts"] == 0, format_report(report)
    assert "steps/s" in format_report(report)


def test_a_replica_drafts_with_the_servers_drafter(tiny_checkpoint, tmp_path) -> None:
    """ServerOptions.drafter_path reaches every replica (loaded as a replica loads, without Ray):
    a speculative session's first step is drafted whole, which only a drafter can do."""
    import torch

    from vla_cache_ros.cache.drafter import DrafterConfig, DrafterNet, save_drafter
    from vla_cache_ros.serving import server
    from vla_cache_ros.serving.wire import StepRequest

    torch.manual_seed(0)
    directory = save_drafter(tmp_path / "drafter", DrafterNet(DrafterConfig(hidden_size=64, token_offset=31744,
                                                                            width=8)))
    options = server.ServerOptions(model_path=str(tiny_checkpoint), unnorm_key=UNNORM_KEY, device="cpu",
                                   num_threads=1, drafter_path=str(directory))
    replica = server.load_replica(options, "cpu", "drafting")
    assert replica.health()["drafter"] == str(directory)
    answer = replica.step(replica.new_session("robot"),
                          StepRequest(INSTRUCTION, stream(7)[0], SessionSettings(decode="speculative"), reset=False))
    assert answer["stats"]["decode"] == "speculative" and answer["stats"]["draft_tokens"] == 7


def test_serve_refuses_a_broken_drafter_in_one_line_before_starting(tiny_checkpoint, tmp_path, capsys) -> None:
    from vla_cache_ros.apps.cli import main as cli_main

    (tmp_path / "drafter").mkdir()
    (tmp_path / "drafter" / "drafter.json").write_text(json.dumps({"format": "something else"}))
    (tmp_path / "drafter" / "drafter.safetensors").write_bytes(b"")
    assert cli_main(["serve", "--model", str(tiny_checkpoint), "--drafter", str(tmp_path / "drafter")]) == 2
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and f"{tmp_path / 'drafter' / 'drafter.json'}: format is not" in errors[0], errors
    assert "starting the policy server" not in captured.out


def test_serve_refuses_a_broken_cache_policy_in_one_line_before_starting(tiny_checkpoint, tmp_path, capsys) -> None:
    """--cache-policy DIR, and the model directory's own cache_policy/: read before Ray starts (a
    replica found it, as a Ray traceback, after Ray and the deployment had started)."""
    import shutil

    from vla_cache_ros.apps.cli import main as cli_main
    from vla_cache_ros.cache.learned import CachePolicyConfig, CacheSelectorNet, save_cache_policy

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cache_policy.json").write_text(json.dumps({"format": "something else"}))
    (tmp_path / "bad" / "cache_policy.safetensors").write_bytes(b"")
    assert cli_main(["serve", "--model", str(tiny_checkpoint), "--cache-policy", str(tmp_path / "bad")]) == 2
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and f"{tmp_path / 'bad' / 'cache_policy.json'}: format is not" in errors[0], errors
    assert "starting the policy server" not in captured.out
    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model)
    own = save_cache_policy(model / "cache_policy", CacheSelectorNet(CachePolicyConfig(width=4)))
    (own / "cache_policy.safetensors").unlink()
    assert cli_main(["serve", "--model", str(model)]) == 2
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and f"cache policy {own}: cache_policy.safetensors is missing" in errors[0], errors
    assert "starting the policy server" not in captured.out


def test_serve_load_refuses_a_broken_verify_cache_policy_before_any_request(tiny_checkpoint, tmp_path,
                                                                            capsys) -> None:
    """The local policy of --verify-model loads --cache-policy: read before the load test (it was
    read after it, when the test's work was done). No server listens at the URL: a request would
    fail with another error."""
    from vla_cache_ros.apps.cli import main as cli_main

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cache_policy.json").write_text("{")
    (tmp_path / "bad" / "cache_policy.safetensors").write_bytes(b"")
    code = cli_main(["serve-load", "--url", f"http://127.0.0.1:{free_port()}", "--sessions", "1", "--steps", "1",
                     "--verify-model", str(tiny_checkpoint), "--unnorm-key", UNNORM_KEY,
                     "--cache-policy", str(tmp_path / "bad"), "--json", str(tmp_path / "report.json")])
    assert code == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and f"{tmp_path / 'bad' / 'cache_policy.json'}: not readable JSON" in errors[0], errors
    assert not (tmp_path / "report.json").exists()
