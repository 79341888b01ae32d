"""The policy runner's loop without ROS: a real miniature policy, a fake clock, plain data in.

Each test drives :class:`PolicyRuntime` the way the node does (images, joint states,
instructions, ticks, parameter changes, lifecycle transitions) and checks what would be
published: stale inputs, clock jumps, worker errors, overruns, bad inputs, parameter changes,
and the stop-then-safety order of deactivation.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from vla_cache_ros.errors import ConfigurationError, ImageConversionError
from vla_cache_ros.runtime.config import NodeConfig
from vla_cache_ros.runtime.loop import PolicyRuntime
from vla_cache_ros.runtime.reporting import LOG_REPEAT_S, MESSAGE_LIMIT, RECENT_S, ProblemLog

JOINTS = ["j1", "j2", "j3", "j4", "j5", "j6"]
MEASURED = [0.1, -0.2, 0.3, -0.4, 0.5, -0.6]
FRAME = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)


class FakeClock:
    """ROS time the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class Lines:
    """A log sink that keeps its lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def count(self, fragment: str) -> int:
        return sum(fragment in line for line in self.lines)


class Harness:
    """A loaded, active runtime with its clock and log sinks."""

    def __init__(self, checkpoint: Path, **values: Any) -> None:
        self.clock = FakeClock()
        self.warnings, self.errors, self.info = Lines(), Lines(), Lines()
        config = NodeConfig.from_values({
            "model_path": str(checkpoint), "unnorm_key": "tiny_sim",
            "command_interface": "joint_positions", "action_semantics": "joint_delta",
            "joint_names": JOINTS, "enable_actuation": True, "max_obs_age_s": 0.5,
            "max_inference_s": 2.0, "instruction": "pick up the red cube", **values})
        self.runtime = PolicyRuntime(config, self.clock, ProblemLog(self.warnings, self.errors),
                                     info=self.info)
        self.runtime.load()
        self.runtime.activate()

    def inputs(self, frame: np.ndarray = FRAME) -> None:
        """A camera frame and a joint state stamped now."""
        self.runtime.on_joint_state(JOINTS, MEASURED, self.clock.now)
        self.runtime.on_image(lambda: frame, self.clock.now)

    def step(self, dt: float = 0.05) -> Any:
        """A moment later, fresh inputs and one step; then ``dt`` seconds pass."""
        self.clock.now += 0.001
        self.inputs()
        stats = self.runtime.serve_one(timeout_s=0.0)
        self.clock.now += dt
        return stats

    def status(self) -> tuple[int, str, dict[str, str]]:
        report = self.runtime.status_report()
        return int(report.level), report.message, report.as_dict()


def is_hold(publication: Any) -> bool:
    return publication.arm is not None and publication.arm.is_safety and np.array_equal(
        publication.arm.joint_positions, MEASURED)


def is_policy(publication: Any) -> bool:
    return publication.arm is not None and not publication.arm.is_safety


@pytest.fixture
def harness(tiny_checkpoint: Path) -> Harness:
    return Harness(tiny_checkpoint)


StepFunction = Callable[[np.ndarray, str], Any]


def wrap_step(harness: Harness, around: Callable[[StepFunction, np.ndarray, str], Any]) -> Callable[[], None]:
    """Replace the loaded policy's step by ``around(real_step, image, instruction)``; returns
    what undoes it."""
    policy = harness.runtime.policy
    real_step = policy.step
    policy.step = lambda image, instruction: around(real_step, image, instruction)
    return lambda: setattr(policy, "step", real_step)


def faulty(harness: Harness, fault: Callable[[], None]) -> Callable[[], None]:
    """Wrap the loaded policy's step: ``fault()`` runs first (it may raise or move the clock)."""
    def around(real_step: StepFunction, image: np.ndarray, instruction: str) -> Any:
        fault()
        return real_step(image, instruction)

    return wrap_step(harness, around)


def slowed(harness: Harness, step_ms: Callable[[float], float],
           during: Callable[[], None] = lambda: None) -> Callable[[], None]:
    """A synthetic slowdown: each step of the real model reports ``step_ms(the ratio it ran
    with)`` milliseconds as its total time; ``during()`` runs inside the step."""
    def around(real_step: StepFunction, image: np.ndarray, instruction: str) -> Any:
        action, stats = real_step(image, instruction)
        during()
        stats.times_s = {**stats.times_s, "total": step_ms(stats.target_ratio) / 1000.0}
        return action, stats

    return wrap_step(harness, around)


def test_a_step_on_fresh_inputs_becomes_the_command(harness: Harness) -> None:
    assert harness.runtime.tick().arm is None  # nothing before the first step
    stats = harness.step()
    assert stats is not None and stats.reused_tokens == 0  # first step: nothing cached
    publication = harness.runtime.tick()
    assert is_policy(publication) and publication.actuate
    assert np.all(np.abs(publication.arm.joint_positions - MEASURED) <= 0.2 + 1e-9)
    assert harness.step().reused_tokens > 0  # the same frame again: tokens reused
    level, message, values = harness.status()
    assert (level, values["state"], values["steps"]) == (0, "running", "2")
    assert values["instruction"] == "pick up the red cube"


def test_each_step_reports_its_frame_stamp_and_reuse_mask(harness: Harness) -> None:
    """What the node publishes on ~/reused_tokens: the reuse set of the step as a 16x16 grid
    (row-major over the model input's 14 px patches), with the stamp of the frame it ran on."""
    reports: list[Any] = []
    harness.runtime._on_step = reports.append
    harness.clock.now += 0.001
    stamp = harness.clock.now - 0.02  # a frame taken a moment ago
    harness.runtime.on_joint_state(JOINTS, MEASURED, harness.clock.now)
    harness.runtime.on_image(lambda: FRAME, stamp)
    first = harness.runtime.serve_one(timeout_s=0.0)
    second = harness.step()
    assert [report.stats for report in reports] == [first, second]
    assert reports[0].stamp_s == stamp
    assert reports[0].reuse_mask.shape == (16, 16) and not reports[0].reuse_mask.any()  # nothing cached yet
    mask = reports[1].reuse_mask
    assert mask.dtype == bool and mask.shape == (16, 16)
    assert mask.sum() == second.reused_tokens == 128  # fixed:0.5 on the same frame
    assert set(np.flatnonzero(mask)) == set(second.reuse_indices.tolist())


def test_stale_camera_faults_and_sends_the_hold_then_recovers(harness: Harness) -> None:
    harness.step()
    assert is_policy(harness.runtime.tick())
    harness.clock.now += 0.6  # > max_obs_age_s without a frame
    harness.runtime.on_joint_state(JOINTS, MEASURED, harness.clock.now)
    publication = harness.runtime.tick()
    assert is_hold(publication) and publication.entered_fault
    assert "camera is stale" in publication.reason
    assert not harness.runtime.tick().entered_fault  # announced once
    level, message, _ = harness.status()
    assert level == 2 and "camera is stale" in message
    harness.step()  # a fresh frame and a successful step
    assert is_policy(harness.runtime.tick())


def test_clock_jump_back_drops_the_command_until_a_fresh_frame(harness: Harness) -> None:
    harness.step()
    harness.runtime.on_image(lambda: FRAME, harness.clock.now)  # queued, pre-jump
    harness.clock.now -= 15.0
    harness.runtime.on_clock_jump(-15.0)
    publication = harness.runtime.tick()
    assert is_hold(publication) and "jumped back by 15" in publication.reason
    assert harness.runtime.serve_one(timeout_s=0.0) is None  # the pre-jump frame is gone
    for _ in range(20):  # time passes on the new timeline: still no policy command
        harness.clock.now += 0.05
        assert not is_policy(harness.runtime.tick())
    _, _, values = harness.status()
    assert not values["camera_age_s"].startswith("-")
    stats = harness.step()
    assert stats is not None and stats.cache_reset  # the visual cache was dropped too
    assert is_policy(harness.runtime.tick())
    assert harness.errors.count("clock jump") == 1


def test_a_jump_noticed_only_by_the_tick_is_handled_the_same(harness: Harness) -> None:
    harness.step()
    harness.runtime.tick()
    harness.clock.now -= 10.0  # no jump callback (e.g. it was missed)
    publication = harness.runtime.tick()
    assert is_hold(publication) and "jumped back" in publication.reason
    assert harness.step().cache_reset


def test_worker_errors_fault_and_recover_when_the_cause_goes_away(harness: Harness) -> None:
    failing = {"on": True}

    def fault() -> None:
        if failing["on"]:
            raise RuntimeError("CUDA error: device lost")

    faulty(harness, fault)
    harness.step()
    for _ in range(30):  # fails again and again, with warnings from other inputs in between
        assert harness.step() is None
        harness.runtime.on_joint_state(JOINTS, [float("nan")] + MEASURED[1:], harness.clock.now)
        harness.runtime.on_instruction_message("   ")
        assert not is_policy(harness.runtime.tick())
    level, message, values = harness.status()
    assert level == 2 and "inference failed: RuntimeError: CUDA error: device lost" in message
    assert harness.errors.count("inference failed") == 1  # logged once, not 31 times
    assert harness.warnings.count("rejected joint_states") == 1
    failing["on"] = False
    assert harness.step() is not None
    assert is_policy(harness.runtime.tick())
    assert harness.status()[2]["state"] == "running"


def test_the_worker_thread_outlives_errors_outside_the_step(harness: Harness) -> None:
    """Anything escaping one iteration (here the step callback) is an internal error: reported
    with its traceback once, the watchdog faults, the thread keeps serving."""
    calls = {"n": 0}

    def on_step(stats: Any) -> None:
        calls["n"] += 1
        if calls["n"] <= 3:
            raise ValueError("bug in a publisher")

    harness.runtime._on_step = on_step
    harness.runtime.start_worker()
    try:
        deadline = time.monotonic() + 30.0
        while calls["n"] < 6 and time.monotonic() < deadline:
            harness.inputs()
            time.sleep(0.05)
            harness.clock.now += 0.05
        assert calls["n"] >= 6 and harness.runtime.worker_alive
    finally:
        assert harness.runtime.stop_worker()
    assert harness.errors.count("internal error in inference worker: ValueError: bug") == 1
    assert harness.errors.count("Traceback (most recent call last)") == 1


def test_an_overrunning_step_is_not_used(harness: Harness) -> None:
    harness.step()
    restore = faulty(harness, lambda: setattr(harness.clock, "now", harness.clock.now + 3.0))
    assert harness.step() is not None
    publication = harness.runtime.tick()
    assert is_hold(publication) and "overran" in publication.reason
    restore()
    harness.step()
    assert is_policy(harness.runtime.tick())


def test_bad_inputs_are_counted_and_never_commands(harness: Harness) -> None:
    def bad_frame() -> np.ndarray:
        raise ImageConversionError("unsupported encoding '16UC1'")

    harness.runtime.on_image(bad_frame, harness.clock.now)
    harness.runtime.on_joint_state(JOINTS, MEASURED[:5], harness.clock.now)
    harness.runtime.on_joint_state(["finger_left"], [0.01], harness.clock.now)  # not ours: fine
    harness.runtime.on_instruction_message("x " * 20_000)  # longer than the context
    _, _, values = harness.status()
    assert values["rejected_image"] == "1" and values["rejected_joint_states"] == "1"
    assert values["rejected_instruction"] == "1"
    assert values["instruction"] == "pick up the red cube"  # kept
    assert "cannot fit" in values["last_error"] and len(values["last_error"]) <= 700
    assert harness.runtime.serve_one(timeout_s=0.0) is None and harness.runtime.tick().arm is None


def test_parameter_changes_are_validated_then_applied(harness: Harness) -> None:
    runtime = harness.runtime
    runtime.apply(runtime.validate({"cache_mode": "off", "cache_ratio": 0.25}))
    assert runtime.policy.mode == "off" and runtime.policy.cache_ratio == 0.25
    assert harness.step().reused_tokens == 0
    runtime.apply(runtime.validate({"decode": "speculative"}))  # live, from the next step
    assert runtime.policy.decode == "speculative" and harness.step().draft_tokens == 7
    assert harness.status()[2]["decode"] == "speculative"
    for changes, fragment in (({"cache_mode": "learned"}, "no trained cache policy"),
                              ({"cache_ratio": float("nan")}, "finite"),
                              ({"model_path": "/elsewhere"}, "read-only"),
                              ({"instruction": "go " * 10_000}, "cannot fit")):
        with pytest.raises(ConfigurationError, match=fragment):
            runtime.validate(changes)
    assert runtime.config.cache.ratio == 0.25  # nothing changed
    harness.step()
    assert is_policy(runtime.tick())
    runtime.apply(runtime.validate({"enable_actuation": False}))
    publication = runtime.tick()
    assert publication.safety_first is not None and publication.safety_first.is_safety
    assert not publication.actuate and runtime.tick().safety_first is None  # once


def test_deactivate_stops_output_before_the_safety_command(harness: Harness) -> None:
    harness.step()
    assert is_policy(harness.runtime.tick())
    harness.inputs()  # a frame waiting for the worker
    safety = harness.runtime.deactivate()
    assert safety is not None and safety.is_safety
    assert np.array_equal(safety.joint_positions, MEASURED)
    assert harness.runtime.serve_one(timeout_s=0.0) is None  # no step while inactive
    assert harness.runtime.tick().arm is None  # and no output: the safety command went out
    level, message, _ = harness.status()
    assert level == 1 and "inactive (lifecycle)" in message
    harness.runtime.activate()
    harness.step()
    assert is_policy(harness.runtime.tick())


def test_release_drops_the_model(harness: Harness) -> None:
    harness.runtime.release()
    assert harness.runtime.policy is None
    assert "unconfigured" in harness.status()[1]


def test_problem_log_throttles_per_key_and_counts_repeats() -> None:
    now = {"t": 0.0}
    warnings, errors = Lines(), Lines()
    log = ProblemLog(warnings, errors, clock=lambda: now["t"])
    for i in range(50):
        log.warn("camera", f"rejected image: frame {i} is 0x0")
        now["t"] += 0.1
    assert warnings.lines == ["rejected image: frame 0 is 0x0",
                              "rejected image: frame 49 is 0x0 (and 49 more like it)"][:len(
                                  warnings.lines)]
    assert len(warnings.lines) == 1 + int(5.0 // LOG_REPEAT_S)
    log.error("camera", "a different problem")
    assert errors.lines == ["a different problem"] and log.last == "a different problem"
    assert log.recent(within_s=1.0) == "a different problem"
    now["t"] += 2.0
    assert log.recent(within_s=1.0) is None


def test_sinks_run_on_their_own_threads_safely(harness: Harness) -> None:
    """Inputs from the executor thread while the worker steps: no exception, steps happen."""
    harness.runtime.start_worker()
    stop = threading.Event()

    def feed() -> None:
        while not stop.is_set():
            harness.inputs()
            harness.runtime.tick()
            time.sleep(0.01)

    thread = threading.Thread(target=feed)
    thread.start()
    try:
        deadline = time.monotonic() + 20.0
        while harness.status()[2]["steps"] in ("0", "1") and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
        assert harness.runtime.stop_worker()
    assert int(harness.status()[2]["steps"]) >= 2 and not harness.errors.lines


def test_learned_mode_runs_with_a_cache_policy_and_reports_its_decision(tiny_checkpoint: Path,
                                                                         tmp_path: Path) -> None:
    import torch

    from vla_cache_ros.cache.learned import CachePolicyConfig, CacheSelectorNet, save_cache_policy
    from vla_cache_ros.errors import CheckpointError

    torch.manual_seed(0)
    policy_dir = save_cache_policy(tmp_path / "cache_policy", CacheSelectorNet(CachePolicyConfig(width=4)))
    learned = Harness(tiny_checkpoint, cache_policy_path=str(policy_dir), cache_mode="learned", cache_ratio=0.4)
    assert learned.info.count(f"learned cache policy: {policy_dir}") == 1
    first, second = learned.step(), learned.step()
    assert np.isnan(first.predicted_ratio) and second.ratio_cap == 0.4
    assert second.reused_tokens <= round(0.4 * 256)
    values = learned.status()[2]
    assert values["cache_mode"] == "learned" and values["cache_policy"] == str(policy_dir)
    assert float(values["predicted_ratio"]) == pytest.approx(second.predicted_ratio)
    assert values["recovered_tokens"] == str(second.recovered_tokens)
    # Other modes report no prediction; the policy stays loaded for switching back.
    learned.runtime.apply(learned.runtime.validate({"cache_mode": "fixed"}))
    learned.step()
    assert learned.status()[2]["predicted_ratio"] == "n/a"
    learned.runtime.apply(learned.runtime.validate({"cache_mode": "learned"}))
    assert learned.step().ratio_cap == 0.4
    # A broken cache policy fails configure with the file named; "none" turns the lookup off.
    (policy_dir / "cache_policy.json").write_text("{")
    with pytest.raises(CheckpointError, match="cache_policy.json: not readable JSON"):
        Harness(tiny_checkpoint, cache_policy_path=str(policy_dir))
    with pytest.raises(ConfigurationError,
                       match=r"no trained cache policy is loaded; give one made by vla-cache train-cache \(node: "):
        Harness(tiny_checkpoint, cache_policy_path="none", cache_mode="learned")


def test_a_model_directory_carries_its_own_cache_policy(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import shutil

    import torch

    from vla_cache_ros.cache.learned import CachePolicyConfig, CacheSelectorNet, save_cache_policy

    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model)
    torch.manual_seed(0)
    save_cache_policy(model / "cache_policy", CacheSelectorNet(CachePolicyConfig(width=4)))
    harness = Harness(model, cache_mode="learned")
    harness.step()
    assert harness.status()[2]["cache_policy"] == str(model / "cache_policy")
    assert Harness(model, cache_policy_path="none").status()[2]["cache_policy"] == "none"


def test_drafter_path_drafts_the_speculative_steps(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """``drafter_path``: a given drafter, the model directory's own ``drafter/`` when empty, the
    previous step's tokens with ``none``; diagnostics name it; a broken one fails configure with
    the file named."""
    import shutil

    import torch

    from vla_cache_ros.cache.drafter import DrafterConfig, DrafterNet, save_drafter
    from vla_cache_ros.errors import CheckpointError

    torch.manual_seed(0)
    net = DrafterNet(DrafterConfig(hidden_size=64, token_offset=31744, width=8))
    given = save_drafter(tmp_path / "given", net)
    harness = Harness(tiny_checkpoint, drafter_path=str(given), decode="speculative")
    assert harness.info.count(f"learned drafter: {given}") == 1
    assert harness.step().draft_source == "drafter" and harness.status()[2]["drafter"] == str(given)
    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model)
    save_drafter(model / "drafter", net)
    assert Harness(model, decode="speculative").status()[2]["drafter"] == str(model / "drafter")
    plain = Harness(model, drafter_path="none", decode="speculative")
    assert plain.status()[2]["drafter"] == "none"
    assert [plain.step().draft_source for _ in range(2)] == [None, "previous"]
    (given / "drafter.json").write_text("{")
    with pytest.raises(CheckpointError, match="drafter.json: not readable JSON"):
        Harness(tiny_checkpoint, drafter_path=str(given))


def linear_ms(ratio: float) -> float:
    """Synthetic step time: 100 ms uncached, 80 ms less at full reuse (60 ms at ratio 0.5)."""
    return 100.0 - 80.0 * ratio


def test_a_latency_budget_steers_the_ratio_under_a_synthetic_slowdown(tiny_checkpoint: Path) -> None:
    """Each step of the tiny model reports 100 - 80 r ms (then 30 ms more): the runtime lowers
    the ratio from the cap toward 0.5 while steps meet the 60 ms budget, raises it after a miss,
    and a lower cap holds at once. (test/control/test_budget.py checks where it converges.)"""
    harness = Harness(tiny_checkpoint, cache_ratio=0.9, latency_budget_ms=60.0)
    runtime, policy = harness.runtime, harness.runtime.policy
    extra_ms = {"now": 0.0}
    slowed(harness, lambda ratio: linear_ms(ratio) + extra_ms["now"])
    assert policy.cache_ratio == 0.9  # the cap until steps are measured
    steps = [harness.step() for _ in range(8)]
    ratios = [stats.target_ratio for stats in steps]
    assert ratios[:2] == [0.9, 0.9]  # the first step reset the cache: its time says nothing
    assert all(0.5 < later < earlier for earlier, later in zip(ratios[1:], ratios[2:]))
    assert steps[-1].reused_tokens == round(ratios[-1] * 256)  # the policy really ran with it
    values = harness.status()[2]
    assert values["latency_budget_ms"] == "60.0"
    assert float(values["target_ratio"]) == pytest.approx(ratios[-1], abs=5e-4)
    assert (values["budget_hits"], values["budget_misses"]) == ("8", "0")
    assert 0.5 < float(values["budget_ratio"]) < ratios[-1]  # the choice for the next step

    extra_ms["now"] = 30.0  # the machine slows down: 60 ms now needs a ratio of 0.875
    ratios = [harness.step().target_ratio for _ in range(3)]
    assert ratios[0] < 0.875 <= ratios[1] and ratios[2] <= ratios[1]  # one miss, then hits
    values = harness.status()[2]
    assert (values["budget_hits"], values["budget_misses"]) == ("10", "1")

    runtime.apply(runtime.validate({"cache_ratio": 0.6}))  # a lower cap holds at once
    assert policy.cache_ratio == 0.6
    assert [harness.step().target_ratio for _ in range(2)] == [0.6, 0.6]  # 82 ms: misses
    assert harness.status()[2]["budget_misses"] == "3"


def test_a_budget_change_during_a_step_is_not_undone_by_that_step(tiny_checkpoint: Path) -> None:
    harness = Harness(tiny_checkpoint, cache_ratio=0.9, latency_budget_ms=60.0)
    runtime, policy = harness.runtime, harness.runtime.policy
    undo = slowed(harness, linear_ms)
    harness.step()
    harness.step()
    undo()
    slowed(harness, linear_ms,
           during=lambda: runtime.apply(runtime.validate({"latency_budget_ms": 200.0})))
    harness.step()  # 28 ms < 200 ms: it would lower the ratio and count a hit, had it counted
    assert policy.cache_ratio == 0.9  # the new budget's start: the cap
    values = harness.status()[2]
    assert (values["latency_budget_ms"], values["budget_ratio"]) == ("200.0", "0.900")
    assert (values["budget_hits"], values["budget_misses"]) == ("0", "0")


def test_without_a_budget_or_in_mode_off_the_ratio_is_the_parameter(tiny_checkpoint: Path) -> None:
    harness = Harness(tiny_checkpoint, cache_ratio=0.9, latency_budget_ms=60.0)
    runtime, policy = harness.runtime, harness.runtime.policy
    slowed(harness, linear_ms)
    assert [harness.step().target_ratio for _ in range(3)][-1] < 0.9
    runtime.apply(runtime.validate({"latency_budget_ms": 0.0}))
    assert policy.cache_ratio == 0.9 and [harness.step().target_ratio for _ in range(2)] == [0.9] * 2
    values = harness.status()[2]
    assert (values["latency_budget_ms"], values["budget_ratio"], values["budget_hits"]) == ("off", "n/a", "n/a")
    runtime.apply(runtime.validate({"cache_mode": "off", "latency_budget_ms": 60.0}))
    harness.step()
    harness.step()
    assert policy.cache_ratio == 0.9
    values = harness.status()[2]
    assert values["latency_budget_ms"] == "60.0 (idle: cache_mode off)" and values["budget_misses"] == "n/a"
    runtime.apply(runtime.validate({"cache_mode": "fixed"}))  # steering again, from the cap
    assert [harness.step().target_ratio for _ in range(3)][-1] < 0.9


def test_warm_up_leaves_the_engine_counters_at_zero(tiny_checkpoint: Path) -> None:
    """The warm-up step is in no figure: /diagnostics' LM-head count read '7/7 rows' before the
    first real step (a new user's trial)."""
    from vla_cache_ros.policy import CachedVLAPolicy
    from vla_cache_ros.runtime.loop import backend_values, warm_up

    policy = CachedVLAPolicy.from_pretrained(tiny_checkpoint, unnorm_key="tiny_sim")
    assert warm_up(policy) > 0
    assert policy.engine.counters.head_rows == 0 and policy.engine.counters.prefill_token_layers == 0
    assert backend_values(policy)["lm_head"] == "screened (0/0 rows without the full head)"
    policy.step(np.full((224, 224, 3), 60, np.uint8), "pick up the red cube")
    assert policy.engine.counters.head_rows == 7


def test_diagnostics_keep_a_cause_that_a_more_frequent_consequence_follows() -> None:
    """Regression (a CI flake in test_bad_inputs_rejected_without_commands): /diagnostics showed
    only the last problem, so each control step's "joint_states is stale" hid the rejected
    messages that made the stream stale. Every problem of the last seconds is shown, newest first."""
    now = {"t": 0.0}
    log = ProblemLog(Lines(), Lines(), clock=lambda: now["t"])
    for _ in range(20):
        log.warn("joint_states", "rejected joint_states: duplicate joint names")
        now["t"] += 0.02
        log.warn("step", "step not used: joint_states is stale (1.2 s old)")
        now["t"] += 0.02
    assert log.last == "step not used: joint_states is stale (1.2 s old)"
    assert log.current() == ("step not used: joint_states is stale (1.2 s old) | "
                             "rejected joint_states: duplicate joint names")
    now["t"] += RECENT_S - 0.1
    log.warn("step", "step not used: joint_states is stale (6.1 s old)")
    now["t"] += 0.2  # the rejection is now older than RECENT_S
    assert log.current() == "step not used: joint_states is stale (6.1 s old)"
    now["t"] += 2 * RECENT_S
    assert log.current() == "step not used: joint_states is stale (6.1 s old)"  # nothing recent: the last
    log.warn("camera", "x" * 2000)
    assert len(log.current()) <= MESSAGE_LIMIT + 40  # clip_text says how long it was
