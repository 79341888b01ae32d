"""PNG learning curves of a training run (matplotlib, Agg backend: no display needed).

``train-policy`` (:func:`plot_learning_curves`): left, training loss per step (faint) and its
running mean, validation loss (nats per action token); right, validation action-token accuracy
(teacher forced) and, where measured, the greedy (inference-path) token accuracy.
``train-cache`` (:func:`plot_cache_curves`): losses, mean predicted cache ratio, agreement with
the targets. ``train-drafter`` (:func:`plot_drafter_curves`): loss, full-draft acceptance and mean
accepted tokens against the previous-step draft.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

SMOOTHING_STEPS = 25
"""Window of the running mean drawn over the per-step training loss."""


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``min(window, i + 1)`` values at each index ``i`` (same length as ``values``)."""
    sums = np.cumsum(np.insert(np.asarray(values, np.float64), 0, 0.0))
    index = np.arange(1, len(values) + 1)
    start = np.maximum(index - window, 0)
    return (sums[index] - sums[start]) / (index - start)


def plot_learning_curves(history: dict[str, list[dict[str, Any]]], path: Path, title: str = "") -> Path:
    """Draw ``history`` (``train``: {step, loss}; ``val``: {step, loss, accuracy[, greedy_accuracy]})
    to ``path`` (PNG, written atomically) and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    train = history.get("train", [])
    if train:
        steps = np.array([r["step"] for r in train])
        losses = np.array([r["loss"] for r in train])
        left.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8)
        left.plot(steps, running_mean(losses, SMOOTHING_STEPS), color="tab:blue", label="train (running mean)")
    val = history.get("val", [])
    if val:
        steps = [r["step"] for r in val]
        left.plot(steps, [r["loss"] for r in val], "o-", color="tab:orange", label="validation")
        right.plot(steps, [r["accuracy"] for r in val], "o-", color="tab:orange", label="teacher-forced")
        greedy = [(r["step"], r["greedy_accuracy"]) for r in val if r.get("greedy_accuracy") is not None]
        if greedy:
            right.plot(*zip(*greedy), "s--", color="tab:green", label="greedy (predict_action)")
    left.set(xlabel="step", ylabel="cross-entropy per action token (nats)", title="loss")
    right.set(xlabel="step", ylabel="action tokens equal to the expert's", title="validation accuracy", ylim=(0, 1))
    for axis in (left, right):
        axis.grid(alpha=0.3)
        if axis.has_data():
            axis.legend()
    return _save(figure, path, title)


def _save(figure: Any, path: Path, title: str) -> Path:
    """Title, lay out and write ``figure`` to ``path`` atomically (PNG); close it."""
    import matplotlib.pyplot as plt

    if title:
        figure.suptitle(title)
    figure.tight_layout()
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    temporary.replace(path)
    return path


def plot_cache_curves(history: dict[str, list[dict[str, Any]]], path: Path, title: str = "") -> Path:
    """Draw a ``train-cache`` run (``train``/``val`` records with step, stage, loss and, in
    Stage II, task, ratio, agreement) to ``path``: the loss and task loss, the mean predicted
    cache ratio, and the action-token agreement with the targets (uncached greedy tokens when
    self-distilling)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = (("loss", "task"), ("ratio",), ("agreement", "all_agree"))
    labels = ("loss (stage I: attention MSE; II: task + λ·L_ratio)", "mean cache ratio", "agreement")
    for axis, keys, label in zip(axes, panels, labels):
        for split, style in (("train", "-"), ("val", "o-")):
            records = history.get(split, [])
            for key in keys:
                points = [(r["step"], r[key]) for r in records if key in r]
                if not points:
                    continue
                steps, values = map(np.asarray, zip(*points))
                if split == "train":
                    values = running_mean(values, SMOOTHING_STEPS)
                axis.plot(steps, values, style, label=f"{split} {key}")
        axis.set(xlabel="step", title=label)
        axis.grid(alpha=0.3)
        if axis.has_data():
            axis.legend()
    return _save(figure, path, title)


def plot_drafter_curves(history: dict[str, list[dict[str, Any]]], path: Path, title: str = "") -> Path:
    """Draw a ``train-drafter`` run (``train``: {step, loss}; ``val``: {step, loss,
    full_acceptance, accepted, previous_full_acceptance, previous_accepted, ...}) to ``path``:
    the cross-entropy, the held-out share of steps whose 7 drafted tokens are all right, and the
    mean accepted leading tokens, each beside the previous-step draft on the same pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (losses, full, accepted) = plt.subplots(1, 3, figsize=(15, 4))
    train = history.get("train", [])
    if train:
        steps = np.array([r["step"] for r in train])
        values = np.array([r["loss"] for r in train])
        losses.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=0.8)
        losses.plot(steps, running_mean(values, SMOOTHING_STEPS), color="tab:blue", label="train (running mean)")
    val = history.get("val", [])
    if val:
        steps = np.array([r["step"] for r in val])
        losses.plot(steps, [r["loss"] for r in val], "o-", color="tab:orange", label="held out")
        for axis, key in ((full, "full_acceptance"), (accepted, "accepted")):
            axis.plot(steps, [r[key] for r in val], "o-", color="tab:orange", label="drafter")
            axis.plot(steps, [r[f"first_{key}"] for r in val], "s:", color="tab:green",
                      label="drafter, first step")
            axis.plot(steps, [r[f"previous_{key}"] for r in val], "--", color="tab:gray", label="previous-step draft")
    losses.set(xlabel="step", ylabel="cross-entropy per action token (nats)", title="loss")
    full.set(xlabel="step", ylabel="share of held-out steps", title="all 7 drafted tokens right", ylim=(0, 1))
    accepted.set(xlabel="step", ylabel="tokens (of 7)", title="mean accepted leading tokens", ylim=(0, 7))
    for axis in (losses, full, accepted):
        axis.grid(alpha=0.3)
        if axis.has_data():
            axis.legend()
    return _save(figure, path, title)
