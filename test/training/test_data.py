"""Training data: seed-wise split, action normalisation that inverts OpenVLA's, batch order, errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test.training.conftest import DATASET_KEY, EPISODES, FAMILIES, STEPS, make_episode, write_dataset
from vla_cache_ros.errors import TrainingError
from vla_cache_ros.models.action_tokenizer import ActionTokenizer
from vla_cache_ros.sim.dataset import (
    STATISTICS_FILE,
    compute_norm_stats,
    episode_path,
    read_episode,
    write_episode,
    write_norm_stats,
)
from vla_cache_ros.sim.scene import OBJECTS
from vla_cache_ros.sim.tasks import PAD_NAME
from vla_cache_ros.training.data import (
    LOCATED_POINTS,
    OFFSET_SCALE,
    PATCH_SIZE,
    action_tokens,
    auxiliary_targets,
    batch_rows,
    evenly_spaced,
    load_training_data,
    normalize_actions,
    patch_index,
    quantize_actions,
    split_seeds,
    steps_for_epochs,
)


def test_split_holds_out_whole_episodes_per_family(tiny_dataset: Path) -> None:
    data = load_training_data(tiny_dataset, val_fraction=0.34, seed=3)
    assert data.dataset_key == DATASET_KEY and list(data.norm_stats) == [DATASET_KEY]
    assert not set(data.train_seeds) & set(data.val_seeds)
    assert sorted(data.train_seeds + data.val_seeds) == list(range(EPISODES))
    assert {seed % 2 for seed in data.val_seeds} == {0, 1}  # one held out from each family
    assert set(data.val.episode_seed) == set(data.val_seeds) and set(data.train.episode_seed) == set(data.train_seeds)
    assert len(data.train) + len(data.val) == EPISODES * STEPS
    assert load_training_data(tiny_dataset, 0.34, 3).val_seeds == data.val_seeds  # seeded
    assert load_training_data(tiny_dataset, 0.0, 3).val_seeds == []


def test_split_keeps_a_single_episode_family_for_training() -> None:
    train, val = split_seeds({1: "pick", 2: "pick", 3: "touch"}, 0.5, seed=0)
    assert 3 in train and len(val) == 1 and val[0] in (1, 2)


def test_normalisation_is_inverted_by_the_models_unnormalisation(tiny_dataset: Path) -> None:
    data = load_training_data(tiny_dataset, 0.0, 0)
    stats = data.action_stats
    tokenizer = ActionTokenizer(32064)
    rng = np.random.default_rng(0)
    actions = rng.uniform(stats.low, stats.high, size=(200, 7))
    actions[:, 6] = rng.integers(0, 2, 200)
    normalized = normalize_actions(stats, actions)
    np.testing.assert_allclose(stats.unnormalize(normalized), actions, atol=1e-12)
    decoded = stats.unnormalize(tokenizer.tokens_to_normalized(action_tokens(tokenizer, stats, actions)))
    # One bin is 2/255 wide in [-1, 1]; its centre is at most half of that from the value.
    half_bin = np.where(stats.mask, (stats.high - stats.low) / 255, 1 / 255)
    assert np.all(np.abs(decoded - actions) <= half_bin + 1e-9)
    # Out-of-range actions land in the outermost bins; a constant dimension (roll, pitch here) at 0.
    moving = stats.high > stats.low
    assert list(moving) == [True, True, True, False, False, True, True]
    np.testing.assert_array_equal(normalize_actions(stats, stats.high + 1)[:6], np.where(moving, 1.0, 0.0)[:6])


def test_batch_order_is_a_function_of_seed_and_step() -> None:
    rows = np.concatenate([batch_rows(step, 4, 10, seed=5) for step in range(5)])
    assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:20]) == list(range(10))  # epochs
    np.testing.assert_array_equal(batch_rows(3, 4, 10, seed=5), rows[12:16])
    assert not np.array_equal(batch_rows(0, 4, 10, seed=6), rows[:4])
    assert steps_for_epochs(2, 10, 4) == 5
    assert list(evenly_spaced(5, 10)) == list(range(5)) and list(evenly_spaced(10, 3)) == [0, 4, 9]


def test_unusable_data_is_a_training_error(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="not a directory"):
        load_training_data(tmp_path / "missing", 0.1, 0)
    with pytest.raises(TrainingError, match="no episodes"):
        load_training_data(tmp_path, 0.1, 0)
    data = write_dataset(tmp_path / "data", episodes=2)
    with pytest.raises(TrainingError, match="unknown_key|no norm stats"):
        load_training_data(data, 0.1, 0, dataset_key="unknown_key")
    (data / STATISTICS_FILE).unlink()
    with pytest.raises(TrainingError, match="dataset_statistics.json"):
        load_training_data(data, 0.1, 0)


def test_auxiliary_targets_name_each_points_patch_and_offset(tiny_dataset: Path, tmp_path: Path) -> None:
    data = load_training_data(tiny_dataset, val_fraction=0.0, seed=0)
    frames = data.train
    assert frames.patch_targets is not None and frames.offsets is not None
    assert frames.patch_targets.shape == (len(frames), len(LOCATED_POINTS)) and frames.offsets.shape == (len(frames), 6)
    for row in range(len(frames)):
        # The fixture's objects all lie on the ray through the square: its patch is theirs.
        square = np.argwhere(frames.images[row, :, :, 1] != 120)  # only the square differs in green
        (top, left), (bottom, right) = square.min(0), square.max(0)
        centre_row, centre_col = (top + bottom + 1) / 2, (left + right + 1) / 2
        expected = int(centre_row // PATCH_SIZE) * 16 + int(centre_col // PATCH_SIZE)
        assert list(frames.patch_targets[row, :4]) == [expected] * 4, row
    # tcp = proprio[:3] = 0 in the fixture: offsets are the object position in decimetres, twice
    # (no destination outside `place`).
    record = read_episode(episode_path(tiny_dataset, 0))
    patches, offsets, pointed = auxiliary_targets(record)
    # Pointer targets: the task object's column, the destination's (the task object outside
    # `place`) and the tcp's, per frame.
    target = [obj.name for obj in OBJECTS].index(record.target)
    np.testing.assert_array_equal(pointed, patches[:, [target, target, len(OBJECTS)]])
    np.testing.assert_array_equal(frames.pointer_targets[:len(record)], pointed)
    record.family = "place"
    pad = [obj.name for obj in OBJECTS].index(PAD_NAME)
    np.testing.assert_array_equal(auxiliary_targets(record)[2][:, 1], patches[:, pad])
    record.family = "touch"
    np.testing.assert_allclose(offsets[:, :3], OFFSET_SCALE * record.object_positions[:, 0], rtol=1e-6)
    np.testing.assert_array_equal(offsets[:, 3:], offsets[:, :3])
    # Outside the image is -100 (ignored); older datasets without positions have no targets.
    assert patch_index(np.array([[5.0, 5.0, -3.0], [-5.0, 0.0, 0.5]])).tolist() == [-100, -100]
    record.object_positions = None
    assert auxiliary_targets(record) is None
    old = tmp_path / "old"
    write_episode(episode_path(old, 0), record)
    record.seed = 1
    write_episode(episode_path(old, 1), record)
    write_norm_stats(old, compute_norm_stats(old, DATASET_KEY))
    assert load_training_data(old, 0.0, 0).train.patch_targets is None


def test_quantised_labels_round_each_group_and_leave_the_gripper() -> None:
    actions = np.array([[0.0124, -0.0026, 0.0249, 0.01, -0.03, 0.126, 1.0],
                        [0.0, 0.0024, -0.0176, 0.0, 0.0, -0.024, 0.0]])
    rounded = quantize_actions(actions, 0.005, 0.05)
    np.testing.assert_allclose(rounded, [[0.01, -0.005, 0.025, 0.0, -0.05, 0.15, 1.0],
                                         [0.0, 0.0, -0.02, 0.0, 0.0, 0.0, 0.0]], atol=1e-12)
    np.testing.assert_array_equal(quantize_actions(actions, 0.0, 0.0), actions)  # 0: raw labels
    np.testing.assert_array_equal(actions[0, 0], 0.0124)  # the input is not modified


def test_policy_driven_collections_join_with_their_failed_episodes(tiny_dataset: Path, tmp_path: Path) -> None:
    """DAgger data (issue 12): a further --data directory made by `sim-collect --policy` adds every
    episode, failed ones too (their labels are the expert's); the first directory's statistics
    normalise all; an expert directory keeps only successes; seeds must not repeat."""
    dagger = tmp_path / "dagger"
    for index in range(3):
        record = make_episode(100 + index, FAMILIES[index % len(FAMILIES)])
        record.success = index == 0
        record.actions[:, 0] *= 50.0  # outside the first directory's range: statistics are not recomputed
        write_episode(episode_path(dagger, index), record)
    write_norm_stats(dagger, compute_norm_stats(dagger, DATASET_KEY))
    (dagger / "manifest.json").write_text(json.dumps({"policy": {"model": "m", "expert_mix": 0.0}}))
    base = load_training_data(tiny_dataset, 0.0, 0)
    joined = load_training_data([tiny_dataset, dagger], 0.0, 0)
    assert len(joined.train) == len(base.train) + 3 * STEPS
    assert joined.train_seeds == base.train_seeds + [100, 101, 102]
    assert joined.norm_stats == base.norm_stats and joined.fingerprint != base.fingerprint
    (dagger / "manifest.json").unlink()  # an expert collection: its failures are left out
    assert load_training_data([tiny_dataset, dagger], 0.0, 0).train_seeds == base.train_seeds + [100]
    with pytest.raises(TrainingError, match="are both episode seed 0; the split is by seed"):
        load_training_data([tiny_dataset, tiny_dataset], 0.0, 0)
    with pytest.raises(TrainingError, match="not a directory"):
        load_training_data([tiny_dataset, tmp_path / "missing"], 0.0, 0)


def test_loading_holds_the_frames_once(tmp_path: Path) -> None:
    """Regression (issue 12, a 75 k-frame DAgger training set killed by the kernel's OOM killer at
    24 GB): frames were loaded episode by episode and then concatenated, so the peak held them
    twice. They are now copied into one preallocated array, one episode at a time."""
    import tracemalloc

    data = write_dataset(tmp_path / "data", episodes=16)
    frame_bytes = 224 * 224 * 3 * 16 * STEPS
    tracemalloc.start()
    try:
        loaded = load_training_data(data, 0.0, 0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert loaded.train.images.nbytes == frame_bytes
    assert peak < 1.5 * frame_bytes, f"peak {peak / frame_bytes:.2f}x the frames"


def test_which_directory_normalises_is_part_of_the_data(tiny_dataset: Path, tmp_path: Path) -> None:
    """Regression (a new user's trial): `--data A B` and `--data B A` had one fingerprint, so a run
    resumed with the order swapped switched its action statistics mid-run; and a policy-driven
    directory first (statistics of a few policy successes) was accepted silently."""
    other = tmp_path / "other"
    for index in range(4):
        write_episode(episode_path(other, index), make_episode(200 + index, FAMILIES[index % len(FAMILIES)]))
    write_norm_stats(other, compute_norm_stats(other, DATASET_KEY))
    forward = load_training_data([tiny_dataset, other], 0.0, 0)
    backward = load_training_data([other, tiny_dataset], 0.0, 0)
    assert forward.norm_stats != backward.norm_stats and forward.fingerprint != backward.fingerprint
    (other / "manifest.json").write_text(json.dumps({"policy": {"model": "m"}}))
    with pytest.raises(TrainingError, match="give the expert collection first"):
        load_training_data([other, tiny_dataset], 0.0, 0)
