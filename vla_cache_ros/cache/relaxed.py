"""The differentiable relaxation of the partial-recompute prefill, for training a learned cache.

``KVReuseEngine.prefill`` takes a hard reuse set: a reused visual token's keys/values come from
the previous frame's cache at every decoder layer, and its hidden state is never computed. A
learned cache policy (LAC, "Learning to Accelerate Vision-Language-Action Models through
Adaptive Visual Token Caching", arXiv 2602.00686) needs gradients through that choice, so here
the choice is a per-token weight ``keep`` in [0, 1] (1 = recompute, 0 = reuse) and, at every
layer, the visual keys and values that attention sees are

    keep * fresh + (1 - keep) * cached

(broadcast over heads and head_dim), the rest of the prefill being the engine's. With a hard
0/1 ``keep`` this is the engine with ``reuse = {keep == 0}``: a reused token's own hidden state is
computed here, but it only ever feeds that token's own K/V at the next layer, which the mix
replaces by the cached ones (visual tokens precede the text and attention is causal, so nothing
after them reads their hidden states other than through K/V). Gradients reach ``keep`` through
every layer's K/V mix; this is how a token selector's relaxed mask and, through its top-k count,
a cache-ratio choice get gradients.

Cost: every token is computed at every layer (unlike the engine, nothing is saved); this is for
training only. The layer loop drives each decoder layer's own modules through the engine's
helpers (``_qkv``, ``_finish_layer``, ``_rotary``, ``_relevance``), always with plain projection
modules: prepacked weights (``cache/prepack.py``) are snapshots without autograd support.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from vla_cache_ros.cache.engine import VISUAL_START, KVReuseEngine, PromptKV
from vla_cache_ros.cache.prepack import decoder_projections
from vla_cache_ros.errors import ConfigurationError

KVHook = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""(layer index, keys, values) -> the keys and values attention uses; all (B, kv_heads, T, head_dim)."""


@dataclass
class VisualKV:
    """The visual part of a previous frame's cache: per decoder layer, post-RoPE keys and values
    of the N visual positions, each (B, kv_heads, N, head_dim)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def batch(self) -> int:
        """B, the number of sequences."""
        return int(self.keys[0].shape[0])

    @property
    def num_visual(self) -> int:
        """N, the number of visual positions."""
        return int(self.keys[0].shape[2])

    @classmethod
    def from_prompt_kv(cls, caches: list[PromptKV]) -> "VisualKV":
        """Stack the visual positions of engine prompt caches (one per sequence) along the batch.

        Raises:
            ConfigurationError: no caches, or caches of different visual counts or depths.
        """
        if not caches or len({(cache.num_visual, len(cache.keys)) for cache in caches}) != 1:
            raise ConfigurationError("need one or more prompt caches of the same visual count and depth")
        visual = slice(VISUAL_START, VISUAL_START + caches[0].num_visual)
        depth = len(caches[0].keys)
        return cls([torch.cat([cache.keys[index][:, :, visual] for cache in caches]) for index in range(depth)],
                   [torch.cat([cache.values[index][:, :, visual] for cache in caches]) for index in range(depth)])


@dataclass
class MixedResult:
    """What one mixed prefill produced."""

    logits: torch.Tensor  # (B, 1 + A, vocab) float32: last prompt position, then the A appended ones
    relevance: torch.Tensor | None  # (B, N) float32 text->vision attention at the requested layer, or None


def _run_layers(engine: KVReuseEngine, hidden: torch.Tensor, kv_hook: KVHook,
                attention_layer: int | None = None, text_rows: torch.Tensor | None = None,
                num_visual: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every decoder layer over all positions 0..T-1 of ``hidden`` (B, T, hidden) under a causal
    mask; ``kv_hook`` gives the K/V attention uses. Returns the last hidden states (B, T, hidden)
    and, at ``attention_layer``, ``engine._relevance`` over ``text_rows`` (B, N)."""
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    mask = positions.unsqueeze(0) <= positions.unsqueeze(1)  # (T, T) causal over the true positions
    rotary = engine._rotary(hidden, positions)
    projections = decoder_projections(engine.language_model, prepack=False).layers
    relevance = None
    for index, (layer, projection) in enumerate(zip(engine.layers, projections)):
        query, key, value = engine._qkv(layer, projection, layer.input_layernorm(hidden), rotary)
        key, value = kv_hook(index, key, value)
        scaling = layer.self_attn.scaling
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling,
                                                  enable_gqa=query.shape[1] != key.shape[1])
        if attention_layer is not None and index == attention_layer:
            relevance = engine._relevance(query, key, mask, scaling, text_rows, num_visual)
        hidden = engine._finish_layer(layer, projection, hidden, attended)
    return hidden, relevance


def visual_kv(engine: KVReuseEngine, embeddings: torch.Tensor, num_visual: int) -> VisualKV:
    """The cache a previous frame leaves: a full forward (nothing reused) of ``embeddings``.

    Visual tokens precede the text and attention is causal, so their K/V do not depend on the
    prompt: only the first 1 + N positions (BOS and the visual tokens) are computed. Gradients
    are recorded when autograd is on; wrap the call in ``torch.no_grad()`` when the previous
    frame is not trained through.

    Args:
        embeddings: (B, L, hidden) ``[BOS | N visual | prompt]`` input embeddings (L may also
            be just 1 + N).
        num_visual: N.

    Returns:
        Per layer, (B, kv_heads, N, head_dim) post-RoPE keys and values, in the model's dtype.

    Raises:
        ConfigurationError: fewer than 1 + N positions, or N < 1.
    """
    if num_visual < 1 or embeddings.dim() != 3 or embeddings.shape[1] < VISUAL_START + num_visual:
        raise ConfigurationError(f"need (B, L, hidden) embeddings with L >= {VISUAL_START + num_visual}, "
                                 f"got {tuple(embeddings.shape)}")
    visual = slice(VISUAL_START, VISUAL_START + num_visual)
    kept = VisualKV([], [])

    def record(index: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept.keys.append(key[:, :, visual])
        kept.values.append(value[:, :, visual])
        return key, value

    _run_layers(engine, embeddings[:, :VISUAL_START + num_visual], record)
    return kept


def mixed_prefill(engine: KVReuseEngine, embeddings: torch.Tensor, num_visual: int, keep: torch.Tensor,
                  cached: VisualKV, appended: torch.Tensor | None = None,
                  attention_layer: int | None = None) -> MixedResult:
    """The prefill with every visual token's K/V mixed between recomputed and cached.

    Every position is computed at every layer (training cost, see the module docstring); at
    each layer the visual positions' keys and values are ``keep * fresh + (1 - keep) * cached``,
    broadcast over heads and head_dim. With a hard 0/1 ``keep`` the logits (and the relevance)
    equal ``engine.prefill(embeddings[b:b+1], num_visual, reuse=nonzero(keep[b] == 0),
    cached=<that frame's prompt cache>, draft=<appended[b] + one token>)`` row by row: reused
    tokens' hidden states are computed but only feed their own K/V, which the mix replaces.
    Differentiable w.r.t. ``keep``, ``embeddings`` and ``cached`` (through every layer's mix)
    whenever autograd is on; the caller decides (nothing here forces ``no_grad``).

    Args:
        engine: supplies the model and its layer helpers (its prepacked weights are not used).
        embeddings: (B, L, hidden) ``[BOS | N visual | prompt]``, the same L for the batch.
        num_visual: N.
        keep: (B, N) weights in [0, 1]; 1 = recompute the token, 0 = reuse its cached K/V.
            Values outside [0, 1] are not checked (they extrapolate linearly).
        cached: the previous frame's visual K/V (:func:`visual_kv`), batch B.
        appended: (B, A) int64 token ids appended after the prompt (teacher forcing, like the
            engine's draft), embedded with the model's input embeddings; None or A = 0 for none.
        attention_layer: decoder layer whose text->vision attention is returned, or None.

    Returns:
        ``logits`` (B, 1 + A, vocab) float32 at the last prompt position and the A appended
        positions; ``relevance`` (B, N) float32 when ``attention_layer`` is given: attention
        probabilities from the prompt's text rows (after the visual tokens; not the appended
        rows) to the visual key columns, averaged over heads and rows, as the engine's.

    Raises:
        ConfigurationError: shapes that do not fit together, no prompt after the visual tokens,
            or ``attention_layer`` outside the decoder.
    """
    if embeddings.dim() != 3 or embeddings.shape[1] <= VISUAL_START + num_visual:
        raise ConfigurationError(f"need (B, L, hidden) embeddings, a sequence longer than BOS + visual tokens "
                                 f"(a prompt after them); got {tuple(embeddings.shape)}")
    batch, length = embeddings.shape[0], embeddings.shape[1]
    if tuple(keep.shape) != (batch, num_visual):
        raise ConfigurationError(f"keep must be (B, N) = {(batch, num_visual)}, got {tuple(keep.shape)}")
    if cached.batch != batch or cached.num_visual != num_visual or len(cached.keys) != engine.num_layers:
        raise ConfigurationError(f"cached K/V must hold batch {batch}, {num_visual} visual tokens and "
                                 f"{engine.num_layers} layers")
    if appended is not None and (appended.dim() != 2 or appended.shape[0] != batch):
        raise ConfigurationError(f"appended tokens must be (B, A) with B = {batch}, got {tuple(appended.shape)}")
    if attention_layer is not None and not 0 <= attention_layer < engine.num_layers:
        raise ConfigurationError(f"attention_layer must lie in [0, {engine.num_layers})")
    hidden = embeddings
    if appended is not None and appended.shape[1] > 0:
        tokens = appended.to(device=embeddings.device, dtype=torch.long)
        hidden = torch.cat([hidden, engine.language_model.get_input_embeddings()(tokens).to(hidden.dtype)], dim=1)
    weight = keep.to(embeddings.dtype).reshape(batch, 1, num_visual, 1)
    visual = slice(VISUAL_START, VISUAL_START + num_visual)

    def mix(index: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mixed = []
        for fresh, old in ((key, cached.keys[index]), (value, cached.values[index])):
            blend = weight * fresh[:, :, visual] + (1 - weight) * old.to(fresh.dtype)
            mixed.append(torch.cat([fresh[:, :, :VISUAL_START], blend, fresh[:, :, visual.stop:]], dim=2))
        return mixed[0], mixed[1]

    text_rows = torch.arange(VISUAL_START + num_visual, length, device=embeddings.device)
    hidden, relevance = _run_layers(engine, hidden, mix, attention_layer, text_rows, num_visual)
    logits = engine.language_model.lm_head(engine.decoder.norm(hidden[:, length - 1:])).float()
    return MixedResult(logits, relevance)
