"""Fixtures for the model-layer tests: miniature checkpoints made once per session, copies to edit.

Session fixtures must not be mutated; a test that edits weights or files loads or copies its own.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from test.models.helpers import read_tensors
from vla_cache_ros.models.tiny import make_tiny_checkpoint
from vla_cache_ros.models.vla import OpenVLA, load_vla

torch.set_num_threads(1)

TINY_SEED = 0
WEIGHT_FILE = "model.safetensors"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fused (DINOv2 + SigLIP) miniature checkpoint, single weight file, fp32."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("models_tiny"), seed=TINY_SEED)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir: Path) -> OpenVLA:
    """``tiny_dir`` loaded once (fp32, CPU). Read-only: do not modify."""
    return load_vla(tiny_dir)


@pytest.fixture(scope="session")
def single_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A single-backbone (DINOv2 only, unfused) miniature checkpoint."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("models_single"), seed=3, single_backbone=True)


@pytest.fixture(scope="session")
def single_model(single_dir: Path) -> OpenVLA:
    """``single_dir`` loaded once. Read-only: do not modify."""
    return load_vla(single_dir)


@pytest.fixture(scope="session")
def frame() -> np.ndarray:
    """A 181x263 RGB test frame with gradients, edges and noise (not square, not 224)."""
    rng = np.random.default_rng(11)
    rows = np.linspace(0.0, 1.0, 181)[:, None, None]
    cols = np.linspace(0.0, 1.0, 263)[None, :, None]
    base = 255.0 * np.concatenate([rows + 0 * cols, cols + 0 * rows, 0.5 * (rows + cols)], axis=2)
    base[40:90, 100:170] = (230, 20, 40)
    noisy = base + rng.normal(0.0, 12.0, base.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


@pytest.fixture
def checkpoint_copy(tiny_dir: Path, tmp_path: Path) -> Callable[..., Path]:
    """Factory: a fresh editable copy of ``tiny_dir``, optionally without its weights.

    ``checkpoint_copy(weights=False)`` copies only the JSON/tokenizer files;
    ``checkpoint_copy(config=fn)`` rewrites config.json with ``fn(dict)``;
    ``checkpoint_copy(tensors=fn)`` rewrites the weights with ``fn(dict of tensors)``.
    """
    counter = iter(range(1000))

    def make(weights: bool = True, config: Callable[[dict[str, Any]], None] | None = None,
             tensors: Callable[[dict[str, torch.Tensor]], None] | None = None) -> Path:
        target = tmp_path / f"checkpoint_{next(counter)}"
        target.mkdir()
        for path in tiny_dir.iterdir():
            if weights or path.suffix != ".safetensors":
                shutil.copy2(path, target / path.name)
        if config is not None:
            data = json.loads((target / "config.json").read_text())
            config(data)
            (target / "config.json").write_text(json.dumps(data))
        if tensors is not None:
            state = read_tensors(target)
            tensors(state)
            save_file(state, str(target / WEIGHT_FILE))
        return target

    return make
