"""Synthetic camera frames: a mostly static textured tabletop with one moving object.

Used by the demo, the benchmark, the generated test bags and the tests, wherever a realistic
frame sequence is needed without a camera: most 14x14 patches stay identical between frames
(as on a real arm with a fixed camera), while a coloured block slides across the scene and
occludes / reveals background patches. Deterministic for a given seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SyntheticScene:
    """Generates frames of a static textured scene with a block moving along a path.

    Attributes:
        height, width: frame size in pixels (any size; the processor resizes to 224).
        seed: seeds the background texture and the object's path.
        object_size: side of the moving square in pixels.
        speed_px: how far the object moves per frame, in pixels.
    """

    height: int = 224
    width: int = 224
    seed: int = 0
    object_size: int = 36
    speed_px: float = 4.0

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        # Smooth-ish background: low-frequency colour blobs plus fine texture so that every
        # patch has non-trivial content (all-zero patches are never "static" for VLA-Cache).
        coarse = rng.integers(40, 215, size=(8, 8, 3)).astype(np.float32)
        ys = np.linspace(0, 7, self.height)
        xs = np.linspace(0, 7, self.width)
        y0 = np.floor(ys).astype(int).clip(0, 6)
        x0 = np.floor(xs).astype(int).clip(0, 6)
        fy = (ys - y0)[:, None, None]
        fx = (xs - x0)[None, :, None]
        c00 = coarse[y0][:, x0]
        c01 = coarse[y0][:, x0 + 1]
        c10 = coarse[y0 + 1][:, x0]
        c11 = coarse[y0 + 1][:, x0 + 1]
        smooth = (c00 * (1 - fy) * (1 - fx) + c01 * (1 - fy) * fx + c10 * fy * (1 - fx) + c11 * fy * fx)
        fine = rng.normal(0.0, 12.0, size=(self.height, self.width, 3)).astype(np.float32)
        self.background = np.clip(smooth + fine, 0, 255).astype(np.uint8)
        self.object_color = np.array(rng.integers(0, 256, size=3), dtype=np.uint8)
        self._phase = float(rng.uniform(0, 2 * np.pi))

    def object_position(self, index: int) -> tuple[int, int]:
        """Top-left (row, col) of the moving object in frame ``index``: a slow Lissajous path."""
        span_y = max(self.height - self.object_size, 1)
        span_x = max(self.width - self.object_size, 1)
        travel = self.speed_px * index
        perimeter = 2.0 * (span_x + span_y)
        angle = 2 * np.pi * travel / perimeter + self._phase
        row = int(round((0.5 + 0.4 * np.sin(angle)) * span_y))
        col = int(round((0.5 + 0.4 * np.cos(0.5 * angle)) * span_x))
        return row, col

    def frame(self, index: int) -> np.ndarray:
        """Return frame ``index`` as an (H, W, 3) uint8 RGB array."""
        image = self.background.copy()
        row, col = self.object_position(index)
        size = self.object_size
        image[row:row + size, col:col + size] = self.object_color
        # A darker border makes the object's edges visible at any colour.
        image[row:row + size, col:col + 2] //= 2
        image[row:row + 2, col:col + size] //= 2
        return image

    def frames(self, count: int, start: int = 0) -> list[np.ndarray]:
        """Return ``count`` consecutive frames starting at ``start``."""
        return [self.frame(start + i) for i in range(count)]
