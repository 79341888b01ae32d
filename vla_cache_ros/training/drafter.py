"""Training the learned drafter of a frozen VLA: ``vla-cache train-drafter``.

What is trained: :class:`vla_cache_ros.cache.drafter.DrafterNet`, which guesses the 7 action
tokens of step t before its prefill (see ``cache/drafter.py``). The VLA never changes.

Data: consecutive frame pairs (t-1, t) of ``sim-collect`` episodes or rosbag2 recordings
(``training/pairs.py``, the loader ``train-cache`` uses). Targets: **self-distillation** -- the
frozen model's own greedy tokens on frame t, as the policy computes them in the cache mode it
will run with (``--mode``, default ``off``: uncached; ``fixed:0.5``: half the visual K/V reused
from frame t-1, whose tokens then differ from the uncached ones at some steps and are what a
speculative draft must match); no labels, so a user's own bags suffice. The frames of each
episode or bag stretch go through one :class:`~vla_cache_ros.policy.CachedVLAPolicy` in order
(reset at every new sequence), so the previous step's inputs (its tokens and last prompt hidden
state) are exactly what that policy would hand the drafter.

Everything the frozen model contributes is computed once per frame, before the first step, and
kept in ``--out/training/features.safetensors`` (pooled visual embeddings, mean prompt
embedding, greedy tokens, last hidden state; a resume reads it back when the run's settings
match), so a training step touches the drafter only: thousands of steps take minutes on a
2-core CPU. Copied alone into a new ``--out``, the file lets another drafter (other inputs,
width, steps) train on the same frames without recomputing them.

Loss: cross-entropy of the drafter's 7 x 256 logits against the target bins (tokens outside the
action bins are ignored). With probability ``--drop-previous`` a pair's previous step is hidden
(no tokens, zero hidden state), so the drafter also learns to draft an episode's first step.
AdamW, linear warm-up over the first 5 % of steps, then cosine decay to zero.

Held-out evaluation on the held-out pairs: token accuracy, **full-draft acceptance** (all 7
drafted tokens equal to the greedy ones), mean accepted leading tokens and the mean decode
passes after the prefill they leave (as ``KVReuseEngine.decode`` counts them), the same for a
first step (no previous step), and -- on the same pairs -- for the fallback draft, the previous
step's tokens.

Resumable (state under ``--out/training``, saved every ``--save-every`` steps and on Ctrl-C /
SIGTERM), seeded (batch order and the hidden previous steps are functions of (seed, step)), a
progress bar, a PNG curve, and the drafter (``drafter.json`` + ``drafter.safetensors``) in
``--out`` (what ``--drafter`` and the node's ``drafter_path`` load).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vla_cache_ros.cache.drafter import (
    DEFAULT_INPUTS,
    NO_PREVIOUS,
    DrafterConfig,
    DrafterNet,
    DraftFeatures,
    pool_visual,
    prompt_features,
    save_drafter,
    tokens_to_bins,
)
from vla_cache_ros.cache.engine import KVReuseEngine
from vla_cache_ros.cache.modes import check_available, parse_mode, runnable_modes
from vla_cache_ros.compute import resolve_dtype, set_cpu_threads
from vla_cache_ros.errors import ConfigurationError, TrainingError, UserFacingError, one_line
from vla_cache_ros.models.norm_stats import ACTION_DIM
from vla_cache_ros.models.vla import OpenVLA, load_vla
from vla_cache_ros.training.curves import plot_drafter_curves
from vla_cache_ros.training.data import batch_rows
from vla_cache_ros.training.loop import resolve_training_device
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
from vla_cache_ros.training.teacher import frame_embeddings

TRAINING_DIR = "training"
FEATURES_FILE = "features.safetensors"
FEATURE_BATCH = 16
"""Frames per vision-tower call while features are computed."""
IDENTITY = ("model", "data", "mode", "steps", "batch_size", "lr", "weight_decay", "drop_previous", "width",
            "pool_grid", "inputs", "seed", "val_fraction", "max_frames", "instruction")
"""Settings that define a run; a resume must keep them."""
FEATURE_IDENTITY = ("model", "data", "mode", "pool_grid", "seed", "val_fraction", "max_frames", "instruction")
"""Settings the stored frozen-model features depend on."""


@dataclass(frozen=True)
class DrafterTrainConfig:
    """Settings of a ``train-drafter`` run (validated on construction).

    Attributes:
        model: the frozen VLA's checkpoint directory.
        data: ``sim-collect`` directories and/or rosbag2 directories (camera + instruction).
        out_dir: where the drafter and ``training/`` go (created, or resumed).
        mode: the cache mode spec the targets are computed in (``off``, ``fixed:0.5``,
            ``vla_cache``; the one the drafter will draft for).
        steps: optimiser steps.
        batch_size: frame pairs per step.
        lr: AdamW peak learning rate; weight_decay: its decoupled weight decay.
        drop_previous: chance that a pair's previous step is hidden (first-step drafts), in [0, 1).
        width, pool_grid, inputs: the drafter's shape (``cache.drafter.DrafterConfig``).
        instruction: the instruction of bags that record none.
        max_frames: read at most this many frames per data directory (None: all).
        val_fraction: share of episodes (bags: of each bag's last frames) held out.
        eval_every, save_every: steps between held-out evaluations / saves.
        seed: seeds the split, the batch order, the hidden previous steps and the initial weights.
        device: where the frozen model computes the features (``auto``: CUDA when present, in
            bfloat16 there; the drafter itself trains on the CPU).
        threads, progress: as ``train-policy``.
    """

    model: Path
    data: tuple[Path, ...]
    out_dir: Path
    mode: str = "off"
    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.01
    drop_previous: float = 0.1
    width: int = 128
    pool_grid: int = 4
    inputs: tuple[str, ...] = DEFAULT_INPUTS
    instruction: str | None = None
    max_frames: int | None = None
    val_fraction: float = 0.1
    eval_every: int = 250
    save_every: int = 250
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.data:
            raise TrainingError("--data names no directory")
        positive = {"--steps": self.steps, "--batch-size": self.batch_size, "--lr": self.lr,
                    "--eval-every": self.eval_every, "--save-every": self.save_every}
        for name, value in positive.items():
            if not (value > 0 and math.isfinite(value)):
                raise TrainingError(f"{name} must be positive, got {value}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise TrainingError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.drop_previous < 1:
            raise TrainingError(f"--drop-previous must be in [0, 1), got {self.drop_previous}")
        if not 0 <= self.val_fraction < 1:
            raise TrainingError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.max_frames is not None and self.max_frames < 2:
            raise TrainingError(f"--max-frames must be >= 2 (a pair), got {self.max_frames}")
        try:
            self.drafter_config(hidden_size=1, token_offset=0)
        except ConfigurationError as error:
            raise TrainingError(str(error)) from None
        try:
            check_available(parse_mode(self.mode).name, runnable_modes())
        except ConfigurationError as error:
            raise TrainingError(f"--mode: {error}") from None

    @property
    def labels(self) -> bool:
        """Recorded actions are never targets: the drafter distils the model (``training.pairs``)."""
        return False

    @property
    def unnorm_key(self) -> str | None:
        """No labels, so no norm-stats key (``training.pairs``)."""
        return None

    def drafter_config(self, hidden_size: int, token_offset: int, num_visual: int = 256,
                       trained_for: dict[str, Any] | None = None) -> DrafterConfig:
        """The drafter's shape for a model of these sizes (errors: ``DrafterConfig``'s)."""
        return DrafterConfig(hidden_size=hidden_size, token_offset=token_offset, num_visual=num_visual,
                             pool_grid=self.pool_grid, width=self.width, inputs=tuple(self.inputs),
                             trained_for=trained_for or {})


# --- what the frozen model says, once per frame ------------------------------------------------
@dataclass
class FrameFeatures:
    """The frozen model's side of every frame of a :class:`~vla_cache_ros.training.pairs.PairSet`
    (row i = frame i), float32 / int64 on the CPU.

    Attributes:
        visual: (M, G*G, hidden) pooled visual embeddings (``cache.drafter.pool_visual``).
        prompt: (M, hidden) mean prompt embedding (``cache.drafter.prompt_features``).
        tokens: (M, 7) greedy action tokens of the uncached model.
        hidden: (M, hidden) final-norm hidden state at the last prompt position.
    """

    visual: torch.Tensor
    prompt: torch.Tensor
    tokens: torch.Tensor
    hidden: torch.Tensor

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """``{prefix + name: tensor}`` for a safetensors file."""
        return {f"{prefix}{name}": value.contiguous() for name, value in asdict(self).items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> "FrameFeatures":
        """Inverse of :meth:`tensors` (KeyError: a tensor is missing)."""
        return cls(*(tensors[f"{prefix}{name}"] for name in cls.__dataclass_fields__))


@torch.no_grad()
def frame_features(model: OpenVLA, engine: KVReuseEngine, pairs: PairSet, pool_grid: int, mode: str = "off",
                   progress: Callable[[int], None] | None = None) -> FrameFeatures:
    """:class:`FrameFeatures` of every frame of ``pairs``.

    The pooled visual and prompt features come from the vision tower and projector in batches of
    :data:`FEATURE_BATCH` frames of one instruction (``training.teacher.frame_embeddings``; they
    do not depend on caching). Tokens and hidden states come from one ``CachedVLAPolicy`` in
    cache mode ``mode`` (a spec, e.g. ``fixed:0.5``) on ``engine``, stepped through the frames
    in order and reset wherever a frame does not continue the one before (a new episode or bag
    stretch). ``progress(frames)`` is called as frames are done.

    Raises:
        CacheModeError: ``mode`` unknown or not runnable without more (``learned``).
    """
    from vla_cache_ros.policy import CachedVLAPolicy

    count = len(pairs.images)
    num_visual = model.num_visual_tokens
    hidden_size = model.llama_config.hidden_size
    visual = torch.zeros(count, pool_grid * pool_grid, hidden_size)
    prompt = torch.zeros(count, hidden_size)
    for instruction in dict.fromkeys(pairs.instructions):
        members = [i for i in range(count) if pairs.instructions[i] == instruction]
        for first in range(0, len(members), FEATURE_BATCH):
            chunk = members[first:first + FEATURE_BATCH]
            embeddings, _ = frame_embeddings(model, [pairs.images[i] for i in chunk], instruction)
            visual[chunk] = pool_visual(embeddings[:, 1:1 + num_visual], pool_grid).float().cpu()
            prompt[chunk] = prompt_features(embeddings[:, 1 + num_visual:]).float().cpu()
    spec = parse_mode(mode)
    any_statistics = min(model.action_statistics.usable)  # un-normalises the unused actions; any will do
    policy = CachedVLAPolicy(model, mode=spec.name, cache_ratio=spec.ratio, unnorm_key=any_statistics, engine=engine)
    tokens = torch.zeros(count, ACTION_DIM, dtype=torch.long)
    hidden = torch.zeros(count, hidden_size)
    continues = {int(current) for previous, current in pairs.pairs if current == previous + 1}
    for row in range(count):
        if row not in continues:
            policy.reset()
        _, stats = policy.step(pairs.images[row], pairs.instructions[row])
        tokens[row] = torch.from_numpy(stats.action_tokens)
        assert policy.last_hidden is not None
        hidden[row] = policy.last_hidden.float().cpu()
        if progress is not None:
            progress(1)
    return FrameFeatures(visual, prompt, tokens, hidden)


def pair_batch(features: FrameFeatures, pairs: np.ndarray, config: DrafterConfig,
               hidden_previous: torch.Tensor | None = None) -> tuple[DraftFeatures, torch.Tensor]:
    """Drafter inputs and target bins of frame pairs.

    Args:
        features: the frames' :class:`FrameFeatures`.
        pairs: (B, 2) rows (previous, current) into ``features``.
        config: the drafter's shape (its ``token_offset`` and ``num_bins``).
        hidden_previous: (B,) bool: pairs whose previous step is hidden (a first step).

    Returns:
        (inputs, (B, 7) int64 target bins, ``NO_PREVIOUS`` where a greedy token is no action token).
    """
    previous_rows = torch.from_numpy(np.asarray(pairs[:, 0], np.int64))
    current_rows = torch.from_numpy(np.asarray(pairs[:, 1], np.int64))
    previous = tokens_to_bins(features.tokens[previous_rows], config.token_offset, config.num_bins)
    hidden = features.hidden[previous_rows].clone()
    if hidden_previous is not None:
        previous[hidden_previous] = NO_PREVIOUS
        hidden[hidden_previous] = 0.0
    inputs = DraftFeatures(features.visual[current_rows], features.prompt[current_rows], previous, hidden)
    return inputs, tokens_to_bins(features.tokens[current_rows], config.token_offset, config.num_bins)


# --- metrics -----------------------------------------------------------------------------------
def accepted_prefix(draft: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) int64: leading positions where the (B, 7) ``draft`` equals ``target`` (the draft
    tokens speculative decoding accepts)."""
    return (draft == target).long().cumprod(dim=1).sum(dim=1)


def decode_passes(accepted: torch.Tensor, draft_length: int = ACTION_DIM) -> torch.Tensor:
    """Sequential decode passes after the prefill for ``accepted`` leading right tokens of a
    ``draft_length``-token draft (0: no draft), as ``KVReuseEngine.decode`` counts them: the
    prefill yields ``min(accepted + 1, draft_length, 7)`` tokens (at least 1), the rest take one
    pass each."""
    known = torch.clamp(torch.clamp(accepted + 1, max=max(draft_length, 1)), max=ACTION_DIM)
    return ACTION_DIM - known


def draft_metrics(draft: torch.Tensor | None, target: torch.Tensor, prefix: str) -> dict[str, float]:
    """``{prefix}full_acceptance`` (share of rows with all 7 tokens right), ``{prefix}accepted``
    (mean accepted leading tokens), ``{prefix}decode_passes`` (mean passes after the prefill) of
    a (B, 7) draft against the (B, 7) greedy tokens; ``draft`` None: no draft (6 passes)."""
    if draft is None:
        accepted = torch.zeros(len(target), dtype=torch.long)
        passes = decode_passes(accepted, 0)
    else:
        accepted = accepted_prefix(draft, target)
        passes = decode_passes(accepted)
    return {f"{prefix}full_acceptance": float((accepted == ACTION_DIM).float().mean()),
            f"{prefix}accepted": float(accepted.float().mean()), f"{prefix}decode_passes": float(passes.float().mean())}


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the target bins that are action tokens (0 when none is)."""
    valid = target != NO_PREVIOUS
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[valid], target[valid])


@torch.no_grad()
def evaluate(net: DrafterNet, features: FrameFeatures, pairs: np.ndarray) -> dict[str, float]:
    """Held-out metrics on ``pairs`` (rows into ``features``): the drafter's ``loss``,
    ``token_accuracy`` and :func:`draft_metrics` with the previous step known (no prefix) and
    hidden (``first_``), and the fallback's, the previous step's tokens (``previous_``)."""
    was_training = net.training
    net.eval()
    config = net.config
    inputs, target = pair_batch(features, pairs, config)
    logits = net(inputs)
    greedy = features.tokens[torch.from_numpy(np.asarray(pairs[:, 1], np.int64))]
    drafted = logits.argmax(dim=-1) + config.token_offset
    first_inputs, _ = pair_batch(features, pairs, config, torch.ones(len(pairs), dtype=torch.bool))
    first = net(first_inputs).argmax(dim=-1) + config.token_offset
    previous = features.tokens[torch.from_numpy(np.asarray(pairs[:, 0], np.int64))]
    net.train(was_training)
    metrics = {"loss": float(_loss(logits, target)), "token_accuracy": float((drafted == greedy).float().mean())}
    metrics.update(draft_metrics(drafted, greedy, ""))
    metrics.update(draft_metrics(first, greedy, "first_"))
    metrics.update(draft_metrics(previous, greedy, "previous_"))
    return metrics


# --- the run -----------------------------------------------------------------------------------
DrafterTrainResult = ModuleTrainResult
"""What a call did (the shared result type)."""


def _load_features(path: Path, settings: dict[str, Any], sizes: tuple[int, int]
                   ) -> tuple[FrameFeatures, FrameFeatures] | None:
    """The stored features when they were computed under the same settings for the same frame
    counts (train, val); else None."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as handle:
            stored = json.loads((handle.metadata() or {}).get("settings", "null"))
        tensors = load_file(str(path))
        loaded = FrameFeatures.from_tensors(tensors, "train."), FrameFeatures.from_tensors(tensors, "val.")
    except (OSError, ValueError, KeyError, SafetensorError):
        return None
    wanted = {key: settings[key] for key in FEATURE_IDENTITY}
    if stored != wanted or (len(loaded[0].tokens), len(loaded[1].tokens)) != sizes:
        return None
    return loaded


def _startable(out_dir: Path) -> bool:
    """Whether a new run may start in ``out_dir``: absent, empty, or holding nothing but stored
    features (a run stopped before its first save, or features copied in to train another
    drafter on the same frames; they are used only if they match, see :func:`_load_features`)."""
    if not out_dir.exists():
        return True
    contents = [path.relative_to(out_dir) for path in out_dir.rglob("*") if path.is_file()]
    return all(path == Path(TRAINING_DIR) / FEATURES_FILE for path in contents)


def _features(model: OpenVLA, config: DrafterTrainConfig, data: PairData, path: Path, settings: dict[str, Any],
              log: Callable[[str], None]) -> tuple[FrameFeatures, FrameFeatures]:
    """The frozen model's features of the training and held-out frames: read back from ``path``
    when stored for these settings, else computed (with a progress bar) and stored."""
    from vla_cache_ros.models.checkpoint import write_safetensors

    sizes = (len(data.train.images), len(data.val.images))
    stored = _load_features(path, settings, sizes)
    if stored is not None:
        log(f"frozen-model features of {sum(sizes)} frames read from {path}")
        return stored
    engine = KVReuseEngine(model.language_model, prepack=False)
    bar = tqdm(total=sum(sizes), desc="features (frozen model)", unit="frame", disable=not config.progress,
               dynamic_ncols=True)
    try:
        computed = tuple(frame_features(model, engine, pairs, config.pool_grid, config.mode, bar.update)
                         for pairs in (data.train, data.val))
    finally:
        bar.close()
    train, val = computed
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "vla_cache_ros.drafter_features/1",
                "settings": json.dumps({key: settings[key] for key in FEATURE_IDENTITY})}
    write_safetensors({**train.tensors("train."), **val.tensors("val.")}, path, metadata)
    return train, val


def learning_rate(config: DrafterTrainConfig, step: int) -> float:
    """Step ``step``'s (0-based) learning rate: linear warm-up over the first 5 % of the steps,
    times a cosine decay from ``lr`` to 0 over the run."""
    warmup = max(1, config.steps // 20)
    return config.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / config.steps))


def train_drafter(config: DrafterTrainConfig, until_step: int | None = None,
                  log: Callable[[str], None] = print) -> DrafterTrainResult:
    """Train (or resume) the drafter ``config`` describes; see the module docstring.

    Raises:
        TrainingError: unusable data or settings, a model that does not load, an ``out_dir``
            holding another run.
        KeyboardInterrupt: after saving the last finished step.
    """
    device = resolve_training_device(config.device)
    set_cpu_threads(config.threads)
    try:
        model = load_vla(config.model, device=device,
                         dtype=resolve_dtype("bfloat16" if device.type == "cuda" else "float32"))
    except UserFacingError as error:
        raise TrainingError(f"--model {config.model}: {error}") from None
    settings = identity_settings(config, IDENTITY)
    out_dir = Path(config.out_dir)
    state_dir = out_dir / TRAINING_DIR / "state"
    saved = load_state(state_dir) if state_exists(state_dir) else None
    if saved is not None:
        differing = [k for k in IDENTITY if saved.settings.get(k) != settings[k]]
        if differing:
            details = ", ".join(f"{k}: {saved.settings.get(k)!r} there, {settings[k]!r} now" for k in differing)
            raise TrainingError(f"{out_dir} holds a drafter-training run with other settings ({details}); resume "
                                "with the same settings or choose another --out")
    elif not _startable(out_dir):
        raise TrainingError(f"--out {out_dir} exists and holds no train-drafter run; choose a new directory")
    data = load_pairs(config, model)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        train_features, val_features = _features(model, config, data, out_dir / TRAINING_DIR / FEATURES_FILE,
                                                  settings, log)
    except UserFacingError as error:  # e.g. an instruction too long for the model
        raise TrainingError(f"--data: {one_line(error)}") from None
    trained_for = {"model": str(config.model), "data": [str(d) for d in config.data], "mode": config.mode,
                   "steps": config.steps}
    torch.manual_seed(config.seed)
    net = DrafterNet(config.drafter_config(model.llama_config.hidden_size, model.action_tokenizer.first_action_token,
                                           model.num_visual_tokens, trained_for))
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    names = {id(p): n for n, p in net.named_parameters()}
    history: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "sessions": []}
    step = 0
    if saved is not None:
        net.load_state_dict(saved.model)
        load_optimizer_state(optimizer, saved.optimizer)
        restore_rng(saved.rng, torch.device("cpu"))
        history, step = saved.history, saved.step
        log(f"resuming {out_dir} at step {step}/{config.steps}")
    start = step
    stop_at = min(config.steps, until_step) if until_step is not None else config.steps
    began = time.monotonic()
    session = {"start_step": start, "end_step": start, "wall_s": 0.0, "threads": torch.get_num_threads()}
    history["sessions"].append(session)

    def checkpoint() -> None:
        session.update(end_step=step, wall_s=round(time.monotonic() - began, 1))
        save_state(state_dir, TrainingState(step=step, settings=settings, history=history,
                                            model={k: v.detach().clone() for k, v in net.state_dict().items()},
                                            optimizer=optimizer_state_by_name(optimizer, names),
                                            rng=rng_states(torch.device("cpu"))))
        save_drafter(out_dir, net)
        plot_drafter_curves(history, out_dir / TRAINING_DIR / "drafter_curves.png",
                            f"drafter for {Path(config.model).name}, step {step}/{config.steps}")
        summary = {"settings": settings, "step": step, "complete": step >= config.steps, "sources": data.sources,
                   "train_pairs": len(data.train), "val_pairs": len(data.val),
                   "last_val": history["val"][-1] if history["val"] else None}
        (out_dir / TRAINING_DIR / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")

    if saved is None:
        with fresh_start(out_dir, state_dir, keep=(Path(TRAINING_DIR) / FEATURES_FILE,)):  # resumable after it
            checkpoint()
    bar = tqdm(total=config.steps, initial=step, desc="train-drafter", unit="step", disable=not config.progress,
               dynamic_ncols=True)
    net.train()
    try:
        while step < stop_at:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step)
            rows = batch_rows(step, config.batch_size, len(data.train), config.seed)
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
            hidden_previous = torch.rand(len(rows), generator=generator) < config.drop_previous
            inputs, target = pair_batch(train_features, data.train.pairs[rows], net.config, hidden_previous)
            logits = net(inputs)
            loss = _loss(logits, target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            valid = target != NO_PREVIOUS
            accuracy = float((logits.argmax(-1) == target)[valid].float().mean()) if bool(valid.any()) else 0.0
            record = {"step": step, "loss": float(loss.detach()), "token_accuracy": accuracy}
            if not math.isfinite(record["loss"]):
                raise TrainingError(f"the loss became non-finite at step {step}; lower --lr")
            history["train"].append(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{accuracy:.3f}")
            done = step >= stop_at
            if len(data.val) and (step % config.eval_every == 0 or done):
                metrics = evaluate(net, val_features, data.val.pairs)
                history["val"].append({"step": step, **metrics})
                bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
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
    log(f"{'finished' if step >= config.steps else 'stopped'} at step {step}/{config.steps}; drafter in {out_dir}")
    warning = fallback_warning(history["val"][-1] if history["val"] else None)
    if warning:
        log(warning)
    return DrafterTrainResult(out_dir, step, config.steps, start, history)


def fallback_warning(metrics: dict[str, float] | None) -> str | None:
    """A warning when the held-out ``metrics`` (of :func:`evaluate`) say the drafter needs more
    decode passes than its fallback, the previous step's tokens (then speculative decoding is
    faster without it: ``--drafter none``); None otherwise or without metrics."""
    if not metrics or metrics["decode_passes"] <= metrics["previous_decode_passes"]:
        return None
    return (f"warning: on the held-out pairs this drafter needs {metrics['decode_passes']:.2f} decode passes a "
            f"step, the previous step's tokens {metrics['previous_decode_passes']:.2f} (full drafts "
            f"{100 * metrics['full_acceptance']:.1f} % vs {100 * metrics['previous_full_acceptance']:.1f} %): "
            "speculative decoding is faster without it (--drafter none / drafter_path unset); more steps or "
            "data may help")


__all__ = ["DrafterTrainConfig", "DrafterTrainResult", "FrameFeatures", "accepted_prefix", "decode_passes",
           "draft_metrics", "evaluate", "fallback_warning", "frame_features", "pair_batch", "train_drafter"]
