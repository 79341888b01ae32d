"""The learned cache (LAC): a Cached Token Selector and a Cache Ratio Predictor, their inputs,
their files, and the ``learned`` mode's selector that runs them at inference.

After *Learning to Accelerate Vision-Language-Action Models through Adaptive Visual Token
Caching* (arXiv 2602.00686, 2026; no public code). What the paper fixes and what is this
project's choice (see ../docs/learned_cache.md for the measurements behind the choices):

- **Cached Token Selector** (paper): a small CNN over the current frame stacked with a motion
  signal, one score per visual token in [0, 1], high = recompute; it sees no language.
  Here: the model-input frame (224 px RGB) plus a motion signal between the current frame and
  the *reference frame* -- every token's reference patch (the pixels its cached K/V were
  computed from, ``cache.tokens.TokenStates``) put back in place -- so the signal also carries
  staleness, not only the last frame-to-frame change. Two signals (:data:`MOTION_SIGNALS`): the
  per-pixel absolute difference (``frame_difference``, 1 channel) or OpenCV's DIS dense optical
  flow (``flow``, 2 channels; the paper's RAFT-small weights cannot be downloaded here).
- **Cache Ratio Predictor** (paper): logits over a discrete set of candidate ratios. Here: an
  MLP over the selector trunk's globally pooled features (a shared trunk keeps the added cost to
  one small CNN), over :data:`DEFAULT_RATIOS`.
- **Inference** (paper): argmax ratio, hard top-k, stochastic recovery. Here: the ratio is
  capped by the ``cache_ratio`` parameter (the upper bound in ``learned`` mode);
  ``k = round(N * min(predicted, cap))`` eligible tokens with the lowest scores are reused; each
  of them is recomputed anyway with probability ``recovery_probability`` (a seeded generator);
  the policy's staleness guard (``max_token_age``) decides eligibility before, as for every
  selector.

Core module: no ROS. Weights are safetensors with a JSON config beside them (``cache.module_files``);
nothing is pickled.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vla_cache_ros.cache.module_files import (
    NO_MODULE,
    ModuleFiles,
    default_directory,
    load_module,
    resolve_directory,
    save_module,
)
from vla_cache_ros.cache.selectors import SelectionContext, SelectionReport, target_count
from vla_cache_ros.cache.tokens import grid_side
from vla_cache_ros.errors import CheckpointError, ConfigurationError

FILES = ModuleFiles(what="cache policy", stem="cache_policy", format="vla_cache_ros.learned_cache/1",
                    subdirectory="cache_policy", hint="train one with `vla-cache train-cache`")
"""How a cache policy is stored (``cache.module_files``)."""
CONFIG_FILE = FILES.config_file
DEFAULT_SUBDIRECTORY = FILES.subdirectory
"""A model directory's own cache policy lives here and is found without being named."""
WEIGHTS_FILE = FILES.weights_file
FORMAT = FILES.format

MOTION_SIGNALS: dict[str, int] = {"frame_difference": 1, "flow": 2}
"""Motion signal name -> input channels it adds to the frame's 3."""

DEFAULT_RATIOS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""Candidate cache ratios of the Cache Ratio Predictor (the paper does not disclose its set)."""

CHANNEL_MEAN = np.full((1, 3), 1.0 / (3 * 255.0), np.float32)
"""Weights of the frame difference's channel mean, scaled to [0, 1]."""

FLOW_SCALE_PX = 14.0
"""Optical flow is divided by one patch side (14 px) so that a patch-sized motion reads 1."""


@dataclass(frozen=True)
class CachePolicyConfig:
    """Shape of a learned cache policy (saved as ``cache_policy.json``).

    Attributes:
        ratios: candidate cache ratios, ascending, in [0, 1].
        motion: a key of :data:`MOTION_SIGNALS`.
        width: channels of the selector trunk.
        num_tokens: N visual tokens of the VLA it was trained for (a square: 256 = 16 x 16).
        image_size: side of the model-input frame in pixels (224).
        recovery_probability: chance that a token due for reuse is recomputed anyway, in [0, 1).
        trained_for: free-form provenance (model path, data, stage), shown in errors and stats.
    """

    ratios: tuple[float, ...] = DEFAULT_RATIOS
    motion: str = "frame_difference"
    width: int = 24
    num_tokens: int = 256
    image_size: int = 224
    recovery_probability: float = 0.05
    trained_for: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ratios = tuple(float(r) for r in self.ratios)
        object.__setattr__(self, "ratios", ratios)
        if not ratios or any(not 0.0 <= r <= 1.0 for r in ratios) or list(ratios) != sorted(set(ratios)):
            raise ConfigurationError(f"cache policy ratios must be distinct, ascending, in [0, 1]; got {ratios}")
        if self.motion not in MOTION_SIGNALS:
            raise ConfigurationError(f"unknown motion signal {self.motion!r}; choose from {', '.join(MOTION_SIGNALS)}")
        if self.width < 1:
            raise ConfigurationError(f"cache policy width must be >= 1, got {self.width}")
        grid = grid_side(self.num_tokens)
        if self.image_size % grid:
            raise ConfigurationError(f"a {self.image_size} px frame does not split into a {grid}x{grid} grid")
        if not 0.0 <= self.recovery_probability < 1.0:
            raise ConfigurationError(f"recovery probability must lie in [0, 1), got {self.recovery_probability}")

    @property
    def in_channels(self) -> int:
        """RGB plus the motion signal's channels."""
        return 3 + MOTION_SIGNALS[self.motion]

    @property
    def grid(self) -> int:
        """Side of the token grid (16)."""
        return grid_side(self.num_tokens)


def reference_frame(reference_patches: np.ndarray, image_size: int) -> np.ndarray:
    """Every token's reference patch put back in place: (N, side*side*3) float32 patches as
    ``cache.tokens.extract_patches`` makes them -> (S, S, 3) uint8 frame."""
    grid = grid_side(len(reference_patches))
    side = image_size // grid
    tiles = np.asarray(reference_patches).reshape(grid, grid, side, side, 3).transpose(0, 2, 1, 3, 4)
    return np.clip(np.rint(tiles.reshape(image_size, image_size, 3)), 0, 255).astype(np.uint8)


def motion_signal(kind: str, frame: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The motion input between ``reference`` and ``frame``, both (S, S, 3) uint8 RGB.

    Returns (S, S, C) float32: ``frame_difference``: mean absolute difference over the channels
    / 255 (C = 1); ``flow``: OpenCV DIS dense flow (ultrafast preset) from the reference to the
    current grey image, in patch sides (C = 2).

    Raises:
        ConfigurationError: an unknown ``kind`` or frames of different shapes.
    """
    if frame.shape != reference.shape:
        raise ConfigurationError(f"motion signal: frame {frame.shape} and reference {reference.shape} differ")
    import cv2

    if kind == "frame_difference":  # in OpenCV: 0.05 ms a frame, where numpy took 2.2 ms
        difference = cv2.absdiff(np.ascontiguousarray(frame), np.ascontiguousarray(reference)).astype(np.float32)
        return cv2.transform(difference, CHANNEL_MEAN)[..., None]
    if kind == "flow":
        grey = [cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY) for image in (reference, frame)]
        flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST).calc(grey[0], grey[1], None)
        return (flow / FLOW_SCALE_PX).astype(np.float32)
    raise ConfigurationError(f"unknown motion signal {kind!r}; choose from {', '.join(MOTION_SIGNALS)}")


def selector_input(config: CachePolicyConfig, frame: np.ndarray, reference: np.ndarray) -> torch.Tensor:
    """(1, 3 + C, S, S) float32 network input: RGB / 255 stacked with :func:`motion_signal`."""
    # A copy: a frame may be a read-only view (a decoded message's buffer), which torch warns about.
    rgb = torch.from_numpy(np.array(frame, np.uint8)).permute(2, 0, 1).float().div_(255.0)
    motion = torch.from_numpy(motion_signal(config.motion, frame, reference)).permute(2, 0, 1)
    return torch.cat([rgb, motion]).unsqueeze(0).contiguous()


class CacheSelectorNet(nn.Module):
    """Cached Token Selector and Cache Ratio Predictor on one small convolutional trunk.

    Trunk: a patchifying convolution (kernel = stride = side / 2, 7 px for 224 / 16) to a
    2·grid square, a stride-2 3x3 convolution to the token grid and a 3x3 convolution, GELU
    between. Token head: a 1x1 convolution -> one logit per token (sigmoid: the score in [0, 1],
    high = recompute). Ratio head: mean- and max-pooled trunk features -> MLP -> one logit per
    candidate ratio.
    """

    def __init__(self, config: CachePolicyConfig) -> None:
        super().__init__()
        self.config = config
        patch = config.image_size // config.grid // 2
        if patch < 1 or config.image_size % (2 * config.grid):
            raise ConfigurationError(f"a {config.image_size} px frame does not fit the selector's 2x{config.grid} stem")
        width = config.width
        self.trunk = nn.Sequential(
            nn.Conv2d(config.in_channels, width, kernel_size=patch, stride=patch), nn.GELU(),
            nn.Conv2d(width, 2 * width, kernel_size=3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, kernel_size=3, padding=1), nn.GELU())
        self.token_head = nn.Conv2d(2 * width, 1, kernel_size=1)
        self.ratio_head = nn.Sequential(nn.Linear(4 * width, 2 * width), nn.GELU(),
                                        nn.Linear(2 * width, len(config.ratios)))

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3 + C, S, S) -> (token score logits (B, N), ratio logits (B, len(ratios)))."""
        features = self.trunk(inputs)
        scores = self.token_head(features).flatten(1)
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        return scores, self.ratio_head(pooled)


def save_cache_policy(directory: str | Path, net: CacheSelectorNet) -> Path:
    """Write ``cache_policy.json`` and ``cache_policy.safetensors`` into ``directory`` (created)."""
    return save_module(FILES, directory, net, net.config)


def load_cache_policy(directory: str | Path) -> CacheSelectorNet:
    """Read a cache policy written by :func:`save_cache_policy` (eval mode, float32, CPU).

    Raises:
        CheckpointError: missing files, a foreign or malformed config, weights that do not fit it.
    """
    return load_module(FILES, directory, CachePolicyConfig, CacheSelectorNet)


class LearnedSelector:
    """The ``learned`` mode's selector: runs a :class:`CacheSelectorNet` on each step's frame.

    ``select`` returns the reuse set; ``last_report`` then holds the predicted ratio, the cap and
    the recovered count (the policy copies it into ``StepStats``).

    Args:
        net: the trained modules (see :func:`load_cache_policy`).
        seed: seeds the stochastic recovery (same seed, same inputs -> same reuse sets).
        recovery_probability: overrides the saved one (e.g. 0 for ablations); None keeps it.
        source: where the weights came from (a directory, or ``in memory``), for errors.
    """

    name = "learned"

    def __init__(self, net: CacheSelectorNet, seed: int = 0, recovery_probability: float | None = None,
                 source: str = "in memory") -> None:
        self.net = net.eval()
        self.config = net.config
        self.source = source
        probability = self.config.recovery_probability if recovery_probability is None else recovery_probability
        if not 0.0 <= probability < 1.0:
            raise ConfigurationError(f"recovery probability must lie in [0, 1), got {probability}")
        self.recovery_probability = float(probability)
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self.last_report: SelectionReport | None = None

    def mismatch(self, num_tokens: int, image_size: int) -> str | None:
        """Why a model with ``num_tokens`` visual tokens of an ``image_size`` px frame is not the
        one this policy was trained for, or None when it is."""
        config = self.config
        if (config.num_tokens, config.image_size) == (num_tokens, image_size):
            return None
        return (f"the cache policy {self.source} was trained for {config.num_tokens} tokens of a "
                f"{config.image_size} px frame; this model has {num_tokens} tokens of {image_size} px")

    def check_model(self, num_tokens: int, image_size: int) -> None:
        """Refuse a model other than the one the policy was trained for (as ``select`` would at
        the first step; see ``models.shape.read_model_shape`` for a model not loaded).

        Raises:
            CheckpointError: the visual token count or the frame size differs.
        """
        problem = self.mismatch(num_tokens, image_size)
        if problem is not None:
            raise CheckpointError(problem)

    def reseed(self, seed: int | None = None) -> None:
        """Restart the recovery generator (``seed``: a new one; None: the constructor's)."""
        self.seed = self.seed if seed is None else seed
        self._rng = np.random.default_rng(self.seed)

    def relevance_layer(self, num_layers: int) -> int | None:
        """No decoder attention needed."""
        return None

    @torch.no_grad()
    def scores(self, frame: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, float]:
        """(N,) scores in [0, 1] (high = recompute) and the predicted (uncapped) ratio."""
        token_logits, ratio_logits = self.net(selector_input(self.config, frame, reference))
        predicted = self.config.ratios[int(torch.argmax(ratio_logits[0]))]
        return torch.sigmoid(token_logits[0]).numpy().astype(np.float64), float(predicted)

    def select(self, context: SelectionContext) -> np.ndarray:
        """The ``k`` eligible tokens with the lowest scores minus the recovered ones, sorted.

        Raises:
            ConfigurationError: the frame or token count differs from what the policy was
                trained for.
        """
        problem = self.mismatch(context.num_tokens, context.frame.shape[0])
        if problem is not None:
            raise ConfigurationError(problem)
        if context.reference_patches is None or not context.eligible.any():
            self.last_report = SelectionReport(math.nan, context.target_ratio, 0)
            return np.empty(0, dtype=np.int64)
        reference = reference_frame(context.reference_patches, self.config.image_size)
        scores, predicted = self.scores(context.frame, reference)
        count = target_count(min(predicted, context.target_ratio), context.num_tokens)
        order = np.argsort(scores, kind="stable")  # lowest score first; ties -> lower id
        chosen = order[context.eligible[order]][:count]
        recovered = self._rng.random(chosen.size) < self.recovery_probability
        self.last_report = SelectionReport(predicted, context.target_ratio, int(recovered.sum()))
        return np.sort(chosen[~recovered]).astype(np.int64)


def default_cache_policy(model_path: str | Path) -> Path | None:
    """``MODEL/cache_policy`` when it holds a cache policy (how a shipped model carries its own),
    else None."""
    return default_directory(FILES, model_path)


NO_CACHE_POLICY = NO_MODULE
"""The ``--cache-policy`` / ``cache_policy_path`` value that turns the default lookup off."""


def resolve_cache_policy(value: str | None, model_path: str | Path | None) -> Path | None:
    """The cache policy directory to load for a ``--cache-policy`` / ``cache_policy_path``
    value: the value itself when given (None for ``none``), else the model directory's own
    (:func:`default_cache_policy`), else None. Loading checks the directory (CheckpointError)."""
    return resolve_directory(FILES, value, model_path)


def load_learned_selector(directory: str | Path, seed: int = 0,
                          recovery_probability: float | None = None) -> LearnedSelector:
    """:class:`LearnedSelector` of the cache policy in ``directory`` (errors of
    :func:`load_cache_policy`)."""
    return LearnedSelector(load_cache_policy(directory), seed, recovery_probability, str(directory))
