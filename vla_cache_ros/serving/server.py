"""The policy server: a Ray Serve deployment whose replicas each hold the model and the sessions
Serve routes to them.

Endpoints (JSON; formats in :mod:`~vla_cache_ros.serving.wire`):

- ``POST /act``: OpenVLA ``deploy.py``-compatible, stateless (a full recompute every call).
- ``POST /step``: one step of the session named by the :data:`~wire.SESSION_HEADER` header.
  Serve's model multiplexing routes every request of a session id to the replica that holds
  it (``@serve.multiplexed``; LRU beyond ``max_sessions`` per replica). If that replica died,
  Serve starts a new one and the session begins again there with a full recompute; the answer
  says so (``session.restarted: new`` on a session the client had used: the client reports a
  lost session).
- ``GET /health``: the answering replica's sessions, limits and counters (evictions, idle
  expiries, bad requests).

Errors are answers, never crashes: 400 with the reason for bad input (shape, size, JSON, unknown
setting or mode), 401 without the bearer token when one is set, 404 / 405 for other paths and
methods, 413 for a body over the limit, 500 naming an unexpected failure, and 503 from Serve
itself when a replica's queue is full (``max_queued_requests``). Nothing on the wire is pickled.

Local by default (``ray.init`` on this machine, HTTP on 127.0.0.1); ``address`` joins an
existing Ray cluster. Imports Ray (``ray[serve]``) and json-numpy at module level: import this module only
where the server runs.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import os
from dataclasses import dataclass, field
from typing import Any

import json_numpy
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from vla_cache_ros.errors import ConfigurationError, InvalidInputError, clip_text
from vla_cache_ros.serving.sessions import Replica, SessionLimits, build_replica
from vla_cache_ros.serving.wire import (
    SESSION_HEADER,
    Limits,
    check_array_image,
    check_instruction,
    check_session_id,
    check_size,
    checked_array_hook,
    parse_json,
    parse_step_request,
)

APP_NAME = "vla_cache"
TOKEN_ENV = "VLA_CACHE_SERVE_TOKEN"
"""Environment variable with the bearer token (server and client); unset: no token needed."""


@dataclass(frozen=True)
class ServerOptions:
    """How ``vla-cache serve`` runs.

    Attributes:
        model_path: a checkpoint directory (short names are resolved by the command).
        unnorm_key: default statistics key (None: the checkpoint's only one).
        device: ``auto`` (a GPU per replica where the cluster has GPUs, else CPU) or a torch
            device name.
        dtype: weights / compute dtype name.
        num_threads: torch CPU threads per replica (0: torch's default).
        replicas: replicas of the deployment.
        replica_cpus: CPUs Ray reserves per replica.
        host, port: where Serve's HTTP proxy listens (127.0.0.1 by default).
        address: an existing Ray cluster to join (None: start a local one).
        local_cpus: CPUs of a local Ray instance (None: Ray's default, all of them).
        object_store_bytes: object store of a local Ray instance.
        limits: request and image size limits.
        sessions: sessions per replica, idle timeout.
        token: bearer token required on every request (None: none).
        max_ongoing_requests, max_queued_requests: per replica; beyond the queue Serve answers
            503.
        default_mode, default_ratio: a new session's cache settings until it sends its own.
        cache_policy_path: the learned cache policy every session may run (None: none).
        drafter_path: the learned drafter whose tokens are the draft of every session that decodes
            speculatively (None: each session's previous step's tokens).
        lm_head: the replicas' LM head, ``screened`` or ``full`` (``cache/lm_head.py``).
    """

    model_path: str
    unnorm_key: str | None = None
    device: str = "auto"
    dtype: str = "float32"
    num_threads: int = 0
    replicas: int = 1
    replica_cpus: float = 1.0
    host: str = "127.0.0.1"
    port: int = 8000
    address: str | None = None
    local_cpus: int | None = None
    object_store_bytes: int = 200 * 2**20
    limits: Limits = field(default_factory=Limits)
    sessions: SessionLimits = field(default_factory=SessionLimits)
    token: str | None = None
    max_ongoing_requests: int = 8
    max_queued_requests: int = 64
    default_mode: str = "fixed"
    default_ratio: float = 0.5
    cache_policy_path: str | None = None
    drafter_path: str | None = None
    lm_head: str = "screened"

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ConfigurationError(f"replicas must be >= 1, got {self.replicas}")
        if not 0 < self.port < 65536:
            raise ConfigurationError(f"port must be in 1-65535, got {self.port}")
        if self.max_ongoing_requests < 1 or self.max_queued_requests < 1:
            raise ConfigurationError("max_ongoing_requests and max_queued_requests must be >= 1")

    @property
    def url(self) -> str:
        """The server's base URL."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"


def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)


def load_replica(options: ServerOptions, device: str, name: str) -> Replica:
    """Load the model (checking the default statistics key) and build the replica over it."""
    from vla_cache_ros.compute import resolve_dtype, set_cpu_threads
    from vla_cache_ros.models.vla import load_vla

    set_cpu_threads(options.num_threads)
    model = load_vla(options.model_path, device=device, dtype=resolve_dtype(options.dtype))
    model.config.action_statistics().select(options.unnorm_key)  # fail at start, not per request
    return build_replica(model, options.unnorm_key, options.sessions, name, options.default_mode,
                         options.default_ratio, options.cache_policy_path, options.drafter_path, options.lm_head)


def build_app(options: ServerOptions, device: str) -> Any:
    """The Serve application (bind it with ``serve.run``)."""

    @serve.deployment(name="PolicyServer", num_replicas=options.replicas,
                      ray_actor_options={"num_cpus": options.replica_cpus,
                                         "num_gpus": 1 if device.startswith("cuda") else 0},
                      max_ongoing_requests=options.max_ongoing_requests,
                      max_queued_requests=options.max_queued_requests)
    class PolicyServer:
        def __init__(self) -> None:
            try:
                name = serve.get_replica_context().replica_id.unique_id
            except Exception:  # noqa: BLE001 - only a label
                name = str(os.getpid())
            self.replica = load_replica(options, device, name)
            self._array_hook = checked_array_hook(options.limits, json_numpy.object_hook)  # pixels checked first

        @serve.multiplexed(max_num_models_per_replica=options.sessions.max_sessions)
        async def get_session(self, session_id: str) -> Any:
            return self.replica.new_session(session_id)

        async def __call__(self, request: Request) -> Response:
            try:
                return await self._route(request)
            except InvalidInputError as error:
                self.replica.counters.bad_requests += 1
                status = 413 if "exceeds the server's limit of" in str(error) and "bytes" in str(error) else 400
                return _error(status, str(error))
            except Exception as error:  # noqa: BLE001 - one request never takes the server down
                self.replica.counters.failed_steps += 1
                return _error(500, clip_text(f"internal error: {type(error).__name__}: {error}", 500))

        async def _route(self, request: Request) -> Response:
            if options.token is not None:
                given = request.headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {options.token}".encode()):
                    return _error(401, "missing or wrong bearer token (Authorization: Bearer ...)")
            path, method = request.url.path.rstrip("/") or "/", request.method
            routes = {"/act": ("POST", self._act), "/step": ("POST", self._step),
                      "/health": ("GET", self._health)}
            if path not in routes:
                return _error(404, f"no endpoint {clip_text(path)}; endpoints: {', '.join(routes)}")
            wanted, handler = routes[path]
            if method != wanted:
                return _error(405, f"{path} takes {wanted}, not {method}")
            return await handler(request)

        async def _body(self, request: Request) -> bytes:
            stated = request.headers.get("content-length")
            if stated is not None and stated.isdigit():
                check_size(int(stated), options.limits)
            chunks, total = [], 0
            async for chunk in request.stream():
                total += len(chunk)
                check_size(total, options.limits)
                chunks.append(chunk)
            return b"".join(chunks)

        async def _act(self, request: Request) -> Response:
            body = await self._body(request)
            loop = asyncio.get_running_loop()
            payload = await loop.run_in_executor(None, parse_json, body, options.limits, self._array_hook)
            encoded = "encoded" in payload
            if encoded:  # deploy.py's form for clients without json-numpy
                if len(payload) != 1 or not isinstance(payload["encoded"], str):
                    raise InvalidInputError("an 'encoded' payload must be the only field, a JSON string")
                payload = parse_json(payload["encoded"].encode(), options.limits, self._array_hook)
            unknown = sorted(set(payload) - {"image", "instruction", "unnorm_key"})
            if unknown:
                raise InvalidInputError(f"unknown fields: {', '.join(map(str, unknown))} (known: image, "
                                        "instruction, unnorm_key)")
            image = check_array_image(payload.get("image"))
            instruction = check_instruction(payload.get("instruction"), options.limits)
            key = payload.get("unnorm_key")
            if key is not None and not isinstance(key, str):
                raise InvalidInputError(f"unnorm_key must be a string or null, got {clip_text(repr(key))}")
            action = await loop.run_in_executor(None, self.replica.act, image, instruction, key)
            text = json_numpy.dumps(action)
            return Response(json.dumps(text) if encoded else text, media_type="application/json")

        async def _step(self, request: Request) -> Response:
            session_id = check_session_id(request.headers.get(SESSION_HEADER))
            body = await self._body(request)
            loop = asyncio.get_running_loop()
            parsed = await loop.run_in_executor(None, parse_step_request, body, session_id, options.limits)
            session = await self.get_session(session_id)
            answer = await loop.run_in_executor(None, self.replica.step, session, parsed)
            return JSONResponse(answer)

        async def _health(self, request: Request) -> Response:
            return JSONResponse(self.replica.health())

    return PolicyServer.bind()


def resolve_device(requested: str) -> str:
    """``auto``: ``cuda`` where the Ray cluster has a GPU, else ``cpu``; else ``requested``."""
    if requested != "auto":
        return requested
    return "cuda" if ray.cluster_resources().get("GPU", 0) >= 1 else "cpu"


def init_ray(options: ServerOptions) -> None:
    """Start a local Ray instance, or join ``options.address``; nothing if Ray already runs.

    ``ray.init`` installs Ray's own SIGTERM handler in this process, which aborts (exit -6) and
    leaves Ray's daemons running: a caller that stops on SIGTERM installs its handler again
    right after this returns (``vla-cache serve`` does; see :func:`start`).
    """
    if ray.is_initialized():
        return
    if options.address:
        ray.init(address=options.address, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(num_cpus=options.local_cpus, include_dashboard=False, log_to_driver=False,
                 object_store_memory=options.object_store_bytes, _node_ip_address="127.0.0.1")


def start(options: ServerOptions) -> str:
    """Start (or join) Ray (:func:`init_ray`), start Serve's HTTP proxy on ``host:port`` and
    deploy; returns the URL once every replica has loaded the model. The replicas may answer
    requests a few seconds before this returns (Serve polls the application's status).

    Raises:
        ConfigurationError: Ray or Serve cannot start (e.g. the port is taken).
    """
    init_ray(options)
    device = resolve_device(options.device)
    try:
        serve.start(http_options={"host": options.host, "port": options.port})
        serve.run(build_app(options, device), name=APP_NAME, route_prefix="/")
    except Exception as error:  # noqa: BLE001 - Ray's errors vary; the reason is in the text
        raise ConfigurationError(f"the policy server did not start: {type(error).__name__}: "
                                 f"{clip_text(str(error), 600)}") from None
    return options.url


def stop() -> None:
    """Delete the application, stop Serve and (a local) Ray. Without a connected Ray only the
    daemons a partial start left are stopped (``serve.shutdown`` would start a new local Ray
    instance only to find nothing to stop)."""
    try:
        if ray.is_initialized():
            serve.shutdown()
    finally:
        stop_ray()


def stop_ray() -> None:
    """Disconnect from Ray and stop the daemons this process started, also after a ``ray.init``
    that a signal interrupted (``ray.shutdown`` does both and is safe to repeat)."""
    ray.shutdown()
