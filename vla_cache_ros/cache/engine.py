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
instruction; the prompt-length cache is kept between steps and only its visual part is reused.

Exact speculative decoding, fused into the prefill: a draft of the action tokens (e.g. the
previous step's) is appended after the prompt, at its true positions under the same causal mask,
so one pass both fills the prompt cache and yields the greedy logits at every draft position.
``decode`` accepts the longest draft prefix that equals the greedy argmax, takes the first
mismatching position's argmax for free, and decodes the rest one token at a time as usual. Every
accepted token is the argmax of logits whose inputs were all greedy tokens, so the output equals
greedy decoding by construction (the technique of Leviathan et al. 2023, "Fast Inference from
Transformers via Speculative Decoding", in its greedy form). Draft K/V occupy the spare positions
after the prompt, which decoding overwrites and the next step never reuses.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vla_cache_ros.cache.lm_head import shared_screened_head
from vla_cache_ros.cache.prepack import LayerProjections, decoder_projections
from vla_cache_ros.errors import ConfigurationError

VISUAL_START = 1  # visual tokens follow BOS
DECODE_ROOM = 8  # spare cache positions after the prompt for decoding (OpenVLA decodes 7 tokens)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotary helper: (x1, x2) -> (-x2, x1) on the last dimension halves."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@dataclass
class RotaryTables:
    """cos/sin for a set of positions, shaped (1, 1, T, head_dim) to broadcast over heads.

    Llama-family tables repeat their frequencies in both halves (``cat(freqs, freqs)``); then
    ``halves_equal`` is set and the rotation is computed half by half, without materialising
    ``rotate_half(x)``. Other tables take the general formula.
    """

    cos: torch.Tensor
    sin: torch.Tensor
    halves_equal: bool

    @classmethod
    def from_rotary(cls, cos: torch.Tensor, sin: torch.Tensor) -> "RotaryTables":
        """Wrap the (1, T, d) tables a rotary embedding module returns."""
        half = cos.shape[-1] // 2
        equal = torch.equal(cos[..., :half], cos[..., half:]) and torch.equal(sin[..., :half], sin[..., half:])
        return cls(cos.unsqueeze(1), sin.unsqueeze(1), equal)


def apply_rotary(x: torch.Tensor, tables: RotaryTables) -> torch.Tensor:
    """Apply rotary position embedding to x of shape (B, heads, T, head_dim).

    The half-by-half path writes into preallocated halves, which autograd cannot record; while
    it records (training, ``cache/relaxed.py``) the general formula is used, with the same value.
    """
    if not tables.halves_equal or (torch.is_grad_enabled() and (x.requires_grad or tables.cos.requires_grad)):
        return x * tables.cos + rotate_half(x) * tables.sin
    half = x.shape[-1] // 2
    cos, sin = tables.cos[..., :half], tables.sin[..., :half]
    low, high = x[..., :half], x[..., half:]
    out = torch.empty_like(x)
    torch.sub(low * cos, high * sin, out=out[..., :half])
    torch.add(high * cos, low * sin, out=out[..., half:])
    return out


@dataclass
class PromptKV:
    """The prompt-length cache kept between steps: per layer (1, kv_heads, capacity, head_dim)
    storage, post-RoPE, of which positions ``0..length-1`` hold the prompt.

    Only its visual positions (1..N) are ever reused; the next prefill writes its computed
    positions into the same storage in place when the sequence length is unchanged. The spare
    positions after the prompt take the decode steps' K/V, so decoding appends without copying.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    num_visual: int
    length: int

    @property
    def capacity(self) -> int:
        """Positions the storage can hold."""
        return int(self.keys[0].shape[2])

    def prompt(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of one layer's prompt keys and values, (1, kv_heads, length, head_dim)."""
        return self.keys[layer][:, :, :self.length], self.values[layer][:, :, :self.length]

    def reserve(self, capacity: int) -> None:
        """Grow the storage (one copy) when it holds fewer than ``capacity`` positions."""
        if capacity <= self.capacity:
            return
        for store in (self.keys, self.values):
            for index, tensor in enumerate(store):
                grown = tensor.new_empty((*tensor.shape[:2], capacity, tensor.shape[3]))
                grown[:, :, :self.length] = tensor[:, :, :self.length]
                store[index] = grown


@dataclass
class PrefillResult:
    """What one prefill produced."""

    last_logits: torch.Tensor  # (vocab,) float32 logits at the last prompt position
    prompt_kv: PromptKV  # this step's K/V, kept as the cache for the next step
    computed_positions: torch.Tensor  # (|C|,) int64 sequence positions computed this step
    token_layer_computations: int  # sum over layers of prompt tokens whose hidden state was computed
    relevance: torch.Tensor | None  # (N,) text->vision attention at the requested layer, or None
    draft: torch.Tensor | None = None  # (D,) int64 draft tokens verified in this pass, or None
    draft_logits: torch.Tensor | None = None  # (D', vocab) float32 logits at the D' appended draft positions
    draft_token_layers: int = 0  # sum over layers of the appended draft positions computed
    last_hidden: torch.Tensor | None = None  # (hidden,) final-norm hidden state at the last prompt position


@dataclass
class DecodeResult:
    """Greedy action tokens, their logits, and the work done."""

    tokens: torch.Tensor  # (steps,) int64
    logits: torch.Tensor  # (steps, vocab) float32
    token_layer_computations: int = 0
    accepted_draft_tokens: int = 0  # leading draft tokens equal to the greedy ones (0 without a draft)
    passes: int = 0  # sequential single-token forward passes run after the prefill


@dataclass
class EngineCounters:
    """Running totals counted inside the engine (what was really computed)."""

    prefill_token_layers: int = 0
    decode_token_layers: int = 0
    draft_token_layers: int = 0
    head_rows: int = 0  # rows through the LM head (prompt's last, draft, decode)
    head_screened_rows: int = 0  # of which the bf16 screen decided the greedy token (no full head)
    head_recomputed_rows: int = 0  # float32 head rows recomputed for those (the screen's candidates)


class KVReuseEngine:
    """Runs prefill with visual K/V reuse and greedy decoding for one ``LlamaForCausalLM``."""

    def __init__(self, language_model: nn.Module, prepack: bool | None = None,
                 screened_head: bool = False) -> None:
        """``prepack``: CPU weight prepacking for the projections (see ``cache/prepack.py``);
        None = where supported and affordable, True = required, False = never.
        ``screened_head``: take greedy tokens through the bfloat16 screen of a float32 LM head
        (``cache/lm_head.py``: the same tokens; logits -inf at the rows it proved lower);
        False, or a head that is not float32: the full head on every row."""
        self.language_model = language_model
        self.decoder = language_model.model
        self.layers = list(self.decoder.layers)
        self.config = language_model.config
        self.counters = EngineCounters()
        self.projections = decoder_projections(language_model, prepack)
        self.screened_head = shared_screened_head(language_model.lm_head) if screened_head else None
        # What greedy tokens come from, in words (logs, diagnostics, benchmark reports).
        dtype = str(language_model.lm_head.weight.dtype).replace("torch.", "")
        self.head_setting = ("screened" if self.screened_head is not None else
                             f"full ({dtype} head: the screen applies to float32 heads)" if screened_head else "full")

    def _head_logits(self, normed: torch.Tensor) -> torch.Tensor:
        """(R, vocab) float32 logits of final-norm hidden states ``normed`` (1, R, hidden) whose
        row-wise argmax is greedy decoding's (see ``screened_head``)."""
        self.counters.head_rows += normed.shape[1]
        if self.screened_head is None:
            return self.language_model.lm_head(normed)[0].float()
        output = self.screened_head(normed[0])
        self.counters.head_screened_rows += output.screened
        self.counters.head_recomputed_rows += output.recomputed
        return output.logits

    @property
    def num_layers(self) -> int:
        """Decoder depth."""
        return len(self.layers)

    def _rotary(self, hidden: torch.Tensor, positions: torch.Tensor) -> RotaryTables:
        return RotaryTables.from_rotary(*self.decoder.rotary_emb(hidden, positions.unsqueeze(0)))

    @staticmethod
    def _qkv(layer: nn.Module, projections: LayerProjections, normed: torch.Tensor, rotary: RotaryTables
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        shape = (*normed.shape[:-1], -1, layer.self_attn.head_dim)
        query = projections.q(normed).view(shape).transpose(1, 2)
        key = projections.k(normed).view(shape).transpose(1, 2)
        value = projections.v(normed).view(shape).transpose(1, 2)
        return apply_rotary(query, rotary), apply_rotary(key, rotary), value

    @staticmethod
    def _finish_layer(layer: nn.Module, projections: LayerProjections, hidden: torch.Tensor,
                      attended: torch.Tensor) -> torch.Tensor:
        attended = attended.transpose(1, 2).reshape(*hidden.shape[:-1], -1)
        hidden = hidden + projections.o(attended)
        return hidden + projections.mlp(layer.post_attention_layernorm(hidden))

    @staticmethod
    def _relevance(query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, scaling: float,
                   text_rows: torch.Tensor, num_visual: int) -> torch.Tensor:
        """Text->vision attention probabilities, averaged over heads and text query rows.

        Args:
            query: (B, heads, rows, head_dim) post-RoPE queries of the computed rows.
            keys: (B, kv_heads, T, head_dim) post-RoPE keys of every position.
            mask: (rows, T) bool, True where a row may attend.
            text_rows: indices into the rows of the prompt's text positions (after the visual ones).

        Returns:
            (B, N) float32: per batch row, the mean attention to each visual key column.
        """
        groups = query.shape[1] // keys.shape[1]
        expanded = keys.repeat_interleave(groups, dim=1) if groups > 1 else keys
        scores = torch.matmul(query[:, :, text_rows].float(), expanded.float().transpose(-1, -2)) * scaling
        scores = scores.masked_fill(~mask[text_rows].unsqueeze(0).unsqueeze(0), float("-inf"))
        probabilities = torch.softmax(scores, dim=-1)
        visual = probabilities[..., VISUAL_START:VISUAL_START + num_visual]
        return visual.mean(dim=(1, 2))

    @torch.no_grad()
    def prefill(self, embeddings: torch.Tensor, num_visual: int, reuse: torch.Tensor | None = None,
                cached: PromptKV | None = None, relevance_layer: int | None = None,
                draft: torch.Tensor | None = None) -> PrefillResult:
        """Prefill ``embeddings`` (1, L, hidden), reusing visual K/V at indices ``reuse`` (0..N-1).

        Args:
            embeddings: ``[BOS | visual | prompt]`` input embeddings.
            num_visual: N, the number of visual positions (1..N).
            reuse: visual token indices whose K/V come from ``cached`` (sorted or not); None/empty
                computes everything.
            cached: the previous step's prompt cache (required when ``reuse`` is non-empty). When
                its length equals this sequence's, its buffers are updated in place and
                returned; the caller must drop it if this call raises.
            relevance_layer: layer at which to compute text->vision attention, or None.
            draft: (D,) token ids guessed for the greedy output (see the module docstring); all
                but the last are appended after the prompt (at most ``DECODE_ROOM``), and
                ``decode`` verifies all D. None or empty: a plain prefill.
        """
        device = embeddings.device
        length = embeddings.shape[1]
        draft = (draft.to(device=device, dtype=torch.long).reshape(-1)
                 if draft is not None and draft.numel() > 0 else None)
        if draft is not None and draft.numel() > DECODE_ROOM + 1:
            raise ConfigurationError(f"a draft holds at most {DECODE_ROOM + 1} tokens, got {draft.numel()}")
        appended = 0 if draft is None else draft.numel() - 1
        if length <= VISUAL_START + num_visual:
            raise ConfigurationError("sequence shorter than BOS + visual tokens + prompt")
        reuse_idx = (reuse.to(device=device, dtype=torch.long).unique(sorted=True)
                     if reuse is not None and reuse.numel() > 0 else torch.empty(0, dtype=torch.long, device=device))
        if reuse_idx.numel() > 0:
            if cached is None or cached.num_visual != num_visual or len(cached.keys) != self.num_layers:
                raise ConfigurationError("reuse requested without a compatible visual K/V cache")
            if int(reuse_idx.min()) < 0 or int(reuse_idx.max()) >= num_visual:
                raise ConfigurationError(f"reuse indices must lie in [0, {num_visual})")
        computed_mask = torch.ones(length + appended, dtype=torch.bool, device=device)
        computed_mask[VISUAL_START + reuse_idx] = False
        rows = torch.nonzero(computed_mask).squeeze(1)  # computed prompt positions, then the draft's
        computed = rows[:rows.numel() - appended]
        all_positions = torch.arange(length + appended, device=device)
        mask = all_positions.unsqueeze(0) <= rows.unsqueeze(1)  # (rows, L + D') causal over true positions
        text_rows = torch.nonzero((rows >= VISUAL_START + num_visual) & (rows < length)).squeeze(1)

        hidden = embeddings[:, computed]
        if appended:
            draft_embeddings = self.language_model.get_input_embeddings()(draft[:appended].unsqueeze(0))
            hidden = torch.cat([hidden, draft_embeddings.to(hidden.dtype)], dim=1)
        rotary = self._rotary(hidden, rows)
        kv = self._destination(cached, length, num_visual, reuse_idx, embeddings)
        kv.reserve(length + appended)
        relevance = None
        work = 0
        for index, (layer, projections) in enumerate(zip(self.layers, self.projections.layers)):
            work += hidden.shape[1]
            query, key, value = self._qkv(layer, projections, layer.input_layernorm(hidden), rotary)
            full_key = kv.keys[index][:, :, :length + appended]
            full_value = kv.values[index][:, :, :length + appended]
            full_key.index_copy_(2, rows, key)
            full_value.index_copy_(2, rows, value)
            scaling = layer.self_attn.scaling
            attended = F.scaled_dot_product_attention(
                query, full_key, full_value, attn_mask=mask, scale=scaling,
                enable_gqa=query.shape[1] != full_key.shape[1])
            if relevance_layer is not None and index == relevance_layer:
                relevance = self._relevance(query, full_key, mask, scaling, text_rows, num_visual)[0]
            hidden = self._finish_layer(layer, projections, hidden, attended)
        normed = self.decoder.norm(hidden[:, -(appended + 1):])
        heads = self._head_logits(normed)
        draft_work = appended * self.num_layers
        self.counters.prefill_token_layers += work - draft_work
        self.counters.draft_token_layers += draft_work
        return PrefillResult(heads[0], kv, computed, work - draft_work, relevance, draft,
                             heads[1:] if draft is not None else None, draft_work, normed[0, 0])

    def _destination(self, cached: PromptKV | None, length: int, num_visual: int, reuse_idx: torch.Tensor,
                     embeddings: torch.Tensor) -> PromptKV:
        """K/V storage of this prefill: the cache itself when lengths match, else fresh storage
        holding the reused visual entries (the instruction, hence the prompt length, changed)."""
        if cached is not None and cached.length == length:
            return cached
        attention = self.layers[0].self_attn
        kv_heads = self.config.num_key_value_heads or self.config.num_attention_heads
        shape = (1, kv_heads, length + DECODE_ROOM, attention.head_dim)
        kv = PromptKV([embeddings.new_empty(shape) for _ in self.layers],
                      [embeddings.new_empty(shape) for _ in self.layers], num_visual, length)
        if reuse_idx.numel() > 0:
            positions = VISUAL_START + reuse_idx
            for index in range(self.num_layers):
                kv.keys[index][:, :, positions] = cached.keys[index][:, :, positions].to(kv.keys[index].dtype)
                kv.values[index][:, :, positions] = cached.values[index][:, :, positions].to(kv.values[index].dtype)
        return kv

    @staticmethod
    def _accept_draft(prefill: PrefillResult, steps: int) -> tuple[list[int], list[torch.Tensor], int]:
        """Greedy tokens known after the prefill: the argmax at the prompt's last position, then
        one more per draft token that equals the greedy token before it (the logits at a draft
        position are exact while every draft token before it was right).

        Returns (tokens (1..steps), their logits, accepted draft tokens).
        """
        candidates = prefill.last_logits.unsqueeze(0)
        if prefill.draft_logits is not None:
            candidates = torch.cat([candidates, prefill.draft_logits])
        greedy = torch.argmax(candidates, dim=-1).tolist()  # one device sync for every position
        draft = [] if prefill.draft is None else prefill.draft.tolist()
        accepted = 0
        while accepted < min(len(draft), len(greedy), steps) and draft[accepted] == greedy[accepted]:
            accepted += 1
        known = min(accepted + 1, len(greedy), steps)  # the first mismatch's token comes free
        return greedy[:known], list(candidates[:known]), accepted

    @torch.no_grad()
    def decode(self, prefill: PrefillResult, steps: int) -> DecodeResult:
        """Greedy decoding of ``steps`` tokens after ``prefill`` (argmax over the full vocabulary).

        Tokens the prefill's draft verified (see :meth:`_accept_draft`) are taken as they are;
        the rest are decoded one forward pass each. Decode K/V go into the spare positions after
        the prompt (never part of the cache kept for the next step), so the prompt's K/V are
        neither changed nor copied.
        """
        kv = prefill.prompt_kv
        kv.reserve(kv.length + steps - 1)
        tokens, all_logits, accepted = self._accept_draft(prefill, steps)
        position = kv.length + len(tokens) - 1  # where the last known token goes in
        embed = self.language_model.get_input_embeddings()
        device = prefill.last_logits.device
        work = passes = 0
        while len(tokens) < steps:
            passes += 1
            hidden = embed(torch.tensor([[tokens[-1]]], device=device))
            positions = torch.tensor([position], device=device)
            rotary = self._rotary(hidden, positions)
            for index, (layer, projections) in enumerate(zip(self.layers, self.projections.layers)):
                work += 1
                query, key, value = self._qkv(layer, projections, layer.input_layernorm(hidden), rotary)
                kv.keys[index][:, :, position:position + 1] = key
                kv.values[index][:, :, position:position + 1] = value
                keys = kv.keys[index][:, :, :position + 1]
                values = kv.values[index][:, :, :position + 1]
                attended = F.scaled_dot_product_attention(
                    query, keys, values, scale=layer.self_attn.scaling,
                    enable_gqa=query.shape[1] != keys.shape[1])
                hidden = self._finish_layer(layer, projections, hidden, attended)
            logits = self._head_logits(self.decoder.norm(hidden))[-1]
            tokens.append(int(torch.argmax(logits).item()))
            all_logits.append(logits)
            position += 1
        self.counters.decode_token_layers += work
        return DecodeResult(torch.tensor(tokens, dtype=torch.long), torch.stack(all_logits), work, accepted, passes)
