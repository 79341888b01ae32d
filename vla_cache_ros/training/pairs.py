"""Consecutive frame pairs (t-1, t) for training what rides along with a frozen VLA: the
learned cache (``training/lac.py``) and the drafter (``training/drafter.py``).

A ``--data`` directory with ``episodes/`` is a ``sim-collect`` dataset (held out by episode, at
random under the seed); any other is read as a rosbag2 recording (camera frames and the
instruction topic; its last ``val_fraction`` frames held out). Frames are kept once; the pairs
index them. ``labels``: the recorded actions become action tokens with the model's norm stats,
after the same rounding as ``train-policy``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vla_cache_ros.errors import BagError, ConfigurationError, DatasetError, TrainingError, UserFacingError
from vla_cache_ros.models.vla import OpenVLA
from vla_cache_ros.training.data import action_tokens, quantize_actions
from vla_cache_ros.training.loop import DEFAULT_LABEL_QUANTUM_M, DEFAULT_LABEL_QUANTUM_RAD


@dataclass
class PairSet:
    """Frames and the consecutive pairs among them.

    Attributes:
        images: (M, H, W, 3) uint8 RGB frames.
        instructions: (M,) instruction of each frame.
        labels: (M, 7) int64 action tokens of the recorded actions, or None (bags; or not asked).
        pairs: (P, 2) int64 rows (previous, current) of consecutive frames of one episode / bag.
    """

    images: np.ndarray
    instructions: list[str]
    labels: np.ndarray | None
    pairs: np.ndarray

    def __len__(self) -> int:
        return len(self.pairs)


@dataclass
class PairData:
    """The training and held-out pairs and where they came from."""

    train: PairSet
    val: PairSet
    sources: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Sequence:
    images: list[np.ndarray]
    instruction: str
    actions: np.ndarray | None
    held_out: np.ndarray  # (T,) bool


def _sim_sequences(root: Path, val_fraction: float, seed: int, max_frames: int | None) -> list[_Sequence]:
    from vla_cache_ros.sim.dataset import iter_episode_files

    sequences: list[_Sequence] = []
    frames = 0
    rng = np.random.default_rng([seed, 7])
    try:
        for _, record in iter_episode_files(root, successful_only=False, images=True):
            if max_frames is not None and frames >= max_frames:
                break
            count = len(record) if max_frames is None else min(len(record), max_frames - frames)
            held = bool(rng.random() < val_fraction)
            sequences.append(_Sequence(list(record.images[:count]), record.instruction,
                                       np.asarray(record.actions[:count]), np.full(count, held)))
            frames += count
    except DatasetError as error:
        raise TrainingError(str(error)) from None
    return sequences


def _bag_sequences(root: Path, val_fraction: float, instruction: str | None, max_frames: int | None
                   ) -> list[_Sequence]:
    from vla_cache_ros.replay.bag_reader import BagReader
    from vla_cache_ros.replay.frames import FrameReader

    images: list[np.ndarray] = []
    said: list[str | None] = []
    try:
        with BagReader(root) as bag:
            for frame in FrameReader(bag, instruction=instruction, command_topic=None, joint_topic=None,
                                     max_frames=max_frames):
                images.append(frame.image)
                said.append(frame.instruction)
    except (BagError, ConfigurationError) as error:
        raise TrainingError(f"--data {root}: {error}") from None
    if any(text is None for text in said):
        raise TrainingError(f"--data {root}: frames without an instruction (the bag records none before them); "
                            "pass --instruction")
    held = np.zeros(len(images), bool)
    held[int(round(len(images) * (1 - val_fraction))):] = True  # the bag's last frames
    sequences: list[_Sequence] = []
    first = 0
    for index in range(1, len(images) + 1):  # one sequence per stretch of one instruction
        if index == len(images) or said[index] != said[first]:
            sequences.append(_Sequence(images[first:index], str(said[first]), None, held[first:index]))
            first = index
    return sequences


def _pair_set(sequences: list[tuple[_Sequence, np.ndarray]], labels: bool) -> PairSet:
    images: list[np.ndarray] = []
    instructions: list[str] = []
    tokens: list[np.ndarray] = []
    pairs: list[tuple[int, int]] = []
    for sequence, rows in sequences:
        start = len(images)
        kept = [int(r) for r in rows]
        images.extend(sequence.images[r] for r in kept)
        instructions.extend([sequence.instruction] * len(kept))
        if labels:
            assert sequence.actions is not None
            tokens.append(sequence.actions[kept])
        pairs.extend((start + i - 1, start + i) for i in range(1, len(kept)) if kept[i] == kept[i - 1] + 1)
    stacked = np.stack(images) if images else np.zeros((0, 224, 224, 3), np.uint8)
    return PairSet(stacked, instructions, np.concatenate(tokens) if labels and tokens else None,
                   np.asarray(pairs, np.int64).reshape(-1, 2))


def _check_one_frame_size(sources: list[dict[str, Any]]) -> None:
    """Raise TrainingError naming each ``--data`` source's frame size when they differ (frames are
    held in one array; collect or record the sources at one camera size)."""
    shapes = {tuple(shape) for source in sources for shape in source["frame_shapes"]}
    if len(shapes) > 1:
        listed = "; ".join(f"{source['path']}: {', '.join('x'.join(map(str, s)) for s in source['frame_shapes'])}"
                           for source in sources)
        raise TrainingError(f"--data mixes frame sizes ({listed}); train on sources of one camera size")


class PairSettings(Protocol):
    """What :func:`load_pairs` reads of a run's settings (``CacheTrainConfig`` and
    ``DrafterTrainConfig`` both provide it).

    Attributes:
        data: ``sim-collect`` directories and/or rosbag2 directories.
        val_fraction: share of episodes (bags: of each bag's last frames) held out, in [0, 1).
        seed: seeds the random split of ``sim-collect`` episodes.
        max_frames: read at most this many frames per data directory (None: all).
        instruction: the instruction of bags that record none.
        labels: turn the recorded actions into action tokens (``sim-collect`` data only).
        unnorm_key: the norm-stats key of those labels (None: the model's only one).
    """

    @property
    def data(self) -> tuple[Path, ...]: ...

    @property
    def val_fraction(self) -> float: ...

    @property
    def seed(self) -> int: ...

    @property
    def max_frames(self) -> int | None: ...

    @property
    def instruction(self) -> str | None: ...

    @property
    def labels(self) -> bool: ...

    @property
    def unnorm_key(self) -> str | None: ...


def load_pairs(config: PairSettings, model: OpenVLA) -> PairData:
    """Read every ``--data`` directory into training and held-out frame pairs.

    A directory with ``episodes/`` is a ``sim-collect`` dataset (held out by episode, at random
    under the seed); any other is read as a rosbag2 recording (its last ``val_fraction`` frames
    held out). ``labels``: the recorded actions become action tokens with the model's norm stats
    (``unnorm_key``) after the same rounding as ``train-policy``.

    Raises:
        TrainingError: a directory that is neither, a bag without instructions, labels asked of
            bags, or no pair at all.
    """
    sequences: list[_Sequence] = []
    sources: list[dict[str, Any]] = []
    for root in config.data:
        if not Path(root).is_dir():
            raise TrainingError(f"--data {root} is not a directory")
        if (Path(root) / "episodes").is_dir():
            found = _sim_sequences(Path(root), config.val_fraction, config.seed, config.max_frames)
            kind = "sim-collect"
        else:
            if config.labels:
                raise TrainingError(f"--task-loss labels needs sim-collect data with actions; {root} is a bag "
                                    "(use --task-loss distill)")
            found = _bag_sequences(Path(root), config.val_fraction, config.instruction, config.max_frames)
            kind = "rosbag2"
        shapes = sorted({tuple(image.shape) for sequence in found for image in sequence.images})
        sources.append({"path": str(root), "kind": kind, "frames": sum(len(s.images) for s in found),
                        "frame_shapes": [list(shape) for shape in shapes]})
        sequences.extend(found)
    _check_one_frame_size(sources)
    labels = bool(config.labels)
    if labels:
        try:
            stats = model.action_statistics.select(config.unnorm_key)
        except UserFacingError as error:
            raise TrainingError(f"--unnorm-key: {error}") from None
        for sequence in sequences:
            assert sequence.actions is not None
            rounded = quantize_actions(sequence.actions, DEFAULT_LABEL_QUANTUM_M, DEFAULT_LABEL_QUANTUM_RAD)
            sequence.actions = action_tokens(model.action_tokenizer, stats, rounded)
    split = [[(s, np.flatnonzero(s.held_out == held)) for s in sequences] for held in (False, True)]
    data = PairData(_pair_set(split[0], labels), _pair_set(split[1], labels), sources)
    if len(data.train) == 0:
        raise TrainingError(f"--data {', '.join(map(str, config.data))}: no consecutive frame pair to train on")
    return data


__all__ = ["PairData", "PairSet", "PairSettings", "load_pairs"]
