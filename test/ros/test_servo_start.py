"""Starting MoveIt Servo over real DDS: the starter against a std_srvs/Trigger server in another
context (its own executor thread), as Humble's ``~/start_servo``: accepted, refused, no reply, no
server; the executor keeps running meanwhile. Jazzy's ServoCommandType variant runs where
moveit_msgs is installed (a system ROS 2)."""
from __future__ import annotations

import importlib.util
import threading
import time
from typing import Any, Callable, Iterator

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from std_srvs.srv import Trigger

from test.ros.node_harness import Peer, wait_until
from vla_cache_ros.ros.servo_start import ServoStarter

pytestmark = pytest.mark.timeout(60)


class Client:
    """A node in its own context, spun on a thread, hosting the starter under test."""

    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node("servo_start_client", context=self.context)
        self.ticks = 0
        self.node.create_timer(0.02, self._tick)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.infos: list[str] = []

    def _tick(self) -> None:
        self.ticks += 1

    def starter(self, service: str, kind: str = "trigger", timeout_s: float = 5.0) -> ServoStarter:
        return ServoStarter(self.node, service, kind, timeout_s, self.lines.append,
                            self.errors.append, self.infos.append)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self.thread.join(timeout=10.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    peer = Peer("servo_start_peer")
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def spun_client() -> Iterator[Client]:
    # One context for the module: DDS discovery after a context with the same node name was
    # torn down sometimes took 2-3 s here.
    client = Client()
    yield client
    client.close()


@pytest.fixture()
def client(spun_client: Client) -> Client:
    for lines in (spun_client.lines, spun_client.errors, spun_client.infos):
        lines.clear()
    return spun_client


def serve(peer: Peer, name: str, respond: Callable[[Any, Any], Any]) -> Any:
    return peer.node.create_service(Trigger, name, respond)


def finished(client: Client) -> Callable[[], str | None]:
    return lambda: next((line for line in client.lines if line.startswith(("started", "FAILED"))),
                        None)


def test_trigger_accepted(peer: Peer, client: Client) -> None:
    calls = []

    def respond(request: Any, response: Any) -> Any:
        calls.append(request)
        response.success, response.message = True, "Servo started"
        return response
    service = serve(peer, "/servo_ok/start_servo", respond)
    try:
        starter = client.starter("/servo_ok/start_servo")
        assert client.lines == ["not called yet (/servo_ok/start_servo, std_srvs/srv/Trigger)"]
        starter.start()
        line = wait_until(finished(client), 20, "the start to finish")
        assert line == "started: /servo_ok/start_servo accepted: Servo started"
        assert len(calls) == 1 and not client.errors
        assert client.infos == ["MoveIt Servo started: /servo_ok/start_servo accepted: Servo started"]
        client.lines.clear()
        starter.start()  # a second activation calls again
        wait_until(finished(client), 20, "the second start")
        assert len(calls) == 2
        starter.close()
    finally:
        peer.node.destroy_service(service)


def test_trigger_refused(peer: Peer, client: Client) -> None:
    def respond(request: Any, response: Any) -> Any:
        response.success, response.message = False, "robot in collision"
        return response
    service = serve(peer, "/servo_refuses/start_servo", respond)
    try:
        client.starter("/servo_refuses/start_servo").start()
        line = wait_until(finished(client), 20, "the refusal")
        assert line == "FAILED: /servo_refuses/start_servo refused: robot in collision"
        assert client.errors == ["MoveIt Servo start failed: /servo_refuses/start_servo refused: "
                                 "robot in collision; twists are ignored until Servo accepts them"]
    finally:
        peer.node.destroy_service(service)


def test_no_server_is_reported_after_the_timeout_without_blocking(client: Client) -> None:
    starter = client.starter("/no_servo_here/start_servo", timeout_s=1.0)
    started = time.monotonic()
    starter.start()
    assert time.monotonic() - started < 0.5  # start() returns at once
    ticks = client.ticks
    line = wait_until(finished(client), 20, "the timeout")
    assert line.startswith("FAILED: /no_servo_here/start_servo not available after 1 s")
    assert client.ticks - ticks >= 20, "the executor was blocked while waiting"
    assert client.errors and "not available after 1 s" in client.errors[0]


def test_a_server_that_never_answers_times_out(peer: Peer, client: Client) -> None:
    release = threading.Event()

    def respond(request: Any, response: Any) -> Any:
        release.wait(10.0)  # blocks only the peer's executor
        response.success = True
        return response
    service = serve(peer, "/servo_stuck/start_servo", respond)
    try:
        starter = client.starter("/servo_stuck/start_servo", timeout_s=1.5)
        # the 1.5 s are for the reply: wait until the service is discovered first
        wait_until(starter._client.service_is_ready, 20, "the service to be discovered")
        starter.start()
        line = wait_until(finished(client), 20, "the reply timeout")
        assert line == "FAILED: no reply from /servo_stuck/start_servo within 1.5 s"
    finally:
        release.set()
        time.sleep(0.2)
        peer.node.destroy_service(service)


@pytest.mark.skipif(importlib.util.find_spec("moveit_msgs") is None,
                    reason="moveit_msgs is not installed (not on PyPI; a system ROS 2 has it)")
def test_switch_command_type_selects_twist(peer: Peer, client: Client) -> None:
    from moveit_msgs.srv import ServoCommandType

    requests = []

    def respond(request: Any, response: Any) -> Any:
        requests.append(request.command_type)
        response.success = True
        return response
    service = peer.node.create_service(ServoCommandType, "/servo_jazzy/switch_command_type",
                                       respond)
    try:
        client.starter("/servo_jazzy/switch_command_type", "switch_command_type").start()
        line = wait_until(finished(client), 20, "the switch")
        assert line == "started: /servo_jazzy/switch_command_type accepted TWIST"
        assert requests == [ServoCommandType.Request.TWIST] == [1]
    finally:
        peer.node.destroy_service(service)
