"""An animated GIF of one episode: the camera view with the reused visual tokens overlaid.

Each animation frame shows the camera frame the policy saw, resized to the model input
(``grid * PATCH_PX`` = 224 px for OpenVLA's 16x16 grid of 14 px patches) and enlarged
``scale`` times, with every reused token's patch tinted (:data:`REUSED_TINT`) and outlined;
recomputed patches are left exactly as the camera saw them. Under it: the step, the cache ratio
(tokens reused / all), the step's inference latency, and the cache ratio of every step so far
as a small trace. Pillow only (no matplotlib), ROS-free: the demo feeds it the steps it heard
over ROS (:class:`vla_cache_ros.ros.reuse_recorder.RecordedStep`), a test feeds it arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PATCH_PX = 14
"""Pixels per patch side of the model input (OpenVLA: 224 px / 16 patches)."""
REUSED_TINT = (40, 120, 255)
TINT_ALPHA = 0.45
OUTLINE = (20, 60, 160)
PANEL_BG = (24, 24, 28)
TEXT = (235, 235, 235)
DIM_TEXT = (160, 160, 170)
TRACE = (90, 170, 255)
PANEL_PX = 118
DEFAULT_MAX_FRAMES = 150
LAST_FRAME_MS = 1500


@dataclass(frozen=True)
class AnimationStep:
    """One frame of the animation: what one inference step saw and did.

    Attributes:
        frame: the camera frame, (H, W, 3) uint8 RGB (resized to the model input here).
        mask: (grid, grid) bool, True where the visual token was reused.
        latency_ms: the step's inference latency, or None when unknown.
    """

    frame: np.ndarray
    mask: np.ndarray
    latency_ms: float | None = None


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed bitmap font
        return ImageFont.load_default()


def overlay(frame: np.ndarray, mask: np.ndarray, scale: int = 2) -> Image.Image:
    """The camera view with the reused tokens tinted, as an RGB image of
    ``grid * PATCH_PX * scale`` pixels square.

    Raises:
        ValueError: ``mask`` is not a square 2-D grid or ``frame`` not (H, W, 3) uint8 (a bug:
            the caller built them).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
        raise ValueError(f"reuse mask must be a square grid, got {mask.shape}")
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be (H, W, 3) uint8, got {frame.dtype} {frame.shape}")
    cell = PATCH_PX * scale
    side = mask.shape[0] * cell
    image = Image.fromarray(frame)
    if image.size != (mask.shape[0] * PATCH_PX,) * 2:
        image = image.resize((mask.shape[0] * PATCH_PX,) * 2, Image.BILINEAR)  # what the model sees
    pixels = np.asarray(image.resize((side, side), Image.NEAREST)).astype(np.float32)
    cells = np.kron(mask, np.ones((cell, cell), dtype=bool))
    pixels[cells] = (1.0 - TINT_ALPHA) * pixels[cells] + TINT_ALPHA * np.array(REUSED_TINT, np.float32)
    result = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(result)
    for row, col in zip(*np.nonzero(mask)):
        x, y = int(col) * cell, int(row) * cell
        draw.rectangle((x, y, x + cell - 1, y + cell - 1), outline=OUTLINE)
    return result


def render_frame(step: AnimationStep, index: int, ratios: Sequence[float], title: str = "",
                 scale: int = 2) -> Image.Image:
    """One animation frame: :func:`overlay` with the text panel under it.

    ``index`` is the step's position in ``ratios`` (the cache ratio of every step of the
    episode, for the trace; the part after ``index`` is not drawn).
    """
    view = overlay(step.frame, step.mask, scale)
    width = view.width
    canvas = Image.new("RGB", (width, view.height + PANEL_PX), PANEL_BG)
    canvas.paste(view, (0, 0))
    draw = ImageDraw.Draw(canvas)
    big, small = _font(15), _font(12)
    reused, total = int(np.count_nonzero(step.mask)), int(step.mask.size)
    latency = "n/a" if step.latency_ms is None else f"{step.latency_ms:.1f} ms"
    top = view.height + 6
    if title:
        draw.text((8, top), title, fill=TEXT, font=small)
    draw.text((8, top + 18), f"step {index + 1}/{len(ratios)}", fill=DIM_TEXT, font=big)
    draw.text((110, top + 18), f"cache ratio {reused / total:.2f} ({reused}/{total} reused)", fill=TEXT, font=big)
    draw.text((8, top + 40), f"latency {latency}", fill=TEXT, font=big)
    draw.rectangle((width - 160, top + 42, width - 148, top + 54), fill=REUSED_TINT, outline=OUTLINE)
    draw.text((width - 142, top + 41), "reused token", fill=DIM_TEXT, font=small)
    # the cache ratio trace: 0 at the bottom, 1 at the top, one point per step
    left, right, low, high = 8, width - 8, view.height + PANEL_PX - 8, top + 62
    draw.rectangle((left, high, right, low), outline=(70, 70, 80))
    count = max(1, len(ratios) - 1)
    points = [(left + (right - left) * i / count, low - (low - high) * float(r))
              for i, r in enumerate(ratios[: index + 1])]
    if len(points) > 1:
        draw.line(points, fill=TRACE, width=2)
    x, y = points[-1] if points else (left, low)
    draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=TEXT)
    return canvas


def write_gif(path: Path, steps: Sequence[AnimationStep], title: str = "", fps: float = 5.0, scale: int = 2,
              max_frames: int = DEFAULT_MAX_FRAMES) -> int:
    """Write the episode as an animated GIF (looping, ``fps`` frames a second, the last frame held
    1.5 s) at ``path``; returns its frame count.

    With more than ``max_frames`` steps, evenly spaced ones are kept (first and last included),
    so the file stays small (about 10 kB a frame); the trace still shows every step.

    Raises:
        ValueError: no steps (a bug: the caller checks).
    """
    if not steps:
        raise ValueError("no steps to animate")
    ratios = [float(np.mean(step.mask)) for step in steps]
    keep = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), max(1, max_frames))).round().astype(int))
    # Each frame gets its own 255-colour palette, undithered: dithering noise would defeat GIF's
    # compression (about 10 kB a frame instead of 75 kB) for no visible gain on rendered scenes.
    frames = [render_frame(steps[i], int(i), ratios, title, scale).quantize(
        255, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE) for i in keep]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    durations = [int(round(1000.0 / fps))] * len(frames)
    durations[-1] = max(durations[-1], LAST_FRAME_MS)  # the end of the episode stays readable
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return len(frames)
