"""norm_stats from other fine-tuning pipelines: validated at load, min/max fallback, one-line refusals.

Issue 10, item 7: a ``dataset_statistics.json`` with mean/std/min/max but no q01/q99 ended
``vla-cache predict`` in ``KeyError: 'q01'``, and the node reported ready, then faulted on
every step. Checkpoints are real (``make_tiny_checkpoint`` copies) with their JSON edited here.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from test.models.helpers import INSTRUCTION, expected_normalized, expected_unnormalized
from vla_cache_ros.apps import cli
from vla_cache_ros.errors import CheckpointError, ConfigurationError
from vla_cache_ros.models.norm_stats import ActionStats, NormStats, parse_action_stats
from vla_cache_ros.models.vla import load_vla

Copy = Callable[..., Path]
REPO_ROOT = Path(__file__).resolve().parents[2]
MASK = [True] * 6 + [False]
# What another pipeline saved: mean/std/min/max, no quantiles (robot units).
MIN_MAX_ONLY = {"mean": [0.0] * 6 + [0.5], "std": [0.1] * 6 + [0.5],
                "min": [-0.5, -0.4, -0.3, -1.0, -0.9, -0.8, 0.0],
                "max": [0.6, 0.7, 0.2, 1.1, 0.5, 0.9, 1.0], "mask": MASK}
MEAN_STD_ONLY = {"mean": [0.0] * 7, "std": [0.1] * 7}


def other_pipeline_checkpoint(copy: Copy, statistics: dict[str, Any], keep_config_stats: bool = False) -> Path:
    """A tiny checkpoint whose action statistics come from ``dataset_statistics.json`` only
    (config.json's norm_stats emptied unless ``keep_config_stats``)."""
    directory = copy(config=None if keep_config_stats else (lambda data: data.update(norm_stats={})))
    (directory / "dataset_statistics.json").write_text(json.dumps(statistics))
    return directory


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``vla-cache`` in a real process (the entry point when installed)."""
    script = Path(sys.executable).parent / "vla-cache"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "vla_cache_ros.apps.cli"]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=180, env=env, check=False)


# --- the reported examples ---------------------------------------------------------------------


def test_min_max_only_statistics_fall_back_with_a_warning(checkpoint_copy: Copy, frame: np.ndarray,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    directory = other_pipeline_checkpoint(checkpoint_copy, {"other_pipeline": {"action": MIN_MAX_ONLY}})
    with caplog.at_level(logging.WARNING, logger="vla_cache_ros.models.norm_stats"):
        model = load_vla(directory)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "'other_pipeline'" in warnings[0] and "min/max" in warnings[0]
    tokens = model.predict_action_tokens(frame, INSTRUCTION).tokens.tolist()
    expected = expected_unnormalized(expected_normalized(tokens), MIN_MAX_ONLY["min"], MIN_MAX_ONLY["max"], MASK)
    np.testing.assert_allclose(model.predict_action(frame, INSTRUCTION), expected, rtol=0, atol=1e-12)
    assert model.action_statistics.select(None).bounds == ("min", "max")


def test_predict_command_uses_min_max_and_says_so(checkpoint_copy: Copy) -> None:
    """``vla-cache predict`` on the reported checkpoint: before, ``KeyError: 'q01'``."""
    directory = other_pipeline_checkpoint(checkpoint_copy, {"other_pipeline": {"action": MIN_MAX_ONLY}})
    result = run_cli("predict", str(directory))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "'other_pipeline'" in result.stderr and "min/max" in result.stderr  # the logging warning
    match = re.fullmatch(r"tokens (\[[\d, ]+\]) action \[([^\]]+)\]", result.stdout.strip())
    assert match, result.stdout
    tokens = json.loads(match.group(1))
    action = np.array(match.group(2).split(), dtype=np.float64)
    expected = expected_unnormalized(expected_normalized(tokens), MIN_MAX_ONLY["min"], MIN_MAX_ONLY["max"], MASK)
    np.testing.assert_allclose(action, expected, rtol=0, atol=1e-5)  # printed with 5 decimals


def test_predict_without_usable_statistics_prints_one_line_and_exits_2(
        checkpoint_copy: Copy, capsys: pytest.CaptureFixture[str]) -> None:
    directory = other_pipeline_checkpoint(checkpoint_copy, {"other_pipeline": {"action": MEAN_STD_ONLY}})
    assert cli.main(["predict", str(directory)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and captured.out == "", captured.err
    assert lines[0] == (f"vla-cache predict: error: {directory / 'dataset_statistics.json'}: no usable action "
                        "statistics in norm_stats: 'other_pipeline' action statistics have neither q01/q99 nor "
                        "min/max (found: mean, std)")
    with pytest.raises(CheckpointError, match="'other_pipeline' action statistics have neither q01/q99"):
        load_vla(directory)


def test_truncated_q01_in_every_dataset_is_refused_at_load(checkpoint_copy: Copy) -> None:
    """What test/ros/node_harness.py's ``broken_stats`` writes: once a per-step fault, now a load error."""
    def truncate(data: dict[str, Any]) -> None:
        for entry in data["norm_stats"].values():
            entry["action"]["q01"] = entry["action"]["q01"][:3]

    directory = checkpoint_copy(config=truncate)
    with pytest.raises(CheckpointError) as info:
        load_vla(directory)
    assert str(info.value) == (f"{directory / 'config.json'}: no usable action statistics in norm_stats: "
                               "'tiny_alt' action q01 has 3 values, expected 7; "
                               "'tiny_sim' action q01 has 3 values, expected 7")


# --- several datasets, some unusable ------------------------------------------------------------


def test_unusable_datasets_are_refused_only_when_selected_and_listed(
        checkpoint_copy: Copy, frame: np.ndarray, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    broken = {"broken_a": {"action": {"q01": [0.0] * 3, "q99": [1.0] * 7}},
              "broken_b": {"action": MEAN_STD_ONLY}}
    directory = other_pipeline_checkpoint(checkpoint_copy, broken, keep_config_stats=True)
    with caplog.at_level(logging.WARNING, logger="vla_cache_ros.models.norm_stats"):
        model = load_vla(directory)
    assert any("broken_a" in r.getMessage() and "broken_b" in r.getMessage() for r in caplog.records)
    assert model.predict_action(frame, INSTRUCTION, unnorm_key="tiny_sim").shape == (7,)
    with pytest.raises(CheckpointError) as info:
        model.predict_action(frame, INSTRUCTION, unnorm_key="broken_a")
    assert str(info.value) == (f"{directory / 'dataset_statistics.json'}: norm_stats['broken_a'] cannot "
                               "un-normalise actions: action q01 has 3 values, expected 7 "
                               "(also unusable: broken_b)")
    with pytest.raises(ConfigurationError, match=r"unknown unnorm_key 'nope'; available: tiny_alt, tiny_sim; "
                                                 r"unusable: broken_a, broken_b"):
        model.action_statistics.select("nope")

    assert cli.main(["predict", str(directory), "--unnorm-key", "broken_b"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "norm_stats['broken_b'] cannot un-normalise actions" in lines[0], lines
    assert "also unusable: broken_a" in lines[0]


def test_statistics_not_keyed_by_dataset_are_refused(checkpoint_copy: Copy) -> None:
    directory = other_pipeline_checkpoint(checkpoint_copy, {"action": MIN_MAX_ONLY, "num_transitions": 10})
    with pytest.raises(CheckpointError, match="statistics are not keyed by dataset name"):
        load_vla(directory)


# --- each rule of one entry -----------------------------------------------------------------------

Q01 = [-1.0] * 7
Q99 = [1.0] * 7


@pytest.mark.parametrize("entry, reason", [
    ([1, 2], "is not an object"),
    ({"proprio": {}}, "has no 'action' statistics"),
    ({"action": {}}, "action statistics have neither q01/q99 nor min/max (found: nothing)"),
    ({"action": {"q01": Q01, "mean": Q01}}, "action statistics have neither q01/q99 nor min/max (found: mean, q01)"),
    ({"action": {"q01": Q01[:6], "q99": Q99}}, "action q01 has 6 values, expected 7"),
    ({"action": {"q01": Q01, "q99": Q99 + [1.0]}}, "action q99 has 8 values, expected 7"),
    ({"action": {"q01": ["0"] * 7, "q99": Q99}}, "action q01 is not a list of numbers"),
    ({"action": {"q01": [True] * 7, "q99": Q99}}, "action q01 is not a list of numbers"),
    ({"action": {"q01": 0.0, "q99": Q99}}, "action q01 is not a list of numbers"),
    ({"action": {"q01": Q01, "q99": Q99[:3] + [math.nan] + Q99[4:]}}, "action q99[3] is nan, not a finite number"),
    ({"action": {"min": Q01, "max": [math.inf] * 7}}, "action max[0] is inf, not a finite number"),
    ({"action": {"q01": Q01[:2] + [0.5] + Q01[3:], "q99": Q99[:2] + [0.1] + Q99[3:]}},
     "action q01[2] = 0.5 is above q99[2] = 0.1"),
    ({"action": {"q01": Q01, "q99": Q99, "mask": [True] * 6}}, "action mask has 6 values, expected 7"),
    ({"action": {"q01": Q01, "q99": Q99, "mask": ["false"] * 7}}, "action mask is not a list of booleans"),
])
def test_unusable_entry_reasons(entry: Any, reason: str) -> None:
    assert parse_action_stats("d", entry) == reason


def test_statistics_from_a_json_file_with_nan_are_refused(tmp_path: Path) -> None:
    """Python's json writes and reads NaN; such an entry must not reach the arm."""
    text = json.dumps({"d": {"action": {"q01": Q01, "q99": [math.nan] * 7}}})
    assert "NaN" in text
    assert NormStats.build(json.loads(text)).unusable == {"d": "action q99[0] is nan, not a finite number"}


def test_usable_entries() -> None:
    quantiles = parse_action_stats("d", {"action": {"q01": Q01, "q99": Q99, "min": [-9.0] * 7, "max": [9.0] * 7,
                                                    "mask": [1, 1, 1, 1, 1, 1, 0]}})
    assert isinstance(quantiles, ActionStats) and quantiles.bounds == ("q01", "q99") and not quantiles.fallback
    np.testing.assert_array_equal(quantiles.mask, MASK)
    only_q01 = parse_action_stats("d", {"action": {"q01": Q01, "min": [-2.0] * 7, "max": [2.0] * 7}})
    assert isinstance(only_q01, ActionStats) and only_q01.bounds == ("min", "max") and only_q01.fallback
    np.testing.assert_array_equal(only_q01.unnormalize(np.array([-1.0, 1.0, 0.0, 0.5, -0.5, 0.0, 1.0])),
                                  [-2.0, 2.0, 0.0, 1.0, -1.0, 0.0, 2.0])  # no mask: all dimensions
    equal_bounds = parse_action_stats("d", {"action": {"q01": [0.3] * 7, "q99": [0.3] * 7}})
    assert isinstance(equal_bounds, ActionStats)  # a constant dimension is fine (low == high)
