"""Training the learned drafter: the frozen model's features are its own greedy tokens and
embeddings, the metrics count what the engine does, and short runs on sim episodes and on a
rosbag2 recording save a loadable drafter, report held-out acceptance and resume exactly."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from test.training.conftest import interrupted_after
from vla_cache_ros.cache.drafter import load_drafter, pool_visual
from vla_cache_ros.cache.engine import KVReuseEngine
from vla_cache_ros.errors import TrainingError
from vla_cache_ros.replay.synthetic_bag import SyntheticBagSpec, write_synthetic_bag
from vla_cache_ros.training.drafter import (
    DrafterTrainConfig,
    accepted_prefix,
    decode_passes,
    draft_metrics,
    fallback_warning,
    frame_features,
    learning_rate,
    pair_batch,
    train_drafter,
)
from vla_cache_ros.training.pairs import load_pairs
from vla_cache_ros.training.state import load_state

METRICS = {"loss", "token_accuracy", "full_acceptance", "accepted", "decode_passes", "first_full_acceptance",
           "first_accepted", "first_decode_passes", "previous_full_acceptance", "previous_accepted",
           "previous_decode_passes"}


def quiet(_: str) -> None:
    """Swallows the run's log lines."""


def config(model: Path, data: Path | tuple[Path, ...], out: Path, **changes) -> DrafterTrainConfig:
    settings = dict(steps=6, batch_size=4, lr=3e-3, eval_every=3, save_every=2, val_fraction=0.34, threads=1,
                    progress=False, width=16, device="cpu")
    settings.update(changes)
    return DrafterTrainConfig(model, data if isinstance(data, tuple) else (data,), out, **settings)


@pytest.fixture(scope="module")
def model(tiny_checkpoint: Path):
    from vla_cache_ros.models.vla import load_vla

    torch.set_num_threads(1)
    return load_vla(tiny_checkpoint)


def test_features_are_the_frozen_models_own(model, tiny_checkpoint: Path, tiny_dataset: Path) -> None:
    """Greedy tokens equal the reference path's (stock transformers forward); the pooled visual
    and prompt features and the hidden state are those the policy hands the drafter."""
    data = load_pairs(config(tiny_checkpoint, tiny_dataset, Path("unused")), model)
    engine = KVReuseEngine(model.language_model, prepack=False)
    features = frame_features(model, engine, data.val, pool_grid=4)
    assert len(features.tokens) == len(data.val.images) > 0
    for row in (0, len(data.val.images) - 1):
        image, instruction = data.val.images[row], data.val.instructions[row]
        reference = model.predict_action_tokens(image, instruction)
        assert features.tokens[row].tolist() == reference.tokens.tolist()
        visual = model.encode_image(model.preprocess(image).pixel_values)
        torch.testing.assert_close(features.visual[row], pool_visual(visual, 4)[0], rtol=0, atol=1e-5)
        embeddings = model.assemble_embeddings(visual, model.prompt_ids(instruction))
        torch.testing.assert_close(features.prompt[row], embeddings[0, 1 + model.num_visual_tokens:].mean(0))
        prefill = engine.prefill(embeddings, model.num_visual_tokens)
        torch.testing.assert_close(features.hidden[row], prefill.last_hidden, rtol=0, atol=1e-5)
        # The hidden state is what the first action token is read from.
        logits = model.language_model.lm_head(prefill.last_hidden)
        assert int(logits.argmax()) == reference.tokens[0].item()


def test_features_in_a_cache_mode_are_that_policys_steps(model, tiny_checkpoint: Path, tiny_dataset: Path) -> None:
    """With --mode fixed:0.75 the tokens and hidden states are a fixed:0.75 policy's, stepped
    through each sequence in order and reset at every new one (whose first frame is uncached)."""
    from vla_cache_ros.policy import CachedVLAPolicy

    data = load_pairs(config(tiny_checkpoint, tiny_dataset, Path("unused")), model)
    engine = KVReuseEngine(model.language_model, prepack=False)
    uncached = frame_features(model, engine, data.train, pool_grid=4)
    cached = frame_features(model, engine, data.train, pool_grid=4, mode="fixed:0.75")
    torch.testing.assert_close(cached.visual, uncached.visual, rtol=0, atol=0)  # vision does not cache
    continuing = {int(current) for _, current in data.train.pairs}
    starts = [row for row in range(len(data.train.images)) if row not in continuing]
    assert len(starts) > 1 and torch.equal(cached.tokens[starts], uncached.tokens[starts])
    policy = CachedVLAPolicy(model, mode="fixed", cache_ratio=0.75, unnorm_key="tiny_sim")
    rows = range(starts[1])  # the first sequence, on an independent policy
    for row in rows:
        _, stats = policy.step(data.train.images[row], data.train.instructions[row])
        assert stats.reused_tokens == (0 if row == 0 else 192)
        assert cached.tokens[row].tolist() == stats.action_tokens.tolist()
        torch.testing.assert_close(cached.hidden[row], policy.last_hidden, rtol=0, atol=1e-6)
    assert len(rows) > 1


def test_metrics_count_what_the_engine_does(model) -> None:
    from vla_cache_ros.synthetic import SyntheticScene

    engine = KVReuseEngine(model.language_model)
    frame = SyntheticScene(seed=3).frame(0)
    embeddings = model.assemble_embeddings(model.encode_image(model.preprocess(frame).pixel_values),
                                           model.prompt_ids("pick up the red cube"))
    greedy = engine.decode(engine.prefill(embeddings, model.num_visual_tokens), 7).tokens
    for right in range(8):
        draft = greedy.clone()
        draft[right:] += 1  # wrong from position `right` on
        decoded = engine.decode(engine.prefill(embeddings, model.num_visual_tokens, draft=draft), 7)
        accepted = accepted_prefix(draft[None], greedy[None])
        assert accepted.item() == decoded.accepted_draft_tokens == right
        assert decode_passes(accepted).item() == decoded.passes
    assert decode_passes(torch.tensor([0]), 0).item() == 6  # no draft: six passes after the prefill
    target = greedy[None].repeat(4, 1)
    draft = target.clone()
    draft[1, 0] += 1
    draft[2, 5] += 1
    metrics = draft_metrics(draft, target, "x_")
    assert metrics == pytest.approx({"x_full_acceptance": 0.5, "x_accepted": (7 + 0 + 5 + 7) / 4,
                                     "x_decode_passes": (0 + 6 + 1 + 0) / 4})
    assert draft_metrics(None, target, "")["decode_passes"] == 6


def test_pairs_feed_the_previous_step_and_hide_it_when_asked(model, tiny_checkpoint: Path, tiny_dataset: Path) -> None:
    settings = config(tiny_checkpoint, tiny_dataset, Path("unused"))
    data = load_pairs(settings, model)
    features = frame_features(model, KVReuseEngine(model.language_model, prepack=False), data.val, pool_grid=4)
    drafter = settings.drafter_config(model.llama_config.hidden_size, model.action_tokenizer.first_action_token)
    pairs = data.val.pairs[:3]
    inputs, target = pair_batch(features, pairs, drafter)
    offset = model.action_tokenizer.first_action_token
    assert torch.equal(inputs.previous, features.tokens[pairs[:, 0]] - offset)
    assert torch.equal(target, features.tokens[pairs[:, 1]] - offset)
    torch.testing.assert_close(inputs.previous_hidden, features.hidden[pairs[:, 0]])
    torch.testing.assert_close(inputs.visual, features.visual[pairs[:, 1]])
    hidden = torch.tensor([True, False, True])
    inputs, _ = pair_batch(features, pairs, drafter, hidden)
    assert (inputs.previous[0] == -1).all() and (inputs.previous[1] >= 0).all()
    assert inputs.previous_hidden[0].abs().sum() == 0 and inputs.previous_hidden[1].abs().sum() > 0


def test_the_learning_rate_warms_up_then_decays_to_zero(tiny_checkpoint: Path, tiny_dataset: Path) -> None:
    settings = config(tiny_checkpoint, tiny_dataset, Path("unused"), steps=100, lr=1.0)
    rates = [learning_rate(settings, step) for step in range(100)]
    assert rates[0] == pytest.approx(0.2) and max(rates) <= 1.0  # warm-up over the first 5 steps
    assert rates[10] > rates[50] > rates[99] > 0 and rates[99] < 0.01


def test_a_short_run_saves_a_loadable_drafter_reports_and_resumes_exactly(tiny_checkpoint: Path, tiny_dataset: Path,
                                                                          tmp_path: Path) -> None:
    full = train_drafter(config(tiny_checkpoint, tiny_dataset, tmp_path / "full"), log=quiet)
    assert full.complete and len(full.history["train"]) == 6
    assert all(np.isfinite(r["loss"]) for r in full.history["train"])
    last = full.history["val"][-1]
    assert last["step"] == 6 and set(last) == METRICS | {"step"}
    for key in METRICS - {"loss"}:
        assert 0 <= last[key] <= (7 if "accepted" in key or "passes" in key else 1), key
    # Full acceptance is all 7 right, so it never exceeds the share of fully accepted tokens.
    assert last["full_acceptance"] <= last["accepted"] / 7 + 1e-9
    assert (tmp_path / "full" / "training" / "drafter_curves.png").stat().st_size > 0
    drafter = load_drafter(tmp_path / "full")
    assert drafter.config.width == 16 and drafter.config.trained_for["model"] == str(tiny_checkpoint)
    summary = json.loads((tmp_path / "full" / "training" / "summary.json").read_text())
    assert summary["complete"] and summary["train_pairs"] > 0 and summary["last_val"] == last

    lines: list[str] = []
    first = train_drafter(config(tiny_checkpoint, tiny_dataset, tmp_path / "resumed"), until_step=2, log=lines.append)
    assert first.step == 2 and load_state(tmp_path / "resumed" / "training" / "state").step == 2
    second = train_drafter(config(tiny_checkpoint, tiny_dataset, tmp_path / "resumed"), log=lines.append)
    assert second.resumed_from == 2 and second.complete
    assert any("features of" in line and "read from" in line for line in lines)  # not computed twice
    assert [r["loss"] for r in second.history["train"]] == [r["loss"] for r in full.history["train"]]
    assert second.history["val"][-1] == last
    for name, tensor in load_drafter(tmp_path / "resumed").state_dict().items():
        torch.testing.assert_close(tensor, drafter.state_dict()[name], rtol=0, atol=0)
    with pytest.raises(TrainingError, match="other settings .*drop_previous"):
        train_drafter(config(tiny_checkpoint, tiny_dataset, tmp_path / "resumed", drop_previous=0.5), log=quiet)
    # The stored features, copied alone into a new --out, train another drafter without recomputing.
    copied = tmp_path / "other" / "training" / "features.safetensors"
    copied.parent.mkdir(parents=True)
    copied.write_bytes((tmp_path / "full" / "training" / "features.safetensors").read_bytes())
    lines.clear()
    other = train_drafter(config(tiny_checkpoint, tiny_dataset, tmp_path / "other", inputs=("previous",), steps=2),
                          log=lines.append)
    assert other.complete and any("read from" in line for line in lines)
    assert load_drafter(tmp_path / "other").config.inputs == ("previous",)


def test_a_stop_in_the_first_save_keeps_only_the_features(tiny_checkpoint: Path, tiny_dataset: Path,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a Ctrl-C or SIGTERM while a new run wrote its first state left a half-written
    ``training/state.new`` in --out, and the same command then failed ("holds no train-drafter
    run"). The stopped start is now undone but for the frozen model's features, which the same
    command reads back instead of computing them again."""
    from vla_cache_ros.training import state

    out = tmp_path / "out"
    with monkeypatch.context() as patched:
        patched.setattr(state, "write_safetensors", interrupted_after(state.write_safetensors))
        with pytest.raises(KeyboardInterrupt):
            train_drafter(config(tiny_checkpoint, tiny_dataset, out, steps=1), log=quiet)
    assert [path.relative_to(out) for path in out.rglob("*") if path.is_file()] == [
        Path("training") / "features.safetensors"]
    lines: list[str] = []
    assert train_drafter(config(tiny_checkpoint, tiny_dataset, out, steps=1), log=lines.append).complete
    assert any("read from" in line for line in lines)


def test_bags_train_a_drafter(tiny_checkpoint: Path, tmp_path: Path) -> None:
    bag = write_synthetic_bag(tmp_path / "bag", spec=SyntheticBagSpec(num_frames=8)).path
    result = train_drafter(config(tiny_checkpoint, bag, tmp_path / "out", steps=2, val_fraction=0.25), log=quiet)
    assert result.complete and result.history["val"]
    summary = json.loads((tmp_path / "out" / "training" / "summary.json").read_text())
    assert summary["sources"] == [{"path": str(bag), "kind": "rosbag2", "frames": 8, "frame_shapes": [[224, 224, 3]]}]
    silent = write_synthetic_bag(tmp_path / "silent", spec=SyntheticBagSpec(num_frames=4, instruction=None)).path
    with pytest.raises(TrainingError, match="pass --instruction"):
        train_drafter(config(tiny_checkpoint, silent, tmp_path / "silent_out"), log=quiet)


def test_bad_settings_are_training_errors(tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    for changes, message in [({"drop_previous": 1.0}, "--drop-previous"), ({"steps": 0}, "--steps"),
                             ({"inputs": ("visual", "depth")}, "drafter inputs"), ({"pool_grid": 5}, "pool to 5x5"),
                             ({"weight_decay": -1.0}, "--weight-decay"), ({"max_frames": 1}, "--max-frames"),
                             ({"mode": "learned"}, "--mode: .*no trained cache policy"),
                             ({"mode": "fixed:2"}, "--mode: .*fixed:2")]:
        with pytest.raises(TrainingError, match=message):
            config(tiny_checkpoint, tiny_dataset, tmp_path, **changes)
    with pytest.raises(TrainingError, match="is not a directory"):
        train_drafter(config(tiny_checkpoint, tmp_path / "missing", tmp_path / "out"), log=quiet)
    with pytest.raises(TrainingError, match="--model"):
        train_drafter(config(tmp_path / "no_model", tiny_dataset, tmp_path / "out2"), log=quiet)
    (tmp_path / "busy" / "training").mkdir(parents=True)
    (tmp_path / "busy" / "training" / "features.safetensors").write_bytes(b"")
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(TrainingError, match="holds no train-drafter run"):
        train_drafter(config(tiny_checkpoint, tiny_dataset, tmp_path / "busy"), log=quiet)


def test_a_drafter_slower_than_its_fallback_is_flagged() -> None:
    """From a new user's trial: a drafter that drafts worse than the previous step's tokens was
    used without a word; training now ends with a warning saying so and how to do without it."""
    metrics = {"decode_passes": 3.4, "previous_decode_passes": 3.0, "full_acceptance": 0.377,
               "previous_full_acceptance": 0.463}
    warning = fallback_warning(metrics)
    assert warning is not None and "3.40" in warning and "3.00" in warning and "--drafter none" in warning
    assert fallback_warning({**metrics, "decode_passes": 2.9}) is None
    assert fallback_warning(None) is None
