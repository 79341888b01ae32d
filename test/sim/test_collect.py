"""sim-collect: a readable rosbag2 and dataset per episode, OpenVLA norm stats, resuming."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from rosbags.interfaces import QosDurability

from vla_cache_ros import topics
from vla_cache_ros.apps.cli import main as cli_main
from vla_cache_ros.replay.bag_reader import BagReader
from vla_cache_ros.sim.collect import BAGS_DIR
from vla_cache_ros.sim.dataset import (
    STATISTICS_FILE,
    DatasetError,
    episode_path,
    iter_episodes,
    read_episode,
    read_norm_stats,
)
from vla_cache_ros.sim.scene import OBJECTS


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("collect") / "data"
    assert cli_main(["sim-collect", "--episodes", "3", "--out", str(out), "--seed", "7", "--quiet"]) == 0
    return out


def test_dataset_episodes_hold_aligned_arrays(collected: Path) -> None:
    records = list(iter_episodes(collected))
    assert sorted(r.family for r in records) == ["pick", "place", "touch"]
    for index, record in enumerate(sorted(records, key=lambda r: r.seed)):
        assert record.seed == 7 + index and record.success
        steps = len(record)
        assert steps > 3
        assert record.images.shape == (steps, 224, 224, 3) and record.images.dtype == np.uint8
        assert record.actions.shape == (steps, 7) and record.proprio.shape == (steps, 7)
        assert record.joint_positions.shape == (steps, 5)
        # Object centres per step (training-only supervision): the pad never moves, and the
        # task object is where the expert's hand ends up for pick and touch.
        assert record.object_positions.shape == (steps, len(OBJECTS), 3)
        pad = [obj.name for obj in OBJECTS].index("green_square")
        assert np.ptp(record.object_positions[:, pad], axis=0).max() < 1e-6
        if record.family in ("pick", "touch"):
            target = [obj.name for obj in OBJECTS].index(record.target)
            assert np.linalg.norm(record.object_positions[-1, target] - record.proprio[-1, :3]) < 0.06
        assert set(np.unique(record.actions[:, 6])) <= {0.0, 1.0}
        # The image changes as the arm moves.
        assert np.abs(record.images[-1].astype(int) - record.images[0]).mean() > 0.5
        # Proprio follows the actions: the summed translation deltas roughly match the motion.
        moved = record.proprio[-1, :3] - record.proprio[0, :3]
        np.testing.assert_allclose(record.actions[:-1, :3].sum(0), moved, atol=0.03)


def test_norm_stats_have_openvla_structure(collected: Path) -> None:
    stats = read_norm_stats(collected)
    assert list(stats) == ["vla_cache_sim"]
    entry = stats["vla_cache_sim"]
    for key in ("mean", "std", "max", "min", "q01", "q99"):
        assert len(entry["action"][key]) == 7 and len(entry["proprio"][key]) == 7
    assert entry["action"]["mask"] == [True] * 6 + [False]
    actions = np.concatenate([r.actions for r in iter_episodes(collected, images=False)])
    np.testing.assert_allclose(entry["action"]["q01"], np.quantile(actions, 0.01, axis=0), atol=1e-6)
    np.testing.assert_allclose(entry["action"]["q99"], np.quantile(actions, 0.99, axis=0), atol=1e-6)
    assert entry["num_transitions"] == len(actions) and entry["num_trajectories"] == 3


def test_bag_holds_the_episode(collected: Path) -> None:
    record = read_episode(episode_path(collected, 1))
    with BagReader(collected / BAGS_DIR / "episode_000001") as bag:
        counts = {name: summary.message_count for name, summary in bag.topics.items()}
        assert counts[topics.CAMERA_TOPIC] == len(record)
        assert counts[topics.ACTION_TOPIC] == counts[topics.TWIST_TOPIC] == counts[topics.GRIPPER_TOPIC] == len(record)
        assert counts[topics.JOINT_STATES_TOPIC] == counts[topics.EE_POSE_TOPIC] >= 5 * len(record)
        assert counts[topics.INSTRUCTION_TOPIC] == 1 and counts[topics.EPISODE_STATUS_TOPIC] == 1
        assert bag.qos_profiles(topics.INSTRUCTION_TOPIC)[0].durability == QosDurability.TRANSIENT_LOCAL
        (_, instruction), = bag.messages([topics.INSTRUCTION_TOPIC])
        assert instruction.data == record.instruction
        images = [m for _, m in bag.messages([topics.CAMERA_TOPIC])]
        assert images[0].encoding == "rgb8" and (images[0].height, images[0].width) == (224, 224)
        np.testing.assert_array_equal(np.asarray(images[3].data).reshape(224, 224, 3), record.images[3])
        actions = np.array([m.data for _, m in bag.messages([topics.ACTION_TOPIC])])
        np.testing.assert_allclose(actions, record.actions, atol=1e-6)
        (_, status), = bag.messages([topics.EPISODE_STATUS_TOPIC])
        assert json.loads(status.data)["success"] is True


def test_collection_resumes_and_refuses_other_settings(collected: Path, capsys: pytest.CaptureFixture) -> None:
    first = episode_path(collected, 0)
    mtime = first.stat().st_mtime_ns
    # An interrupted run left a bag for episode 3 but no npz: it must be re-recorded.
    stale = collected / BAGS_DIR / "episode_000003"
    stale.mkdir()
    (stale / "junk").write_text("partial")
    assert cli_main(["sim-collect", "--episodes", "4", "--out", str(collected), "--seed", "7", "--quiet"]) == 0
    assert "(1 recorded now)" in capsys.readouterr().out
    assert first.stat().st_mtime_ns == mtime  # untouched
    assert read_episode(episode_path(collected, 3), images=False).seed == 10
    assert not (stale / "junk").exists()
    with BagReader(stale) as bag:
        assert bag.topics[topics.CAMERA_TOPIC].message_count > 0
    assert read_norm_stats(collected)["vla_cache_sim"]["num_trajectories"] == 4
    assert cli_main(["sim-collect", "--episodes", "4", "--out", str(collected), "--seed", "8", "--quiet"]) == 2
    assert "seed" in capsys.readouterr().err


def test_without_bags_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "nobags"
    assert cli_main(["sim-collect", "--episodes", "1", "--out", str(out), "--no-bags", "--quiet",
                     "--families", "touch"]) == 0
    assert not (out / BAGS_DIR).exists() and (out / STATISTICS_FILE).exists()
    assert cli_main(["sim-collect", "--episodes", "0", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "--episodes" in capsys.readouterr().err
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="broken.npz"):
        read_episode(broken)
    assert not os.listdir(out / "episodes")[0].startswith(".")


def test_noise_is_executed_but_labels_stay_the_experts(tmp_path: Path) -> None:
    """DART-style collection: in noisy episodes the arm drifts off the expert's path (different
    states) while every recorded label is the expert's clean answer for the state it saw."""
    clean, noisy, again = tmp_path / "clean", tmp_path / "noisy", tmp_path / "again"
    common = ["--episodes", "1", "--seed", "3", "--families", "touch", "--no-bags", "--quiet"]
    assert cli_main(["sim-collect", "--out", str(clean), *common]) == 0
    for out in (noisy, again):
        assert cli_main(["sim-collect", "--out", str(out), *common, "--noise-fraction", "1",
                         "--noise-translation", "0.01", "--noise-rotation", "0.02"]) == 0
    a, b, c = (read_episode(episode_path(out, 0)) for out in (clean, noisy, again))
    np.testing.assert_array_equal(a.actions[0], b.actions[0])  # same first state, clean label
    steps = min(len(a), len(b))
    assert not np.allclose(a.proprio[:steps], b.proprio[:steps])  # the noise was executed
    np.testing.assert_array_equal(b.actions, c.actions)  # seeded: the same episode twice
    np.testing.assert_array_equal(b.proprio, c.proprio)
    # Labels answer the drifted state (corrections), but do not carry the executed noise: raw
    # noise of std 0.01 would make consecutive labels differ by ~0.011 m in median.
    assert np.median(np.abs(np.diff(b.actions[:, :3], axis=0))) < 0.005
    manifest = json.loads((noisy / "manifest.json").read_text())
    assert manifest["noise_fraction"] == 1.0 and "noise_fraction" not in json.loads(
        (clean / "manifest.json").read_text())


def test_noise_fraction_picks_an_exact_share_of_episodes() -> None:
    from vla_cache_ros.sim.collect import CollectConfig

    config = CollectConfig(out_dir=Path("unused"), episodes=100, noise_fraction=0.5)
    assert sum(config.noisy(i) for i in range(100)) == 50
    assert [config.noisy(i) for i in range(4)] == [False, True, False, True]
    assert config.perturbation(0) is None and config.perturbation(1) is not None


def test_excursions_move_the_arm_away_and_the_expert_labels_the_state(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """Excursions (issue 12): random moves of centimetres replace the executed action now and then,
    so the arm visits states beside the expert's path; labels come from the state-based expert,
    never from the excursion, and the episode is seeded. Without state labels they are refused."""
    from vla_cache_ros.sim.collect import CollectConfig, Excursions

    common = ["--episodes", "1", "--seed", "5", "--families", "pick", "--no-bags", "--quiet",
              "--expert-labels", "state"]
    clean, moved, again = tmp_path / "clean", tmp_path / "moved", tmp_path / "again"
    assert cli_main(["sim-collect", "--out", str(clean), *common]) == 0
    for out in (moved, again):
        assert cli_main(["sim-collect", "--out", str(out), *common, "--excursion-fraction", "1",
                         "--excursion-step", "0.02"]) == 0
    a, b, c = (read_episode(episode_path(out, 0)) for out in (clean, moved, again))
    steps = min(len(a), len(b))
    assert np.abs(a.proprio[:steps, :3] - b.proprio[:steps, :3]).max() > 0.01  # centimetres off the path
    np.testing.assert_array_equal(b.actions, c.actions)
    np.testing.assert_array_equal(b.proprio, c.proprio)
    # Labels are the expert's (bounded by its 0.025 m step), not the excursions' moves.
    assert np.linalg.norm(b.actions[:, :3], axis=1).max() <= 0.025 + 1e-6
    manifest = json.loads((moved / "manifest.json").read_text())
    assert manifest["expert_labels"] == "state" and manifest["excursions"]["fraction"] == 1.0
    assert cli_main(["sim-collect", "--out", str(tmp_path / "refused"), "--episodes", "1", "--no-bags", "--quiet",
                     "--excursion-fraction", "0.5"]) == 2
    assert "needs --expert-labels state" in capsys.readouterr().err and not (tmp_path / "refused").exists()
    assert cli_main(["sim-collect", "--out", str(moved), *common]) == 2  # a resume cannot drop them
    assert "excursions" in capsys.readouterr().err

    excursions = Excursions(rate=1.0, step_m=0.02, max_steps=3, rng=np.random.default_rng(0))
    expert_action = np.array([0.01, 0.0, 0.0, 0.0, 0.0, 0.1, 1.0])
    executed = [excursions(expert_action) for _ in range(200)]
    replaced = [step for step in executed if not np.allclose(step[:3], expert_action[:3])]
    assert replaced and all(np.allclose(step[3:], expert_action[3:]) for step in executed)
    horizontal = np.array([np.linalg.norm(step[:2]) for step in replaced])
    vertical = np.array([step[2] for step in replaced])
    assert horizontal.min() >= 0.4 * 0.02 - 1e-9 and horizontal.max() <= 0.02 + 1e-9
    assert -0.8 * 0.02 <= vertical.min() and vertical.max() <= 0.4 * 0.02 and (vertical < 0).mean() > 0.5
    config = CollectConfig(out_dir=Path("unused"), episodes=10, expert_labels="state", excursion_fraction=0.3)
    assert sum(config.perturbation(i) is not None for i in range(10)) == 3


def test_policy_driven_collection_executes_the_policy_and_labels_with_the_expert(tmp_path: Path,
                                                                               capsys: pytest.CaptureFixture) -> None:
    """DAgger (issue 12): the policy (here the seeded random `tiny` checkpoint) drives the arm, every
    frame is labelled with the expert's action for the state reached; with --expert-mix 1 the
    expert drives every step: labelled by history, the episode equals a plain expert recording;
    labelled by state (the default), the expert solves it too."""
    expert, driven, mixed, by_state = tmp_path / "expert", tmp_path / "driven", tmp_path / "mixed", tmp_path / "state"
    common = ["--episodes", "1", "--seed", "5", "--families", "touch", "--no-bags", "--quiet"]
    assert cli_main(["sim-collect", "--out", str(expert), *common]) == 0
    assert cli_main(["sim-collect", "--out", str(driven), *common, "--policy", "tiny", "--stall-steps", "10"]) == 0
    assert "policy (expert mix 0) success 0/1" in capsys.readouterr().out
    assert cli_main(["sim-collect", "--out", str(mixed), *common, "--policy", "tiny", "--expert-mix", "1",
                     "--expert-labels", "history"]) == 0
    assert cli_main(["sim-collect", "--out", str(by_state), *common, "--policy", "tiny", "--expert-mix", "1"]) == 0
    a, b, c, d = (read_episode(episode_path(out, 0)) for out in (expert, driven, mixed, by_state))
    assert d.success and np.all(d.actions[:, 6] == 0.0)
    np.testing.assert_array_equal(a.actions[0], b.actions[0])  # same first state, the expert's label
    steps = min(len(a), len(b))
    assert not np.allclose(a.proprio[:steps], b.proprio[:steps])  # the policy's actions were executed
    assert not b.success and len(b) < len(a) + 200  # a random policy fails; it is kept on file
    assert np.all(b.actions[:, 6] == 0.0)  # touch: the expert's label keeps the gripper closed
    np.testing.assert_array_equal(a.actions, c.actions)
    np.testing.assert_array_equal(a.images, c.images)
    manifest = json.loads((driven / "manifest.json").read_text())
    assert manifest["policy"] == {"model": "tiny", "unnorm_key": None, "expert_mix": 0.0, "stall_steps": 10,
                                  "expert_labels": "state"}
    assert "expert_labels" not in json.loads((mixed / "manifest.json").read_text())["policy"]  # as older ones
    # A resume must keep the driving settings; bags and DART noise do not mix with a policy.
    assert cli_main(["sim-collect", "--out", str(driven), *common, "--policy", "tiny", "--expert-mix", "0.5",
                     "--stall-steps", "10"]) != 0
    assert "expert_mix" in capsys.readouterr().err
    with_bags = [arg for arg in common if arg != "--no-bags"]
    assert cli_main(["sim-collect", "--out", str(tmp_path / "b"), *with_bags, "--policy", "tiny"]) != 0
    assert "--no-bags" in capsys.readouterr().err
    assert cli_main(["sim-collect", "--out", str(tmp_path / "n"), *common, "--policy", "tiny",
                     "--noise-fraction", "0.5"]) != 0
    assert cli_main(["sim-collect", "--out", str(tmp_path / "m"), *common, "--policy", "tiny",
                     "--expert-mix", "1.5"]) != 0
    assert "--expert-mix must lie in [0, 1]" in capsys.readouterr().err
    assert cli_main(["sim-collect", "--out", str(tmp_path / "k"), *common, "--expert-mix", "0.5"]) != 0
    assert "only with --policy" in capsys.readouterr().err
    # The expert may label (and drive) by state without a policy too; the manifest says so.
    assert cli_main(["sim-collect", "--out", str(tmp_path / "k"), *common, "--expert-labels", "state"]) == 0
    assert json.loads((tmp_path / "k" / "manifest.json").read_text())["expert_labels"] == "state"
    # A collection labelled by history resumes only as such.
    assert cli_main(["sim-collect", "--out", str(mixed), *common, "--policy", "tiny", "--expert-mix", "1"]) != 0
    assert "expert_labels" in capsys.readouterr().err


def test_a_stalled_policy_ends_its_episode_early() -> None:
    """A policy that stands still would fill the 20 s timeout with copies of one state; the
    episode ends once the tcp moved less than 1 cm over ``stall_steps`` steps."""
    from vla_cache_ros.sim.collect import PolicyDriver, record_episode
    from vla_cache_ros.sim.env import TabletopSim
    from vla_cache_ros.sim.expert import ScriptedExpert

    def stand_still(image: np.ndarray, instruction: str) -> np.ndarray:
        assert image.shape == (224, 224, 3) and instruction.startswith("touch")
        return np.zeros(7)

    with TabletopSim() as sim:
        driver = PolicyDriver(stand_still, 0.0, np.random.default_rng(0))
        record = record_episode(sim, ScriptedExpert(), 11, "touch", None, 50.0, driver=driver, stall_steps=6)
    assert len(record) == 6 and driver.policy_steps == 6 and not record.success
    assert np.abs(record.actions[:, :3]).max() > 0.01  # the labels still say where to go


def test_a_resume_cannot_drop_the_policy_or_the_noise(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Regression (a new user's trial): resuming a --policy collection without --policy appended
    expert episodes to it (the manifest check compared only the keys the new run writes); the same
    held for --noise-fraction. A bad --policy no longer leaves a manifest that blocks the fix, and
    --stall-steps alone is refused like --expert-mix."""
    common = ["--no-bags", "--quiet", "--families", "touch", "--seed", "9"]
    driven = tmp_path / "driven"
    assert cli_main(["sim-collect", "--episodes", "1", "--out", str(driven), *common, "--policy", "tiny",
                     "--stall-steps", "5"]) == 0
    capsys.readouterr()
    assert cli_main(["sim-collect", "--episodes", "2", "--out", str(driven), *common]) == 2
    assert "policy: {'model': 'tiny'" in capsys.readouterr().err and len(os.listdir(driven / "episodes")) == 1
    noisy = tmp_path / "noisy"
    assert cli_main(["sim-collect", "--episodes", "1", "--out", str(noisy), *common, "--noise-fraction", "1"]) == 0
    assert cli_main(["sim-collect", "--episodes", "2", "--out", str(noisy), *common]) == 2
    assert "noise_fraction: 1.0 there, None now" in capsys.readouterr().err
    fixed = tmp_path / "fixed"
    assert cli_main(["sim-collect", "--episodes", "1", "--out", str(fixed), *common, "--policy",
                     str(tmp_path / "no_such_model")]) == 2
    assert "does not exist" in capsys.readouterr().err and not fixed.exists()
    assert cli_main(["sim-collect", "--episodes", "1", "--out", str(fixed), *common, "--stall-steps", "5"]) == 2
    assert "apply only with --policy" in capsys.readouterr().err
