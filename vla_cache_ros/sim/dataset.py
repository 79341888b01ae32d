"""The simulator's training dataset: one compressed ``.npz`` per episode plus OpenVLA norm stats.

Layout of a dataset directory::

    manifest.json                 how it was collected (seed, families, conventions)
    episodes/episode_000000.npz   one episode, written atomically (complete or absent)
    dataset_statistics.json       OpenVLA-style norm_stats: {name: {"action": ..., "proprio": ...}}

An episode file holds, for T steps (observation k, then the action taken after it):
``images`` (T, 224, 224, 3) uint8, ``actions`` (T, 7) float32, ``proprio`` (T, 7) float32,
``joint_positions`` (T, 5) float32, ``object_positions`` (T, 4, 3) float32 (the centre of every
object of ``scene.OBJECTS``, in that order, in the base frame; training-only supervision, absent
from datasets collected before it was added), and the scalars ``instruction``, ``family``, ``target``,
``seed`` and ``success``. Files load with ``allow_pickle=False``.

Actions follow OpenVLA's convention: (dx, dy, dz) in metres, (droll, dpitch, dyaw) as Euler
angles of the rotation delta (see :mod:`vla_cache_ros.geometry`), gripper 0 = close,
1 = open; the gripper dimension is not normalised (``mask`` false). Proprio is the end-effector
pose (x, y, z, roll, pitch, yaw) and the measured gripper opening.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vla_cache_ros.errors import DatasetError

EPISODES_DIR = "episodes"
STATISTICS_FILE = "dataset_statistics.json"
ACTION_MASK = (True, True, True, True, True, True, False)
_ARRAY_FIELDS = ("images", "actions", "proprio", "joint_positions")
_SCALAR_FIELDS = ("instruction", "family", "target", "seed", "success")


@dataclass
class EpisodeRecord:
    """One recorded episode; arrays are aligned step by step."""

    images: np.ndarray
    actions: np.ndarray
    proprio: np.ndarray
    joint_positions: np.ndarray
    instruction: str
    family: str
    target: str
    seed: int
    success: bool
    object_positions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.actions)


def episode_path(root: str | Path, index: int) -> Path:
    return Path(root) / EPISODES_DIR / f"episode_{index:06d}.npz"


def write_episode(path: str | Path, record: EpisodeRecord) -> None:
    """Write ``record`` to ``path`` atomically (a crash leaves either the old state or the file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = {name: len(getattr(record, name)) for name in _ARRAY_FIELDS}
    if record.object_positions is not None:
        lengths["object_positions"] = len(record.object_positions)
    if len(set(lengths.values())) != 1:
        raise ValueError(f"episode arrays differ in length: {lengths}")
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        optional = ({} if record.object_positions is None
                    else {"object_positions": np.asarray(record.object_positions, np.float32)})
        with open(temporary, "wb") as stream:
            np.savez_compressed(
                stream,
                **optional,
                images=np.asarray(record.images, np.uint8),
                actions=np.asarray(record.actions, np.float32),
                proprio=np.asarray(record.proprio, np.float32),
                joint_positions=np.asarray(record.joint_positions, np.float32),
                instruction=np.array(record.instruction),
                family=np.array(record.family),
                target=np.array(record.target),
                seed=np.array(record.seed, np.int64),
                success=np.array(record.success),
            )
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _load(path: Path, fields: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [name for name in fields if name not in archive.files]
            if missing:
                raise DatasetError(f"episode file {path} lacks {missing}")
            return {name: archive[name] for name in fields + optional if name in archive.files}
    except DatasetError:
        raise
    except Exception as error:  # OSError, zipfile.BadZipFile, ValueError for a truncated array, ...
        raise DatasetError(f"cannot read episode file {path}: {type(error).__name__}: {error}") from None


def read_episode(path: str | Path, images: bool = True) -> EpisodeRecord:
    """Load an episode; with ``images=False`` the images array is left empty (fast)."""
    path = Path(path)
    arrays = _ARRAY_FIELDS if images else _ARRAY_FIELDS[1:]
    data = _load(path, arrays + _SCALAR_FIELDS, optional=("object_positions",))
    return EpisodeRecord(
        images=data["images"] if images else np.zeros((0, 0, 0, 3), np.uint8),
        actions=data["actions"], proprio=data["proprio"], joint_positions=data["joint_positions"],
        instruction=str(data["instruction"]), family=str(data["family"]), target=str(data["target"]),
        seed=int(data["seed"]), success=bool(data["success"]), object_positions=data.get("object_positions"))


def episode_files(root: str | Path) -> list[Path]:
    """The complete episode files of a dataset directory, in index order."""
    directory = Path(root) / EPISODES_DIR
    return sorted(directory.glob("episode_*.npz")) if directory.is_dir() else []


def iter_episode_files(root: str | Path, successful_only: bool = True, images: bool = True
                       ) -> Iterator[tuple[Path, EpisodeRecord]]:
    """(file, episode) pairs of a dataset, in index order (by default only successful episodes).

    Raises:
        DatasetError: no episode files, or one that cannot be read.
    """
    files = episode_files(root)
    if not files:
        raise DatasetError(f"no episodes in {root} (expected {EPISODES_DIR}/episode_*.npz)")
    for path in files:
        record = read_episode(path, images=images)
        if record.success or not successful_only:
            yield path, record


def iter_episodes(root: str | Path, successful_only: bool = True, images: bool = True) -> Iterator[EpisodeRecord]:
    """Episodes of a dataset (by default only those where the expert succeeded)."""
    for _, record in iter_episode_files(root, successful_only, images):
        yield record


def _stats(values: np.ndarray) -> dict[str, list[float]]:
    return {
        "mean": values.mean(0).tolist(),
        "std": values.std(0).tolist(),
        "max": values.max(0).tolist(),
        "min": values.min(0).tolist(),
        "q01": np.quantile(values, 0.01, axis=0).tolist(),
        "q99": np.quantile(values, 0.99, axis=0).tolist(),
    }


def compute_norm_stats(root: str | Path, dataset_name: str) -> dict:
    """OpenVLA-format normalisation statistics over the successful episodes of a dataset.

    Returns ``{dataset_name: {"action": {mean, std, max, min, q01, q99, mask},
    "proprio": {mean, std, max, min, q01, q99}, "num_transitions", "num_trajectories"}}``.
    """
    actions, proprio = [], []
    for record in iter_episodes(root, successful_only=True, images=False):
        actions.append(record.actions)
        proprio.append(record.proprio)
    if not actions:
        raise DatasetError(f"no successful episodes in {root}: cannot compute normalisation statistics")
    action_values = np.concatenate(actions).astype(np.float64)
    proprio_values = np.concatenate(proprio).astype(np.float64)
    return {dataset_name: {
        "action": {**_stats(action_values), "mask": list(ACTION_MASK)},
        "proprio": _stats(proprio_values),
        "num_transitions": int(len(action_values)),
        "num_trajectories": len(actions),
    }}


def write_norm_stats(root: str | Path, stats: dict) -> Path:
    """Write ``stats`` as ``dataset_statistics.json`` (the name OpenVLA checkpoints use)."""
    path = Path(root) / STATISTICS_FILE
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(stats, indent=2) + "\n")
    os.replace(temporary, path)
    return path


def read_norm_stats(root: str | Path) -> dict:
    path = Path(root) / STATISTICS_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path} not found; run `vla-cache sim-collect` to create it") from None
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path} is not valid JSON: {error}") from None
