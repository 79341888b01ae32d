"""PNG learning curves of a training run (matplotlib, Agg backend: no display needed).

Left: training loss per step (faint) and its running mean, validation loss (nats per action
token). Right: validation action-token accuracy (teacher forced) and, where measured, the greedy
(inference-path) token accuracy.
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
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    temporary.replace(path)
    return path
