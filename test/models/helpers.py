"""Helpers shared by the model-layer tests (plain functions; fixtures live in conftest.py)."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import load_file

INSTRUCTION = "Pick up the RED cube"
UNPADDED_VOCAB = 32000  # 32064 - pad_to_multiple_of 64, as in OpenVLA


def read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory (all safetensors files), by checkpoint key."""
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


def expected_normalized(token_ids: list[int]) -> list[float]:
    """REFERENCE.md section 3 by hand: d = 32000 - id, idx = clip(d - 1, 0, 254), centre -1 + (2 idx + 1) / 255."""
    return [-1.0 + (2 * min(max(UNPADDED_VOCAB - t - 1, 0), 254) + 1) / 255.0 for t in token_ids]


def expected_unnormalized(normalized: list[float], q01: list[float], q99: list[float],
                          mask: list[bool]) -> list[float]:
    """``0.5 (x + 1)(q99 - q01) + q01`` where the mask is true, x elsewhere."""
    return [0.5 * (x + 1.0) * (hi - lo) + lo if m else x for x, lo, hi, m in zip(normalized, q01, q99, mask)]


def exact_gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU from its definition, x * Phi(x)."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def linear(x: torch.Tensor, tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """``x W^T + b`` with W, b read from checkpoint tensors ``name.weight`` / ``name.bias``."""
    return x @ tensors[f"{name}.weight"].T + tensors[f"{name}.bias"]
