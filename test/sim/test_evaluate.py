"""sim-eval's ROS-free part: mode parsing, the episode plan, statistics and the written reports."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vla_cache_ros.errors import ConfigurationError
from vla_cache_ros.sim.evaluate import (
    EpisodeResult,
    EvalConfig,
    EvalMode,
    parse_modes,
    summarize,
    wilson_interval,
    write_reports,
)


def test_modes_parse_with_ratios_and_the_expert() -> None:
    modes = parse_modes("off, fixed:0.5,vla_cache,learned:0.7,expert")
    assert [m.label for m in modes] == ["off", "fixed:0.5", "vla_cache", "learned:0.7", "expert"]
    assert modes[1] == EvalMode("fixed:0.5", "fixed", 0.5)
    assert modes[2].cache_ratio is None and modes[4].is_expert and not modes[0].is_expert


@pytest.mark.parametrize("text, message", [
    ("turbo", "unknown mode 'turbo'; available: off, fixed, vla_cache, learned .* or expert"),
    ("fixed:lots", "must be a number"), ("fixed:1.5", r"\[0, 1\]"),
    ("off,off", "repeats"), ("", "no mode"), ("expert:0.5", "no ratio"),
])
def test_bad_modes_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_modes(text)


def test_config_needs_a_model_for_cache_modes_and_plans_the_same_episodes(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="--model"):
        EvalConfig(modes=parse_modes("off"), episodes=2, out_dir=tmp_path)
    with pytest.raises(ConfigurationError, match="not a directory"):
        EvalConfig(modes=parse_modes("off"), episodes=2, out_dir=tmp_path, model_path=tmp_path / "missing")
    config = EvalConfig(modes=parse_modes("expert"), episodes=4, out_dir=tmp_path, seed=10,
                        families=("touch", "pick"))
    assert config.episode_plan() == [(0, 10, "touch"), (1, 11, "pick"), (2, 12, "touch"), (3, 13, "pick")]


def test_wilson_interval() -> None:
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-3) and high == pytest.approx(0.7634, abs=1e-3)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    assert wilson_interval(10, 10)[0] > wilson_interval(2, 2)[0]  # more trials, tighter


def _result(mode: str, family: str, success: bool, latencies: list[float], ratio: float) -> EpisodeResult:
    return EpisodeResult(mode=mode, index=0, seed=0, family=family, instruction="x", success=success,
                         timed_out=not success, length_s=2.0 if success else 10.0, wall_s=1.0,
                         inference_steps=len(latencies), latency_ms_sum=sum(latencies),
                         cache_ratio_sum=ratio * len(latencies), cache_ratio_count=len(latencies),
                         latencies_ms=latencies)


def test_summary_and_reports(tmp_path: Path) -> None:
    modes = parse_modes("off,fixed:0.5")
    results = [
        _result("off", "pick", True, [40.0, 42.0], 0.0), _result("off", "touch", False, [41.0], 0.0),
        _result("fixed:0.5", "pick", True, [30.0, 32.0], 0.5), _result("fixed:0.5", "touch", True, [31.0], 0.4),
    ]
    summary = summarize(results, modes)
    off, fixed = summary["off"], summary["fixed:0.5"]
    assert off["overall"]["successes"] == 1 and off["overall"]["success_rate"] == 0.5
    assert off["families"]["touch"]["success_rate"] == 0.0
    assert off["overall"]["mean_length_s"] == pytest.approx(6.0)
    assert off["latency_ms_mean"] == pytest.approx(41.0) and off["inference_hz"] == pytest.approx(1.5)
    assert fixed["cache_ratio_mean"] == pytest.approx((0.5 * 2 + 0.4) / 3)
    config = EvalConfig(modes=modes, episodes=2, out_dir=tmp_path / "report", model_path=tmp_path)
    paths = write_reports(config, results, summary)
    assert {p.name for p in paths} == {"results.json", "results.md", "success_by_family.png", "latency.png"}
    document = json.loads((tmp_path / "report" / "results.json").read_text())
    assert document["summary"]["fixed:0.5"]["overall"]["successes"] == 2 and len(document["episodes"]) == 4
    table = (tmp_path / "report" / "results.md").read_text()
    assert "| fixed:0.5 | 100 % (" in table and "| off | 50 % (" in table
    assert (tmp_path / "report" / "success_by_family.png").read_bytes()[:4] == b"\x89PNG"
