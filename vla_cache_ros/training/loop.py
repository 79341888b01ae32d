"""One behaviour-cloning run: settings (``TrainConfig``), the loop (``train``), evaluation, resume.

The output directory is an OpenVLA-format checkpoint from the first save on (``load_vla``
reads it unchanged; its norm_stats are the dataset's, under the dataset's key), plus
``training/``: ``state/`` (model, optimiser, step and RNG in safetensors + JSON; see
:mod:`vla_cache_ros.training.state`), ``learning_curves.png`` and ``summary.json`` (data split,
sizes, settings, wall time per session, last metrics).

Everything random is a function of the seed and the step (initial weights; batch order, see
:func:`vla_cache_ros.training.data.batch_rows`), and the state holds the torch RNG as well, so
the same command with the same ``--out`` resumes and then produces the very losses the
uninterrupted run would have. A resume with other defining settings is refused.

Evaluation on the held-out episodes: teacher-forced loss and action-token accuracy on up to
``val_frames`` frames, and greedy accuracy plus absolute action error (robot units) on
``greedy_frames`` frames through ``OpenVLA.predict_action_tokens`` -- the inference path
itself, so what training reports is what ``load_vla(out).predict_action`` returns.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from vla_cache_ros.compute import resolve_device, set_cpu_threads
from vla_cache_ros.errors import ConfigurationError, TrainingError
from vla_cache_ros.models.vla import OpenVLA
from vla_cache_ros.training.curves import plot_learning_curves
from vla_cache_ros.training.data import (
    LOCATED_POINTS,
    POINTED,
    FrameSet,
    TrainingData,
    action_tokens,
    batch_rows,
    evenly_spaced,
    load_training_data,
    quantize_actions,
    steps_for_epochs,
)
from vla_cache_ros.training.model import (
    ATTENTION_LAYER,
    PRESETS,
    AuxiliaryHeads,
    Batch,
    action_logits,
    action_loss,
    attention_loss,
    build_policy,
    class_weights,
    export_checkpoint,
    forward,
    make_batch,
)
from vla_cache_ros.training.state import (
    TrainingState,
    fresh_start,
    load_optimizer_state,
    load_state,
    optimizer_state_by_name,
    restore_rng,
    rng_states,
    save_state,
    state_exists,
)

TRAINING_DIR = "training"
STATE_DIR = "state"
CURVES_FILE = "learning_curves.png"
SUMMARY_FILE = "summary.json"
DEFAULT_EPOCHS = 5.0
PRECISIONS = ("auto", "float32", "bfloat16")
SAVE_DTYPES = ("float32", "bfloat16", "float16")
NO_DECAY_SUFFIXES = ("embed_tokens.weight", "pos_embed", "cls_token", "reg_token")
DEFAULT_AUX_WEIGHT = 0.5
AUX_PREFIX = "aux_heads."
"""Key prefix of the auxiliary heads in the training state (they are never exported)."""
DEFAULT_LABEL_QUANTUM_M = 0.005
DEFAULT_LABEL_QUANTUM_RAD = 0.05
IDENTITY = ("preset", "total_steps", "batch_size", "lr", "weight_decay", "warmup_steps", "min_lr_ratio",
            "grad_clip", "seed", "val_fraction", "dataset_key", "data_fingerprint", "aux_weight",
            "label_quantum_m", "label_quantum_rad", "init_from", "balance_power", "attention_weight")
"""Settings that define a run's losses; a resume must keep them."""

IDENTITY_BEFORE = {"attention_weight": 0.0}
"""Values of identity settings added later, for runs saved before them (they resume unchanged)."""


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a behaviour-cloning run (validated on construction).

    Attributes:
        data_dir: a ``vla-cache sim-collect`` dataset directory; its statistics normalise actions.
        more_data: further dataset directories whose episodes join it (e.g. DAgger collections
            made by ``sim-collect --policy``, whose failed episodes count too), with other seeds.
        out_dir: the checkpoint directory (created; resumed when it holds this run's state).
        preset: a key of ``training.model.PRESETS``.
        steps: optimiser steps; exclusive with ``epochs`` (neither: ``DEFAULT_EPOCHS``).
        epochs: passes over the training frames, turned into steps.
        batch_size: frames per step.
        lr: peak AdamW learning rate, reached after ``warmup_steps`` linear warm-up steps, then
            cosine decay to ``min_lr_ratio * lr`` at the last step.
        weight_decay: AdamW decoupled weight decay of matrices (not of norms, biases, embeddings).
        warmup_steps: None: 5 % of the steps, at most 500.
        grad_clip: max global gradient norm (0: off).
        seed: seeds weights, the split and the batch order.
        val_fraction: share of each family's episodes held out, in [0, 1).
        val_frames: at most this many held-out frames for the teacher-forced metrics.
        greedy_frames: held-out frames decoded greedily (the inference path) at each evaluation.
        eval_every, save_every: steps between evaluations / saves (and always at the end).
        device: ``auto`` (CUDA when torch sees one, else CPU), ``cpu``, ``cuda``, ``cuda:N``.
        threads: CPU threads for torch (None: torch's default).
        precision: ``auto`` (bfloat16 autocast on CUDA, float32 on CPU, where bf16 trained
            2.4x slower on this project's AVX-512 machine without AMX), ``float32``, ``bfloat16``.
        save_dtype: dtype of the exported checkpoint weights.
        dataset_key: norm_stats key (None: the dataset's only one).
        aux_weight: weight of the training-only auxiliary losses (``model.AuxiliaryHeads``: patch
            cross-entropy + offset smooth-L1) added to the action loss; None: ``DEFAULT_AUX_WEIGHT``
            when the dataset records object positions, else 0. Reported losses stay the action loss.
        label_quantum_m, label_quantum_rad: action labels are rounded to multiples of these
            (translation, rotation; 0: raw labels) before tokenising; see
            ``training.data.quantize_actions`` for why.
        balance_power: weight each action token's cross-entropy by its class frequency (per
            dimension, over the training labels) to the power ``-balance_power`` (0: plain mean,
            OpenVLA's loss); see ``model.class_weights``. Training only; the reported and
            validation losses stay the plain mean.
        attention_weight: weight of the training-only attention supervision
            (``model.attention_loss``: the action position's attention heads of layer
            ``model.ATTENTION_LAYER`` pointed at the task object, the destination and the tcp);
            0: off. Needs object positions in the data, 3 heads and 2 decoder layers.
        init_from: start from the weights of another run's training state (its ``--out``: the
            policy and, where shapes match, the auxiliary heads) instead of a fresh
            initialisation; the optimiser and schedule start anew.
        progress: show a tqdm bar.
    """

    data_dir: Path
    out_dir: Path
    more_data: tuple[Path, ...] = ()
    preset: str = "small"
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    val_fraction: float = 0.1
    val_frames: int = 256
    greedy_frames: int = 16
    eval_every: int = 250
    save_every: int = 250
    device: str = "auto"
    threads: int | None = None
    precision: str = "auto"
    save_dtype: str = "float32"
    dataset_key: str | None = None
    aux_weight: float | None = None
    label_quantum_m: float = DEFAULT_LABEL_QUANTUM_M
    label_quantum_rad: float = DEFAULT_LABEL_QUANTUM_RAD
    init_from: Path | None = None
    balance_power: float = 0.0
    attention_weight: float = 0.0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise TrainingError(f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        if self.steps is not None and self.epochs is not None:
            raise TrainingError("give --steps or --epochs, not both")
        positive = {"--steps": self.steps, "--epochs": self.epochs, "--batch-size": self.batch_size,
                    "--lr": self.lr, "--eval-every": self.eval_every, "--save-every": self.save_every}
        for name, value in positive.items():
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise TrainingError(f"{name} must be positive, got {value}")
        if not 0 <= self.val_fraction < 1:
            raise TrainingError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        non_negative = {"--weight-decay": self.weight_decay, "--grad-clip": self.grad_clip,
                        "--val-frames": self.val_frames, "--greedy-frames": self.greedy_frames,
                        "--warmup-steps": self.warmup_steps, "--aux-weight": self.aux_weight,
                        "--label-quantum-m": self.label_quantum_m, "--label-quantum-rad": self.label_quantum_rad,
                        "--balance-power": self.balance_power, "--attention-weight": self.attention_weight}
        for name, value in non_negative.items():
            if value is not None and not value >= 0:
                raise TrainingError(f"{name} must be >= 0, got {value}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise TrainingError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.precision not in PRECISIONS:
            raise TrainingError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.save_dtype not in SAVE_DTYPES:
            raise TrainingError(f"--save-dtype must be one of {', '.join(SAVE_DTYPES)}, got {self.save_dtype!r}")

    def total_steps(self, train_frames: int) -> int:
        """The run's optimiser steps for ``train_frames`` training frames."""
        if self.steps is not None:
            return int(self.steps)
        return steps_for_epochs(self.epochs if self.epochs is not None else DEFAULT_EPOCHS, train_frames,
                                self.batch_size)

    def warmup(self, total_steps: int) -> int:
        """Warm-up steps (``warmup_steps``, or 5 % of the run capped at 500)."""
        return int(self.warmup_steps) if self.warmup_steps is not None else min(500, total_steps // 20)


def learning_rate(step: int, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    """LR of optimiser step ``step`` (0-based): linear warm-up to ``peak`` over ``warmup`` steps,
    then half-cosine down to ``min_ratio * peak`` at ``total - 1``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, total - 1 - warmup)
    progress = min(1.0, (step - warmup) / span)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW (betas 0.9/0.95, as common for transformers; left for measurement) with weight decay
    on matrices only."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (decay if parameter.dim() >= 2 and not name.endswith(NO_DECAY_SUFFIXES) else no_decay).append(parameter)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))


@dataclass
class Evaluation:
    """Held-out metrics at one step (NaN where nothing was held out).

    Attributes:
        loss: teacher-forced cross-entropy per action token (nats).
        accuracy: teacher-forced action-token accuracy.
        greedy_accuracy: accuracy of the 7 greedy tokens ``predict_action_tokens`` returns.
        greedy_abs_error: (7,) mean |predicted - expert| action per dimension, robot units.
        greedy_tokens: (F, 7) the greedy tokens, for the frames ``greedy_rows`` of the split.
    """

    loss: float
    accuracy: float
    greedy_accuracy: float
    greedy_abs_error: list[float]
    greedy_tokens: np.ndarray = field(repr=False)


def frames_batch(model: OpenVLA, frames: FrameSet, rows: np.ndarray, targets: np.ndarray) -> Batch:
    """The teacher-forced batch of frame ``rows`` (``targets``: (N, 7) token ids of every frame),
    with the frames' auxiliary targets when they have them."""
    def pick(array: np.ndarray | None) -> torch.Tensor | None:
        return None if array is None else torch.from_numpy(array[rows])

    return make_batch(model, [frames.images[r] for r in rows], [frames.instruction(r) for r in rows],
                      torch.from_numpy(targets[rows]), pick(frames.patch_targets), pick(frames.offsets),
                      pick(frames.pointer_targets))


def _check_label_quanta(config: TrainConfig, data: TrainingData, log: Callable[[str], None]) -> None:
    """Refuse label rounding that is not finite; warn when it rounds every label of a group to 0."""
    groups = (("--label-quantum-m", config.label_quantum_m, slice(0, 3)),
              ("--label-quantum-rad", config.label_quantum_rad, slice(3, 6)))
    for name, quantum, columns in groups:
        if not math.isfinite(quantum):
            raise TrainingError(f"{name} must be finite, got {quantum}")
        largest = float(np.abs(data.train.actions[:, columns]).max()) if len(data.train) else 0.0
        if quantum > 0 and largest > 0 and quantum > 2 * largest:
            log(f"warning: {name} {quantum:g} rounds every label of its group to 0 (the largest is "
                f"{largest:.4g}); choose a smaller step, or 0 for raw labels")


def _initial_weights(init_from: Path | None) -> dict[str, torch.Tensor] | None:
    """The model tensors to start from (None: from scratch): another run's training state (policy
    and auxiliary heads) when ``init_from`` holds one, else the exported OpenVLA-format checkpoint
    there (e.g. the shipped ``sim_policy``; policy only, read with ``load_vla``), as float32.

    Raises:
        TrainingError: ``init_from`` holds neither.
    """
    if init_from is None:
        return None
    state_dir = Path(init_from) / TRAINING_DIR / STATE_DIR
    if state_exists(state_dir):
        return load_state(state_dir).model
    if (Path(init_from) / "model.safetensors").is_file():
        from vla_cache_ros.models.vla import load_vla  # the loader maps checkpoint names back to modules

        return {name: tensor.float() for name, tensor in load_vla(init_from).state_dict().items()}
    raise TrainingError(f"--init-from {init_from} holds no training state ({state_dir}) "
                        "and no exported model.safetensors")


def _state_tensors(model: OpenVLA, heads: AuxiliaryHeads | None) -> dict[str, torch.Tensor]:
    """The policy's state dict plus the auxiliary heads' under ``AUX_PREFIX``."""
    tensors = dict(model.state_dict())
    if heads is not None:
        tensors.update({AUX_PREFIX + k: v for k, v in heads.state_dict().items()})
    return tensors


@torch.no_grad()
def evaluate(model: OpenVLA, frames: FrameSet, targets: np.ndarray, rows: np.ndarray, greedy_rows: np.ndarray,
             batch_size: int, dataset_key: str) -> Evaluation:
    """Held-out metrics of ``model`` on ``frames`` (see :class:`Evaluation`); float32, eval mode."""
    was_training = model.training
    model.eval()
    total, correct, count = 0.0, 0, 0
    for first in range(0, len(rows), batch_size):
        chunk = rows[first:first + batch_size]
        batch = frames_batch(model, frames, chunk, targets).to(model.device)
        logits = action_logits(model, batch)
        total += float(action_loss(logits, batch.targets)) * batch.targets.numel()
        correct += int((logits.argmax(-1) == batch.targets).sum())
        count += batch.targets.numel()
    tokens = np.array([model.predict_action_tokens(frames.images[r], frames.instruction(r)).tokens.numpy()
                       for r in greedy_rows], dtype=np.int64).reshape(-1, 7)
    if len(greedy_rows):
        actions = np.array([model.decode_action(t, dataset_key) for t in tokens])
        error = np.abs(actions - frames.actions[greedy_rows]).mean(0).tolist()
        greedy_accuracy = float((tokens == targets[greedy_rows]).mean())
    else:
        error, greedy_accuracy = [math.nan] * 7, math.nan
    model.train(was_training)
    return Evaluation(total / count if count else math.nan, correct / count if count else math.nan,
                      greedy_accuracy, error, tokens)


@dataclass
class TrainResult:
    """What a call to :func:`train` did.

    Attributes:
        out_dir: the checkpoint directory.
        step: steps done (== total_steps when the run is complete).
        total_steps: the run's length.
        resumed_from: the step this call started at.
        losses: training loss of each step this call ran (nats per action token).
        evaluation: the last held-out evaluation (None if none ran in this call).
        samples_per_s: training throughput of this call (wall clock, evaluations and saves excluded).
    """

    out_dir: Path
    step: int
    total_steps: int
    resumed_from: int
    losses: list[float]
    evaluation: Evaluation | None
    samples_per_s: float

    @property
    def complete(self) -> bool:
        return self.step >= self.total_steps


def _check_out_dir(out_dir: Path) -> None:
    """A fresh run may write into a missing or empty directory only."""
    if out_dir.exists() and not out_dir.is_dir():
        raise TrainingError(f"--out {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise TrainingError(f"--out {out_dir} is not empty and holds no training state to resume; "
                            "choose a new directory")


def _aux_weight(config: TrainConfig, data: TrainingData) -> float:
    """The run's auxiliary-loss weight (see ``TrainConfig.aux_weight``)."""
    recorded = data.train.patch_targets is not None
    if config.aux_weight is None:
        return DEFAULT_AUX_WEIGHT if recorded else 0.0
    if config.aux_weight > 0 and not recorded:
        raise TrainingError(f"--aux-weight {config.aux_weight:g} needs object positions, which {config.data_dir} "
                            "does not record (collect it again with this version of sim-collect, or pass "
                            "--aux-weight 0)")
    return float(config.aux_weight)


def _check_attention(config: TrainConfig, data: TrainingData, model: OpenVLA) -> int | None:
    """The decoder layer whose attention is supervised, or None when ``attention_weight`` is 0
    (its supervised row is recomputed beside the decoder's own attention: ``model.forward``).

    Raises:
        TrainingError: the data records no object positions or the model is too small.
    """
    if config.attention_weight == 0:
        return None
    if data.train.pointer_targets is None:
        raise TrainingError(f"--attention-weight {config.attention_weight:g} needs object positions, which "
                            f"{config.data_dir} does not record (collect it again with this version of sim-collect)")
    text = model.llama_config
    if text.num_hidden_layers <= ATTENTION_LAYER or text.num_attention_heads < len(POINTED):
        raise TrainingError(f"--attention-weight needs at least {ATTENTION_LAYER + 1} decoder layers and "
                            f"{len(POINTED)} attention heads; preset {config.preset!r} has "
                            f"{text.num_hidden_layers} and {text.num_attention_heads}")
    return ATTENTION_LAYER


def _settings(config: TrainConfig, data: TrainingData, total_steps: int) -> dict[str, Any]:
    return {"aux_weight": _aux_weight(config, data), "preset": config.preset, "total_steps": total_steps,
            "batch_size": config.batch_size,
            "lr": config.lr, "weight_decay": config.weight_decay, "warmup_steps": config.warmup(total_steps),
            "min_lr_ratio": config.min_lr_ratio, "grad_clip": config.grad_clip, "seed": config.seed,
            "label_quantum_m": config.label_quantum_m, "label_quantum_rad": config.label_quantum_rad,
            "init_from": str(config.init_from) if config.init_from is not None else None,
            "balance_power": config.balance_power, "attention_weight": config.attention_weight,
            "val_fraction": config.val_fraction, "dataset_key": data.dataset_key,
            "data_fingerprint": data.fingerprint}


def _refuse_changed(saved: dict[str, Any], wanted: dict[str, Any], out_dir: Path) -> None:
    def there(key: str) -> Any:
        return saved.get(key, IDENTITY_BEFORE.get(key))

    differing = [key for key in IDENTITY if there(key) != wanted[key]]
    if differing:
        details = ", ".join(f"{key}: {there(key)!r} there, {wanted[key]!r} now" for key in differing)
        raise TrainingError(f"{out_dir} holds a run with other settings ({details}); resume with the same "
                            "settings and data, or choose another --out")


def _plain(value: Any) -> Any:
    """A config value as JSON can write it: paths as text, tuples as lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def flush_denormals() -> None:
    """Flush subnormal floats to zero on the CPU for the rest of the process.

    Measured: with ``--attention-weight`` the supervised attention grew sharp, and near step 2000
    of a CPU run the backward pass slowed from 0.55 s to ~7 s a step (py-spy: all of it in
    autograd) as the gradients of the near-zero attention probabilities became subnormal, which
    x86 CPUs handle in microcode. Values below ~1e-38 do not matter to training.
    """
    torch.set_flush_denormal(True)


def resolve_training_device(name: str) -> torch.device:
    """``auto`` -> CUDA when torch sees a GPU, else CPU; other names as ``compute.resolve_device``.

    Raises TrainingError for a device this machine lacks.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return resolve_device(name)
    except ConfigurationError as error:
        raise TrainingError(str(error)) from None


def train(config: TrainConfig, until_step: int | None = None, max_minutes: float | None = None,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train (or resume) the run ``config`` describes; see the module docstring.

    Args:
        config: the run's settings.
        until_step: stop (saved, exported) once this many steps are done, to continue later.
        max_minutes: stop (saved, exported) after this much wall time in this call.
        log: receives one line per evaluation and save.

    Raises:
        TrainingError: unusable data, a device this machine lacks, an ``out_dir`` that holds
            something else or a run with other settings.
        KeyboardInterrupt: after saving the state of the last finished step.
    """
    device = resolve_training_device(config.device)
    set_cpu_threads(config.threads)
    flush_denormals()
    data = load_training_data((config.data_dir, *config.more_data), config.val_fraction, config.seed,
                              config.dataset_key)
    if len(data.train) == 0:
        raise TrainingError(f"--data {config.data_dir}: every episode was held out; lower --val-fraction")
    total_steps = config.total_steps(len(data.train))
    settings = _settings(config, data, total_steps)
    out_dir = Path(config.out_dir)
    training_dir = out_dir / TRAINING_DIR
    state_dir = training_dir / STATE_DIR
    saved: TrainingState | None = None
    if state_exists(state_dir):
        saved = load_state(state_dir)
        _refuse_changed(saved.settings, settings, out_dir)
    else:
        _check_out_dir(out_dir)
    _check_label_quanta(config, data, log)
    initial = saved.model if saved is not None else _initial_weights(config.init_from)  # before writing anything
    with fresh_start(out_dir, state_dir):  # a start stopped before its first save leaves --out as it was
        model = build_policy(config.preset, data.norm_stats, out_dir, config.seed)
        attention_layer = _check_attention(config, data, model)
        aux_weight = settings["aux_weight"]
        heads = AuxiliaryHeads.for_policy(model, len(LOCATED_POINTS)) if aux_weight > 0 else None
        trainee = torch.nn.ModuleDict({"policy": model, **({"aux": heads} if heads is not None else {})})
        if initial is not None:
            try:
                model.load_state_dict({k: v for k, v in initial.items() if not k.startswith(AUX_PREFIX)})
                own = {k[len(AUX_PREFIX):]: v for k, v in initial.items() if k.startswith(AUX_PREFIX)}
                if heads is not None and own:
                    heads.load_state_dict(own)
            except RuntimeError as error:  # another preset: missing, unexpected or mis-shaped tensors
                first = str(error).strip().splitlines()
                raise TrainingError(f"--init-from {config.init_from}: its weights do not fit preset {config.preset!r} "
                                    f"({first[1].strip() if len(first) > 1 else first[0]})") from None
        trainee.to(device).train()
        optimizer = make_optimizer(trainee, config.lr, config.weight_decay)
        names = {id(p): n for n, p in model.named_parameters()}
        if heads is not None:
            names.update({id(p): AUX_PREFIX + n for n, p in heads.named_parameters()})
        history: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "sessions": []}
        step = 0
        if saved is not None:
            load_optimizer_state(optimizer, saved.optimizer)
            restore_rng(saved.rng, device)
            history = saved.history
            step = saved.step
            log(f"resuming {out_dir} at step {step}/{total_steps}")
        start_step = step
        stop_at = min(total_steps, until_step) if until_step is not None else total_steps
        tokenizer, stats = model.action_tokenizer, data.action_stats
        quanta = (config.label_quantum_m, config.label_quantum_rad)
        train_targets = action_tokens(tokenizer, stats, quantize_actions(data.train.actions, *quanta))
        val_targets = action_tokens(tokenizer, stats, quantize_actions(data.val.actions, *quanta))
        vocab = model.language_model.get_output_embeddings().weight.shape[0]
        token_weights = (class_weights(torch.from_numpy(train_targets), vocab, config.balance_power).to(device)
                         if config.balance_power > 0 else None)
        val_rows = evenly_spaced(len(data.val), config.val_frames)
        greedy_rows = evenly_spaced(len(data.val), config.greedy_frames)
        warmup = config.warmup(total_steps)
        precision = config.precision if config.precision != "auto" else (
            "bfloat16" if device.type == "cuda" else "float32")
        parameters = sum(p.numel() for p in model.parameters())
        session = {"start_step": start_step, "device": str(device), "threads": torch.get_num_threads(),
                   "precision": precision, "wall_s": 0.0, "train_s": 0.0}
        history["sessions"].append(session)
        losses: list[float] = []
        evaluation: Evaluation | None = None
        began = time.monotonic()
        train_seconds = 0.0

        def checkpoint(final: bool) -> None:
            session.update(end_step=step, wall_s=round(time.monotonic() - began, 1), train_s=round(train_seconds, 1))
            save_state(state_dir, TrainingState(
                step=step, settings=settings, history=history,
                model={k: v.detach().cpu() for k, v in _state_tensors(model, heads).items()},
                optimizer=optimizer_state_by_name(optimizer, names), rng=rng_states(device)))
            export_checkpoint(model, out_dir, getattr(torch, config.save_dtype))
            plot_learning_curves(history, training_dir / CURVES_FILE,
                                 f"{config.preset} on {Path(config.data_dir).name}, step {step}/{total_steps}")
            summary = {"settings": settings, "config": {k: _plain(v) for k, v in asdict(config).items()},
                       "parameters": parameters, "step": step, "complete": step >= total_steps,
                       "data": {"dir": str(config.data_dir), "more": [str(d) for d in config.more_data],
                                "train_frames": len(data.train),
                                "val_frames": len(data.val), "train_seeds": data.train_seeds,
                                "val_seeds": data.val_seeds},
                       "sessions": history["sessions"], "last_val": history["val"][-1] if history["val"] else None}
            temporary = training_dir / f".{SUMMARY_FILE}.tmp"
            temporary.write_text(json.dumps(summary, indent=1) + "\n")
            os.replace(temporary, training_dir / SUMMARY_FILE)
            if not final:
                log(f"saved step {step} to {out_dir}")

        if saved is None:
            checkpoint(final=True)  # resumable (and loadable) from the start
    bar = tqdm(total=total_steps, initial=step, desc="train-policy", unit="step", disable=not config.progress,
               dynamic_ncols=True)
    try:
        while step < stop_at:
            if max_minutes is not None and time.monotonic() - began > 60 * max_minutes:
                log(f"--max-minutes {max_minutes:g} reached at step {step}")
                break
            tick = time.monotonic()
            auxiliary: dict[str, float] = {}
            rows = batch_rows(step, config.batch_size, len(data.train), config.seed)
            batch = frames_batch(model, data.train, rows, train_targets).to(device)
            rate = learning_rate(step, config.lr, warmup, total_steps, config.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = rate
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                logits, features, action_hidden, attention = forward(model, batch, attention_layer)
            loss = action_loss(logits, batch.targets)
            total = loss if token_weights is None else action_loss(logits, batch.targets, token_weights)
            if heads is not None:
                patch_loss, offset_loss = heads.losses(features, action_hidden, batch)
                total = total + aux_weight * (patch_loss + offset_loss)
                auxiliary = {"patch_loss": float(patch_loss.detach()), "offset_loss": float(offset_loss.detach())}
            if attention is not None:
                assert batch.pointer_targets is not None  # _check_attention
                pointing = attention_loss(attention, batch.pointer_targets, model.num_visual_tokens)
                total = total + config.attention_weight * pointing
                auxiliary["attention_loss"] = float(pointing.detach())
            total.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainee.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingError(f"the loss became {value} at step {step}; lower --lr")
            step += 1
            train_seconds += time.monotonic() - tick
            losses.append(value)
            history["train"].append({"step": step, "loss": value, "lr": rate, **auxiliary})
            bar.update(1)
            recent = history["train"][-20:]
            shown = {key: f"{np.mean([entry[key] for entry in recent]):.3f}"
                     for key in ("patch_loss", "offset_loss", "attention_loss") if key in auxiliary}
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", **shown,
                            samples_s=f"{len(losses) * config.batch_size / train_seconds:.1f}")
            done = step >= stop_at
            if len(data.val) and (step % config.eval_every == 0 or done):
                evaluation = evaluate(model, data.val, val_targets, val_rows, greedy_rows, config.batch_size,
                                      data.dataset_key)
                history["val"].append({"step": step, "loss": evaluation.loss, "accuracy": evaluation.accuracy,
                                       "greedy_accuracy": evaluation.greedy_accuracy,
                                       "greedy_abs_error": evaluation.greedy_abs_error})
                bar.write(f"step {step}: val loss {evaluation.loss:.3f}, token accuracy {evaluation.accuracy:.3f}, "
                          f"greedy {evaluation.greedy_accuracy:.3f}")
            if step % config.save_every == 0 and not done:
                checkpoint(final=False)
    except KeyboardInterrupt:
        bar.close()
        if step > start_step:
            checkpoint(final=True)
            log(f"interrupted: saved step {step}; run the same command to resume")
        raise
    bar.close()
    checkpoint(final=True)
    samples_per_s = len(losses) * config.batch_size / train_seconds if train_seconds else math.nan
    if not losses:
        log(f"already complete at step {step}/{total_steps}; checkpoint in {out_dir} re-exported (a longer "
            "run: a new --out with --init-from this one)")
    else:
        log(f"{'finished' if step >= total_steps else 'stopped'} at step {step}/{total_steps}; "
            f"checkpoint in {out_dir} ({samples_per_s:.1f} samples/s)")
    return TrainResult(out_dir, step, total_steps, start_step, losses, evaluation, samples_per_s)
