"""The "modes over frames" core: interleaved stepping, warm-up, the baseline, one stage list,
one device setup. Timings are never asserted, only their presence and names."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from vla_cache_ros.errors import CacheModeError, ConfigurationError
from vla_cache_ros.models import load_vla
from vla_cache_ros.runs import ModeRunner, prepare_compute
from vla_cache_ros.stages import STAGES
from vla_cache_ros.synthetic import SyntheticScene

ROOT = Path(__file__).resolve().parents[1]
INSTRUCTION = "pick up the red cube"
SPECS = ["off", "fixed:0.5", "vla_cache"]


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    torch.set_num_threads(1)
    return load_vla(tiny_checkpoint)


@pytest.fixture(scope="module")
def frames():
    return SyntheticScene(seed=3, height=60, width=80).frames(4)


def test_modes_are_stepped_frame_by_frame(model, frames, monkeypatch):
    runner = ModeRunner(model, SPECS, unnorm_key="tiny_sim")
    calls = []
    for spec, policy in runner.policies.items():
        def recording_step(image, instruction, state=None, _spec=spec, _step=policy.step):
            calls.append((_spec, next(i for i, frame in enumerate(frames) if frame is image)))
            return _step(image, instruction, state=state)
        monkeypatch.setattr(policy, "step", recording_step)
    for frame in frames[:3]:
        runner.step_frame(frame, INSTRUCTION)
    assert calls == [(spec, index) for index in range(3) for spec in SPECS]
    assert [step.frame_index for step in runner.steps["vla_cache"]] == [0, 1, 2]


def test_one_policy_per_mode_on_the_shared_model(model):
    runner = ModeRunner(model, [" off", "fixed:0.25 ", "vla_cache:0.8"], unnorm_key="tiny_sim")
    assert runner.baseline == "off" and list(runner.policies) == ["off", "fixed:0.25", "vla_cache:0.8"]
    assert all(policy.model is model for policy in runner.policies.values())
    settings = [(policy.mode, policy.cache_ratio) for policy in runner.policies.values()]
    assert settings == [("off", 0.0), ("fixed", 0.25), ("vla_cache", 0.8)]


def test_off_gives_identical_actions_across_runs_and_matches_an_empty_reuse_set(model, frames):
    runs = [ModeRunner(model, ["off", "fixed:0.0"], unnorm_key="tiny_sim") for _ in range(2)]
    for runner in runs:
        for frame in frames:
            runner.step_frame(frame, INSTRUCTION)
    first, second = ([(step.action, step.stats.action_tokens) for step in runner.steps["off"]] for runner in runs)
    for (action, tokens), (again, tokens_again) in zip(first, second):
        assert np.array_equal(action, again) and np.array_equal(tokens, tokens_again)
    assert runs[0].identical_action_fraction("fixed:0.0") == 1.0 and runs[0].token_agreement("fixed:0.0") == 1.0


def test_warm_up_steps_are_left_out_of_the_timing_medians(model, frames):
    runner = ModeRunner(model, SPECS, unnorm_key="tiny_sim", warmup=2)
    runner.step_frame(frames[0], INSTRUCTION)
    assert runner.timed_steps("off") == runner.steps["off"]  # nothing timed yet: every step counts
    for frame in frames[1:]:
        stepped = runner.step_frame(frame, INSTRUCTION)
    assert [step.timed for step in runner.steps["fixed:0.5"]] == [False, False, True, True]
    assert all(step.timed for step in stepped) and runner.frames == 4
    assert runner.timed_steps("fixed:0.5") == runner.steps["fixed:0.5"][2:]
    for spec in SPECS:
        assert tuple(runner.median_s(spec)) == STAGES
        assert np.isfinite(runner.speedup(spec)) and runner.speedup(spec) > 0
        assert [tuple(step.stats.times_s) for step in runner.steps[spec]] == [STAGES] * 4
    assert runner.speedup("off") == 1.0 and runner.token_agreement("off") == 1.0
    assert 0.0 <= runner.token_agreement("vla_cache", timed_only=True) <= 1.0


@pytest.mark.parametrize("specs, error, message", [
    (["off", "fixed:0.5", "fixed:0.5"], CacheModeError, "listed once each"),
    ([], CacheModeError, "listed once each"),
    (["off", "turbo"], CacheModeError, "unknown cache mode 'turbo'; available: off, fixed, vla_cache"),
    (["off", "learned:0.7"], CacheModeError, "'learned' is not available: no trained cache policy is loaded"),
])
def test_bad_mode_lists(model, specs, error, message):
    with pytest.raises(error, match=message):
        ModeRunner(model, specs)


def test_negative_warm_up_is_refused(model):
    with pytest.raises(ConfigurationError, match="warm-up"):
        ModeRunner(model, ["off"], warmup=-1)


def test_one_device_setup():
    device, dtype = prepare_compute("cpu", None, 0)
    assert device.type == "cpu" and dtype is torch.float32
    assert prepare_compute("cpu", "bfloat16")[1] is torch.bfloat16
    with pytest.raises(ConfigurationError, match="dtype 'float64'"):
        prepare_compute("cpu", "float64")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigurationError, match="no CUDA GPU"):
            prepare_compute("cuda")


# Modules that still spell the stage names themselves; each should import vla_cache_ros.stages.
NOT_YET_SWITCHED: set[str] = set()


def test_stage_names_are_declared_once():
    spelled = []
    for path in sorted((ROOT / "vla_cache_ros").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Tuple) and [getattr(e, "value", None) for e in node.elts[:2]] == [
                    "preprocess", "vision"]:
                spelled.append(path.relative_to(ROOT / "vla_cache_ros").as_posix())
    assert set(spelled) - NOT_YET_SWITCHED == {"stages.py"}, spelled


def test_a_cache_policy_directory_is_loaded_once_and_each_policy_gets_its_own_selector(model, frames, tmp_path,
                                                                                     monkeypatch):
    from vla_cache_ros.cache import learned
    from vla_cache_ros.cache.learned import CachePolicyConfig, CacheSelectorNet, save_cache_policy

    torch.manual_seed(0)
    directory = save_cache_policy(tmp_path / "cp", CacheSelectorNet(CachePolicyConfig(width=4)))
    loads = []
    real = learned.load_cache_policy
    monkeypatch.setattr(learned, "load_cache_policy", lambda path: loads.append(path) or real(path))
    runner = ModeRunner(model, ["off", "learned:0.5", "learned:0.25"], unnorm_key="tiny_sim", cache_policy=directory)
    assert loads == [directory] and runner.cache_policy_source == str(directory)
    selectors = [runner.policies[key]._selectors["learned"] for key in ("learned:0.5", "learned:0.25")]
    assert selectors[0] is not selectors[1] and selectors[0].net is selectors[1].net
    for frame in frames:
        steps = {step.spec: step for step in runner.step_frame(frame, INSTRUCTION)}
    assert steps["learned:0.25"].stats.reused_tokens <= 64 and steps["learned:0.5"].stats.ratio_cap == 0.5


def test_a_drafter_directory_is_loaded_once_and_drafts_every_speculative_run(model, frames, tmp_path, monkeypatch):
    from vla_cache_ros.cache import drafter as drafter_module
    from vla_cache_ros.cache.drafter import DrafterConfig, DrafterNet, save_drafter

    torch.manual_seed(0)
    directory = save_drafter(tmp_path / "drafter", DrafterNet(DrafterConfig(
        hidden_size=model.llama_config.hidden_size, token_offset=model.action_tokenizer.first_action_token,
        width=8)))
    loads = []
    real = drafter_module.load_drafter
    monkeypatch.setattr(drafter_module, "load_drafter", lambda path: loads.append(path) or real(path))
    runner = ModeRunner(model, ["off", "fixed:0.5"], unnorm_key="tiny_sim", decodes=["greedy", "speculative"],
                        drafter=directory)
    assert loads == [directory] and runner.drafter_source == str(directory)
    for frame in frames:
        steps = {step.spec: step for step in runner.step_frame(frame, INSTRUCTION)}
        for spec in ("off", "fixed:0.5"):
            assert steps[f"{spec} speculative"].stats.draft_source == "drafter"
            assert steps[spec].stats.draft_source is None
            assert np.array_equal(steps[f"{spec} speculative"].stats.action_tokens, steps[spec].stats.action_tokens)
    assert runner.token_agreement("fixed:0.5 speculative") == 1.0
