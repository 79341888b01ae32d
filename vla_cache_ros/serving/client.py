"""The node's side of the policy server: :class:`RemotePolicy` stands where a local
``CachedVLAPolicy`` would (``inference_backend: remote``).

It offers what :class:`~vla_cache_ros.runtime.loop.PolicyRuntime` calls on a policy — ``step``,
``set_mode``, ``set_cache_ratio``, ``set_max_token_age``, ``set_decode``, ``reset``, ``check_instruction``,
``available_modes``, ``mode``, ``cache_ratio`` — plus ``warm_up`` (checks the server) and
``diagnostic_values`` (what /diagnostics shows in place of the decoder weights). Each ``step`` is
one ``POST /step`` (standard library HTTP, keep-alive not needed on loopback) carrying the frame,
the instruction and the settings in force, so a session that the server lost (replica restarted,
evicted, idle) is rebuilt from the next request alone.

Failures (timeout, refused connection, an error answer) raise
:class:`~vla_cache_ros.errors.PolicyServerError`: the runtime treats it as a failed inference
(policy output stops, the safety command follows). The next request after a failure asks for a
fresh cache (``reset``), so the node resumes with a full recompute once the server answers again.
ROS-free; no torch.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vla_cache_ros.cache.modes import MODE_NAMES, check_available, check_decode, check_max_token_age, check_ratio
from vla_cache_ros.cache.tokens import reuse_mask as token_reuse_mask
from vla_cache_ros.errors import ConfigurationError, InstructionError, PolicyServerError, clip_text
from vla_cache_ros.models.norm_stats import ACTION_DIM
from vla_cache_ros.serving.wire import (
    DEFAULT_ENCODING,
    ENCODINGS,
    SESSION_HEADER,
    Limits,
    SessionSettings,
    check_session_id,
    step_request_body,
)
from vla_cache_ros.stages import StepRecord

TOKEN_ENV = "VLA_CACHE_SERVE_TOKEN"
"""Environment variable holding the server's bearer token (unset: none sent)."""
RTT_WINDOW = 100


@dataclass
class RemoteStepStats:
    """A step's statistics as the server reported them (the fields ``StepStats`` has that the
    runtime and the node read). ``times_s`` holds the server's stage times, except ``total``:
    the whole round trip seen by the client (request, queue, network, inference).
    ``server_total_s`` is the server's own step time; ``network_s`` the rest."""

    mode: str
    target_ratio: float
    actual_ratio: float
    reused_tokens: int
    recomputed_tokens: int
    times_s: dict[str, float]
    flops: float
    flops_uncached: float
    prefill_flops: float
    prefill_flops_uncached: float
    token_layer_computations: int
    reuse_indices: np.ndarray = field(repr=False)
    action_tokens: np.ndarray = field(repr=False)
    cache_reset: bool
    server_total_s: float
    network_s: float
    restarted: str | None
    replica: str
    session_id: str = ""
    session_steps: int = 0  # steps of this session the server has run (since it (re)started it)
    decode: str = "greedy"  # the server policy's decode setting and what its draft did (StepStats)
    draft_tokens: int = 0
    accepted_draft_tokens: int = 0
    decode_passes: int = ACTION_DIM - 1

    @property
    def reuse_mask(self) -> np.ndarray:
        """(grid, grid) bool, True where the visual token was reused (see ``StepStats``)."""
        return token_reuse_mask(self.reuse_indices, self.reused_tokens + self.recomputed_tokens)

    @property
    def flops_ratio(self) -> float:
        """flops / flops_uncached."""
        return self.flops / self.flops_uncached if self.flops_uncached else 1.0

    def record(self) -> StepRecord:
        """The per-step record the node publishes on ``~/step_stats`` (``total``: the round trip)."""
        return StepRecord(self.mode, self.target_ratio, self.actual_ratio,
                          {stage: 1000.0 * seconds for stage, seconds in self.times_s.items()},
                          self.cache_reset)


def parse_step_answer(data: Any, round_trip_s: float) -> tuple[np.ndarray, RemoteStepStats]:
    """A ``/step`` answer -> (7-D float64 action, stats).

    Raises:
        PolicyServerError: the answer lacks a field or has one of the wrong type.
    """
    try:
        action = np.asarray(data["action"], dtype=np.float64)
        stats, session = data["stats"], data["session"]
        times = {str(stage): float(ms) / 1000.0 for stage, ms in stats["times_ms"].items()}
        server_total = times.get("total", 0.0)
        times["total"] = round_trip_s
        result = RemoteStepStats(
            mode=str(stats["mode"]), target_ratio=float(stats["target_ratio"]),
            actual_ratio=float(stats["actual_ratio"]), reused_tokens=int(stats["reused_tokens"]),
            recomputed_tokens=int(stats["recomputed_tokens"]), times_s=times,
            flops=float(stats["flops"]), flops_uncached=float(stats["flops_uncached"]),
            prefill_flops=float(stats["prefill_flops"]),
            prefill_flops_uncached=float(stats["prefill_flops_uncached"]),
            token_layer_computations=int(stats["token_layer_computations"]),
            reuse_indices=np.asarray(stats["reuse_indices"], dtype=np.int64),
            action_tokens=np.asarray(stats["action_tokens"], dtype=np.int64),
            cache_reset=bool(stats["cache_reset"]), server_total_s=server_total,
            network_s=max(0.0, round_trip_s - server_total),
            restarted=session.get("restarted"), replica=str(session.get("replica", "?")),
            session_id=str(session["session_id"]), session_steps=int(session["steps"]),
            decode=str(stats.get("decode", "greedy")), draft_tokens=int(stats.get("draft_tokens", 0)),
            accepted_draft_tokens=int(stats.get("accepted_draft_tokens", 0)),
            decode_passes=int(stats.get("decode_passes", ACTION_DIM - 1)))
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise PolicyServerError(f"the server's answer is not a /step answer ({type(error).__name__}: "
                                f"{clip_text(str(error))})") from None
    if action.shape != (7,):
        raise PolicyServerError(f"the server answered an action of shape {action.shape}, expected (7,)")
    return action, result


class RemotePolicy:
    """A policy on a ``vla-cache serve`` server, one session per robot.

    Args:
        server_url: e.g. ``http://127.0.0.1:8000``.
        session_id: the session's name on the server (the node passes its full name).
        timeout_s: per request (connect + answer).
        encoding: how frames travel (``raw``, ``png``, ``jpeg``; see ``serving.wire``).
        token: bearer token (None: ``$VLA_CACHE_SERVE_TOKEN`` if set).
        mode, cache_ratio, max_token_age, decode: the starting settings (sent with every step).

    Raises:
        ConfigurationError: a bad URL, session id, timeout or encoding.
    """

    def __init__(self, server_url: str, session_id: str, timeout_s: float = 2.0,
                 encoding: str = DEFAULT_ENCODING, token: str | None = None, mode: str = "fixed",
                 cache_ratio: float = 0.5, max_token_age: int = 20, decode: str = "greedy") -> None:
        url = str(server_url).strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ConfigurationError(f"server_url must start with http:// or https://, got {clip_text(repr(url))}")
        try:
            check_session_id(session_id)
        except Exception as error:  # noqa: BLE001 - an InvalidInputError: say it as configuration
            raise ConfigurationError(str(error)) from None
        if not timeout_s > 0:
            raise ConfigurationError(f"request timeout must be > 0 s, got {timeout_s}")
        if encoding not in ENCODINGS:
            raise ConfigurationError(f"image encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
        self.server_url, self.session_id, self.timeout_s, self.encoding = url, session_id, float(timeout_s), encoding
        self._token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self._lock = threading.Lock()
        self._modes: list[str] = list(MODE_NAMES)
        self._mode = check_available(mode, self._modes)
        self._ratio = check_ratio(cache_ratio)
        self._age = check_max_token_age(max_token_age)
        self._decode = check_decode(decode)
        self._reset_requested = True  # the first request starts a fresh cache
        self._steps = 0
        self._restarts = 0
        self._failures = 0
        self._last_error = ""
        self._round_trips: deque[tuple[float, float]] = deque(maxlen=RTT_WINDOW)  # (total, network)
        self._instruction_limit = Limits().max_instruction_chars

    # --- settings, as CachedVLAPolicy offers them --------------------------------------------
    def available_modes(self) -> list[str]:
        """The modes the server's replicas can run (known after :meth:`warm_up`)."""
        return list(self._modes)

    def set_mode(self, mode: str) -> None:
        """Switch mode from the next step. Raises CacheModeError for a mode the server lacks."""
        with self._lock:
            self._mode = check_available(mode, self._modes)

    def set_cache_ratio(self, ratio: float) -> None:
        """Set the target/maximum ratio in [0, 1] from the next step."""
        with self._lock:
            self._ratio = check_ratio(ratio)

    def set_max_token_age(self, age: int) -> None:
        """Tokens reused this many steps in a row are recomputed (from the next step)."""
        with self._lock:
            self._age = check_max_token_age(age)

    def set_decode(self, decode: str) -> None:
        """``greedy`` or ``speculative`` from the next step (the server's policy decodes)."""
        with self._lock:
            self._decode = check_decode(decode)

    @property
    def decode(self) -> str:
        """The decode setting sent with each step."""
        return self._decode

    def reset(self) -> None:
        """New episode: the next step asks the server for a fresh cache."""
        with self._lock:
            self._reset_requested = True

    @property
    def mode(self) -> str:
        """Current mode."""
        return self._mode

    @property
    def cache_ratio(self) -> float:
        """Current target ratio."""
        return self._ratio

    def check_instruction(self, instruction: str) -> int:
        """Check what can be checked without the model (the server checks the rest at each
        step); returns the length in characters.

        Raises:
            InstructionError: empty, or longer than the server accepts.
        """
        text = str(instruction).strip()
        if not text:
            raise InstructionError("instruction is empty")
        if len(text) > self._instruction_limit:
            raise InstructionError(f"instruction of {len(text)} characters exceeds the server's limit of "
                                   f"{self._instruction_limit}")
        return len(text)

    # --- requests ----------------------------------------------------------------------------
    def _request(self, path: str, body: bytes | None = None, timeout_s: float | None = None) -> Any:
        headers = {"Content-Type": "application/json", SESSION_HEADER: self.session_id}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(self.server_url + path, data=body, headers=headers,
                                         method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s or self.timeout_s) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as error:
            try:
                reason = json.loads(error.read()).get("error", "")
            except (ValueError, AttributeError, OSError):
                reason = ""
            raise PolicyServerError(f"policy server {self.server_url}{path} answered {error.code}"
                                    f"{': ' + clip_text(str(reason), 300) if reason else ''}") from None
        except (TimeoutError, socket.timeout):
            raise PolicyServerError(f"policy server {self.server_url}{path}: no answer within "
                                    f"{timeout_s or self.timeout_s:g} s") from None
        except (urllib.error.URLError, ConnectionError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise PolicyServerError(f"policy server {self.server_url}{path} unreachable: "
                                    f"{clip_text(str(reason))}") from None
        except ValueError:
            raise PolicyServerError(f"policy server {self.server_url}{path} answered something that "
                                    "is not JSON") from None

    def health(self, timeout_s: float | None = None) -> dict[str, Any]:
        """``GET /health`` of the replica that answers.

        Raises:
            PolicyServerError: unreachable, timed out or an error answer.
        """
        data = self._request("/health", timeout_s=timeout_s)
        if not isinstance(data, dict):
            raise PolicyServerError(f"policy server {self.server_url}/health answered {type(data).__name__}")
        return data

    def warm_up(self, timeout_s: float = 10.0) -> float:
        """Check that the server answers and learn its modes (configure fails loudly if not);
        returns the seconds it took.

        Raises:
            PolicyServerError: see :meth:`health`.
            CacheModeError: the server cannot run the configured mode.
        """
        start = time.monotonic()
        modes = self.health(timeout_s=max(timeout_s, self.timeout_s)).get("modes")
        if isinstance(modes, list) and modes:
            with self._lock:
                self._modes = [str(mode) for mode in modes]
                self._mode = check_available(self._mode, self._modes)
        return time.monotonic() - start

    def step(self, image: np.ndarray, instruction: str, state: np.ndarray | None = None
             ) -> tuple[np.ndarray, RemoteStepStats]:
        """One inference on the server: RGB uint8 (H, W, 3) + instruction -> 7-D action, stats.

        Raises:
            PolicyServerError: timeout, refused connection, an error answer (with the server's
                reason); the next step then starts a fresh cache.
        """
        with self._lock:
            settings = SessionSettings(self._mode, self._ratio, self._age, self._decode)
            reset, self._reset_requested = self._reset_requested, False
        body = step_request_body(image, instruction, settings, self.encoding, reset)
        start = time.perf_counter()
        try:
            data = self._request("/step", body)
            action, stats = parse_step_answer(data, time.perf_counter() - start)
            if stats.session_id != self.session_id:
                raise PolicyServerError(f"the server answered for session {clip_text(repr(stats.session_id))}, "
                                        f"not {clip_text(repr(self.session_id))}")
        except PolicyServerError as error:
            with self._lock:
                self._reset_requested = True  # whatever the server kept, start clean when it is back
                self._failures += 1
                self._last_error = str(error)
            raise
        with self._lock:
            if stats.restarted in ("new", "idle") and self._steps and not reset:
                self._restarts += 1  # the server lost this session (replica restart, eviction, idle)
            self._steps += 1
            self._round_trips.append((stats.times_s["total"], stats.network_s))
        return action, stats

    # --- reporting ---------------------------------------------------------------------------
    def diagnostic_values(self) -> dict[str, str]:
        """What /diagnostics shows about the backend: server, session, round trip (p50, ms) and
        the part of it outside the server's step, session restarts, failures."""
        with self._lock:
            trips = list(self._round_trips)
            values = {"inference_backend": "remote", "server_url": self.server_url,
                      "session_id": self.session_id, "server_session_restarts": str(self._restarts),
                      "server_failures": str(self._failures)}
            if self._last_error:
                values["server_last_error"] = clip_text(self._last_error, 300)
        if trips:
            total, network = np.median(np.asarray(trips), axis=0) * 1000.0
            values["round_trip_p50_ms"] = f"{total:.1f}"
            values["network_p50_ms"] = f"{network:.1f}"
        return values
