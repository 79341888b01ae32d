"""Analytic FLOPs of one policy step, from the model configuration (2 FLOPs per multiply-add).

Counts the vision tower (blocks up to the second-to-last, patch embedding), the projector, the
decoder prefill (dense projections + MLP for each computed token and layer, causal attention
over the true positions) and greedy decoding (one token per step over the growing cache, plus
the LM head). Used to report the FLOPs of a cached step beside the same step uncached.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DecoderDims:
    """Sizes of a Llama-family decoder that determine its FLOPs."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config(cls, config) -> "DecoderDims":
        """Read the dimensions from a ``LlamaConfig``."""
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                   config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads,
                   head_dim, config.vocab_size)

    @property
    def dense_per_token_layer(self) -> int:
        """Projections + MLP for one token in one layer."""
        q_and_o = 2 * 2 * self.hidden * self.heads * self.head_dim
        k_and_v = 2 * 2 * self.hidden * self.kv_heads * self.head_dim
        mlp = 3 * 2 * self.hidden * self.intermediate
        return q_and_o + k_and_v + mlp

    def attention(self, keys: int) -> int:
        """Scores and weighted sum for one query over ``keys`` keys, one layer."""
        return 4 * self.heads * self.head_dim * keys

    @property
    def lm_head(self) -> int:
        """Logits for one position."""
        return 2 * self.hidden * self.vocab


@dataclass(frozen=True)
class VisionDims:
    """Per-backbone ViT sizes and the projector's layer widths."""

    backbones: tuple[tuple[int, int, int, int, int], ...]  # (embed_dim, mlp_hidden, used_blocks, tokens, patch_px)
    projector_layers: tuple[tuple[int, int], ...]  # (in, out) per Linear
    num_patches: int

    def flops(self) -> int:
        """Vision tower + projector FLOPs for one frame."""
        total = 0
        for dim, mlp_hidden, blocks, tokens, patch_px in self.backbones:
            total += 2 * self.num_patches * (3 * patch_px * patch_px) * dim
            dense = tokens * (2 * dim * 3 * dim + 2 * dim * dim + 2 * 2 * dim * mlp_hidden)
            per_block = dense + 4 * tokens * tokens * dim
            total += blocks * per_block
        total += sum(2 * self.num_patches * fan_in * fan_out for fan_in, fan_out in self.projector_layers)
        return total


@dataclass
class StepFlops:
    """FLOPs of one step by stage."""

    vision: int
    prefill: int
    decode: int

    @property
    def total(self) -> int:
        """All stages."""
        return self.vision + self.prefill + self.decode


def prefill_flops(dims: DecoderDims, computed_positions: np.ndarray, heads: int = 1) -> int:
    """Decoder prefill FLOPs when only ``computed_positions`` are computed (causal keys p+1),
    with ``heads`` LM-head rows (1, plus one per appended draft position when speculating)."""
    positions = np.asarray(computed_positions, dtype=np.int64)
    dense = dims.layers * positions.size * dims.dense_per_token_layer
    attention = dims.layers * dims.attention(int(np.sum(positions + 1)))  # linear in the key count
    return dense + attention + heads * dims.lm_head


def decode_flops(dims: DecoderDims, prompt_length: int, steps: int, known: int = 1) -> int:
    """Greedy decoding after a prefill of ``prompt_length`` that already gave ``known`` tokens
    (1; more when a draft was verified): ``steps - known`` forwards + LM heads."""
    total = 0
    for step in range(known, steps):
        keys = prompt_length + step
        total += dims.layers * (dims.dense_per_token_layer + dims.attention(keys)) + dims.lm_head
    return total


def step_flops(vision: VisionDims, dims: DecoderDims, length: int, computed_positions: np.ndarray,
               decode_steps: int, draft_positions: int = 0, known: int = 1) -> StepFlops:
    """FLOPs of one step with the given computed positions; with ``draft_positions`` draft tokens
    appended to the prefill (at positions ``length ...``) and ``known`` tokens known after it."""
    rows = np.concatenate([np.asarray(computed_positions, np.int64), length + np.arange(draft_positions)])
    return StepFlops(vision.flops(), prefill_flops(dims, rows, 1 + draft_positions),
                     decode_flops(dims, length, decode_steps, known))
