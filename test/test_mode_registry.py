"""A cache mode declared once in the registry shows up everywhere modes are offered: the policy,
the modes-over-frames core, replay, sim-eval, the default sweeps and the commands' defaults."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from vla_cache_ros.apps.cli import build_parser
from vla_cache_ros.apps.replay import parse_modes as replay_modes
from vla_cache_ros.cache.modes import CacheMode, register_mode, unregister_mode
from vla_cache_ros.cache.selectors import FixedRatioSelector
from vla_cache_ros.errors import CacheModeError
from vla_cache_ros.models import load_vla
from vla_cache_ros.policy import CachedVLAPolicy
from vla_cache_ros.runs import ModeRunner
from vla_cache_ros.synthetic import SyntheticScene

INSTRUCTION = "pick up the red cube"


class HalfSelector(FixedRatioSelector):
    """Fixed ratio, at most half the target: a stand-in for a new selector."""

    name = "half"

    def select(self, context):
        return super().select(replace(context, target_ratio=context.target_ratio / 2))


@pytest.fixture
def half_mode():
    register_mode(CacheMode("half", "half the fixed ratio", selector=HalfSelector, sweep=("half:0.5",)))
    yield "half"
    unregister_mode("half")


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    torch.set_num_threads(1)
    return load_vla(tiny_checkpoint)


def test_a_registered_mode_runs_in_the_policy_and_the_core(half_mode, model):
    policy = CachedVLAPolicy(model, mode="half", cache_ratio=0.5, unnorm_key="tiny_sim")
    assert policy.available_modes() == ["off", "fixed", "vla_cache", "half"]
    runner = ModeRunner(model, ["off", "half:0.5"], unnorm_key="tiny_sim")
    for frame in SyntheticScene(seed=1, height=60, width=80).frames(2):
        runner.step_frame(frame, INSTRUCTION)
    assert [step.stats.reused_tokens for step in runner.steps["half:0.5"]] == [0, 64]  # 0.25 of 256
    assert np.isfinite(runner.speedup("half:0.5"))


def test_a_registered_mode_is_offered_by_every_command(half_mode):
    assert replay_modes("half:0.3")[1] == ("half:0.3", "half", 0.3)
    sim_evaluate = pytest.importorskip("vla_cache_ros.sim.evaluate")
    assert sim_evaluate.parse_modes("half:0.3,expert")[0] == sim_evaluate.EvalMode("half:0.3", "half", 0.3)
    commands = build_parser()._subparsers._group_actions[0].choices
    for command in ("bench", "demo"):
        assert commands[command].get_default("modes").endswith(",vla_cache,half:0.5"), command


def test_a_mode_must_be_registered_before_a_policy_runs_it(model):
    with pytest.raises(CacheModeError, match="unknown cache mode 'half'"):
        CachedVLAPolicy(model, selectors={"half": HalfSelector()})
    policy = CachedVLAPolicy(model, unnorm_key="tiny_sim")
    policy.register_selector("learned", HalfSelector())  # known mode, its selector supplied now
    policy.set_mode("learned")
    assert policy.available_modes()[-1] == "learned"
