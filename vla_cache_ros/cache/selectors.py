"""Reuse-set selectors: which visual tokens take their K/V from the cache this step.

One interface for all modes: a selector sees a ``SelectionContext`` (current model-input frame
and its patches, per-token reference patches, ages and similarity, which tokens are eligible,
the previous step's text->vision attention, the target ratio) and returns the reuse set R as
sorted token indices. Eligibility (a cache exists, age below ``max_token_age``) is decided by
the policy before selection, so every selector, including a learned one, honours it. The mode
registry (:mod:`vla_cache_ros.cache.modes`) names the classes below and builds them.

- ``off``: R empty.
- ``fixed``: the round(r*N) most static eligible tokens (highest similarity; ties -> lower id).
- ``vla_cache``: VLA-Cache's rule - similarity >= threshold, top-k most similar, minus the top-k
  task-relevant tokens by the previous step's attention at one layer; capped at round(r*N).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np


@dataclass
class SelectionContext:
    """Everything a selector may look at for one step."""

    frame: np.ndarray  # (S, S, 3) uint8 model-input frame
    patches: np.ndarray  # (N, P) float32 current patches
    similarity: np.ndarray  # (N,) cosine similarity to reference patches
    ages: np.ndarray  # (N,) steps since each token was computed
    eligible: np.ndarray  # (N,) bool: may be reused this step
    previous_attention: np.ndarray | None  # (N,) text->vision attention of the previous step
    target_ratio: float  # cache ratio r in [0, 1]
    num_layers: int  # decoder depth (for selectors that pick a layer)
    reference_patches: np.ndarray | None = None  # (N, P) float32 patches each token was last computed from

    @property
    def num_tokens(self) -> int:
        """N."""
        return int(self.patches.shape[0])


class SelectionReport(NamedTuple):
    """What a selector that chooses its own ratio decided (the ``learned`` mode), for StepStats
    and diagnostics."""

    predicted_ratio: float  # the ratio it chose before the cap (nan: nothing to reuse from)
    ratio_cap: float  # the cache_ratio parameter, the upper bound
    recovered_tokens: int  # tokens due for reuse recomputed anyway (stochastic recovery)


class Selector(Protocol):
    """A reuse-set selector."""

    name: str

    def relevance_layer(self, num_layers: int) -> int | None:
        """Decoder layer whose text->vision attention this selector wants next step, or None."""

    def select(self, context: SelectionContext) -> np.ndarray:
        """Return sorted int64 indices of the tokens to reuse."""


def stable_descending(scores: np.ndarray) -> np.ndarray:
    """Indices sorting ``scores`` descending; ties keep ascending index order."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def target_count(ratio: float, num_tokens: int) -> int:
    """round(r * N), clamped to [0, N]."""
    return int(min(max(round(float(ratio) * num_tokens), 0), num_tokens))


class OffSelector:
    """Never reuses anything (uncached behaviour through the same engine)."""

    name = "off"

    def relevance_layer(self, num_layers: int) -> int | None:
        """No attention needed."""
        return None

    def select(self, context: SelectionContext) -> np.ndarray:
        """Empty reuse set."""
        return np.empty(0, dtype=np.int64)


class FixedRatioSelector:
    """Reuses the round(r*N) most static eligible tokens."""

    name = "fixed"

    def relevance_layer(self, num_layers: int) -> int | None:
        """No attention needed."""
        return None

    def select(self, context: SelectionContext) -> np.ndarray:
        """Top round(r*N) eligible tokens by similarity to their reference patch."""
        count = target_count(context.target_ratio, context.num_tokens)
        order = stable_descending(context.similarity)
        chosen = order[context.eligible[order]][:count]
        return np.sort(chosen).astype(np.int64)


@dataclass
class VLACacheSelector:
    """The training-free VLA-Cache rule (static tokens minus task-relevant ones)."""

    threshold: float = 0.996
    top_k_static: int = 130
    top_k_relevant: int = 120
    attention_layer: int = 15
    name: str = "vla_cache"

    def relevance_layer(self, num_layers: int) -> int | None:
        """The configured layer, clamped to the model's depth."""
        return int(min(max(self.attention_layer, 0), num_layers - 1))

    @staticmethod
    def _scaled(count: int, num_tokens: int) -> int:
        return int(round(count * num_tokens / 256.0))

    def select(self, context: SelectionContext) -> np.ndarray:
        """Static candidates (>= threshold, top-k by similarity) minus the most attended tokens."""
        n = context.num_tokens
        order = stable_descending(context.similarity)
        static = order[(context.similarity[order] >= self.threshold) & context.eligible[order]]
        static = static[: self._scaled(self.top_k_static, n)]
        if context.previous_attention is not None and static.size:
            relevant = stable_descending(context.previous_attention)[: self._scaled(self.top_k_relevant, n)]
            static = static[~np.isin(static, relevant)]
        static = static[: target_count(context.target_ratio, n)]  # cache ratio caps the static set
        return np.sort(static).astype(np.int64)
