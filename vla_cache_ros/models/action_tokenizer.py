"""OpenVLA's action discretisation: 256 bins over [-1, 1] mapped onto the last vocabulary ids.

Token id -> bin: ``d = (vocab_size - pad_to_multiple_of) - id``, ``idx = clip(d - 1, 0, 254)``,
value = ``bin_centers[idx]`` with ``bins = linspace(-1, 1, n_bins)`` and centres the 255
midpoints. Un-normalisation maps [-1, 1] to [q01, q99] per dimension where the mask is true.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vla_cache_ros.errors import ConfigurationError


class ActionTokenizer:
    """Converts between action-token ids and normalised actions in [-1, 1]."""

    def __init__(self, vocab_size: int, pad_to_multiple_of: int = 64, n_bins: int = 256) -> None:
        self.vocab_size = int(vocab_size)
        self.unpadded_vocab_size = int(vocab_size) - int(pad_to_multiple_of)
        self.n_bins = int(n_bins)
        self.bins = np.linspace(-1.0, 1.0, self.n_bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0

    def tokens_to_normalized(self, token_ids: np.ndarray) -> np.ndarray:
        """Map action-token ids to normalised values in [-1, 1] (OpenVLA's decode rule)."""
        distances = self.unpadded_vocab_size - np.asarray(token_ids, dtype=np.int64)
        indices = np.clip(distances - 1, 0, self.bin_centers.shape[0] - 1)
        return self.bin_centers[indices]

    def normalized_to_tokens(self, values: np.ndarray) -> np.ndarray:
        """Map normalised values to the token ids whose bin they fall in (inverse of decoding)."""
        clipped = np.clip(np.asarray(values, dtype=np.float64), -1.0, 1.0)
        bin_index = np.clip(np.digitize(clipped, self.bins), 1, self.bin_centers.shape[0])
        return self.unpadded_vocab_size - bin_index

    @property
    def action_token_range(self) -> tuple[int, int]:
        """Inclusive range [low, high] of token ids that decode to distinct action bins."""
        return self.unpadded_vocab_size - self.bin_centers.shape[0], self.unpadded_vocab_size - 1


def select_action_stats(norm_stats: dict[str, Any], unnorm_key: str | None) -> dict[str, Any]:
    """Pick the ``action`` statistics for ``unnorm_key`` (required when several datasets exist)."""
    if not norm_stats:
        raise ConfigurationError("the checkpoint has no norm_stats; actions cannot be un-normalised")
    keys = sorted(norm_stats)
    if unnorm_key is None:
        if len(keys) != 1:
            raise ConfigurationError(
                f"unnorm_key is required: the checkpoint has statistics for several datasets: {', '.join(keys)}")
        unnorm_key = keys[0]
    if unnorm_key not in norm_stats:
        raise ConfigurationError(f"unknown unnorm_key {unnorm_key!r}; available: {', '.join(keys)}")
    entry = norm_stats[unnorm_key]
    if not isinstance(entry, dict) or "action" not in entry:
        raise ConfigurationError(f"norm_stats[{unnorm_key!r}] has no 'action' statistics")
    return entry["action"]


def unnormalize(normalized: np.ndarray, action_stats: dict[str, Any]) -> np.ndarray:
    """Map normalised actions to robot units: ``0.5*(x+1)*(q99-q01)+q01`` where mask is true."""
    low = np.asarray(action_stats["q01"], dtype=np.float64)
    high = np.asarray(action_stats["q99"], dtype=np.float64)
    mask = np.asarray(action_stats.get("mask", np.ones_like(low, dtype=bool)), dtype=bool)
    normalized = np.asarray(normalized, dtype=np.float64)
    if normalized.shape[-1] != low.shape[0]:
        raise ConfigurationError(
            f"action has {normalized.shape[-1]} dimensions but the statistics have {low.shape[0]}")
    return np.where(mask, 0.5 * (normalized + 1.0) * (high - low) + low, normalized)
