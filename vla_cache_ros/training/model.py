"""The policy being trained: size presets, building it, the action-token loss, exporting it.

The model is this package's ``models.vla.OpenVLA`` (timm ViT at 224 px, patch 14 -> 256 visual
tokens, OpenVLA's projector MLP, a stock ``LlamaForCausalLM``), built from the same
config.json / preprocessor_config.json / tokenizer builders as ``models.tiny`` and written in the
same OpenVLA Hugging Face layout, so ``load_vla`` reads the result unchanged.

Loss (as OpenVLA trains): the sequence is ``[BOS | 256 visual | prompt after BOS | 29871 |
a1..a7]`` with OpenVLA's prompt, teacher forcing, and next-token cross-entropy over the full
vocabulary on the 7 action tokens only (every other label -100; the mean over the 7 B labels).
Only the 7 positions that predict action tokens go through ``lm_head``; the result equals the
full-sequence loss with -100 labels (``test/training/test_model.py`` checks it). OpenVLA also
supervises the ``</s>`` after the actions; inference here never reads it, so it is left out.
Sequences of different prompt lengths are right-padded: with causal attention a padded tail
never reaches the real tokens, so no attention mask is needed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vla_cache_ros.errors import TrainingError
from vla_cache_ros.models.config import parse_config
from vla_cache_ros.models.norm_stats import ACTION_DIM
from vla_cache_ros.models.processor import ImageProcessor, parse_preprocessor_config, prompt_token_ids
from vla_cache_ros.models.tiny import build_tokenizer, preprocessor_config, save_weights, tiny_config
from vla_cache_ros.models.vla import OpenVLA

IGNORE_INDEX = -100
"""Label of positions outside the loss (PyTorch's and OpenVLA's convention)."""

LAYER_SCALE_INIT = 0.1
"""Initial DINOv2 LayerScale factor: CaiT's value for networks of depth <= 18 (Touvron et al.
2021); timm's default 1e-5 would leave a from-scratch miniature's blocks near no-ops."""


@dataclass(frozen=True)
class Preset:
    """Sizes of a trainable miniature.

    Attributes:
        vision: timm ViT overrides (depth, embed_dim, num_heads); features come from block
            ``depth - 2``, so ``depth - 1`` blocks are used.
        text: Llama ``text_config`` overrides (hidden_size, intermediate_size, layers, heads).
        fused: DINOv2 + SigLIP (OpenVLA-7B's layout) instead of DINOv2 only.
    """

    vision: dict[str, int]
    text: dict[str, int]
    fused: bool = False


PRESETS: dict[str, Preset] = {
    # Tests: seconds per run.
    "micro": Preset({"depth": 2, "embed_dim": 24, "num_heads": 2},
                    {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 2}),
    # Default: the first prototype's widths (ViT 96, decoder 128, 4 layers), DINOv2 only
    # (a fused tower doubles the vision cost on the CPU). Left for measurement: see docs/training.md.
    "small": Preset({"depth": 5, "embed_dim": 96, "num_heads": 3},
                    {"hidden_size": 128, "intermediate_size": 344, "num_hidden_layers": 4,
                     "num_attention_heads": 4, "num_key_value_heads": 4}),
    # A wider decoder and fused DINOv2 + SigLIP, for a GPU.
    "base": Preset({"depth": 7, "embed_dim": 192, "num_heads": 3},
                   {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 6,
                    "num_attention_heads": 8, "num_key_value_heads": 8}, fused=True),
}


def policy_config(preset: str, pad_token_id: int, norm_stats: dict[str, Any]) -> dict[str, Any]:
    """config.json contents of a preset, with ``norm_stats`` (the dataset's) inside."""
    spec = PRESETS[preset]
    config = tiny_config("tiny", pad_token_id, norm_stats, single_backbone=not spec.fused)
    config["timm_model_kwargs"] = [dict(spec.vision) for _ in config["timm_model_ids"]]
    config["text_config"].update(spec.text)
    config["llm_backbone_id"] = f"{preset}-bc-llama"
    return config


def build_policy(preset: str, norm_stats: dict[str, Any], directory: Path, seed: int) -> OpenVLA:
    """A freshly initialised trainable policy; writes its tokenizer files to ``directory``.

    Weights: timm's and transformers' own initialisation under ``torch.manual_seed(seed)``, then
    DINOv2 LayerScale factors set to ``LAYER_SCALE_INIT``. Same seed -> identical weights.

    Raises:
        TrainingError: an unknown preset.
    """
    if preset not in PRESETS:
        raise TrainingError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(directory)
    config_dict = policy_config(preset, int(tokenizer.pad_token_id), norm_stats)
    config = parse_config(config_dict)
    processor = ImageProcessor(parse_preprocessor_config(preprocessor_config(config.timm_model_ids),
                                                         config.num_backbones, 224, "training"))
    torch.manual_seed(seed)
    model = OpenVLA(config, tokenizer, processor)
    with torch.no_grad():
        for name, parameter in model.vision.named_parameters():
            if name.endswith((".ls1.gamma", ".ls2.gamma")):
                parameter.fill_(LAYER_SCALE_INIT)
    return model


def export_checkpoint(model: OpenVLA, directory: Path, dtype: torch.dtype = torch.float32) -> None:
    """Write ``model`` as an OpenVLA-format checkpoint (config.json, preprocessor_config.json,
    model.safetensors in ``dtype``); the tokenizer files are already there (``build_policy``)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = dict(model.config.raw)
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (directory / "preprocessor_config.json").write_text(
        json.dumps(preprocessor_config(model.config.timm_model_ids), indent=2) + "\n")
    save_weights({k: v.detach().cpu() for k, v in model.state_dict().items()}, directory, dtype, None)


@dataclass
class Batch:
    """One teacher-forced batch of B frames.

    Attributes:
        pixel_values: (B, 3 * backbones, 224, 224) float32, from the model's own processor.
        input_ids: (B, T) int64: prompt ids (BOS ... 29871) then the first 6 action tokens,
            right-padded with the pad id.
        action_start: (B,) int64 index, in the full sequence (visual tokens included), of the
            position whose output predicts the first action token.
        targets: (B, 7) int64 action-token ids.
        patch_targets: (B, P) int64 patch index of each located point (-100: not visible), or
            None (no auxiliary supervision; see ``training.data.FrameSet``).
        offsets: (B, 6) float32 auxiliary offsets in decimetres, or None.
        pointer_targets: (B, 3) int64 patch index of the task object, the destination and the
            tcp (see ``training.data.POINTED``), or None.
    """

    pixel_values: torch.Tensor
    input_ids: torch.Tensor
    action_start: torch.Tensor
    targets: torch.Tensor
    patch_targets: torch.Tensor | None = None
    offsets: torch.Tensor | None = None
    pointer_targets: torch.Tensor | None = None

    def to(self, device: torch.device) -> "Batch":
        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device)

        return Batch(self.pixel_values.to(device), self.input_ids.to(device), self.action_start.to(device),
                     self.targets.to(device), move(self.patch_targets), move(self.offsets),
                     move(self.pointer_targets))


def make_batch(model: OpenVLA, images: list, instructions: list[str], targets: torch.Tensor,
               patch_targets: torch.Tensor | None = None, offsets: torch.Tensor | None = None,
               pointer_targets: torch.Tensor | None = None) -> Batch:
    """Preprocess frames exactly as inference does (``model.processor``) and lay out the tokens.

    Args:
        model: the policy (its processor, tokenizer and number of visual tokens).
        images: B (H, W, 3) uint8 RGB frames.
        instructions: B instructions.
        targets: (B, 7) int64 action-token ids.
        patch_targets, offsets, pointer_targets: optional auxiliary targets, passed through (see
            :class:`Batch`).
    """
    pixels = torch.cat([model.processor(image).pixel_values for image in images])
    prompts = [prompt_token_ids(model.tokenizer, text) for text in instructions]
    length = max(len(p) for p in prompts) + ACTION_DIM - 1
    pad = int(model.tokenizer.pad_token_id)
    input_ids = torch.full((len(prompts), length), pad, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, :len(prompt)] = torch.tensor(prompt)
        input_ids[row, len(prompt):len(prompt) + ACTION_DIM - 1] = targets[row, :ACTION_DIM - 1]
    # [BOS | N visual | prompt[1:]]: the last prompt token (29871) sits at N + len(prompt) - 1.
    start = torch.tensor([model.num_visual_tokens + len(p) - 1 for p in prompts])
    return Batch(pixels, input_ids, start, targets.long(), patch_targets, offsets, pointer_targets)


def action_logits(model: OpenVLA, batch: Batch) -> torch.Tensor:
    """Teacher-forced logits of the 7 action positions: (B, 7, vocab)."""
    return forward(model, batch)[0]


def forward(model: OpenVLA, batch: Batch, attention_layer: int | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One teacher-forced pass: (action logits (B, 7, vocab), vision features (B, N, D) before the
    projector, decoder hidden states of the 7 action positions (B, 7, hidden), and the attention
    probabilities (B, heads, T) of decoder layer ``attention_layer`` in the row that predicts the
    first action token (:func:`action_row_attention`), or None when not asked for).

    The decoder runs its own attention kernel (SDPA) throughout; the supervised row's
    probabilities are recomputed from that layer's input. Asking the stock layers for their
    probabilities would need eager attention in every layer, which made each training step about
    a quarter slower on the CPU (profiled: its batched products and softmax were 27 % of a step).
    """
    features = model.vision(batch.pixel_values)
    text = model.language_model.get_input_embeddings()(batch.input_ids)
    visual = model.projector(features).to(text.dtype)
    embeddings = torch.cat([text[:, :1], visual, text[:, 1:]], dim=1)
    captured: dict[str, Any] = {}
    hook = None
    if attention_layer is not None:
        attention_module = model.language_model.model.layers[attention_layer].self_attn

        def capture(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            captured["hidden"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            captured["rotary"] = kwargs["position_embeddings"] if "position_embeddings" in kwargs else args[1]

        hook = attention_module.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        outputs = model.language_model.model(inputs_embeds=embeddings, use_cache=False)
    finally:
        if hook is not None:
            hook.remove()
    hidden = outputs.last_hidden_state
    positions = batch.action_start[:, None] + torch.arange(ACTION_DIM, device=hidden.device)
    picked = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
    attention = None
    if attention_layer is not None:
        attention = action_row_attention(attention_module, captured["hidden"], captured["rotary"],
                                         batch.action_start)
    return model.language_model.lm_head(picked), features, picked, attention


def action_row_attention(attention: torch.nn.Module, hidden: torch.Tensor,
                         rotary: tuple[torch.Tensor, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """A Llama attention layer's probabilities in one query row per sequence, as its eager
    attention computes them: ``softmax(q_row k^T * scaling)`` over the causal keys, after rotary
    position embedding (query and keys from the layer's own projections, so gradients reach them).

    Args:
        attention: the layer's ``LlamaAttention`` (q_proj, k_proj, head_dim, scaling).
        hidden: (B, T, D) the layer's input hidden states (after its input norm).
        rotary: (cos, sin), each (B or 1, T, head_dim), the layer's position embeddings.
        rows: (B,) int64 query row per sequence.

    Returns:
        (B, heads, T) float32 probabilities; keys after each row get 0.
    """
    batch, length, _ = hidden.shape
    head_dim = attention.head_dim
    index = torch.arange(batch, device=hidden.device)
    query = attention.q_proj(hidden[index, rows]).view(batch, -1, head_dim)  # (B, H, hd)
    keys = attention.k_proj(hidden).view(batch, length, -1, head_dim)  # (B, T, KV, hd)
    cos, sin = (table.expand(batch, -1, -1) for table in rotary)
    half = head_dim // 2

    def rotate(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        turned = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * c + turned * s

    query = rotate(query, cos[index, rows][:, None], sin[index, rows][:, None])
    keys = rotate(keys, cos[:, :, None], sin[:, :, None])
    groups = query.shape[1] // keys.shape[2]
    keys = keys.repeat_interleave(groups, dim=2) if groups > 1 else keys
    scores = torch.einsum("bhd,bthd->bht", query, keys) * attention.scaling
    future = torch.arange(length, device=hidden.device)[None, :] > rows[:, None]  # (B, T)
    scores = scores.masked_fill(future[:, None], float("-inf"))
    return torch.softmax(scores, dim=-1, dtype=torch.float32)


ATTENTION_LAYER = 1
"""Decoder layer (0-based) whose first heads :func:`attention_loss` supervises: the second, so
that the first can bring the instruction's words into the action position's query."""


def attention_loss(attention: torch.Tensor, pointer_targets: torch.Tensor, num_visual: int) -> torch.Tensor:
    """Where the action position looks: head h of the supervised layer, in the row of the position
    that predicts the first action token, should attend to the visual token of point h
    (``training.data.POINTED``: task object, destination, tcp). Mean of ``-log p`` over the
    visible points, with p the head's attention probability on that token (visual tokens sit at
    sequence positions 1..N, after BOS).

    Why: on held-out first frames the run-6 policy's offset readout often pointed at a distractor
    and its first moves went the wrong way (docs/training.md), although its patch head found every
    object: the decoder had not learnt to pick the instruction's object. Supervising attention
    with privileged object positions is a training-only aid, like the auxiliary heads; the
    shipped model is unchanged in shape and at inference.

    Args:
        attention: (B, H, T) probabilities of one decoder layer in the row of the first
            action-token prediction (:func:`action_row_attention`), H >= P.
        pointer_targets: (B, P) int64 patch index per point, -100 when outside the image.
        num_visual: N.

    Raises:
        TrainingError: fewer heads than points.
    """
    points = pointer_targets.shape[1]
    if attention.shape[1] < points:
        raise TrainingError(f"attention supervision needs {points} heads in decoder layer {ATTENTION_LAYER}, "
                            f"the model has {attention.shape[1]}")
    looked = attention[:, :points, 1:1 + num_visual]  # (B, P, N)
    visible = pointer_targets != IGNORE_INDEX
    picked = looked.gather(2, pointer_targets.clamp(min=0)[..., None])[..., 0].float()
    return -(torch.log(picked.clamp(min=1e-6)) * visible).sum() / visible.sum().clamp(min=1)


class AuxiliaryHeads(torch.nn.Module):
    """Training-only heads fed with privileged simulator state; never exported.

    - ``patch``: a linear score per visual token and located point (the four objects and the
      tcp); softmax over the N tokens, cross-entropy against the patch the point projects into.
      It makes the vision tower find the ~18 px objects, which action labels alone taught too
      slowly (the first prototype's arm made the same move wherever the target lay; issue 12).
    - ``offset``: linear regression, from the decoder state that predicts the first action token,
      of (task object - tcp, destination - tcp) in decimetres: what the expert's actions are a
      function of, read where the action is decoded (the instruction picks the object).

    In the spirit of auxiliary state prediction in imitation learning; weights and the choice of
    targets are this project's, not tuned by ablation.
    """

    def __init__(self, vision_dim: int, hidden_size: int, points: int, offset_dim: int = 6) -> None:
        super().__init__()
        self.patch = torch.nn.Linear(vision_dim, points)
        self.offset = torch.nn.Linear(hidden_size, offset_dim)

    @classmethod
    def for_policy(cls, model: OpenVLA, points: int) -> "AuxiliaryHeads":
        return cls(model.vision.embed_dim, model.llama_config.hidden_size, points)

    def losses(self, features: torch.Tensor, action_hidden: torch.Tensor, batch: Batch
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(patch cross-entropy in nats averaged over visible points, offset smooth-L1 in dm)."""
        if batch.patch_targets is None or batch.offsets is None:
            raise TrainingError("auxiliary heads need a batch with patch_targets and offsets")
        scores = self.patch(features.float()).transpose(1, 2)  # (B, P, N)
        patch_loss = F.cross_entropy(scores.flatten(0, 1), batch.patch_targets.flatten(), ignore_index=IGNORE_INDEX)
        offset_loss = F.smooth_l1_loss(self.offset(action_hidden[:, 0].float()), batch.offsets.float())
        return patch_loss, offset_loss


def action_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) over the B x 7 action tokens, in float32.

    ``weights``: optional (7, vocab) per-dimension class weights; the loss is then the
    weighted mean ``sum(w * ce) / sum(w)`` with ``w = weights[dimension, target]``.
    """
    per_token = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    if weights is None:
        return per_token.mean()
    dims = torch.arange(targets.shape[1], device=targets.device).expand_as(targets)
    w = weights[dims, targets].flatten()
    return (w * per_token).sum() / w.sum()


def class_weights(targets: torch.Tensor, vocab: int, power: float, max_ratio: float = 5.0) -> torch.Tensor:
    """(7, vocab) per-dimension class weights ``frequency ** -power`` from (N, 7) target tokens,
    clipped to ``max_ratio`` times each dimension's smallest weight and scaled so that the mean
    weight over the targets is 1 (0 for tokens never seen; ``power`` 0: all ones).

    Why: after label rounding most frames carry the "stand still" token in x and y (58 % and
    54 % of the shipped dataset's frames), so an unsure policy predicts it and stops for good in
    closed loop; tempered inverse-frequency weights (power 0.5) make the rarer moving tokens
    count more, the usual remedy for class imbalance.
    """
    weights = torch.zeros(targets.shape[1], vocab)
    for dim in range(targets.shape[1]):
        counts = torch.bincount(targets[:, dim], minlength=vocab).double()
        seen = counts > 0
        raw = torch.zeros(vocab, dtype=torch.double)
        raw[seen] = (counts[seen] / counts.sum()) ** -power
        raw[seen] = raw[seen].clamp(max=float(raw[seen].min()) * max_ratio)
        mean = float((raw[targets[:, dim]]).mean())
        weights[dim] = (raw / mean).float()
    return weights


def token_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of action tokens whose teacher-forced argmax (full vocabulary) is the target."""
    return float((logits.argmax(-1) == targets).float().mean())
