"""The per-step record the node publishes on ~/step_stats: round trip, bad input, built from StepStats."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vla_cache_ros.errors import InvalidInputError
from vla_cache_ros.stages import STAGES, StepRecord


def test_a_step_record_round_trips_through_json() -> None:
    record = StepRecord("fixed", 0.5, 0.46875, {stage: float(i) for i, stage in enumerate(STAGES)}, cache_reset=True)
    text = record.to_json()
    assert "\n" not in text and json.loads(text)["times_ms"]["prefill"] == 3.0
    assert StepRecord.from_json(text) == record


@pytest.mark.parametrize("text", ["not json", "[]", '{"mode": "off"}', '{"mode": "off", "target_ratio": 0, '
                                  '"actual_ratio": 0, "times_ms": {"total": "fast"}}'])
def test_what_is_not_a_step_record_is_refused_by_name(text: str) -> None:
    with pytest.raises(InvalidInputError, match="not a step record"):
        StepRecord.from_json(text)


def test_step_stats_give_their_record_in_milliseconds() -> None:
    from vla_cache_ros.policy import StepStats

    stats = StepStats(mode="vla_cache", target_ratio=0.5, reused_tokens=64, recomputed_tokens=192,
                      actual_ratio=0.25, times_s={stage: 0.002 for stage in STAGES}, flops=1.0, flops_uncached=2.0,
                      prefill_flops=1.0, prefill_flops_uncached=2.0, token_layer_computations=1,
                      reuse_indices=np.arange(64), action_tokens=np.zeros(7, dtype=np.int64))
    record = stats.record()
    assert record == StepRecord("vla_cache", 0.5, 0.25, {stage: pytest.approx(2.0) for stage in STAGES}, False)
    assert StepRecord.from_json(record.to_json()).times_ms["total"] == pytest.approx(2.0)
