"""The policy runner's control loop, ROS-free: observations in, commands and status out.

:class:`PolicyRuntime` owns everything between a decoded message and a command to publish: the
newest-frame slot, the instruction, the inference worker, the controller (mapping, safety guard,
gripper, watchdog), the latency budget's steering of the cache ratio
(:mod:`vla_cache_ros.control.budget`), telemetry and problem reporting. It is fed plain data
(RGB arrays, joint names and positions, float seconds on the caller's clock) and answers with
plain data (:class:`Publication`, :class:`~vla_cache_ros.control.diagnostics.StatusReport`, and
per step a :class:`StepReport`: the step's stats, its frame's stamp and its reuse mask). The ROS node
converts messages and publishes; tests drive this class with a fake clock and a real (or
fault-injecting) policy, without DDS.

Lifecycle (mirrors a managed ROS 2 node): ``load`` (configure: check the model directory,
device, dtype and statistics key, then load and warm up), ``activate`` (policy output allowed),
``deactivate`` (policy output stops first, then the returned safety command goes out),
``release`` (cleanup: the model is dropped). The worker thread runs between ``start_worker`` and
``stop_worker``; :meth:`serve_one` is one iteration of it, callable directly in tests.

Nothing raised by one step, one input or one parameter change ends the loop: inference errors
fault the watchdog (the safety command goes out, diagnostics say why) and the next successful
step on a fresh observation recovers.
"""
from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from vla_cache_ros.control.actions import ArmCommand
from vla_cache_ros.control.budget import BudgetTicket, LatencyBudget
from vla_cache_ros.control.controller import CAMERA, EE_POSE, JOINT_STATES, Controller
from vla_cache_ros.control.diagnostics import StatusReport, build_status
from vla_cache_ros.control.observation import LatestObservation
from vla_cache_ros.control.telemetry import Telemetry
from vla_cache_ros.control.watchdog import WatchdogState
from vla_cache_ros.errors import ConfigurationError, InvalidInputError, UserFacingError, clip_text
from vla_cache_ros.runtime.config import CacheConfig, NodeConfig
from vla_cache_ros.runtime.reporting import MESSAGE_LIMIT, ProblemLog

WARM_UP_INSTRUCTION = "pick up the object"
TAKE_TIMEOUT_S = 0.2  # the worker wakes this often to notice shutdown / deactivation
INACTIVE_REASON = "inactive (lifecycle): activate the node to run the policy"
UNCONFIGURED_REASON = "unconfigured (lifecycle): the model is not loaded (yet)"


@dataclass(frozen=True)
class Publication:
    """What to publish in one control period.

    Attributes:
        arm: the arm command (policy or safety), or None.
        gripper: the gripper command value, or None.
        actuate: whether ``arm`` / ``gripper`` also go to the command topics (else preview).
        safety_first: a safety command to send to the command topics first, even with
            actuation now off (actuation was just switched off while the arm moved).
        entered_fault: this period began a fault (``reason`` says why).
        reason: the fault reason when ``entered_fault``.
    """

    arm: ArmCommand | None
    gripper: float | None
    actuate: bool
    safety_first: ArmCommand | None = None
    entered_fault: bool = False
    reason: str | None = None


@dataclass(frozen=True)
class StepReport:
    """One finished inference step, as the ``on_step`` callback gets it.

    Attributes:
        stats: the policy's ``StepStats`` (ratio, per-stage times, FLOPs, reused token ids).
        stamp_s: the stamp of the camera frame the step ran on (float seconds, the clock of the
            frame's header).
    """

    stats: Any
    stamp_s: float

    @property
    def reuse_mask(self) -> np.ndarray:
        """(grid, grid) bool, True where the visual token's K/V were reused (16x16 for 256
        tokens; cell (row, col) covers that 14 px patch of the 224 px model input)."""
        return self.stats.reuse_mask


def check_model_path(value: Any) -> str:
    """The checkpoint directory from the ``model_path`` setting, checked without heavy imports.

    A directory, or a short name of ``models.catalog`` (``sim_policy``: the shipped trained
    policy; ``tiny``: the seeded random one) when no such directory exists.

    Raises:
        ConfigurationError: empty, or neither a directory nor a short name.
    """
    model_path = os.path.expanduser(str(value))
    if not model_path:
        raise ConfigurationError("parameter model_path is required (an OpenVLA-format checkpoint "
                                 "directory, or a short name: tiny for the seeded random miniature, "
                                 "sim_policy for the shipped policy)")
    if not Path(model_path).is_dir():
        from vla_cache_ros.models.catalog import SHORT_NAMES, resolve_model

        if model_path in SHORT_NAMES:
            return str(resolve_model(model_path).path)
        raise ConfigurationError(f"model_path {clip_text(repr(model_path))} is not a directory "
                                 f"(nor a known name: {', '.join(SHORT_NAMES)})")
    return model_path


def check_policy_source(config: NodeConfig) -> None:
    """Before any heavy import: the local backend needs a model directory (or short name);
    the remote one's server is checked at configure (:meth:`RemotePolicy.warm_up`).

    Raises:
        ConfigurationError: see :func:`check_model_path`.
    """
    if not config.backend.remote:
        check_model_path(config.model.model_path)


def load_policy(config: NodeConfig, info: Callable[[str], None], session_name: str = "") -> Any:
    """Check device, dtype and statistics key (no weight read), then load the policy; or, with
    ``inference_backend: remote``, the client of the policy server (session ``session_id``,
    else ``session_name``).

    Raises:
        UserFacingError: any of them unusable.
    """
    if config.backend.remote:
        from vla_cache_ros.serving.client import RemotePolicy

        backend = config.backend
        session = backend.session_id or session_name or "vla_cache_node"
        info(f"policy server {backend.server_url}, session {session!r}")
        return RemotePolicy(backend.server_url, session, backend.request_timeout_s,
                            backend.image_encoding, mode=config.cache.mode,
                            cache_ratio=config.cache.ratio, max_token_age=config.cache.max_token_age,
                            decode=config.cache.decode)
    model_path = check_model_path(config.model.model_path)
    from vla_cache_ros.cache.drafter import resolve_drafter
    from vla_cache_ros.cache.learned import resolve_cache_policy
    from vla_cache_ros.cache.modes import parse_prepack
    from vla_cache_ros.compute import resolve_device, resolve_dtype, set_cpu_threads
    from vla_cache_ros.models.catalog import unnorm_key_for
    from vla_cache_ros.models.config import load_config
    from vla_cache_ros.policy import CachedVLAPolicy

    unnorm_key = unnorm_key_for(str(config.model.model_path), config.model.unnorm_key)
    device = resolve_device(config.model.device)
    dtype = resolve_dtype(config.model.dtype)
    load_config(Path(model_path)).action_statistics().select(unnorm_key)
    set_cpu_threads(config.model.num_threads)
    info(f"loading {model_path} on {device} ...")
    cache_policy = resolve_cache_policy(config.model.cache_policy_path, model_path)
    drafter = resolve_drafter(config.model.drafter_path, model_path)
    policy = CachedVLAPolicy.from_pretrained(
        model_path, mode="off", cache_ratio=config.cache.ratio,
        unnorm_key=unnorm_key, device=str(device), dtype=dtype,
        center_crop=config.model.center_crop,
        prepack=parse_prepack(config.model.cpu_weight_prepack), cache_policy=cache_policy, drafter=drafter,
        lm_head=config.model.lm_head)
    info(f"decoder weights: {policy.engine.projections.reason}; LM head: {policy.engine.head_setting}")
    if cache_policy is not None:
        info(f"learned cache policy: {cache_policy}")
    if drafter is not None:
        info(f"learned drafter: {drafter}")
    return policy


def learned_decision(stats: Any) -> dict[str, Any]:
    """The learned mode's decision in a step's stats, as ``Telemetry.record_step`` keywords:
    the predicted ratio (None before the first cache exists, or in another mode) and the tokens
    stochastic recovery recomputed (None in another mode)."""
    predicted = getattr(stats, "predicted_ratio", None)
    if predicted is None:
        return {"predicted_ratio": None, "recovered_tokens": None}
    return {"predicted_ratio": None if math.isnan(predicted) else float(predicted),
            "recovered_tokens": int(getattr(stats, "recovered_tokens", 0))}


def warm_up(policy: Any) -> float:
    """One untimed step on a blank frame, so the first real step is not the slow one (lazy
    initialisation, allocator growth) that trips the watchdog; then a fresh episode. Returns
    the seconds it took. A policy with its own ``warm_up`` (the policy server's client: it
    checks that the server answers) does that instead. The engine's counters start again after
    it, so /diagnostics counts the real steps only."""
    own = getattr(policy, "warm_up", None)
    if own is not None:
        return float(own())
    start = time.monotonic()
    size = policy.model.config.image_sizes[0]
    policy.step(np.full((size, size, 3), 127, dtype=np.uint8), WARM_UP_INSTRUCTION)
    policy.reset()
    policy.engine.counters = type(policy.engine.counters)()  # /diagnostics counts real steps only
    return time.monotonic() - start


def backend_values(policy: Any) -> dict[str, str]:
    """What /diagnostics says about the policy backend: for a local policy the decoder weights'
    form, the cache policy, the drafter and the LM head (screened: rows decided without the full
    head so far); server, session and round trip for the policy server's client."""
    if policy is None:
        return {"decoder_weights": "not loaded"}
    remote = getattr(policy, "diagnostic_values", None)
    if remote is not None:
        return dict(remote())
    counters = policy.engine.counters
    screened = (f"screened ({counters.head_screened_rows}/{counters.head_rows} rows without the full head)"
                if policy.engine.screened_head is not None else policy.engine.head_setting)
    return {"decoder_weights": policy.engine.projections.reason,
            "cache_policy": getattr(policy, "cache_policy_source", None) or "none",
            "drafter": getattr(policy, "drafter_source", None) or "none",
            "lm_head": screened}


class PolicyRuntime:
    """The control loop of one policy runner.

    Args:
        config: the validated configuration.
        clock: the caller's clock in float seconds (the node passes ROS time, so bag replay
            with sim time works); the watchdog, ages and rates use it.
        log: where problems are reported (throttled).
        info: sink for informational lines.
        on_step: called after each step with its :class:`StepReport` (the node publishes the
            ratio, the latency and the reuse mask from it).
        session_name: the remote backend's session id when ``session_id`` is empty (the node
            passes its full name).
    """

    def __init__(self, config: NodeConfig, clock: Callable[[], float], log: ProblemLog,
                 info: Callable[[str], None] = lambda line: None,
                 on_step: Callable[[StepReport], None] | None = None,
                 session_name: str = "") -> None:
        self._config = config
        self._session_name = session_name
        self._clock = clock
        self.log = log
        self._info = info
        self._on_step = on_step
        self._lock = threading.Lock()
        self._controller = Controller(config.controller)
        self._budget = LatencyBudget()
        self._ratio_lock = threading.Lock()  # apply and the worker both set the policy's ratio
        self._set_cache(None, config.cache, restart_budget=True)
        self._telemetry = Telemetry(config.telemetry_window)
        self._slot = LatestObservation()
        self._instruction = ""
        self._actuation = config.enable_actuation
        self._send_safety_once = False
        self._active = False
        self._policy: Any = None
        self._worker: threading.Thread | None = None
        self._closing = threading.Event()
        self._interface_status: dict[str, str] = {}

    # -------------------------------------------------------------------------- lifecycle
    @property
    def config(self) -> NodeConfig:
        """The configuration in force."""
        return self._config

    @property
    def policy(self) -> Any:
        """The loaded policy (None before :meth:`load` / after :meth:`release`)."""
        return self._policy

    @property
    def active(self) -> bool:
        """Whether policy output is allowed (between :meth:`activate` and :meth:`deactivate`)."""
        with self._lock:
            return self._active

    def load(self, policy: Any = None) -> None:
        """Configure: load the policy (or adopt ``policy``), warm it up, set its cache settings
        and the configured instruction.

        Raises:
            UserFacingError: a bad model directory, device, dtype, statistics key, cache mode or
                instruction; nothing is kept then.
        """
        if policy is None:
            policy = load_policy(self._config, self._info, self._session_name)
        self._set_cache(policy, self._config.cache, restart_budget=True)
        self._info(f"warm-up step took {warm_up(policy):.2f} s")
        self._policy = policy
        if self._config.instruction:
            self.set_instruction(self._config.instruction, source="parameter")

    def release(self) -> None:
        """Cleanup: stop the worker, drop the policy (its memory is freed when unreferenced)."""
        self.stop_worker()
        self._policy = None

    def activate(self) -> None:
        """Allow policy output (actuation still needs ``enable_actuation``)."""
        with self._lock:
            self._active = True
        self._info("activated: policy output allowed")

    def deactivate(self, reason: str = "deactivated (lifecycle)") -> ArmCommand | None:
        """Stop policy output first, then return the safety command to send (None for
        ``safety_command: none`` or nothing measured to hold)."""
        with self._lock:
            self._active = False
        self._controller.force_fault(reason, self._clock())
        return self._controller.safety_command()

    def start_worker(self) -> None:
        """Start the inference thread (idempotent)."""
        if self._worker is not None and self._worker.is_alive():
            return
        self._closing.clear()
        self._slot = LatestObservation()
        self._worker = threading.Thread(target=self._run_worker, name="vla_inference",
                                        daemon=True)
        self._worker.start()

    def stop_worker(self, timeout_s: float = 30.0) -> bool:
        """Stop the inference thread; return False if it is still running (stuck in a step)."""
        self._closing.set()
        self._slot.close()
        worker, self._worker = self._worker, None
        if worker is None:
            return True
        worker.join(timeout=timeout_s)
        return not worker.is_alive()

    # ----------------------------------------------------------------------------- inputs
    def on_image(self, convert: Callable[[], np.ndarray], stamp_s: float) -> None:
        """A camera message: ``convert()`` decodes it to RGB uint8 (H, W, 3); a conversion
        error (:class:`UserFacingError`) rejects it, counted and reported."""
        now = self._clock()
        try:
            rgb = convert()
            generation = self._controller.on_observation(stamp_s, now)
        except UserFacingError as error:
            self.reject("image", error)
            return
        dropped = self._slot.put(rgb, stamp_s, now, generation)
        if dropped:
            self._telemetry.record_dropped_frames(dropped)

    def on_joint_state(self, names: Sequence[str], positions: Sequence[float],
                       stamp_s: float) -> None:
        """A JointState: merged by joint name; one with none of ``joint_names`` (a gripper driver
        on the same topic) is not for this node, which is not an error."""
        try:
            self._controller.on_joint_state(names, positions, stamp_s, self._clock())
        except InvalidInputError as error:
            self.reject("joint_states", error)

    def on_ee_position(self, position: Sequence[float], stamp_s: float) -> None:
        """The measured end-effector position [x, y, z] (m) for the workspace box."""
        try:
            self._controller.on_ee_position(position, stamp_s, self._clock())
        except InvalidInputError as error:
            self.reject("ee_pose", error)

    def on_instruction_message(self, text: str) -> None:
        """An instruction from the topic: adopted, or rejected (counted) keeping the old one."""
        try:
            self.set_instruction(text, source="topic")
        except UserFacingError as error:
            self.reject("instruction", InvalidInputError(
                f"{error}; keeping the previous instruction"))

    def set_instruction(self, text: str, source: str) -> None:
        """Adopt an instruction; a new one starts a new episode.

        Raises:
            ConfigurationError: empty, or (policy loaded) too long for the model's context.
        """
        text = text.strip()
        if not text:
            raise ConfigurationError("instruction message is empty")
        if self._policy is not None:
            self._policy.check_instruction(text)
        with self._lock:
            changed = text != self._instruction
            self._instruction = text
        if changed:
            if self._policy is not None:
                self._policy.reset()  # a new task is a new episode
            self._info(f"instruction ({source}): {clip_text(repr(text))}")

    def instruction_problem(self, text: str) -> str | None:
        """Why ``text`` cannot be the instruction (None if it can)."""
        if self._policy is None:
            return None
        try:
            self._policy.check_instruction(text.strip())
        except UserFacingError as error:
            return str(error)
        return None

    def reject(self, kind: str, error: Exception) -> None:
        """Count and report a rejected input of ``kind``."""
        self._telemetry.record_rejected(kind)
        self.log.warn(kind, f"rejected {kind}: {error}")

    def on_clock_jump(self, delta_s: float) -> None:
        """The clock jumped by ``delta_s`` seconds (negative: back; bag loop, simulator reset).

        See :meth:`Controller.on_clock_jump`; when it acts, what was held from before the jump
        (visual cache, newest frame, rates) is dropped too.
        """
        if self._controller.on_clock_jump(delta_s, self._clock()):
            self._after_clock_jump()

    def _after_clock_jump(self) -> None:
        if self._policy is not None:
            self._policy.reset()
        self._slot.clear()
        self._telemetry.clock_jumped()
        reason = self._controller.fault_reason
        if reason is not None:  # None: nothing was commanded yet (e.g. the first /clock)
            self.log.error("clock", f"clock jump: {reason}")

    def set_interface_status(self, key: str, value: str) -> None:
        """Show ``key: value`` on /diagnostics from now on (the node's optional interfaces
        report here: ``servo_start``, ``gripper_action``)."""
        with self._lock:
            self._interface_status[key] = clip_text(value, MESSAGE_LIMIT)

    def internal_error(self, where: str, error: BaseException) -> None:
        """Something escaped a callback or the worker: report it (traceback once per kind),
        fault the watchdog so the safety command goes out, and keep serving."""
        reason = self.log.exception(where, error)
        try:
            self._controller.force_fault(reason, self._clock())
        except Exception:  # noqa: BLE001 - reporting must not fail too
            pass

    # ------------------------------------------------------------------------- parameters
    def validate(self, changes: dict[str, Any]) -> NodeConfig:
        """The config after ``changes``, checked against everything in force (the policy's
        available modes and context length included).

        Raises:
            ConfigurationError: why the change must be refused.
        """
        modes = self._policy.available_modes() if self._policy is not None else None
        config = self._config.with_changes(changes, modes)
        if "instruction" in changes:
            problem = self.instruction_problem(str(changes["instruction"]))
            if problem is not None:
                raise ConfigurationError(problem)
        return config

    def apply(self, config: NodeConfig) -> None:
        """Put a validated config into force; effective from the next step / tick."""
        old, self._config = self._config, config
        self._controller.update(limits=config.controller.limits,
                                watchdog=config.controller.watchdog,
                                action_scale=config.controller.action.scale)
        self._set_cache(self._policy, config.cache,
                        restart_budget=config.cache.mode != old.cache.mode)
        if config.instruction and config.instruction != old.instruction:
            self.set_instruction(config.instruction, source="parameter")
        if config.enable_actuation != old.enable_actuation:
            self._set_actuation(config.enable_actuation)

    def _set_cache(self, policy: Any, cache: CacheConfig, restart_budget: bool) -> None:
        """Put the cache settings into force: the latency budget controller's settings and, on
        ``policy`` (None: not loaded), mode, ratio (the cap, or the budget controller's current
        choice, never above it), token age and decode. ``restart_budget``: the relation of step
        time to ratio changed (another mode, another policy), so the controller starts over.

        Raises:
            UserFacingError: a mode or setting the policy refuses (see its setters).
        """
        with self._ratio_lock:  # a step being steered sets the ratio before or after, not between
            self._budget.configure(cache.latency_budget_ms, cache.ratio,
                                   steering=cache.mode != "off")
            if restart_budget:
                self._budget.restart()
            if policy is not None:
                policy.set_mode(cache.mode)
                policy.set_cache_ratio(self._budget.ratio)
                policy.set_max_token_age(cache.max_token_age)
                policy.set_decode(cache.decode)

    def _steer_ratio(self, policy: Any) -> BudgetTicket | None:
        """With a latency budget: set the policy's ratio to the controller's choice for the
        coming step and return the ticket to record it with; else None (the ratio stays)."""
        with self._ratio_lock:
            ticket = self._budget.next_step()
            if ticket is not None:
                policy.set_cache_ratio(ticket.ratio)
        return ticket

    def _set_actuation(self, enabled: bool) -> None:
        with self._lock:
            if self._actuation and not enabled:
                self._send_safety_once = True  # stop what the arm was doing
            self._actuation = enabled
        self.log.warn("actuation", f"actuation {'ENABLED' if enabled else 'disabled (dry run)'}")

    # --------------------------------------------------------------------------- the step
    def _run_worker(self) -> None:
        """Worker thread: never exits before :meth:`stop_worker`, whatever one step raises."""
        while not self._closing.is_set():
            try:
                self.serve_one()
            except Exception as error:  # noqa: BLE001 - the worker must outlive any one step
                self.internal_error("inference worker", error)
                time.sleep(0.05)  # a failure before take() must not spin the CPU

    def serve_one(self, timeout_s: float = TAKE_TIMEOUT_S) -> Any:
        """Take the newest frame (waiting up to ``timeout_s``) and run one step on it; return
        its ``StepStats``, or None when nothing ran (no frame, not active, inputs missing, no
        instruction, or the step raised: then the watchdog faults)."""
        observation = self._slot.take(timeout_s=timeout_s)
        with self._lock:
            instruction, active = self._instruction, self._active
        policy = self._policy
        if observation is None or not active or policy is None:
            return None
        if not instruction or self._controller.waiting_for():
            return None  # not ready: frames are dropped, not queued
        self._controller.on_step_started(self._clock())
        ticket = self._steer_ratio(policy)
        try:
            action, stats = policy.step(observation.image, instruction)
        except Exception as error:  # noqa: BLE001 - any inference failure is a fault
            reason = clip_text(f"inference failed: {type(error).__name__}: {error}",
                               MESSAGE_LIMIT)
            self._controller.on_step_error(reason, self._clock())
            self.log.error("inference", reason)
            return None
        now = self._clock()
        if ticket is not None:  # a reset cache computed every token, whatever the ratio
            self._budget.record(ticket, stats.times_s["total"],
                                ratio_effective=not stats.cache_reset)
        outcome = self._controller.on_step_result(action, observation.stamp_s,
                                                  observation.received_s, now,
                                                  observation.generation)
        if not outcome.accepted:
            self.log.warn("step", f"step not used: {outcome.reason}")
        self._telemetry.record_step(
            now, stats.times_s, mode=stats.mode, target_ratio=stats.target_ratio,
            actual_ratio=stats.actual_ratio, reused_tokens=stats.reused_tokens,
            recomputed_tokens=stats.recomputed_tokens, flops=stats.flops,
            flops_uncached=stats.flops_uncached, **learned_decision(stats))
        if self._on_step is not None and not self._closing.is_set():
            self._on_step(StepReport(stats, observation.stamp_s))
        return stats

    # ---------------------------------------------------------------------------- output
    def tick(self) -> Publication:
        """What to publish this control period (call at ``control_rate_hz``)."""
        now = self._clock()
        self._telemetry.record_tick(now)
        output = self._controller.tick(now)
        if output.clock_jumped:  # a jump the clock callback did not report
            self._after_clock_jump()
        with self._lock:
            actuate, active = self._actuation, self._active
            stop_once, self._send_safety_once = self._send_safety_once, False
        safety = self._controller.safety_command() if stop_once else None
        if not active:  # inactive: the safety command went out once on deactivation
            return Publication(None, None, actuate, safety)
        return Publication(output.arm, output.gripper, actuate, safety, output.entered_fault,
                           output.reason)

    def safety_command(self) -> ArmCommand | None:
        """The safety command from the latest measurements (what FAULT sends)."""
        return self._controller.safety_command()

    def shutdown_command(self) -> ArmCommand | None:
        """The safety command to send when stopping, if actuation is on (else None)."""
        with self._lock:
            actuate = self._actuation
        return self._controller.safety_command() if actuate else None

    def status_report(self, extra: dict[str, str] | None = None) -> StatusReport:
        """The current status for /diagnostics (see
        :func:`~vla_cache_ros.control.diagnostics.build_status`)."""
        now = self._clock()
        state = self._controller.state
        with self._lock:
            instruction, actuate, active = self._instruction, self._actuation, self._active
        reason = self._controller.fault_reason
        if state is WatchdogState.WAITING or not active:
            missing = (["instruction"] if not instruction else []) + self._controller.waiting_for()
            reason = (UNCONFIGURED_REASON if self._policy is None
                      else INACTIVE_REASON if not active
                      else f"waiting for {', '.join(missing)}" if missing
                      else "waiting for the first inference step")
            state = WatchdogState.WAITING if not active else state
        controller, interface = self._controller.config, self._config.interface
        reads_pose = interface.reads_ee_pose or EE_POSE in controller.required_inputs
        inputs = [CAMERA, JOINT_STATES] + ([EE_POSE] if reads_pose else [])
        policy = self._policy
        with self._lock:
            interface_status = dict(self._interface_status)
        values = {"instruction": clip_text(instruction),
                  "decode": policy.decode if policy is not None else self._config.cache.decode,
                  "command_interface": interface.command_interface.value,
                  **({"ee_pose_source": interface.ee_pose_description} if reads_pose else {}),
                  **backend_values(policy),
                  **interface_status, **(extra or {})}
        return build_status(
            state=state, reason=reason, telemetry=self._telemetry.snapshot(),
            clamp_counts=self._controller.clamp_counts, actuation_enabled=actuate,
            input_ages={name: self._controller.input_age(name, now) for name in inputs},
            cache_mode=policy.mode if policy is not None else self._config.cache.mode,
            target_ratio=policy.cache_ratio if policy is not None else self._config.cache.ratio,
            last_error=self.log.current(), recent_warning=self.log.recent(), extra=values,
            budget=self._budget.snapshot())

    @property
    def worker_alive(self) -> bool:
        """Whether the inference thread is running."""
        return self._worker is not None and self._worker.is_alive()
