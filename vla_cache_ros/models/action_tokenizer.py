"""OpenVLA's action discretisation: 256 bins over [-1, 1] mapped onto the last vocabulary ids.

Token id -> bin: ``d = (vocab_size - pad_to_multiple_of) - id``, ``idx = clip(d - 1, 0, 254)``,
value = ``bin_centers[idx]`` with ``bins = linspace(-1, 1, n_bins)`` and centres the 255
midpoints. Un-normalisation (mapping [-1, 1] to [q01, q99] per masked dimension) lives with the
statistics it needs in :mod:`vla_cache_ros.models.norm_stats`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vla_cache_ros.models.norm_stats import ACTION_DIM, ActionStats, NormStats


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
    def first_action_token(self) -> int:
        """Lowest of the ``n_bins`` ids at the end of the unpadded vocabulary that OpenVLA reserves
        for actions (``unpadded_vocab_size - n_bins``; the learned drafter's bin 0)."""
        return self.unpadded_vocab_size - self.n_bins

    @property
    def action_token_range(self) -> tuple[int, int]:
        """Inclusive range [low, high] of token ids that decode to distinct action bins."""
        return self.unpadded_vocab_size - self.bin_centers.shape[0], self.unpadded_vocab_size - 1


def select_action_stats(norm_stats: dict[str, Any], unnorm_key: str | None,
                        action_dim: int = ACTION_DIM) -> ActionStats:
    """Validated ``action`` statistics for ``unnorm_key`` (required when several datasets exist).

    Validates ``norm_stats`` afresh (see :mod:`vla_cache_ros.models.norm_stats`); a loaded
    model keeps its validated statistics as ``OpenVLA.action_statistics``.

    Raises:
        ConfigurationError: no statistics, a missing or unknown ``unnorm_key``.
        CheckpointError: the selected dataset's statistics cannot un-normalise actions.
    """
    return NormStats.build(norm_stats, action_dim).select(unnorm_key)
