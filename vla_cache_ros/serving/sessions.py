"""Per-robot sessions on one server replica, without Ray (testable with plain pytest).

A :class:`Session` is one robot's cache: its own ``CachedVLAPolicy`` (visual K/V, reference
patches, token ages, mode / ratio / age settings) over the model and engine the replica shares.
:class:`Replica` holds what a replica shares: the model, the engine, the stateless policy of
``/act``, the lock that lets one step run at a time (the engine and the device are shared), the
live sessions and the counters ``/health`` shows.

Which sessions a replica keeps is decided by Ray Serve's model multiplexing (LRU, at most
``max_sessions`` per replica): it creates a session on a session id's first request
(:meth:`Replica.new_session`) and calls the session's ``__del__`` when it evicts it (counted as
an eviction). A session idle longer than ``idle_timeout_s`` has its cache freed
(:meth:`Replica.sweep_idle`); its next request starts again with a full recompute and is told so
(``restarted: idle``).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vla_cache_ros.cache.modes import (
    check_available,
    check_decode,
    check_lm_head,
    check_max_token_age,
    check_ratio,
)
from vla_cache_ros.errors import ConfigurationError, InvalidInputError, UserFacingError
from vla_cache_ros.serving.wire import SessionSettings, StepRequest, step_response

RESTART_NEW, RESTART_IDLE, RESTART_RESET = "new", "idle", "reset"
"""Why a session's cache started empty at a step (the ``restarted`` field of the answer)."""


@dataclass(frozen=True)
class SessionLimits:
    """How many sessions a replica keeps and for how long.

    Attributes:
        max_sessions: sessions per replica; the least recently used is evicted beyond this.
        idle_timeout_s: a session unused this long has its cache freed.
    """

    max_sessions: int = 16
    idle_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if int(self.max_sessions) < 1:
            raise ConfigurationError(f"max_sessions must be >= 1, got {self.max_sessions}")
        if not self.idle_timeout_s > 0:
            raise ConfigurationError(f"idle_timeout_s must be > 0, got {self.idle_timeout_s}")


@dataclass
class Counters:
    """What happened on one replica since it started."""

    sessions_created: int = 0
    evictions: int = 0
    idle_expired: int = 0
    steps: int = 0
    act_requests: int = 0
    bad_requests: int = 0
    failed_steps: int = 0


class Session:
    """One robot's policy state on this replica. Created by :meth:`Replica.new_session`."""

    def __init__(self, session_id: str, replica: "Replica") -> None:
        self.session_id = session_id
        self._replica = replica
        self._policy: Any = None
        self.steps = 0
        self.last_used_s = replica.clock()
        self._evicted = False

    @property
    def holds_cache(self) -> bool:
        """Whether the session's policy state is in memory (False after an idle timeout)."""
        return self._policy is not None

    def drop_state(self) -> None:
        """Free the cache (idle timeout); the next step starts with a full recompute."""
        self._policy = None

    def _apply(self, settings: SessionSettings) -> None:
        """Check every setting first, then apply them: a refused request changes nothing."""
        policy = self._policy
        if settings.mode is not None:
            check_available(settings.mode, policy.available_modes())
        if settings.cache_ratio is not None:
            check_ratio(settings.cache_ratio)
        if settings.max_token_age is not None:
            check_max_token_age(settings.max_token_age)
        if settings.decode is not None:
            check_decode(settings.decode)
        if settings.mode is not None:
            policy.set_mode(settings.mode)
        if settings.cache_ratio is not None:
            policy.set_cache_ratio(settings.cache_ratio)
        if settings.max_token_age is not None:
            policy.set_max_token_age(settings.max_token_age)
        if settings.decode is not None:
            policy.set_decode(settings.decode)

    def step(self, request: StepRequest) -> tuple[np.ndarray, Any, str | None]:
        """Run one step (the caller holds the replica's step lock).

        Returns:
            (action, StepStats, why the cache started empty or None).

        Raises:
            InvalidInputError: an unknown mode or a setting out of range, an instruction the
                model cannot take (the session is left as it was).
        """
        restarted = None
        if self._policy is None:
            restarted = RESTART_NEW if self.steps == 0 else RESTART_IDLE
            self._policy = self._replica.new_policy()
        elif request.reset:
            self._policy.reset()
            restarted = RESTART_RESET
        try:
            self._apply(request.settings)
            self._policy.check_instruction(request.instruction)
        except UserFacingError as error:
            raise InvalidInputError(str(error)) from None
        action, stats = self._policy.step(request.image, request.instruction)
        self.steps += 1
        self.last_used_s = self._replica.clock()
        return action, stats, restarted

    def describe(self, now_s: float) -> dict[str, Any]:
        """The session as ``/health`` lists it."""
        policy = self._policy
        return {"session_id": self.session_id, "steps": self.steps,
                "idle_s": round(now_s - self.last_used_s, 3), "holds_cache": policy is not None,
                **({"mode": policy.mode, "cache_ratio": policy.cache_ratio} if policy is not None else {})}

    def __del__(self) -> None:
        """Ray Serve's multiplexer calls this when it evicts the session (LRU)."""
        if not self._evicted:
            self._evicted = True
            self._replica.forget(self)


@dataclass
class Replica:
    """What one server replica shares between its sessions.

    Args:
        new_policy: builds a fresh ``CachedVLAPolicy`` over the replica's model and engine.
        act_policy: the stateless policy of ``/act`` (mode ``off``, reset before every call).
        limits: sessions per replica and idle timeout.
        name: the replica's name in answers.
        clock: monotonic seconds.
    """

    new_policy: Callable[[], Any]
    act_policy: Any
    limits: SessionLimits = field(default_factory=SessionLimits)
    name: str = "local"
    clock: Callable[[], float] = time.monotonic
    counters: Counters = field(default_factory=Counters)

    def __post_init__(self) -> None:
        self.step_lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def new_session(self, session_id: str) -> Session:
        """A new session (its cache is built at its first step)."""
        session = Session(session_id, self)
        with self._lock:
            self._sessions[session_id] = session
            self.counters.sessions_created += 1
        return session

    def forget(self, session: Session) -> None:
        """An evicted session: counted, dropped from the list."""
        with self._lock:
            if self._sessions.get(session.session_id) is session:
                del self._sessions[session.session_id]
                self.counters.evictions += 1

    def sweep_idle(self) -> int:
        """Free the caches of sessions idle longer than the timeout; returns how many."""
        now = self.clock()
        with self._lock:
            idle = [session for session in self._sessions.values()
                    if session.holds_cache and now - session.last_used_s > self.limits.idle_timeout_s]
        for session in idle:
            session.drop_state()
        with self._lock:
            self.counters.idle_expired += len(idle)
        return len(idle)

    def step(self, session: Session, request: StepRequest) -> dict[str, Any]:
        """One session step under the step lock -> the ``/step`` answer's fields (action,
        stats, session info; see :func:`~vla_cache_ros.serving.wire.step_response`). Failures
        are counted by the caller (``bad_requests``, ``failed_steps``), which answers them.

        Raises:
            InvalidInputError: see :meth:`Session.step`.
        """
        self.sweep_idle()
        with self.step_lock:
            action, stats, restarted = session.step(request)
        self.counters.steps += 1
        return step_response(action, stats, {"session_id": session.session_id, "restarted": restarted,
                                             "replica": self.name, "steps": session.steps})

    def act(self, image: np.ndarray, instruction: str, unnorm_key: str | None) -> np.ndarray:
        """``/act``: one stateless step (full compute), un-normalised with ``unnorm_key`` (None:
        the replica's default).

        Raises:
            InvalidInputError: an instruction the model cannot take, an unknown ``unnorm_key``.
        """
        policy = self.act_policy
        with self.step_lock:
            try:
                policy.check_instruction(instruction)
                policy.reset()
                _, stats = policy.step(image, instruction)
                key = unnorm_key if unnorm_key is not None else policy.unnorm_key
                action = policy.model.decode_action(stats.action_tokens, key)
            except UserFacingError as error:
                raise InvalidInputError(str(error)) from None
        self.counters.act_requests += 1
        return action

    def health(self) -> dict[str, Any]:
        """Sessions, limits and counters of this replica (``GET /health``)."""
        self.sweep_idle()
        now = self.clock()
        with self._lock:
            sessions = [session.describe(now) for session in self._sessions.values()]
        return {"status": "ok", "replica": self.name, "max_sessions": self.limits.max_sessions,
                "idle_timeout_s": self.limits.idle_timeout_s, "sessions": sessions,
                "modes": list(self.act_policy.available_modes()),
                "drafter": self.act_policy.drafter_source,
                "lm_head": self.act_policy.engine.head_setting,
                "counters": dict(vars(self.counters))}


def build_replica(model: Any, unnorm_key: str | None, limits: SessionLimits = SessionLimits(),
                  name: str = "local", default_mode: str = "fixed", default_ratio: float = 0.5,
                  cache_policy: Any = None, drafter: Any = None, lm_head: str = "screened") -> Replica:
    """A replica over a loaded model: one engine (and its prepacked weights) shared by every
    session, the stateless ``/act`` policy, and a warm-up step (so the first real step is not the
    slow one). ``cache_policy`` (a ``train-cache`` directory or a loaded net; None: none) is
    loaded once and makes ``learned`` available to every session, each with its own selector.
    ``drafter`` (a ``train-drafter`` directory or a loaded drafter; None: none) is loaded once and
    drafts the tokens of every session that decodes speculatively (without one: its previous
    step's tokens). ``lm_head``: the shared engine's LM head (``screened`` or ``full``, see
    ``cache/lm_head.py``).

    Raises:
        CacheModeError, ConfigurationError: a bad default mode or ratio.
        CheckpointError: an unreadable cache policy or drafter, or a drafter for another model.
    """
    from vla_cache_ros.cache.drafter import load_drafter_for
    from vla_cache_ros.cache.engine import KVReuseEngine
    from vla_cache_ros.cache.learned import CacheSelectorNet, load_cache_policy
    from vla_cache_ros.policy import CachedVLAPolicy

    engine = KVReuseEngine(model.language_model, screened_head=check_lm_head(lm_head) == "screened")
    if cache_policy is not None and not isinstance(cache_policy, CacheSelectorNet):
        cache_policy = load_cache_policy(cache_policy)
    if drafter is not None:
        drafter = load_drafter_for(drafter)

    def new_policy(mode: str = default_mode) -> CachedVLAPolicy:
        return CachedVLAPolicy(model, mode=mode, cache_ratio=default_ratio, unnorm_key=unnorm_key,
                               engine=engine, cache_policy=cache_policy, drafter=drafter)

    new_policy()  # check the defaults now
    act_policy = new_policy("off")
    size = model.config.image_sizes[0]
    act_policy.step(np.full((size, size, 3), 127, dtype=np.uint8), "warm up")
    return Replica(new_policy=new_policy, act_policy=act_policy, limits=limits, name=name)
