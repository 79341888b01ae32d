"""Per-visual-token bookkeeping: patches of the model-input frame, reference patches and ages.

Each visual token corresponds to one square patch of the model-input frame (14x14 RGB pixels of
the 224x224 input for OpenVLA's 16x16 grid). For bounded staleness every token remembers the
patch content it was last computed from (its *reference patch*) and how many steps ago; selectors
compare the current patch with the reference patch, not the previous frame, so slow drift cannot
accumulate unnoticed across many steps.
"""
from __future__ import annotations

import math

import numpy as np

from vla_cache_ros.errors import ConfigurationError

SIMILARITY_EPS = 1e-8


def grid_side(num_tokens: int) -> int:
    """Side of the square patch grid of ``num_tokens`` visual tokens (16 for OpenVLA's 256).

    Raises:
        ConfigurationError: ``num_tokens`` is not a square number.
    """
    grid = int(round(math.sqrt(num_tokens)))
    if grid * grid != num_tokens or grid == 0:
        raise ConfigurationError(f"{num_tokens} visual tokens do not form a square grid")
    return grid


def extract_patches(frame: np.ndarray, num_tokens: int) -> np.ndarray:
    """Split a square (S, S, 3) uint8 frame into ``num_tokens`` flattened patches, row-major.

    Patch id = row * grid + col; each patch flattened in (y, x, channel) order as float32 raw
    0-255 values. Returns (num_tokens, patch_side * patch_side * 3).
    """
    grid = grid_side(num_tokens)
    size = frame.shape[0]
    if frame.ndim != 3 or frame.shape[1] != size or size % grid != 0:
        raise ConfigurationError(f"model-input frame {frame.shape} does not split into a {grid}x{grid} grid")
    side = size // grid
    patches = frame.reshape(grid, side, grid, side, 3).transpose(0, 2, 1, 3, 4)
    return patches.reshape(num_tokens, side * side * 3).astype(np.float32)


def reuse_mask(reused: np.ndarray, num_tokens: int) -> np.ndarray:
    """The reuse set as a (grid, grid) bool image: True where the token's K/V came from the cache.

    ``reused`` holds visual token ids (0-based, row * grid + col, as :func:`extract_patches`
    numbers the patches), so cell (row, col) covers the model-input pixels
    ``[row * side, (row + 1) * side) x [col * side, (col + 1) * side)`` (side = 14 px for a
    224 px input and 256 tokens).

    Raises:
        ConfigurationError: ``num_tokens`` is not a square number.
    """
    grid = grid_side(num_tokens)
    mask = np.zeros(num_tokens, dtype=bool)
    mask[np.asarray(reused, dtype=np.int64)] = True
    return mask.reshape(grid, grid)


def cosine_similarity(current: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity ``dot / (|a| |b| + 1e-8)``; all-zero patches score 0."""
    current64 = current.astype(np.float64)
    reference64 = reference.astype(np.float64)
    dot = np.sum(current64 * reference64, axis=1)
    norms = np.linalg.norm(current64, axis=1) * np.linalg.norm(reference64, axis=1)
    return dot / (norms + SIMILARITY_EPS)


class TokenStates:
    """Reference patch and age of every visual token; reset at episode start or camera change."""

    def __init__(self, num_tokens: int) -> None:
        self.num_tokens = num_tokens
        self.reference_patches: np.ndarray | None = None
        self.ages = np.zeros(num_tokens, dtype=np.int64)

    @property
    def valid(self) -> bool:
        """Whether a previous step exists to reuse from."""
        return self.reference_patches is not None

    def reset(self) -> None:
        """Forget everything (the next step computes all tokens)."""
        self.reference_patches = None
        self.ages[:] = 0

    def similarity(self, patches: np.ndarray) -> np.ndarray:
        """Cosine similarity of current patches to their reference patches (zeros if invalid)."""
        if self.reference_patches is None:
            return np.zeros(self.num_tokens)
        return cosine_similarity(patches, self.reference_patches)

    def commit(self, patches: np.ndarray, reused: np.ndarray) -> None:
        """After a step: computed tokens take the current patch and age 0; reused tokens age by 1."""
        reused_mask = np.zeros(self.num_tokens, dtype=bool)
        reused_mask[np.asarray(reused, dtype=np.int64)] = True
        if self.reference_patches is None:
            self.reference_patches = patches.copy()
        else:
            self.reference_patches[~reused_mask] = patches[~reused_mask]
        self.ages[reused_mask] += 1
        self.ages[~reused_mask] = 0
