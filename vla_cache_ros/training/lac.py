"""Training the learned cache (LAC) of a frozen VLA: ``vla-cache train-cache``.

What is trained: :class:`vla_cache_ros.cache.learned.CacheSelectorNet` (Cached Token Selector +
Cache Ratio Predictor). The VLA never changes. Data are consecutive frame pairs (t-1, t) of
``sim-collect`` episodes or of rosbag2 recordings (``training/pairs.py``): the cache of step t
comes from frame t-1's computation, here a full one (the selector's reference frame is then
frame t-1 itself).

Two stages, after the paper (arXiv 2602.00686); what it leaves open is chosen here and listed in
docs/learned_cache.md:

- **Stage I** (``--stage1-steps``): the selector's scores (sigmoid of its token logits) regress
  the frozen model's text->vision attention on frame t (MSE): the attention probabilities of
  the prompt's text rows to the visual keys at one decoder layer (``--attention-layer``, default
  the middle one, as VLA-Cache reads layer 15 of OpenVLA's 32), averaged over heads and rows and
  divided by the frame's largest value, so the most attended token's target is 1.
- **Stage II** (``--steps``): task loss + ``λ·L_ratio`` with ``L_ratio = -Σ_j p̃_j r_j`` (the
  predictor's probabilities times the candidate ratios: a reward for caching more; no target
  ratio). Task loss ``distill`` (default): KL(uncached || cached) over the full vocabulary at the
  7 action positions, teacher-forced with the uncached model's own greedy tokens -- no labels,
  so a user's own bags suffice; ``labels``: cross-entropy against the recorded expert actions'
  tokens (``sim-collect`` data only).

The relaxation (Stage II):

- **Ratio**: Gumbel-softmax with straight-through (:func:`gumbel_ratio`): the forward uses the
  one-hot argmax of ``(logits + Gumbel noise) / τ``, the backward the softmax; the ratio is the
  one-hot (soft in the backward) times the candidate ratios.
- **Token mask** (:func:`relaxed_reuse`): the hard forward reuses exactly the ``k = round(N·r)``
  lowest-scoring tokens (as inference does); the backward is that of
  ``sigmoid((t - z_i) / T)`` with ``z`` the token logits and ``t`` the threshold between the
  k-th and (k+1)-th lowest logit, interpolated linearly in the continuous ``k = N·r``. **The
  threshold is not detached**: it is the only path by which the task loss reaches the ratio
  (``∂t/∂k`` is the gap between neighbouring sorted logits, ``∂k/∂r = N``); it also passes
  gradient to the sorted logits themselves.
- **Inside the decoder**: ``cache.relaxed.mixed_prefill`` mixes fresh and cached K/V of every
  visual token at every layer by ``keep = 1 - reuse``; with the hard forward its output equals
  the inference engine's on the same reuse set (tested), while gradients reach both modules.

Resumable (state under ``--out/training``, saved every ``--save-every`` steps and on Ctrl-C /
SIGTERM), seeded (batch order and Gumbel noise are functions of (seed, step)), a progress bar,
PNG curves (task loss, mean predicted ratio, agreement with uncached), and the cache policy
itself (``cache_policy.json`` + ``cache_policy.safetensors``) in ``--out``.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vla_cache_ros.cache.engine import KVReuseEngine
from vla_cache_ros.cache.learned import (
    DEFAULT_RATIOS,
    CachePolicyConfig,
    CacheSelectorNet,
    save_cache_policy,
    selector_input,
)
from vla_cache_ros.cache.relaxed import mixed_prefill, visual_kv
from vla_cache_ros.cache.selectors import target_count
from vla_cache_ros.compute import set_cpu_threads
from vla_cache_ros.errors import ConfigurationError, TrainingError, UserFacingError
from vla_cache_ros.models.vla import OpenVLA, load_vla
from vla_cache_ros.training.curves import plot_cache_curves
from vla_cache_ros.training.data import batch_rows, evenly_spaced
from vla_cache_ros.training.loop import flush_denormals, resolve_training_device
from vla_cache_ros.training.pairs import PairData, PairSet, load_pairs
from vla_cache_ros.training.state import (
    ModuleTrainResult,
    TrainingState,
    fresh_start,
    identity_settings,
    load_optimizer_state,
    load_state,
    optimizer_state_by_name,
    restore_rng,
    rng_states,
    save_state,
    state_exists,
)
from vla_cache_ros.training.teacher import frame_embeddings, greedy_tokens

TASK_LOSSES = ("distill", "labels")
TRAINING_DIR = "training"
IDENTITY = ("model", "data", "stage1_steps", "steps", "batch_size", "lr", "ratio_weight", "task_loss",
            "gumbel_temperature", "mask_temperature", "motion", "ratios", "width", "attention_layer", "seed",
            "val_fraction", "max_frames", "instruction", "unnorm_key")
"""Settings that define a run; a resume must keep them."""


@dataclass(frozen=True)
class CacheTrainConfig:
    """Settings of a ``train-cache`` run (validated on construction).

    Attributes:
        model: the frozen VLA's checkpoint directory.
        data: ``sim-collect`` directories and/or rosbag2 directories (camera + instruction).
        out_dir: where the cache policy and ``training/`` go (created, or resumed).
        stage1_steps, steps: optimiser steps of Stage I and of Stage II.
        batch_size: frame pairs per step.
        lr: AdamW learning rate (constant after 5 % warm-up).
        ratio_weight: λ of ``L_ratio``.
        task_loss: ``distill`` or ``labels`` (see the module docstring).
        gumbel_temperature: τ of the ratio's Gumbel-softmax.
        mask_temperature: T of the token mask's sigmoid, in token-logit units.
        motion, ratios, width, recovery_probability: the cache policy's shape
            (``cache.learned.CachePolicyConfig``); recovery applies at inference only.
        attention_layer: decoder layer of Stage I's attention target (None: the middle one).
        instruction: the instruction of bags that record none.
        unnorm_key: the norm-stats key of ``labels`` targets (None: the model's only one).
        max_frames: read at most this many frames per data directory (None: all).
        val_fraction: share of episodes (bags: of each bag's last frames) held out.
        eval_every, save_every: steps between held-out evaluations / saves.
        val_pairs: held-out pairs evaluated each time.
        seed, device, threads, progress: as ``train-policy``.
    """

    model: Path
    data: tuple[Path, ...]
    out_dir: Path
    stage1_steps: int = 200
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    ratio_weight: float = 0.5
    task_loss: str = "distill"
    gumbel_temperature: float = 1.0
    mask_temperature: float = 0.5
    motion: str = "frame_difference"
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    width: int = 24
    recovery_probability: float = 0.05
    attention_layer: int | None = None
    instruction: str | None = None
    unnorm_key: str | None = None
    max_frames: int | None = None
    val_fraction: float = 0.1
    eval_every: int = 100
    save_every: int = 100
    val_pairs: int = 64
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.data:
            raise TrainingError("--data names no directory")
        if self.task_loss not in TASK_LOSSES:
            raise TrainingError(f"--task-loss must be one of {', '.join(TASK_LOSSES)}, got {self.task_loss!r}")
        positive = {"--batch-size": self.batch_size, "--lr": self.lr, "--eval-every": self.eval_every,
                    "--save-every": self.save_every, "--gumbel-temperature": self.gumbel_temperature,
                    "--mask-temperature": self.mask_temperature, "--val-pairs": self.val_pairs}
        for name, value in positive.items():
            if not (value > 0 and math.isfinite(value)):
                raise TrainingError(f"{name} must be positive, got {value}")
        for name, value in {"--stage1-steps": self.stage1_steps, "--steps": self.steps,
                            "--ratio-weight": self.ratio_weight}.items():
            if not (value >= 0 and math.isfinite(value)):
                raise TrainingError(f"{name} must be >= 0, got {value}")
        if self.stage1_steps + self.steps == 0:
            raise TrainingError("--stage1-steps and --steps are both 0: nothing to train")
        if not 0 <= self.val_fraction < 1:
            raise TrainingError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.max_frames is not None and self.max_frames < 2:
            raise TrainingError(f"--max-frames must be >= 2 (a pair), got {self.max_frames}")
        try:
            self.policy_config()
        except ConfigurationError as error:
            raise TrainingError(str(error)) from None

    @property
    def labels(self) -> bool:
        """Whether the recorded actions are the targets (``task_loss`` ``labels``; see ``training.pairs``)."""
        return self.task_loss == "labels"

    @property
    def total_steps(self) -> int:
        """Stage I then Stage II steps."""
        return self.stage1_steps + self.steps

    def policy_config(self, trained_for: dict[str, Any] | None = None) -> CachePolicyConfig:
        """The cache policy's shape (errors: ``CachePolicyConfig``'s)."""
        return CachePolicyConfig(ratios=tuple(self.ratios), motion=self.motion, width=self.width,
                                 recovery_probability=self.recovery_probability, trained_for=trained_for or {})


# --- the relaxation --------------------------------------------------------------------------
def gumbel_ratio(ratio_logits: torch.Tensor, ratios: torch.Tensor, temperature: float,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Straight-through Gumbel-softmax choice of one ratio per row.

    Args:
        ratio_logits: (B, K) predictor logits.
        ratios: (K,) candidate ratios.
        temperature: τ > 0.
        generator: draws the Gumbel noise (None: no noise, i.e. the argmax; evaluation).

    Returns:
        (ratio (B,) -- the hard choice forward, the soft mixture backward; soft probabilities
        (B, K) with noise; the plain softmax (B, K) without noise, for ``L_ratio`` and reports).
    """
    noisy = ratio_logits
    if generator is not None:
        uniform = torch.rand(ratio_logits.shape, generator=generator).to(ratio_logits.device)
        noisy = ratio_logits - torch.log(-torch.log(uniform.clamp(1e-9, 1 - 1e-9)))
    soft = torch.softmax(noisy / temperature, dim=-1)
    hard = F.one_hot(soft.argmax(dim=-1), ratio_logits.shape[-1]).to(soft.dtype)
    choice = hard - soft.detach() + soft
    return choice @ ratios.to(soft.dtype), soft, torch.softmax(ratio_logits, dim=-1)


def relaxed_reuse(score_logits: torch.Tensor, ratio: torch.Tensor, temperature: float,
                  straight_through: bool = True) -> torch.Tensor:
    """(B, N) reuse mask: hard forward (the ``round(N·r)`` lowest logits, ties to the lower id, as
    ``LearnedSelector``), the backward of a sigmoid around the interpolated k-th threshold (see
    the module docstring: the threshold is not detached). ``straight_through`` False: the soft
    mask itself, forward and backward (for checks of the relaxation)."""
    batch, count = score_logits.shape
    ordered, order = torch.sort(score_logits, dim=-1, stable=True)
    low, high = ordered[:, :1] - 1.0, ordered[:, -1:] + 1.0
    extended = torch.cat([low, ordered, high], dim=-1)  # extended[j] = j-th lowest for 1 <= j <= N
    middles = (extended[:, :-1] + extended[:, 1:]) / 2  # middles[k]: between the k and k+1 lowest
    position = (ratio * count).clamp(0, count)
    floor = position.detach().floor().clamp(max=count - 1).long()
    fraction = position - floor.to(position.dtype)
    rows = torch.arange(batch, device=score_logits.device)
    threshold = middles[rows, floor] + fraction * (middles[rows, floor + 1] - middles[rows, floor])
    soft = torch.sigmoid((threshold[:, None] - score_logits) / temperature)
    if not straight_through:
        return soft
    hard = torch.zeros_like(score_logits)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(count, device=order.device).expand(batch, -1))
    counts = torch.tensor([target_count(float(r), count) for r in ratio.detach().cpu()], device=ranks.device)
    hard[ranks < counts[:, None]] = 1.0
    return hard - soft.detach() + soft


# --- one batch -------------------------------------------------------------------------------
@dataclass
class _Group:
    """Pairs of one instruction: what the frozen VLA says about them (no gradients)."""

    rows: np.ndarray
    inputs: torch.Tensor  # (B, C, S, S) selector inputs
    current: torch.Tensor  # (B, L, H) embeddings of frame t
    cached: Any  # relaxed.VisualKV of frame t-1
    targets: torch.Tensor  # (B, 7) tokens: the uncached greedy ones (distill) or the labels
    teacher: torch.Tensor | None  # (B, 7, vocab) uncached log-probabilities (distill)
    relevance: torch.Tensor | None  # (B, N) normalised attention target (stage I)


class CacheTrainer:
    """The frozen VLA, its engine and a cache policy network, and the losses that train it."""

    def __init__(self, model: OpenVLA, net: CacheSelectorNet, config: CacheTrainConfig) -> None:
        self.model, self.net, self.config = model, net, config
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.engine = KVReuseEngine(model.language_model, prepack=False)
        self.num_visual = model.num_visual_tokens
        layers = self.engine.num_layers
        self.attention_layer = layers // 2 if config.attention_layer is None else config.attention_layer
        if not 0 <= self.attention_layer < layers:
            raise TrainingError(f"--attention-layer {config.attention_layer} outside the model's 0..{layers - 1}")
        self.ratios = torch.tensor(net.config.ratios, dtype=torch.float32)

    def _embeddings(self, images: list[np.ndarray], instruction: str) -> tuple[torch.Tensor, list[np.ndarray]]:
        return frame_embeddings(self.model, images, instruction)

    def _greedy(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, 7) the uncached model's greedy tokens (``training.teacher.greedy_tokens``)."""
        return greedy_tokens(self.engine, embeddings, self.num_visual)

    @torch.no_grad()
    def prepare(self, pairs: PairSet, rows: np.ndarray, stage: int) -> list[_Group]:
        """The frozen model's side of the batch ``rows`` of ``pairs``, grouped by instruction."""
        groups = []
        for instruction in sorted({pairs.instructions[int(pairs.pairs[r, 1])] for r in rows}):
            chosen = np.array([r for r in rows if pairs.instructions[int(pairs.pairs[r, 1])] == instruction])
            previous, prev_rgb = self._embeddings([pairs.images[i] for i in pairs.pairs[chosen, 0]], instruction)
            current, cur_rgb = self._embeddings([pairs.images[i] for i in pairs.pairs[chosen, 1]], instruction)
            inputs = torch.cat([selector_input(self.net.config, c, p) for c, p in zip(cur_rgb, prev_rgb)])
            cached = visual_kv(self.engine, previous, self.num_visual)
            if pairs.labels is not None:
                targets = torch.from_numpy(pairs.labels[pairs.pairs[chosen, 1]])
            else:
                targets = self._greedy(current)
            full = mixed_prefill(self.engine, current, self.num_visual, torch.ones(len(chosen), self.num_visual),
                                 cached, targets[:, :-1], attention_layer=self.attention_layer if stage == 1 else None)
            teacher = torch.log_softmax(full.logits, dim=-1) if pairs.labels is None else None
            relevance = None
            if full.relevance is not None:
                relevance = full.relevance / full.relevance.amax(dim=1, keepdim=True).clamp(min=1e-12)
            groups.append(_Group(chosen, inputs, current, cached, targets, teacher, relevance))
        return groups

    def losses(self, group: _Group, stage: int, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """Stage I: ``{"loss": attention MSE}``. Stage II: ``{"loss", "task", "ratio_term",
        "ratio" (mean hard ratio), "agreement" (token agreement with the targets)}``; with
        ``generator`` None the choice is the noise-free argmax (evaluation)."""
        score_logits, ratio_logits = self.net(group.inputs)
        if stage == 1:
            assert group.relevance is not None
            return {"loss": F.mse_loss(torch.sigmoid(score_logits), group.relevance)}
        ratio, _, probabilities = gumbel_ratio(ratio_logits, self.ratios, self.config.gumbel_temperature, generator)
        keep = 1.0 - relaxed_reuse(score_logits, ratio, self.config.mask_temperature)
        logits = mixed_prefill(self.engine, group.current, self.num_visual, keep, group.cached,
                               group.targets[:, :-1]).logits
        if group.teacher is not None:
            student = torch.log_softmax(logits, dim=-1)
            task = (group.teacher.exp() * (group.teacher - student)).sum(-1).mean()
        else:
            task = F.cross_entropy(logits.flatten(0, 1), group.targets.flatten())
        ratio_term = -(probabilities @ self.ratios).mean()
        agreement = (logits.argmax(-1) == group.targets).float()
        return {"loss": task + self.config.ratio_weight * ratio_term, "task": task, "ratio_term": ratio_term,
                "ratio": ratio.detach().mean(), "agreement": agreement.mean(),
                "all_agree": agreement.all(dim=1).float().mean()}


def _weighted(parts: list[tuple[int, dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """Size-weighted mean of per-group loss dicts."""
    total = sum(size for size, _ in parts)
    return {key: sum(size * values[key] for size, values in parts) / total for key in parts[0][1]}


@torch.no_grad()
def evaluate(trainer: CacheTrainer, pairs: PairSet, rows: np.ndarray, stage: int) -> dict[str, float]:
    """Held-out metrics of the current modules (noise-free argmax ratio, hard top-k)."""
    was_training = trainer.net.training
    trainer.net.eval()
    parts = []
    for first in range(0, len(rows), trainer.config.batch_size):
        chunk = rows[first:first + trainer.config.batch_size]
        for group in trainer.prepare(pairs, chunk, stage):
            parts.append((len(group.rows), trainer.losses(group, stage, None)))
    trainer.net.train(was_training)
    return {key: float(value) for key, value in _weighted(parts).items()} if parts else {}


CacheTrainResult = ModuleTrainResult
"""What a call did (the shared result type)."""


def train_cache(config: CacheTrainConfig, until_step: int | None = None,
                log: Callable[[str], None] = print) -> CacheTrainResult:
    """Train (or resume) the cache policy ``config`` describes; see the module docstring.

    Raises:
        TrainingError: unusable data or settings, a model that does not load, an ``out_dir``
            holding another run.
        KeyboardInterrupt: after saving the last finished step.
    """
    device = resolve_training_device(config.device)
    if device.type != "cpu":
        log(f"note: train-cache runs on the CPU in this version ({config.device} asked)")
    set_cpu_threads(config.threads)
    flush_denormals()
    try:
        model = load_vla(config.model)
    except UserFacingError as error:
        raise TrainingError(f"--model {config.model}: {error}") from None
    settings = identity_settings(config, IDENTITY)
    data = load_pairs(config, model)
    out_dir = Path(config.out_dir)
    state_dir = out_dir / TRAINING_DIR / "state"
    saved = load_state(state_dir) if state_exists(state_dir) else None
    if saved is not None:
        differing = [k for k in IDENTITY if saved.settings.get(k) != settings[k]]
        if differing:
            details = ", ".join(f"{k}: {saved.settings.get(k)!r} there, {settings[k]!r} now" for k in differing)
            raise TrainingError(f"{out_dir} holds a cache-training run with other settings ({details}); resume with "
                                "the same settings or choose another --out")
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise TrainingError(f"--out {out_dir} exists and holds no train-cache run; choose a new directory")
    trained_for = {"model": str(config.model), "data": [str(d) for d in config.data], "task_loss": config.task_loss,
                   "stage1_steps": config.stage1_steps, "steps": config.steps}
    torch.manual_seed(config.seed)
    net = CacheSelectorNet(config.policy_config(trained_for))
    trainer = CacheTrainer(model, net, config)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=0.01)
    names = {id(p): n for n, p in net.named_parameters()}
    history: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "sessions": []}
    step = 0
    if saved is not None:
        net.load_state_dict(saved.model)
        load_optimizer_state(optimizer, saved.optimizer)
        restore_rng(saved.rng, torch.device("cpu"))
        history, step = saved.history, saved.step
        log(f"resuming {out_dir} at step {step}/{config.total_steps}")
    start = step
    stop_at = min(config.total_steps, until_step) if until_step is not None else config.total_steps
    val_rows = evenly_spaced(len(data.val), config.val_pairs)
    warmup = max(1, config.total_steps // 20)
    began = time.monotonic()
    session = {"start_step": start, "end_step": start, "wall_s": 0.0, "threads": torch.get_num_threads()}
    history["sessions"].append(session)

    def checkpoint() -> None:
        session.update(end_step=step, wall_s=round(time.monotonic() - began, 1))
        save_state(state_dir, TrainingState(step=step, settings=settings, history=history,
                                            model={k: v.detach().clone() for k, v in net.state_dict().items()},
                                            optimizer=optimizer_state_by_name(optimizer, names),
                                            rng=rng_states(torch.device("cpu"))))
        save_cache_policy(out_dir, net)
        plot_cache_curves(history, out_dir / TRAINING_DIR / "cache_curves.png",
                          f"cache policy for {Path(config.model).name}, step {step}/{config.total_steps}")
        summary = {"settings": settings, "step": step, "complete": step >= config.total_steps,
                   "sources": data.sources, "train_pairs": len(data.train), "val_pairs": len(data.val),
                   "last_val": history["val"][-1] if history["val"] else None}
        (out_dir / TRAINING_DIR / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")

    with fresh_start(out_dir, state_dir):  # a start stopped in its first save leaves --out as it was
        out_dir.mkdir(parents=True, exist_ok=True)
        if saved is None:
            checkpoint()
    bar = tqdm(total=config.total_steps, initial=step, desc="train-cache", unit="step",
               disable=not config.progress, dynamic_ncols=True)
    net.train()
    try:
        while step < stop_at:
            stage = 1 if step < config.stage1_steps else 2
            for group in optimizer.param_groups:
                group["lr"] = config.lr * min(1.0, (step + 1) / warmup)
            rows = batch_rows(step, config.batch_size, len(data.train), config.seed)
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
            parts = [(len(group.rows), trainer.losses(group, stage, generator))
                     for group in trainer.prepare(data.train, rows, stage)]
            values = _weighted(parts)
            values["loss"].backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            record = {"step": step, "stage": stage, **{k: float(v.detach()) for k, v in values.items()}}
            if not all(math.isfinite(v) for v in record.values()):
                raise TrainingError(f"a loss became non-finite at step {step}: {record}; lower --lr")
            history["train"].append(record)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k not in ("step", "stage")}, stage=stage)
            done = step >= stop_at
            if len(val_rows) and (step % config.eval_every == 0 or done or step == config.stage1_steps):
                metrics = evaluate(trainer, data.val, val_rows, stage)
                history["val"].append({"step": step, "stage": stage, **metrics})
                bar.write(f"step {step} (stage {stage}): " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            if step % config.save_every == 0 or done:
                checkpoint()
    except KeyboardInterrupt:
        bar.close()
        if step > start:
            checkpoint()
            log(f"interrupted: saved step {step}; run the same command to resume")
        raise
    bar.close()
    if step == start:
        checkpoint()
    log(f"{'finished' if step >= config.total_steps else 'stopped'} at step {step}/{config.total_steps}; "
        f"cache policy in {out_dir}")
    return CacheTrainResult(out_dir, step, config.total_steps, start, history)


__all__ = ["CacheTrainConfig", "CacheTrainer", "PairData", "PairSet", "gumbel_ratio", "load_pairs",
           "relaxed_reuse", "train_cache"]
