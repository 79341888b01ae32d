"""Action tokens -> normalised values -> robot units, against vectors computed by hand."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test.models.helpers import INSTRUCTION, expected_normalized, expected_unnormalized
from vla_cache_ros.errors import CheckpointError, ConfigurationError
from vla_cache_ros.models.action_tokenizer import ActionTokenizer, select_action_stats
from vla_cache_ros.models.norm_stats import ActionStats, parse_action_stats
from vla_cache_ros.models.vla import OpenVLA

# id -> d = 32000 - id -> idx = clip(d - 1, 0, 254) -> centre -1 + (2 idx + 1) / 255
HAND_IDS = [31999, 31998, 31872, 31745, 31744, 32000, 31000, 31871]
HAND_VALUES = [-254 / 255, -252 / 255, 0.0, 254 / 255, 254 / 255, -254 / 255, 254 / 255, 2 / 255]


@pytest.fixture
def tokenizer() -> ActionTokenizer:
    """OpenVLA-7B's vocabulary layout: 32064 padded ids, 256 bins."""
    return ActionTokenizer(vocab_size=32064, pad_to_multiple_of=64, n_bins=256)


def test_bins_and_centres(tokenizer: ActionTokenizer) -> None:
    assert tokenizer.bins.shape == (256,) and tokenizer.bin_centers.shape == (255,)
    np.testing.assert_allclose(tokenizer.bins[[0, 1, 127, 128, 255]], [-1, -253 / 255, -1 / 255, 1 / 255, 1],
                               atol=1e-15)
    np.testing.assert_allclose(tokenizer.bin_centers[[0, 127, 254]], [-254 / 255, 0.0, 254 / 255], atol=1e-15)
    assert tokenizer.action_token_range == (31745, 31999)


def test_tokens_to_normalized_hand_vector(tokenizer: ActionTokenizer) -> None:
    np.testing.assert_allclose(tokenizer.tokens_to_normalized(np.array(HAND_IDS)), HAND_VALUES, rtol=0, atol=1e-15)
    np.testing.assert_allclose(expected_normalized(HAND_IDS), HAND_VALUES, rtol=0, atol=1e-15)


def test_normalized_to_tokens_inverts_decoding(tokenizer: ActionTokenizer) -> None:
    np.testing.assert_array_equal(tokenizer.normalized_to_tokens(np.array([-1.0, -2.0, 0.0, 1.0, 5.0])),
                                  [31999, 31999, 31872, 31745, 31745])
    centres = tokenizer.bin_centers
    tokens = tokenizer.normalized_to_tokens(centres)
    np.testing.assert_array_equal(tokens, 31999 - np.arange(255))
    np.testing.assert_allclose(tokenizer.tokens_to_normalized(tokens), centres, atol=1e-15)


def parsed(action: dict) -> ActionStats:
    """Validated statistics of one dataset entry (the test fails if they are refused)."""
    stats = parse_action_stats("robot", {"action": action})
    assert isinstance(stats, ActionStats), stats
    return stats


def test_unnormalize_hand_vector() -> None:
    stats = {"q01": [-1.0, 0.0, 2.0, -0.5, 0.0, 0.0, 0.0], "q99": [1.0, 4.0, 3.0, 0.5, 0.1, 2.0, 1.0],
             "mask": [True, True, True, True, True, False, False]}
    normalized = np.array([0.0, -1.0, 1.0, 0.5, -0.5, 0.3, -1.0])
    np.testing.assert_allclose(parsed(stats).unnormalize(normalized), [0.0, 0.0, 3.0, 0.25, 0.025, 0.3, -1.0],
                               rtol=0, atol=1e-15)
    without_mask = {"q01": stats["q01"], "q99": stats["q99"]}  # no mask: every dimension maps
    np.testing.assert_allclose(parsed(without_mask).unnormalize(normalized),
                               [0.0, 0.0, 3.0, 0.25, 0.025, 1.3, 0.0], rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="6 dimensions but the statistics have 7"):  # a bug, not input
        parsed(stats).unnormalize(normalized[:6])


def test_decode_action_uses_checkpoint_statistics(tiny_model: OpenVLA, tiny_dir: Path) -> None:
    stats = json.loads((tiny_dir / "config.json").read_text())["norm_stats"]["tiny_alt"]["action"]
    ids = [31999, 31872, 31745, 31871, 31800, 31900, 31745]
    expected = expected_unnormalized(expected_normalized(ids), stats["q01"], stats["q99"], stats["mask"])
    np.testing.assert_allclose(tiny_model.decode_action(np.array(ids), "tiny_alt"), expected, rtol=0, atol=1e-12)
    assert tiny_model.decode_action(np.array(ids), "tiny_alt")[6] == pytest.approx(254 / 255)  # gripper unmasked


def test_unnorm_key_required_with_several_datasets(tiny_model: OpenVLA, frame: np.ndarray) -> None:
    with pytest.raises(ConfigurationError, match=r"unnorm_key is required.*tiny_alt, tiny_sim"):
        tiny_model.predict_action(frame, INSTRUCTION)


def test_unknown_unnorm_key_lists_available(tiny_model: OpenVLA, frame: np.ndarray) -> None:
    with pytest.raises(ConfigurationError, match=r"unknown unnorm_key 'bridge_orig'; available: tiny_alt, tiny_sim"):
        tiny_model.predict_action(frame, INSTRUCTION, unnorm_key="bridge_orig")


def test_single_dataset_needs_no_key() -> None:
    only = {"q01": [0.0] * 7, "q99": [1.0] * 7}
    selected = select_action_stats({"libero_spatial": {"action": only}}, None)
    assert selected.dataset == "libero_spatial" and selected.bounds == ("q01", "q99")
    np.testing.assert_array_equal(selected.high, [1.0] * 7)
    with pytest.raises(ConfigurationError, match="no norm_stats"):
        select_action_stats({}, None)
    with pytest.raises(CheckpointError, match=r"norm_stats\['x'\] cannot un-normalise actions: has no 'action'"):
        select_action_stats({"x": {"proprio": only}}, "x")
