"""Fixtures for the training tests: a small dataset in the collector's format, written once.

Episodes are generated, not simulated (seconds, no GL): a coloured square on a grey table whose
position sets the expert's translation, so there is something to learn. Every object position
recorded lies on the camera ray through the square's centre, so the auxiliary patch targets
name the square's patch. The files, statistics and layout are the ones ``vla-cache sim-collect``
writes (``sim.dataset``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from vla_cache_ros.sim import scene
from vla_cache_ros.sim.dataset import (
    EpisodeRecord,
    compute_norm_stats,
    episode_path,
    write_episode,
    write_norm_stats,
)

DATASET_KEY = "tiny_bc"
FAMILIES = ("pick", "touch")
INSTRUCTIONS = {"pick": "pick up the red cube", "touch": "touch the blue ball"}
EPISODES = 6
STEPS = 5


def point_seen_at(row: float, column: float, depth: float = 0.5) -> np.ndarray:
    """The world point ``depth`` metres in front of the sim camera that it sees at pixel (row, column)."""
    eye, target = np.asarray(scene.CAMERA_EYE), np.asarray(scene.CAMERA_TARGET)
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    focal = scene.IMAGE_SIZE / (2 * np.tan(np.radians(scene.CAMERA_FOVY_DEG) / 2))
    half = scene.IMAGE_SIZE / 2
    return eye + depth * (forward + (column - half) / focal * right - (row - half) / focal * up)


def make_episode(seed: int, family: str) -> EpisodeRecord:
    """``STEPS`` frames of a square moving toward the image centre; actions point there too."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(40, 184, size=2)
    images, actions, objects = [], [], []
    for step in range(STEPS):
        centre = start + (112 - start) * step / STEPS
        objects.append([point_seen_at(*centre)] * len(scene.OBJECTS))
        image = np.full((224, 224, 3), 120, np.uint8)
        row, col = centre.astype(int)
        image[row - 10:row + 10, col - 10:col + 10] = (220, 30, 30) if family == "pick" else (30, 30, 220)
        images.append(image)
        delta = (112 - centre) / 2000.0
        actions.append([delta[0], delta[1], 0.01 * (step - 2), 0.0, 0.0, 0.05 * np.sign(delta[0]),
                        float(step < 3)])
    actions = np.asarray(actions, np.float32)
    return EpisodeRecord(images=np.stack(images), actions=actions, proprio=np.zeros((STEPS, 7), np.float32),
                         joint_positions=np.zeros((STEPS, 5), np.float32), instruction=INSTRUCTIONS[family],
                         family=family, target="red_cube", seed=seed, success=True,
                         object_positions=np.asarray(objects, np.float32))


def write_dataset(root: Path, episodes: int = EPISODES) -> Path:
    """Write ``episodes`` generated episodes (families alternating, seed = index) and their norm stats."""
    for index in range(episodes):
        write_episode(episode_path(root, index), make_episode(index, FAMILIES[index % len(FAMILIES)]))
    write_norm_stats(root, compute_norm_stats(root, DATASET_KEY))
    return root


def interrupted_after(function: Callable[..., Any]) -> Callable[..., None]:
    """``function``, then KeyboardInterrupt: a Ctrl-C (or a SIGTERM, which the commands turn into
    one) that lands just after it ran, without racing a real signal."""
    def run(*args: Any, **kwargs: Any) -> None:
        function(*args, **kwargs)
        raise KeyboardInterrupt

    return run


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("bc_data"))
