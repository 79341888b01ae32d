"""The demo's GIF: camera frames with the reused tokens overlaid, one frame per step."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vla_cache_ros.apps.reuse_animation import PATCH_PX, AnimationStep, overlay, render_frame, write_gif

RNG = np.random.default_rng(3)
FRAME = RNG.integers(0, 256, (224, 224, 3), dtype=np.uint8)
SCENE = np.stack([*np.meshgrid(np.linspace(0, 200, 224), np.linspace(40, 160, 224)), np.full((224, 224), 90.0)],
                 axis=2).astype(np.uint8)  # smooth, as rendered scenes are (GIF palettes suit it)


def grid_mask(cells: list[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros((16, 16), dtype=bool)
    for row, col in cells:
        mask[row, col] = True
    return mask


def test_the_overlay_changes_exactly_the_reused_patches() -> None:
    mask = grid_mask([(0, 0), (3, 7), (15, 15)])
    scale = 2
    image = np.asarray(overlay(FRAME, mask, scale))
    cell = PATCH_PX * scale
    assert image.shape == (16 * cell, 16 * cell, 3)
    plain = np.kron(FRAME, np.ones((scale, scale, 1), dtype=np.uint8))  # the frame, enlarged
    changed = np.any(image != plain, axis=2)
    per_cell = changed.reshape(16, cell, 16, cell).any(axis=(1, 3))
    np.testing.assert_array_equal(per_cell, mask)  # recomputed patches are untouched
    assert changed[3 * cell:4 * cell, 7 * cell:8 * cell].mean() > 0.9  # the whole patch is tinted


def test_a_camera_frame_of_another_size_is_shown_as_the_model_input() -> None:
    wide = RNG.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    assert overlay(wide, grid_mask([(1, 1)]), scale=1).size == (224, 224)
    with pytest.raises(ValueError, match="square grid"):
        overlay(FRAME, np.zeros((16, 8), dtype=bool))


def test_write_gif_one_frame_per_step_with_the_overlay(tmp_path: Path) -> None:
    steps = [AnimationStep(SCENE, grid_mask([(r, c) for r in range(i) for c in range(16)]), 30.0 + i)
             for i in range(6)]
    path = tmp_path / "sub" / "episode.gif"
    assert write_gif(path, steps, title="episode 1: 'touch the red cube'") == 6
    gif = Image.open(path)
    assert gif.n_frames == 6
    first = render_frame(steps[0], 0, [0.0] * 6)
    assert gif.size == first.size and gif.size[1] > gif.size[0]  # the panel is under the view
    gif.seek(5)  # rows 0..4 reused: tinted towards blue; the rows below not
    frame = np.asarray(gif.convert("RGB")).astype(int)
    view = np.asarray(overlay(SCENE, np.zeros((16, 16), dtype=bool))).astype(int)
    cell = 2 * PATCH_PX
    reused_error = np.abs(frame[:5 * cell, :16 * cell] - view[:5 * cell]).mean()
    kept_error = np.abs(frame[6 * cell:16 * cell, :16 * cell] - view[6 * cell:]).mean()
    assert reused_error > 3 * kept_error  # palette quantisation changes every pixel a little


def test_many_steps_are_thinned_to_max_frames(tmp_path: Path) -> None:
    steps = [AnimationStep(FRAME[:32, :32], np.eye(16, dtype=bool) if i % 2 else grid_mask([]), None)
             for i in range(9)]
    assert write_gif(tmp_path / "thin.gif", steps, max_frames=4, scale=1) == 4
    assert Image.open(tmp_path / "thin.gif").n_frames == 4
    with pytest.raises(ValueError, match="no steps"):
        write_gif(tmp_path / "none.gif", [])
