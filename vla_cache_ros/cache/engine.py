"""Partial-recompute prefill and greedy decoding over a Llama-family decoder.

The sequence is ``[BOS | N visual tokens | prompt tokens]``. For a reuse set R of visual
positions, every decoder layer takes R's keys/values (post-RoPE) from the previous step's cache
and computes everything else; R's hidden states are never computed, so the saved FLOPs are real.
Positions keep their original values and attention uses an explicit causal mask over the true
positions through ``scaled_dot_product_attention``. The engine drives each layer's own modules
(norms, q/k/v/o projections, rotary embedding, MLP), which keeps it independent of the
transformers cache API. Optionally one layer's text->vision attention is computed explicitly
(for the VLA-Cache relevance rule) without forcing eager attention elsewhere.

Because visual tokens precede the text and attention is causal, visual K/V never depend on the
instruction; only the visual slice is kept between steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vla_cache_ros.errors import ConfigurationError

VISUAL_START = 1  # visual tokens follow BOS


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotary helper: (x1, x2) -> (-x2, x1) on the last dimension halves."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply rotary position embedding; cos/sin are (1, T, d), x is (1, heads, T, d)."""
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


@dataclass
class VisualKV:
    """Per-layer keys/values of the visual positions, post-RoPE: each (1, kv_heads, N, head_dim)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def num_tokens(self) -> int:
        """Visual tokens stored."""
        return int(self.keys[0].shape[2])


@dataclass
class PrefillResult:
    """What one prefill produced."""

    last_logits: torch.Tensor  # (vocab,) float32 logits at the last prompt position
    keys: list[torch.Tensor]  # per layer (1, kv_heads, L, head_dim)
    values: list[torch.Tensor]
    computed_positions: torch.Tensor  # (|C|,) int64 sequence positions computed this step
    token_layer_computations: int  # sum over layers of tokens whose hidden state was computed
    relevance: torch.Tensor | None  # (N,) text->vision attention at the requested layer, or None


@dataclass
class DecodeResult:
    """Greedy action tokens, their logits, and the work done."""

    tokens: torch.Tensor  # (steps,) int64
    logits: torch.Tensor  # (steps, vocab) float32
    token_layer_computations: int = 0


@dataclass
class EngineCounters:
    """Running totals counted inside the engine (what was really computed)."""

    prefill_token_layers: int = 0
    decode_token_layers: int = 0
    steps: int = 0
    per_step: list[int] = field(default_factory=list)


class KVReuseEngine:
    """Runs prefill with visual K/V reuse and greedy decoding for one ``LlamaForCausalLM``."""

    def __init__(self, language_model: nn.Module) -> None:
        self.language_model = language_model
        self.decoder = language_model.model
        self.layers = list(self.decoder.layers)
        self.config = language_model.config
        self.counters = EngineCounters()

    @property
    def num_layers(self) -> int:
        """Decoder depth."""
        return len(self.layers)

    def _rotary(self, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decoder.rotary_emb(hidden, positions.unsqueeze(0))

    def _qkv(self, layer: nn.Module, normed: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        attention = layer.self_attn
        shape = (*normed.shape[:-1], -1, attention.head_dim)
        query = attention.q_proj(normed).view(shape).transpose(1, 2)
        key = attention.k_proj(normed).view(shape).transpose(1, 2)
        value = attention.v_proj(normed).view(shape).transpose(1, 2)
        return apply_rotary(query, cos, sin), apply_rotary(key, cos, sin), value

    def _finish_layer(self, layer: nn.Module, hidden: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        attended = attended.transpose(1, 2).reshape(*hidden.shape[:-1], -1)
        hidden = hidden + layer.self_attn.o_proj(attended)
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))

    @staticmethod
    def _relevance(query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, scaling: float,
                   text_rows: torch.Tensor, num_visual: int) -> torch.Tensor:
        """Text->vision attention probabilities, averaged over heads and text query rows -> (N,)."""
        groups = query.shape[1] // keys.shape[1]
        expanded = keys.repeat_interleave(groups, dim=1) if groups > 1 else keys
        scores = torch.matmul(query[:, :, text_rows].float(), expanded.float().transpose(-1, -2)) * scaling
        scores = scores.masked_fill(~mask[text_rows].unsqueeze(0).unsqueeze(0), float("-inf"))
        probabilities = torch.softmax(scores, dim=-1)
        visual = probabilities[..., VISUAL_START:VISUAL_START + num_visual]
        return visual.mean(dim=(0, 1, 2))

    @torch.no_grad()
    def prefill(self, embeddings: torch.Tensor, num_visual: int, reuse: torch.Tensor | None = None,
                cached: VisualKV | None = None, relevance_layer: int | None = None) -> PrefillResult:
        """Prefill ``embeddings`` (1, L, hidden), reusing visual K/V at indices ``reuse`` (0..N-1).

        Args:
            embeddings: ``[BOS | visual | prompt]`` input embeddings.
            num_visual: N, the number of visual positions (1..N).
            reuse: visual token indices whose K/V come from ``cached`` (sorted or not); None/empty
                computes everything.
            cached: the previous step's visual K/V (required when ``reuse`` is non-empty).
            relevance_layer: layer at which to compute text->vision attention, or None.
        """
        device = embeddings.device
        length = embeddings.shape[1]
        if length <= VISUAL_START + num_visual:
            raise ConfigurationError("sequence shorter than BOS + visual tokens + prompt")
        reuse_idx = (reuse.to(device=device, dtype=torch.long).unique(sorted=True)
                     if reuse is not None and reuse.numel() > 0 else torch.empty(0, dtype=torch.long, device=device))
        if reuse_idx.numel() > 0:
            if cached is None or cached.num_tokens != num_visual or len(cached.keys) != self.num_layers:
                raise ConfigurationError("reuse requested without a compatible visual K/V cache")
            if int(reuse_idx.min()) < 0 or int(reuse_idx.max()) >= num_visual:
                raise ConfigurationError(f"reuse indices must lie in [0, {num_visual})")
        computed_mask = torch.ones(length, dtype=torch.bool, device=device)
        computed_mask[VISUAL_START + reuse_idx] = False
        computed = torch.nonzero(computed_mask).squeeze(1)
        all_positions = torch.arange(length, device=device)
        mask = all_positions.unsqueeze(0) <= computed.unsqueeze(1)  # (|C|, L) causal over true positions
        text_rows = torch.nonzero(computed >= VISUAL_START + num_visual).squeeze(1)

        hidden = embeddings[:, computed]
        cos, sin = self._rotary(hidden, computed)
        keys_out: list[torch.Tensor] = []
        values_out: list[torch.Tensor] = []
        relevance = None
        work = 0
        reused_positions = VISUAL_START + reuse_idx
        for index, layer in enumerate(self.layers):
            work += hidden.shape[1]
            query, key, value = self._qkv(layer, layer.input_layernorm(hidden), cos, sin)
            if reuse_idx.numel() > 0:
                full_key = key.new_empty((1, key.shape[1], length, key.shape[3]))
                full_value = value.new_empty((1, value.shape[1], length, value.shape[3]))
                full_key[:, :, computed] = key
                full_value[:, :, computed] = value
                full_key[:, :, reused_positions] = cached.keys[index][:, :, reuse_idx].to(key.dtype)
                full_value[:, :, reused_positions] = cached.values[index][:, :, reuse_idx].to(value.dtype)
            else:
                full_key, full_value = key, value
            scaling = layer.self_attn.scaling
            attended = F.scaled_dot_product_attention(
                query, full_key, full_value, attn_mask=mask, scale=scaling,
                enable_gqa=query.shape[1] != full_key.shape[1])
            if relevance_layer is not None and index == relevance_layer:
                relevance = self._relevance(query, full_key, mask, scaling, text_rows, num_visual)
            hidden = self._finish_layer(layer, hidden, attended)
            keys_out.append(full_key)
            values_out.append(full_value)
        last = self.decoder.norm(hidden[:, -1:])
        logits = self.language_model.lm_head(last)[0, -1].float()
        self.counters.prefill_token_layers += work
        return PrefillResult(logits, keys_out, values_out, computed, work, relevance)

    @torch.no_grad()
    def decode(self, prefill: PrefillResult, steps: int) -> DecodeResult:
        """Greedy decoding of ``steps`` tokens after ``prefill`` (argmax over the full vocabulary).

        Decode K/V are appended to copies local to this call; the prefill's K/V are untouched.
        """
        keys = list(prefill.keys)
        values = list(prefill.values)
        position = keys[0].shape[2]
        logits = prefill.last_logits
        tokens: list[int] = []
        all_logits = [logits]
        embed = self.language_model.get_input_embeddings()
        device = logits.device
        work = 0
        for step in range(steps):
            token = int(torch.argmax(logits).item())
            tokens.append(token)
            if step == steps - 1:
                break
            hidden = embed(torch.tensor([[token]], device=device))
            positions = torch.tensor([position], device=device)
            cos, sin = self._rotary(hidden, positions)
            for index, layer in enumerate(self.layers):
                work += 1
                query, key, value = self._qkv(layer, layer.input_layernorm(hidden), cos, sin)
                keys[index] = torch.cat([keys[index], key], dim=2)
                values[index] = torch.cat([values[index], value], dim=2)
                attended = F.scaled_dot_product_attention(
                    query, keys[index], values[index], scale=layer.self_attn.scaling,
                    enable_gqa=query.shape[1] != keys[index].shape[1])
                hidden = self._finish_layer(layer, hidden, attended)
            logits = self.language_model.lm_head(self.decoder.norm(hidden))[0, -1].float()
            all_logits.append(logits)
            position += 1
        self.counters.decode_token_layers += work
        return DecodeResult(torch.tensor(tokens, dtype=torch.long), torch.stack(all_logits), work)

    @staticmethod
    def visual_slice(prefill: PrefillResult, num_visual: int) -> VisualKV:
        """The visual positions' K/V of a prefill, kept as the cache for the next step."""
        span = slice(VISUAL_START, VISUAL_START + num_visual)
        return VisualKV([k[:, :, span].clone() for k in prefill.keys], [v[:, :, span].clone() for v in prefill.values])
