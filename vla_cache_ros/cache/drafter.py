"""The learned drafter (issue 14 §1): a small head that guesses all 7 action tokens of a step
at once, before the prefill, for exact speculative decoding.

The engine verifies a draft inside the prefill (``cache/engine.py``), so whatever the drafter
says the output stays the model's own greedy tokens; a better draft only means fewer sequential
decode passes. The draft must exist *before* the prefill, so the drafter reads only what is known
then:

- ``visual``: the current frame's projected visual token embeddings, (1, N, hidden), average-
  pooled to a ``pool_grid`` x ``pool_grid`` grid (4 x 4: 16 tokens; the pooling has no weights,
  so training computes it once per frame) and read by one learned query per action dimension
  (single-head attention over the pooled grid plus a learned position embedding);
- ``previous``: the previous step's 7 tokens as action bins: one embedding per (dimension, bin)
  summed into a context vector, plus a learned per-dimension *copy gain* added to the logit of
  the previous bin (a token that repeats is the commonest case); a missing previous step (the
  first step of an episode) or a token outside the action bins has its own "none" embedding and
  no copy gain;
- ``prompt``: the mean of the instruction's token embeddings (after BOS);
- ``previous_hidden``: the previous step's final-norm hidden state at the last prompt position
  (``PrefillResult.last_hidden``: what the model's first action token was read from; zeros on
  the first step).

Per dimension the summed inputs go through a residual MLP to 256 logits over the action bins
(the last 256 ids of the unpadded vocabulary, :mod:`vla_cache_ros.models.action_tokenizer`); the
draft is the argmax of each. What each input is worth was measured on a trained policy
(docs/benchmarks.md, "Learned drafter"): the previous tokens carry most of it, the frame adds
5-6 points of full-draft acceptance and makes first-step drafts possible; the prompt and the
previous hidden state were within noise there (the hidden state +2 to +3.5 points in an earlier
measurement), 4x4, 2x2 and 1x1 pooled grids measured alike and a difference to the previous
frame added nothing. All four are read by default (the prompt for instructions the scene does
not reveal). Trained on uncached targets it beat the previous-step draft uncached (60.5 vs
51.4 % of held-out steps with all 7 tokens right) but not with visual reuse, where the previous
step's tokens stayed the better draft (also when trained on the cached policy's own tokens).

Files: ``drafter.json`` + ``drafter.safetensors`` (``cache.module_files``); a model directory's
own drafter lives in ``MODEL/drafter/``. Core module: no ROS, nothing pickled.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vla_cache_ros.cache.module_files import (
    ModuleFiles,
    default_directory,
    load_module,
    resolve_directory,
    save_module,
)
from vla_cache_ros.cache.tokens import grid_side
from vla_cache_ros.errors import CheckpointError, ConfigurationError

FILES = ModuleFiles(what="drafter", stem="drafter", format="vla_cache_ros.drafter/1", subdirectory="drafter",
                    hint="train one with `vla-cache train-drafter`")
"""How a drafter is stored (``cache.module_files``)."""

DRAFTER_INPUTS = ("visual", "previous", "prompt", "previous_hidden")
"""What a drafter may read (see the module docstring)."""

DEFAULT_INPUTS = DRAFTER_INPUTS
"""The inputs a new drafter reads by default (chosen by measurement, docs/benchmarks.md)."""

NO_PREVIOUS = -1
"""Bin index of a missing previous token (first step, or a token outside the action bins)."""


@dataclass(frozen=True)
class DrafterConfig:
    """Shape of a drafter (saved as ``drafter.json``).

    Attributes:
        hidden_size: the VLA decoder's hidden size (visual and prompt embeddings are this wide).
        token_offset: token id of action bin 0 (``unpadded vocab - num_bins``).
        num_visual: N visual tokens per frame (a square: 256 = 16 x 16).
        num_bins: action bins (256).
        action_dim: tokens per action (7).
        pool_grid: side of the average-pooled visual grid; divides ``sqrt(num_visual)``.
        width: the drafter's own width.
        inputs: a subset of :data:`DRAFTER_INPUTS`, at least one.
        trained_for: free-form provenance (model path, data, steps).
    """

    hidden_size: int
    token_offset: int
    num_visual: int = 256
    num_bins: int = 256
    action_dim: int = 7
    pool_grid: int = 4
    width: int = 128
    inputs: tuple[str, ...] = DEFAULT_INPUTS
    trained_for: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        inputs = tuple(str(name) for name in self.inputs)
        object.__setattr__(self, "inputs", inputs)
        unknown = [name for name in inputs if name not in DRAFTER_INPUTS]
        if unknown or not inputs or len(set(inputs)) != len(inputs):
            raise ConfigurationError(f"drafter inputs must be distinct names from {', '.join(DRAFTER_INPUTS)}; "
                                     f"got {list(inputs)}")
        for name in ("hidden_size", "num_bins", "action_dim", "pool_grid", "width"):
            if int(getattr(self, name)) < 1:
                raise ConfigurationError(f"drafter {name} must be >= 1, got {getattr(self, name)}")
        if self.token_offset < 0:
            raise ConfigurationError(f"drafter token_offset must be >= 0, got {self.token_offset}")
        if grid_side(self.num_visual) % self.pool_grid:
            raise ConfigurationError(f"a {grid_side(self.num_visual)}x{grid_side(self.num_visual)} token grid does "
                                     f"not pool to {self.pool_grid}x{self.pool_grid}")

    @property
    def pooled_tokens(self) -> int:
        """Visual tokens after pooling (``pool_grid ** 2``)."""
        return self.pool_grid * self.pool_grid


def pool_visual(visual: torch.Tensor, pool_grid: int) -> torch.Tensor:
    """Average-pool projected visual tokens on their square grid.

    Args:
        visual: (B, N, hidden) visual token embeddings, row-major over the frame's patches.
        pool_grid: G, the pooled grid's side; divides ``sqrt(N)``.

    Returns:
        (B, G*G, hidden) float32, row-major.

    Raises:
        ConfigurationError: N is not a square whose side G divides.
    """
    batch, count, hidden = visual.shape
    side = grid_side(count)
    if side % pool_grid:
        raise ConfigurationError(f"a {side}x{side} token grid does not pool to {pool_grid}x{pool_grid}")
    cell = side // pool_grid
    grid = visual.float().reshape(batch, pool_grid, cell, pool_grid, cell, hidden)
    return grid.mean(dim=(2, 4)).reshape(batch, pool_grid * pool_grid, hidden)


def prompt_features(prompt_embeddings: torch.Tensor) -> torch.Tensor:
    """(B, T, hidden) embeddings of the prompt after BOS -> (B, hidden) float32 mean."""
    return prompt_embeddings.float().mean(dim=1)


@dataclass
class DraftFeatures:
    """A batch of drafter inputs (only those in ``DrafterConfig.inputs`` are read).

    Attributes:
        visual: (B, G*G, hidden) :func:`pool_visual` of the current frame.
        prompt: (B, hidden) :func:`prompt_features` of the instruction.
        previous: (B, 7) int64 previous step's action bins, :data:`NO_PREVIOUS` where unknown.
        previous_hidden: (B, hidden) the previous prefill's last hidden state (zeros where none).
    """

    visual: torch.Tensor
    prompt: torch.Tensor
    previous: torch.Tensor
    previous_hidden: torch.Tensor | None = None


class DrafterNet(nn.Module):
    """The drafter's weights: inputs -> (B, 7, num_bins) logits over the action bins (see the
    module docstring for the architecture)."""

    def __init__(self, config: DrafterConfig) -> None:
        super().__init__()
        self.config = config
        width, hidden, dims = config.width, config.hidden_size, config.action_dim
        self.dimension = nn.Parameter(torch.randn(dims, width) * 0.02)
        if "visual" in config.inputs:
            self.visual_in = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, width))
            self.visual_position = nn.Parameter(torch.randn(config.pooled_tokens, width) * 0.02)
            self.queries = nn.Parameter(torch.randn(dims, width) * 0.02)
        if "prompt" in config.inputs:
            self.prompt_in = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, width))
        if "previous" in config.inputs:
            self.previous_embedding = nn.Embedding(dims * (config.num_bins + 1), width)
            nn.init.normal_(self.previous_embedding.weight, std=0.02)
            self.copy_gain = nn.Parameter(torch.zeros(dims))
        if "previous_hidden" in config.inputs:
            self.hidden_in = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, width))
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(),
                                 nn.Linear(2 * width, width))
        self.out_norm = nn.LayerNorm(width)
        self.head_weight = nn.Parameter(torch.randn(dims, width, config.num_bins) / math.sqrt(width))
        self.head_bias = nn.Parameter(torch.zeros(dims, config.num_bins))

    def forward(self, features: DraftFeatures) -> torch.Tensor:
        """Logits (B, 7, num_bins) for the batch ``features``.

        Raises:
            ConfigurationError: ``previous_hidden`` is read but missing.
        """
        config = self.config
        batch = features.previous.shape[0]
        state = self.dimension.expand(batch, -1, -1)
        if "visual" in config.inputs:
            keys = self.visual_in(features.visual.float()) + self.visual_position  # (B, G*G, W)
            weights = torch.softmax(torch.einsum("dw,bgw->bdg", self.queries, keys) / math.sqrt(config.width), -1)
            state = state + torch.einsum("bdg,bgw->bdw", weights, keys)
        if "prompt" in config.inputs:
            state = state + self.prompt_in(features.prompt.float()).unsqueeze(1)
        previous = features.previous.long()
        known = (previous >= 0) & (previous < config.num_bins)
        if "previous" in config.inputs:
            bins = torch.where(known, previous, torch.full_like(previous, config.num_bins))
            rows = bins + torch.arange(config.action_dim, device=bins.device) * (config.num_bins + 1)
            state = state + self.previous_embedding(rows).sum(dim=1, keepdim=True)
        if "previous_hidden" in config.inputs:
            if features.previous_hidden is None:
                raise ConfigurationError("this drafter reads the previous step's hidden state; none was given")
            state = state + self.hidden_in(features.previous_hidden.float()).unsqueeze(1)
        state = state + self.mlp(state)
        logits = torch.einsum("bdw,dwk->bdk", self.out_norm(state), self.head_weight) + self.head_bias
        if "previous" in config.inputs:
            copy = F.one_hot(torch.where(known, previous, 0), config.num_bins).to(logits.dtype)
            logits = logits + copy * (known.unsqueeze(-1) * self.copy_gain.unsqueeze(-1))
        return logits


def save_drafter(directory: str | Path, net: DrafterNet) -> Path:
    """Write ``drafter.json`` and ``drafter.safetensors`` into ``directory`` (created)."""
    return save_module(FILES, directory, net, net.config)


def load_drafter(directory: str | Path) -> DrafterNet:
    """Read a drafter written by :func:`save_drafter` (eval mode, float32, CPU).

    Raises:
        CheckpointError: missing files, a foreign or malformed config, weights that do not fit it.
    """
    return load_module(FILES, directory, DrafterConfig, DrafterNet)


def default_drafter(model_path: str | Path) -> Path | None:
    """``MODEL/drafter`` when it holds a drafter (how a model carries its own), else None."""
    return default_directory(FILES, model_path)


def resolve_drafter(value: str | None, model_path: str | Path | None) -> Path | None:
    """The drafter directory to load for a ``--drafter`` / ``drafter_path`` value: the value
    itself when given (None for ``none``), else the model directory's own
    (:func:`default_drafter`), else None. Loading checks the directory (CheckpointError)."""
    return resolve_directory(FILES, value, model_path)


def tokens_to_bins(tokens: torch.Tensor, token_offset: int, num_bins: int) -> torch.Tensor:
    """Action-token ids -> bin indices (int64, same shape); ids outside the bins -> NO_PREVIOUS."""
    bins = tokens.long() - token_offset
    return torch.where((bins >= 0) & (bins < num_bins), bins, torch.full_like(bins, NO_PREVIOUS))


class Drafter:
    """A loaded drafter as the policy runs it: one draft per step from that step's inputs.

    Args:
        net: the trained weights (see :func:`load_drafter`).
        source: where they came from (a directory, or ``in memory``), for stats and errors.
    """

    def __init__(self, net: DrafterNet, source: str = "in memory") -> None:
        self.net = net.eval()
        self.config = net.config
        self.source = source

    def check_model(self, hidden_size: int, num_visual: int, token_offset: int) -> None:
        """Refuse a model other than the one the drafter was trained for.

        Raises:
            CheckpointError: hidden size, visual token count or action-token ids differ.
        """
        config = self.config
        mine = (config.hidden_size, config.num_visual, config.token_offset)
        if mine != (hidden_size, num_visual, token_offset):
            raise CheckpointError(
                f"the drafter {self.source} was trained for hidden size {mine[0]}, {mine[1]} visual tokens and "
                f"action bins from token {mine[2]}; this model has {hidden_size}, {num_visual} and {token_offset}")

    @property
    def needs_hidden(self) -> bool:
        """Whether it reads the previous prefill's last hidden state."""
        return "previous_hidden" in self.config.inputs

    @torch.no_grad()
    def draft(self, visual: torch.Tensor, prompt_embeddings: torch.Tensor, previous_tokens: torch.Tensor | None,
              previous_hidden: torch.Tensor | None = None) -> torch.Tensor:
        """The drafted action-token ids, (7,) int64 on CPU.

        Args:
            visual: (1, N, hidden) the current frame's projected visual embeddings.
            prompt_embeddings: (1, T, hidden) the prompt's embeddings after BOS.
            previous_tokens: (7,) the previous step's tokens, or None (first step).
            previous_hidden: (hidden,) the previous prefill's last hidden state, or None.
        """
        config = self.config
        device = self.net.head_bias.device
        previous = (torch.full((config.action_dim,), NO_PREVIOUS, dtype=torch.long) if previous_tokens is None
                    else tokens_to_bins(previous_tokens.reshape(-1).cpu(), config.token_offset, config.num_bins))
        hidden = None
        if self.needs_hidden:
            hidden = (torch.zeros(1, config.hidden_size) if previous_hidden is None
                      else previous_hidden.reshape(1, -1).float().cpu())
            hidden = hidden.to(device)
        features = DraftFeatures(pool_visual(visual, config.pool_grid).to(device),
                                 prompt_features(prompt_embeddings).to(device), previous[None].to(device), hidden)
        return self.net(features)[0].argmax(dim=-1).cpu() + config.token_offset


def load_drafter_for(drafter: Any) -> Drafter:
    """A :class:`Drafter` from a directory or an already loaded :class:`DrafterNet` (or a
    :class:`Drafter`, returned as it is).

    Raises:
        CheckpointError: an unreadable directory (see :func:`load_drafter`).
    """
    if isinstance(drafter, Drafter):
        return drafter
    if isinstance(drafter, DrafterNet):
        return Drafter(drafter)
    return Drafter(load_drafter(drafter), str(drafter))
