"""A few training steps: deterministic, loss falls, resume equals the uninterrupted run, the
checkpoint loads with ``load_vla`` and acts as training evaluated it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from test.training.conftest import interrupted_after, write_dataset
from vla_cache_ros.errors import TrainingError
from vla_cache_ros.models.vla import load_vla
from vla_cache_ros.sim.dataset import read_episode, write_episode
from vla_cache_ros.training.data import evenly_spaced, load_training_data
from vla_cache_ros.training.loop import AUX_PREFIX, DEFAULT_AUX_WEIGHT, TrainConfig, TrainResult, train
from vla_cache_ros.training.model import PRESETS, Preset
from vla_cache_ros.training.state import load_state

STEPS = 8


def config(data: Path, out: Path, **changes) -> TrainConfig:
    settings = dict(preset="micro", steps=STEPS, batch_size=4, lr=3e-3, warmup_steps=0, seed=1,
                    val_fraction=0.34, val_frames=8, greedy_frames=3, eval_every=3, save_every=2, threads=2,
                    device="cpu", progress=False)
    settings.update(changes)
    return TrainConfig(data, out, **settings)


def quiet(_: str) -> None:
    """Swallows the run's log lines."""


@pytest.fixture(scope="module")
def full_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train(config(tiny_dataset, tmp_path_factory.mktemp("bc") / "full"), log=quiet)


def test_losses_fall_and_repeat_with_the_seed(full_run: TrainResult, tiny_dataset: Path, tmp_path: Path) -> None:
    assert full_run.complete and full_run.resumed_from == 0 and len(full_run.losses) == STEPS
    assert all(np.isfinite(full_run.losses))
    assert full_run.losses[-1] < full_run.losses[0] - 0.5  # ln(32064) = 10.4 nats at the start
    again = train(config(tiny_dataset, tmp_path / "again"), log=quiet)
    assert again.losses == full_run.losses
    other = train(config(tiny_dataset, tmp_path / "other", seed=2), log=quiet)
    assert other.losses != full_run.losses


def test_resume_continues_with_the_uninterrupted_losses(full_run: TrainResult, tiny_dataset: Path,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    first = train(config(tiny_dataset, out), until_step=3, log=quiet)
    assert first.step == 3 and not first.complete and first.losses == full_run.losses[:3]
    assert load_state(out / "training" / "state").step == 3
    lines: list[str] = []
    second = train(config(tiny_dataset, out), log=lines.append)
    assert second.resumed_from == 3 and second.complete
    assert second.losses == full_run.losses[3:]
    assert lines[0] == f"resuming {out} at step 3/{STEPS}"
    resumed, uninterrupted = load_state(out / "training" / "state"), load_state(full_run.out_dir / "training" / "state")
    for name, tensor in uninterrupted.model.items():
        assert torch.equal(resumed.model[name], tensor), name
    assert [r["loss"] for r in resumed.history["train"]] == full_run.losses
    summary = json.loads((out / "training" / "summary.json").read_text())
    assert [s["start_step"] for s in summary["sessions"]] == [0, 3] and summary["complete"]
    # A finished run asked again does nothing more.
    assert train(config(tiny_dataset, out), log=quiet).losses == []


def test_checkpoint_loads_and_acts_as_training_evaluated(full_run: TrainResult, tiny_dataset: Path) -> None:
    out = full_run.out_dir
    assert (out / "training" / "learning_curves.png").stat().st_size > 0
    model = load_vla(out)
    data = load_training_data(tiny_dataset, 0.34, 1)
    stats = model.action_statistics.select("tiny_bc")  # the dataset's norm stats, under its key
    np.testing.assert_allclose(stats.low, data.action_stats.low)
    rows = evenly_spaced(len(data.val), 3)
    tokens = np.array([model.predict_action_tokens(data.val.images[r], data.val.instruction(r)).tokens.numpy()
                       for r in rows])
    np.testing.assert_array_equal(tokens, full_run.evaluation.greedy_tokens)
    for row in rows:
        action = model.predict_action(data.val.images[row], data.val.instruction(row))
        assert action.shape == (7,) and np.all(np.isfinite(action))
        masked = stats.mask
        assert np.all((action[masked] >= stats.low[masked]) & (action[masked] <= stats.high[masked]))
        assert -1 <= action[6] <= 1


def test_a_resume_with_other_settings_or_a_foreign_out_dir_is_refused(full_run: TrainResult, tiny_dataset: Path,
                                                                      tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="other settings.*lr"):
        train(config(tiny_dataset, full_run.out_dir, lr=1e-3), log=quiet)
    (tmp_path / "something").write_text("not a run")
    with pytest.raises(TrainingError, match="not empty"):
        train(config(tiny_dataset, tmp_path), log=quiet)


def test_bad_settings_are_training_errors(tiny_dataset: Path, tmp_path: Path) -> None:
    for changes, message in [({"steps": 0}, "--steps"), ({"val_fraction": 1.0}, "--val-fraction"),
                             ({"preset": "huge"}, "unknown preset"), ({"epochs": 1.0}, "not both")]:
        with pytest.raises(TrainingError, match=message):
            config(tiny_dataset, tmp_path, **changes)


def test_auxiliary_heads_learn_and_stay_out_of_the_checkpoint(full_run: TrainResult, tiny_dataset: Path,
                                                              tmp_path: Path) -> None:
    state = load_state(full_run.out_dir / "training" / "state")
    assert state.settings["aux_weight"] == DEFAULT_AUX_WEIGHT  # the fixture records object positions
    patch = [entry["patch_loss"] for entry in state.history["train"]]
    assert len(patch) == STEPS and patch[-1] < patch[0]
    assert any(name.startswith(AUX_PREFIX) for name in state.model)
    with safe_open(full_run.out_dir / "model.safetensors", "pt") as exported:
        assert not any("aux" in name for name in exported.keys())
    # Without auxiliary losses the action losses differ (the heads shape the shared features).
    plain = train(config(tiny_dataset, tmp_path / "plain", aux_weight=0.0), log=quiet)
    assert plain.losses[0] == full_run.losses[0] and plain.losses[-1] != full_run.losses[-1]
    assert not any(name.startswith(AUX_PREFIX) for name in load_state(tmp_path / "plain" / "training" / "state").model)


def test_auxiliary_weight_needs_recorded_object_positions(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data")
    for path in sorted((data / "episodes").glob("*.npz")):
        record = read_episode(path)
        record.object_positions = None
        write_episode(path, record)
    with pytest.raises(TrainingError, match="--aux-weight 1 needs object positions"):
        train(config(data, tmp_path / "out", aux_weight=1.0), log=quiet)
    result = train(config(data, tmp_path / "default", steps=1), log=quiet)
    assert load_state(result.out_dir / "training" / "state").settings["aux_weight"] == 0.0


def test_init_from_starts_from_another_runs_weights(full_run: TrainResult, tiny_dataset: Path,
                                                    tmp_path: Path) -> None:
    warm = train(config(tiny_dataset, tmp_path / "warm", init_from=full_run.out_dir, steps=1), log=quiet)
    cold = train(config(tiny_dataset, tmp_path / "cold", steps=1), log=quiet)
    assert cold.losses[0] == full_run.losses[0]  # same seed, same first batch, fresh weights
    assert warm.losses[0] < full_run.losses[-1] + 0.5 < cold.losses[0]  # carries on from the trained weights
    assert load_state(tmp_path / "warm" / "training" / "state").settings["init_from"] == str(full_run.out_dir)
    # An exported checkpoint alone (no training state, e.g. a shipped model) starts the policy the same.
    exported = tmp_path / "exported"
    exported.mkdir()
    for path in full_run.out_dir.iterdir():
        if path.is_file():
            shutil.copy(path, exported / path.name)
    from_export = train(config(tiny_dataset, tmp_path / "from_export", init_from=exported, steps=1), log=quiet)
    assert from_export.losses[0] == pytest.approx(warm.losses[0], abs=1e-5)
    with pytest.raises(TrainingError, match="--init-from .* holds no training state .* and no exported"):
        train(config(tiny_dataset, tmp_path / "nowhere", init_from=tmp_path / "cold" / "missing"), log=quiet)


def test_balanced_loss_changes_training_but_not_the_reported_loss(full_run: TrainResult, tiny_dataset: Path,
                                                                  tmp_path: Path) -> None:
    balanced = train(config(tiny_dataset, tmp_path / "balanced", balance_power=0.5), log=quiet)
    assert balanced.losses[0] == full_run.losses[0]  # step 0 reports the plain mean on the same weights
    assert balanced.losses[1:] != full_run.losses[1:]
    with pytest.raises(TrainingError, match="other settings.*balance_power"):
        train(config(tiny_dataset, tmp_path / "balanced", balance_power=0.25), log=quiet)


def test_a_failed_start_names_the_cause_and_leaves_out_reusable(full_run: TrainResult, tiny_dataset: Path,
                                                                tmp_path: Path) -> None:
    from vla_cache_ros.models.tiny import make_tiny_checkpoint

    other_preset = make_tiny_checkpoint(tmp_path / "tiny", seed=0)
    out = tmp_path / "out"
    with pytest.raises(TrainingError, match=r"--init-from .*tiny: its weights do not fit preset 'micro'"):
        train(config(tiny_dataset, out, init_from=other_preset), log=quiet)
    assert not out.exists()
    with pytest.raises(TrainingError, match="holds no training state"):
        train(config(tiny_dataset, out, init_from=tmp_path / "nope"), log=quiet)
    assert not out.exists()
    assert train(config(tiny_dataset, out, init_from=full_run.out_dir, steps=1), log=quiet).complete
    with pytest.raises(TrainingError, match="--label-quantum-rad must be finite"):
        train(config(tiny_dataset, tmp_path / "q", label_quantum_rad=float("inf")), log=quiet)
    warned: list[str] = []
    train(config(tiny_dataset, tmp_path / "q", label_quantum_m=5.0, steps=1), log=warned.append)
    assert any(line.startswith("warning: --label-quantum-m 5 rounds every label of its group to 0")
               for line in warned)
    lines: list[str] = []
    train(config(tiny_dataset, full_run.out_dir), log=lines.append)  # asked again once complete
    assert lines[-1].startswith(f"already complete at step {STEPS}/{STEPS}") and "nan" not in lines[-1]


def test_attention_supervision_trains_the_pointing_heads_and_leaves_inference_unchanged(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TrainingError, match="needs at least 2 decoder layers and 3 attention heads; preset 'micro'"):
        train(config(tiny_dataset, tmp_path / "micro", attention_weight=1.0), log=quiet)
    micro = PRESETS["micro"]
    monkeypatch.setitem(PRESETS, "micro3", Preset(micro.vision, {**micro.text, "num_hidden_layers": 2,
                                                                 "num_attention_heads": 3,
                                                                 "num_key_value_heads": 3, "hidden_size": 48}))
    steps = 20
    pointed = train(config(tiny_dataset, tmp_path / "pointed", preset="micro3", steps=steps, attention_weight=1.0),
                    log=quiet)
    state = load_state(pointed.out_dir / "training" / "state")
    assert state.settings["attention_weight"] == 1.0
    losses = [entry["attention_loss"] for entry in state.history["train"]]
    assert len(losses) == steps and np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
    plain = train(config(tiny_dataset, tmp_path / "plain", preset="micro3", steps=steps), log=quiet)
    assert "attention_loss" not in load_state(plain.out_dir / "training" / "state").history["train"][-1]
    assert plain.losses[0] == pointed.losses[0] and plain.losses[-1] != pointed.losses[-1]
    # The exported model is an ordinary checkpoint: load_vla's inference gives the greedy tokens
    # training evaluated.
    model = load_vla(pointed.out_dir)
    data = load_training_data(tiny_dataset, val_fraction=0.34, seed=1)
    rows = evenly_spaced(len(data.val), 3)
    tokens = np.array([model.predict_action_tokens(data.val.images[r], data.val.instruction(r)).tokens.numpy()
                       for r in rows])
    np.testing.assert_array_equal(tokens, pointed.evaluation.greedy_tokens)


def test_runs_saved_before_attention_supervision_resume(full_run: TrainResult, tiny_dataset: Path,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "old"
    shutil.copytree(full_run.out_dir, out)
    state_file = out / "training" / "state" / "state.json"
    saved = json.loads(state_file.read_text())
    del saved["settings"]["attention_weight"]
    state_file.write_text(json.dumps(saved))
    again = train(config(tiny_dataset, out), log=quiet)
    assert again.step == STEPS and not again.losses  # accepted as complete, nothing retrained
    with pytest.raises(TrainingError, match="attention_weight: 0.0 there, 1.0 now"):
        train(config(tiny_dataset, out, attention_weight=1.0), log=quiet)


def test_training_flushes_subnormal_floats(tiny_dataset: Path, tmp_path: Path) -> None:
    # Subnormal gradients (sharp supervised attention) slowed a CPU run's backward 13x.
    torch.set_flush_denormal(False)
    subnormal = torch.tensor([1e-40])
    assert (subnormal * 1.0).item() != 0.0
    train(config(tiny_dataset, tmp_path / "run", steps=1), log=quiet)
    assert (subnormal * 1.0).item() == 0.0


def test_a_stop_before_the_first_save_leaves_out_as_it_was(tiny_dataset: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a fresh run writes the tokenizer files into --out (``build_policy``) before its
    first save; a Ctrl-C or SIGTERM in between (or within that save) left them, and the same
    command then failed ("not empty and holds no training state to resume"). The stopped start is
    now undone: a new --out is removed, an empty one left empty, and the same command starts."""
    from vla_cache_ros.training import loop, state

    new, empty = tmp_path / "new", tmp_path / "empty"
    empty.mkdir()
    with monkeypatch.context() as patched:
        patched.setattr(loop, "make_optimizer", interrupted_after(loop.make_optimizer))  # tokenizer written
        for out in (new, empty):
            with pytest.raises(KeyboardInterrupt):
                train(config(tiny_dataset, out, steps=1), log=quiet)
    with monkeypatch.context() as patched:
        patched.setattr(state, "write_safetensors", interrupted_after(state.write_safetensors))  # half a save
        with pytest.raises(KeyboardInterrupt):
            train(config(tiny_dataset, new, steps=1), log=quiet)
    assert not new.exists() and not any(empty.iterdir())
    for out in (new, empty):
        assert train(config(tiny_dataset, out, steps=1), log=quiet).complete
