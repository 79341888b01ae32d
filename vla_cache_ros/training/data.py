"""Training data: a simulator dataset directory -> frames, a seed-wise split, action tokens, batches.

Frames of the expert's *successful* episodes (``sim.dataset.iter_episodes``), and of every episode
of a policy-driven collection (``sim-collect --policy``: DAgger, where the expert labels the
states the policy reached, right whether or not the policy succeeded), are held in memory
as uint8 (224 x 224 x 3 = 150 kB a frame: 30 k frames take 4.5 GB). Validation takes whole
episodes, chosen per task family by a seeded permutation of the episodes' seeds, never single
frames: neighbouring frames of one episode are near duplicates, so a frame-wise split would
measure memorisation.

Actions are normalised with the dataset's statistics exactly as OpenVLA's un-normalisation
(``models.norm_stats.ActionStats.unnormalize``) inverts it: ``x = 2 (a - q01) / (q99 - q01) - 1``
where the mask is true, clipped to [-1, 1]; masked-out dimensions (the gripper, 0 = close,
1 = open) pass through. Then OpenVLA's discretisation (``ActionTokenizer.normalized_to_tokens``)
gives the 7 target token ids.

Batch order is a pure function of (seed, step): sample ``i`` of the run is
``permutation(seed, epoch)[i mod n]`` with ``epoch = i // n``, so a resumed run draws exactly the
batches the uninterrupted run would have.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vla_cache_ros.errors import DatasetError, TrainingError
from vla_cache_ros.models.action_tokenizer import ActionTokenizer
from vla_cache_ros.models.norm_stats import ACTION_DIM, ActionStats, NormStats
from vla_cache_ros.sim.dataset import EpisodeRecord, iter_episode_files, read_episode, read_norm_stats
from vla_cache_ros.sim.scene import IMAGE_SIZE, OBJECTS, project_to_image
from vla_cache_ros.sim.tasks import PAD_NAME

PATCH_SIZE = 14
"""ViT patch size of every preset: 224 / 14 = a 16 x 16 grid of visual tokens."""
LOCATED_POINTS: tuple[str, ...] = tuple(obj.name for obj in OBJECTS) + ("tcp",)
"""Points whose image patch the auxiliary head learns to find (training only), in this order."""
POINTED: tuple[str, ...] = ("task object", "destination", "tcp")
"""What the supervised attention heads point at, head by head (``model.attention_loss``); the
destination is the green square for ``place`` and the task object otherwise."""
OFFSET_SCALE = 10.0
"""Auxiliary offsets are regressed in decimetres (x10 metres) so their loss is O(1)."""


@dataclass
class FrameSet:
    """Frames of some episodes, aligned row by row (N frames).

    Attributes:
        images: (N, H, W, 3) uint8 RGB camera frames.
        actions: (N, 7) float32 expert actions in robot units (m, rad, gripper 0/1).
        instruction_index: (N,) int64 index into ``instructions``.
        instructions: the distinct instructions.
        episode_seed: (N,) int64 seed of each frame's episode.
        patch_targets: (N, len(LOCATED_POINTS)) int64 index of the 14 px patch (row-major in the
            16 x 16 grid) holding each point's projection, -100 when outside the image; None when
            the dataset has no object positions (collected before they were recorded).
        offsets: (N, 6) float32: (task object - tcp, destination - tcp) in decimetres; the
            destination is the green square for ``place`` and the task object otherwise. None
            as ``patch_targets``.
        pointer_targets: (N, len(POINTED)) int64 patch index of the task object, the
            destination and the tcp (columns of ``patch_targets`` picked per episode), or None
            as ``patch_targets``.
    """

    images: np.ndarray
    actions: np.ndarray
    instruction_index: np.ndarray
    instructions: list[str]
    episode_seed: np.ndarray
    patch_targets: np.ndarray | None = None
    offsets: np.ndarray | None = None
    pointer_targets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.actions)

    def instruction(self, row: int) -> str:
        """The instruction of frame ``row``."""
        return self.instructions[int(self.instruction_index[row])]


@dataclass
class TrainingData:
    """A dataset split for training: frames, statistics and which seeds went where.

    Attributes:
        train, val: the two frame sets (``val`` may be empty when no episode is held out).
        norm_stats: the dataset's OpenVLA ``norm_stats`` (``{dataset_key: {...}}``).
        dataset_key: the key actions are normalised with (OpenVLA's ``unnorm_key``).
        train_seeds, val_seeds: episode seeds of each split, sorted.
        fingerprint: hex digest of (seed, length, family) of every episode used; a resumed run
            refuses a dataset whose fingerprint changed.
    """

    train: FrameSet
    val: FrameSet
    norm_stats: dict
    dataset_key: str
    train_seeds: list[int]
    val_seeds: list[int]
    fingerprint: str

    @property
    def action_stats(self) -> ActionStats:
        """The validated statistics of ``dataset_key``."""
        return NormStats.build(self.norm_stats).select(self.dataset_key)


def split_seeds(families: dict[int, str], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Hold out ``round(val_fraction * n)`` episodes of each family (at least one when the family
    has two or more and ``val_fraction > 0``), picked by a permutation seeded with ``seed``.

    Args:
        families: episode seed -> task family.
        val_fraction: in [0, 1).
        seed: seeds the choice.

    Returns:
        (train seeds, validation seeds), each sorted.
    """
    val: list[int] = []
    for offset, family in enumerate(sorted(set(families.values()))):
        seeds = sorted(s for s, f in families.items() if f == family)
        count = int(round(val_fraction * len(seeds)))
        if val_fraction > 0 and len(seeds) >= 2:
            count = min(max(count, 1), len(seeds) - 1)
        order = np.random.default_rng([seed, offset]).permutation(len(seeds))
        val += [seeds[i] for i in order[:count]]
    return sorted(set(families) - set(val)), sorted(val)


def patch_index(points: np.ndarray) -> np.ndarray:
    """(..., 3) world points -> (...,) int64 index of the visual-token patch each projects into
    (``row // 14 * 16 + column // 14`` of the 224 px image), -100 outside the image."""
    pixels = project_to_image(points)
    inside = np.all((pixels >= 0) & (pixels < IMAGE_SIZE), axis=-1)
    cells = np.floor(np.nan_to_num(pixels, nan=-1.0) / PATCH_SIZE).astype(np.int64)
    return np.where(inside, cells[..., 1] * (IMAGE_SIZE // PATCH_SIZE) + cells[..., 0], -100)


def auxiliary_targets(record: EpisodeRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Training-only supervision of one episode from the simulator's privileged state.

    Returns ``(patch_targets (T, 5) int64, offsets (T, 6) float32, pointer_targets (T, 3) int64)``
    as :class:`FrameSet` documents, or None when the record has no ``object_positions``.
    """
    if record.object_positions is None:
        return None
    names = [obj.name for obj in OBJECTS]
    tcp = record.proprio[:, :3].astype(np.float64)
    points = np.concatenate([record.object_positions, tcp[:, None]], axis=1)
    target_column = names.index(record.target)
    destination_column = names.index(PAD_NAME) if record.family == "place" else target_column
    target = record.object_positions[:, target_column]
    destination = record.object_positions[:, destination_column]
    offsets = OFFSET_SCALE * np.concatenate([target - tcp, destination - tcp], axis=1)
    patches = patch_index(points)
    pointed = patches[:, [target_column, destination_column, len(names)]]
    return patches, offsets.astype(np.float32), pointed


Episode = tuple[Path, EpisodeRecord]
"""An episode file and its record, read without images (``read_episode(path, images=False)``)."""


def _images(episodes: list[Episode]) -> np.ndarray:
    """The episodes' frames in one (N, H, W, 3) uint8 array, filled one file at a time: peak
    memory is the array plus one episode (concatenating loaded episodes needed twice the array,
    which ran a 75 k-frame training set out of 24 GB)."""
    total = sum(len(record) for _, record in episodes)
    images: np.ndarray | None = None
    row = 0
    for path, record in episodes:
        try:
            pixels = read_episode(path, images=True).images
        except DatasetError as error:
            raise TrainingError(str(error)) from None
        if len(pixels) != len(record):
            raise TrainingError(f"{path}: {len(pixels)} images for {len(record)} actions")
        if images is None:
            images = np.empty((total, *pixels.shape[1:]), np.uint8)
        images[row:row + len(pixels)] = pixels
        row += len(pixels)
    assert images is not None
    return images


def _frames(episodes: list[Episode], instructions: list[str]) -> FrameSet:
    if not episodes:
        return FrameSet(np.zeros((0, 224, 224, 3), np.uint8), np.zeros((0, ACTION_DIM), np.float32),
                        np.zeros(0, np.int64), instructions, np.zeros(0, np.int64))
    records = [record for _, record in episodes]
    auxiliary = [auxiliary_targets(r) for r in records]
    complete = all(a is not None for a in auxiliary)
    return FrameSet(
        images=_images(episodes),
        actions=np.concatenate([r.actions for r in records]).astype(np.float32),
        instruction_index=np.concatenate([np.full(len(r), instructions.index(r.instruction)) for r in records]),
        instructions=instructions,
        episode_seed=np.concatenate([np.full(len(r), r.seed, np.int64) for r in records]),
        patch_targets=np.concatenate([a[0] for a in auxiliary]) if complete else None,  # type: ignore[index]
        offsets=np.concatenate([a[1] for a in auxiliary]) if complete else None,  # type: ignore[index]
        pointer_targets=np.concatenate([a[2] for a in auxiliary]) if complete else None)  # type: ignore[index]


def policy_driven(root: Path) -> bool:
    """Whether ``root`` is a policy-driven (DAgger) collection: its ``manifest.json`` names a
    ``policy``. Unreadable or absent manifests count as expert-driven."""
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("policy") is not None


def _read_records(root: Path) -> list[Episode]:
    """The usable episodes of one directory, without images: every episode of a policy-driven
    collection, the successful ones of an expert collection."""
    if not root.is_dir():
        raise TrainingError(f"--data {root} is not a directory (create one with `vla-cache sim-collect`)")
    try:
        return list(iter_episode_files(root, successful_only=not policy_driven(root), images=False))
    except DatasetError as error:
        raise TrainingError(str(error)) from None


def load_training_data(roots: str | Path | Sequence[str | Path], val_fraction: float, seed: int,
                       dataset_key: str | None = None) -> TrainingData:
    """Read the usable episodes of ``vla-cache sim-collect`` directories and the first one's statistics.

    Args:
        roots: dataset directories (``episodes/*.npz``; the first also ``dataset_statistics.json``,
            which normalises every directory's actions, so that later policy-driven collections
            keep the action bins of the policy they fine-tune). Episode seeds must be distinct
            across directories (the split is by seed).
        val_fraction: share of each family's episodes held out for validation, in [0, 1).
        seed: seeds the split (see :func:`split_seeds`).
        dataset_key: norm_stats key to use; None: the only one.

    Raises:
        TrainingError: a directory is missing or holds no usable episodes, the first has no
            statistics, the key is unknown, two episodes share a seed, or the fraction is out of
            range.
    """
    paths = [Path(roots)] if isinstance(roots, (str, Path)) else [Path(r) for r in roots]
    if not paths:
        raise TrainingError("no --data directory given")
    root = paths[0]
    if not 0 <= val_fraction < 1:
        raise TrainingError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if len(paths) > 1 and policy_driven(root):
        raise TrainingError(f"--data {root} is a policy-driven collection; the first directory's statistics "
                            "normalise every action, so give the expert collection first and policy-driven ones "
                            "after it")
    episodes: list[Episode] = []
    for path in paths:
        usable = _read_records(path)
        if not usable:
            raise TrainingError(f"--data {path}: no successful episodes to learn from")
        episodes += usable
    records = [record for _, record in episodes]
    try:
        norm_stats = read_norm_stats(root)
    except DatasetError as error:
        raise TrainingError(str(error)) from None
    keys = sorted(norm_stats) if isinstance(norm_stats, dict) else []
    if dataset_key is None:
        if len(keys) != 1:
            raise TrainingError(f"{root}: norm stats hold {len(keys)} datasets ({', '.join(keys)}); choose one")
        dataset_key = keys[0]
    if dataset_key not in keys:
        raise TrainingError(f"{root}: no norm stats for dataset {dataset_key!r}; available: {', '.join(keys)}")
    parsed = NormStats.build({dataset_key: norm_stats[dataset_key]})
    if dataset_key not in parsed.usable:
        raise TrainingError(f"{root}: norm stats of {dataset_key!r} are unusable: {parsed.unusable[dataset_key]}")
    by_seed: dict[int, Episode] = {}
    for path, record in episodes:
        if record.seed in by_seed:
            raise TrainingError(f"{by_seed[record.seed][0]} and {path} are both episode seed {record.seed}; the "
                                "split is by seed (a directory given twice? collect further directories with "
                                "another --seed)")
        by_seed[record.seed] = (path, record)
    train_seeds, val_seeds = split_seeds({r.seed: r.family for r in records}, val_fraction, seed)
    instructions = sorted({r.instruction for r in records})
    digest = hashlib.sha256()
    for record in sorted(records, key=lambda r: r.seed):
        digest.update(f"{record.seed}:{len(record)}:{record.family};".encode())
    if len(paths) > 1:  # which directory normalises is part of the data (one directory: as before)
        digest.update(json.dumps(norm_stats[dataset_key], sort_keys=True).encode())
    return TrainingData(
        train=_frames([by_seed[s] for s in train_seeds], instructions),
        val=_frames([by_seed[s] for s in val_seeds], instructions),
        norm_stats={dataset_key: norm_stats[dataset_key]}, dataset_key=dataset_key,
        train_seeds=train_seeds, val_seeds=val_seeds, fingerprint=digest.hexdigest()[:16])


def normalize_actions(stats: ActionStats, actions: np.ndarray) -> np.ndarray:
    """(..., 7) robot-unit actions -> OpenVLA-normalised values in [-1, 1] (float64).

    The exact inverse of ``ActionStats.unnormalize``: ``2 (a - low) / (high - low) - 1`` where
    ``mask`` is true (0 where ``high == low``: any value un-normalises to ``low`` there), the
    value itself elsewhere; then clipped to [-1, 1] as OpenVLA's ``BOUNDS_Q99`` normalisation.
    """
    actions = np.asarray(actions, dtype=np.float64)
    span = stats.high - stats.low
    scaled = np.where(span > 0, 2.0 * (actions - stats.low) / np.where(span > 0, span, 1.0) - 1.0, 0.0)
    return np.clip(np.where(stats.mask, scaled, actions), -1.0, 1.0)


def quantize_actions(actions: np.ndarray, translation_m: float, rotation_rad: float) -> np.ndarray:
    """(..., 7) actions with dx/dy/dz rounded to multiples of ``translation_m`` and the three
    rotation deltas to multiples of ``rotation_rad`` (0: that group unchanged); the gripper as is.

    Why: the expert's deltas are continuous, so over 256 bins per dimension a moving step's label
    spreads over dozens of neighbouring bins while "stand still" (grasping, holding, near a goal)
    is one bin. Greedy decoding then picks that one bin whatever the image: a first policy trained
    on raw labels commanded dx = dy = 0 in every state (issue 12). Rounded to a few levels (11 per
    axis for 5 mm up to the expert's 25 mm step) the action tokens become a small classification
    that argmax decodes well; the expert acting with the rounded actions still solves 90/90
    episodes (seeds 1000-1029, every family).
    """
    rounded = np.array(actions, dtype=np.float64, copy=True)
    for columns, quantum in ((slice(0, 3), translation_m), (slice(3, 6), rotation_rad)):
        if quantum > 0:
            rounded[..., columns] = np.round(rounded[..., columns] / quantum) * quantum
    return rounded


def action_tokens(tokenizer: ActionTokenizer, stats: ActionStats, actions: np.ndarray) -> np.ndarray:
    """(..., 7) robot-unit actions -> (..., 7) int64 target token ids (normalise, then OpenVLA's bins)."""
    return np.asarray(tokenizer.normalized_to_tokens(normalize_actions(stats, actions)), dtype=np.int64)


def batch_rows(step: int, batch_size: int, count: int, seed: int) -> np.ndarray:
    """Frame rows of batch ``step``: samples ``step * batch_size ...`` of the run's sample order.

    Sample ``i`` is ``permutation(seed, i // count)[i % count]`` (a fresh permutation per epoch),
    so the order depends on (seed, step) only. Returns (batch_size,) int64.
    """
    if count < 1:
        raise ValueError("no frames to draw from")
    first = step * batch_size
    rows = np.empty(batch_size, np.int64)
    permutations: dict[int, np.ndarray] = {}
    for k in range(batch_size):
        epoch, position = divmod(first + k, count)
        if epoch not in permutations:
            permutations[epoch] = np.random.default_rng([seed, epoch]).permutation(count)
        rows[k] = permutations[epoch][position]
    return rows


def steps_for_epochs(epochs: float, frames: int, batch_size: int) -> int:
    """Optimiser steps that show each training frame ``epochs`` times on average (at least 1)."""
    return max(1, math.ceil(epochs * frames / batch_size))


def evenly_spaced(count: int, limit: int) -> np.ndarray:
    """At most ``limit`` row indices spread evenly over ``range(count)`` (all when ``count <= limit``)."""
    if count <= limit:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, limit).round().astype(np.int64))
