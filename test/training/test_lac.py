"""Training the learned cache: the relaxation's gradients and hard forward, the equality of the
training-time reuse set with the inference selector's, and short resumable runs on sim episodes
and on a rosbag2 recording."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from test.training.conftest import interrupted_after
from vla_cache_ros.cache.learned import LearnedSelector, load_learned_selector
from vla_cache_ros.cache.relaxed import mixed_prefill
from vla_cache_ros.cache.selectors import SelectionContext
from vla_cache_ros.cache.tokens import extract_patches
from vla_cache_ros.errors import TrainingError
from vla_cache_ros.replay.synthetic_bag import SyntheticBagSpec, write_synthetic_bag
from vla_cache_ros.training.lac import (
    CacheTrainConfig,
    CacheTrainer,
    gumbel_ratio,
    load_pairs,
    relaxed_reuse,
    train_cache,
)
from vla_cache_ros.training.state import load_state

RATIOS = torch.tensor([0.0, 0.25, 0.5, 0.75])


def quiet(_: str) -> None:
    """Swallows the run's log lines."""


def config(model: Path, data: Path | tuple[Path, ...], out: Path, **changes) -> CacheTrainConfig:
    settings = dict(stage1_steps=3, steps=4, batch_size=3, lr=3e-3, eval_every=3, save_every=2, val_pairs=4,
                    val_fraction=0.34, threads=1, progress=False, ratios=(0.0, 0.25, 0.5, 0.75), width=4)
    settings.update(changes)
    return CacheTrainConfig(model, data if isinstance(data, tuple) else (data,), out, **settings)


def test_gumbel_choice_is_hard_forward_soft_backward_and_seeded() -> None:
    logits = torch.tensor([[0.1, 2.0, -1.0, 0.5]], requires_grad=True)
    ratio, soft, plain = gumbel_ratio(logits, RATIOS, 1.0, None)
    assert ratio.item() == pytest.approx(0.25)  # the argmax, no noise
    torch.testing.assert_close(plain, torch.softmax(logits, -1))
    (ratio * 3).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    draws = [gumbel_ratio(logits.detach().expand(64, -1), RATIOS, 1.0, torch.Generator().manual_seed(seed))[0]
             for seed in (5, 5, 6)]
    torch.testing.assert_close(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2])
    assert set(draws[0].tolist()) > {0.25}  # the noise explores other ratios


def test_relaxed_mask_is_the_hard_top_k_forward_and_passes_gradient_to_scores_and_ratio() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 16, generator=generator)
    scores[1, 3] = scores[1, 4]  # a tie: the lower id goes first, as in LearnedSelector
    scores.requires_grad_()
    ratio_logits = torch.tensor([[0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 3.0]], requires_grad=True)
    ratio, _, _ = gumbel_ratio(ratio_logits, RATIOS, 1.0, None)
    reuse = relaxed_reuse(scores, ratio, temperature=0.5)
    for row, count in ((0, 8), (1, 12)):
        expected = np.argsort(scores[row].detach().numpy(), kind="stable")[:count]
        assert set(np.flatnonzero(reuse[row].detach().numpy() == 1.0)) == set(expected)
        assert reuse[row].detach().sum() == count and set(reuse[row].detach().tolist()) <= {0.0, 1.0}
    weights = torch.randn(2, 16, generator=generator)
    (reuse * weights).sum().backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0
    # The threshold is not detached: the ratio's logits get gradient through k.
    assert ratio_logits.grad is not None and ratio_logits.grad.abs().sum() > 0


def test_the_soft_path_approaches_the_hard_one_as_the_temperature_falls(trainer_and_pairs) -> None:
    scores = torch.randn(1, 64, generator=torch.Generator().manual_seed(1))
    ratio = torch.tensor([0.5])
    hard = relaxed_reuse(scores, ratio, 1.0)
    gaps = [float((relaxed_reuse(scores, ratio, t, straight_through=False) - hard).abs().max())
            for t in (1.0, 0.1, 0.001)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-3
    # Through the decoder: the soft mask's outputs approach the hard mask's.
    trainer, data = trainer_and_pairs
    (group,) = trainer.prepare(data.train, np.arange(1), stage=2)
    with torch.no_grad():
        score_logits, _ = trainer.net(group.inputs)

        def logits(temperature: float, straight: bool) -> torch.Tensor:
            keep = 1 - relaxed_reuse(score_logits, torch.tensor([0.5]), temperature, straight)
            return mixed_prefill(trainer.engine, group.current, trainer.num_visual, keep, group.cached,
                                 group.targets[:, :-1]).logits

        exact = logits(1.0, True)
        errors = [float((logits(t, False) - exact).abs().max()) for t in (10.0, 1e-4)]
    assert errors[1] < 0.1 * errors[0]


@pytest.fixture(scope="module")
def trainer_and_pairs(tiny_checkpoint: Path, tiny_dataset: Path) -> tuple[CacheTrainer, object]:
    from vla_cache_ros.cache.learned import CacheSelectorNet
    from vla_cache_ros.models.vla import load_vla

    model = load_vla(tiny_checkpoint)
    settings = config(tiny_checkpoint, tiny_dataset, Path("unused"))
    torch.manual_seed(0)
    net = CacheSelectorNet(settings.policy_config())
    return CacheTrainer(model, net, settings), load_pairs(settings, model)


def test_training_reuses_the_set_inference_reuses(trainer_and_pairs) -> None:
    trainer, data = trainer_and_pairs
    rows = np.arange(min(3, len(data.train)))
    groups = trainer.prepare(data.train, rows, stage=2)
    selector = LearnedSelector(trainer.net, recovery_probability=0.0)
    for group in groups:
        with torch.no_grad():
            score_logits, ratio_logits = trainer.net(group.inputs)
            ratio, _, _ = gumbel_ratio(ratio_logits, trainer.ratios, 1.0, None)
            reuse = relaxed_reuse(score_logits, ratio, 0.5)
        for index, row in enumerate(group.rows):
            previous, current = (trainer.model.preprocess(data.train.images[i]).model_input_rgb
                                 for i in data.train.pairs[row])
            n = trainer.num_visual
            context = SelectionContext(
                frame=current, patches=extract_patches(current, n), similarity=np.ones(n),
                ages=np.zeros(n, np.int64), eligible=np.ones(n, bool), previous_attention=None, target_ratio=1.0,
                num_layers=trainer.engine.num_layers, reference_patches=extract_patches(previous, n))
            chosen = selector.select(context)
            np.testing.assert_array_equal(np.flatnonzero(reuse[index].numpy() == 1.0), chosen)
            assert selector.last_report.predicted_ratio == pytest.approx(float(ratio[index]))


def test_stage_one_regresses_attention_and_stage_two_distils(trainer_and_pairs) -> None:
    trainer, data = trainer_and_pairs
    rows = np.arange(min(3, len(data.train)))
    (group,) = trainer.prepare(data.train, rows[:1], stage=1)
    assert group.relevance is not None and group.relevance.shape == (1, trainer.num_visual)
    assert group.relevance.max().item() == pytest.approx(1.0)
    assert set(trainer.losses(group, 1, None)) == {"loss"}
    (group,) = trainer.prepare(data.train, rows[:1], stage=2)
    # Self-distillation targets are the uncached model's own greedy tokens, so its teacher-forced
    # argmax agrees with them; the keep-everything student has zero KL.
    assert torch.equal(group.teacher.argmax(-1), group.targets)
    values = trainer.losses(group, 2, torch.Generator().manual_seed(0))
    assert {"loss", "task", "ratio_term", "ratio", "agreement", "all_agree"} <= set(values)
    assert values["task"].item() >= -1e-5 and -0.75 <= values["ratio_term"].item() <= 0  # KL >= 0 up to rounding


def test_a_short_run_saves_a_loadable_policy_and_resumes_exactly(tiny_checkpoint: Path, tiny_dataset: Path,
                                                                  tmp_path: Path) -> None:
    full = train_cache(config(tiny_checkpoint, tiny_dataset, tmp_path / "full"), log=quiet)
    assert full.complete and [r["stage"] for r in full.history["train"]] == [1, 1, 1, 2, 2, 2, 2]
    assert all(np.isfinite(r["loss"]) for r in full.history["train"])
    assert full.history["val"] and (tmp_path / "full" / "training" / "cache_curves.png").stat().st_size > 0
    selector = load_learned_selector(tmp_path / "full")
    assert selector.config.ratios == (0.0, 0.25, 0.5, 0.75)
    assert selector.config.trained_for["model"] == str(tiny_checkpoint)
    first = train_cache(config(tiny_checkpoint, tiny_dataset, tmp_path / "resumed"), until_step=2, log=quiet)
    assert first.step == 2 and load_state(tmp_path / "resumed" / "training" / "state").step == 2
    second = train_cache(config(tiny_checkpoint, tiny_dataset, tmp_path / "resumed"), log=quiet)
    assert second.resumed_from == 2 and second.complete
    assert [r["loss"] for r in second.history["train"]] == [r["loss"] for r in full.history["train"]]
    with pytest.raises(TrainingError, match="other settings .*ratio_weight"):
        train_cache(config(tiny_checkpoint, tiny_dataset, tmp_path / "resumed", ratio_weight=2.0), log=quiet)
    summary = json.loads((tmp_path / "full" / "training" / "summary.json").read_text())
    assert summary["complete"] and summary["train_pairs"] > 0


def test_a_stop_in_the_first_save_leaves_out_as_it_was(tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a Ctrl-C or SIGTERM while a new run wrote its first state left a half-written
    ``training/state.new`` in --out, and the same command then failed ("holds no train-cache
    run"). The stopped start is now undone and the same command starts."""
    from vla_cache_ros.training import state

    out = tmp_path / "out"
    with monkeypatch.context() as patched:
        patched.setattr(state, "write_safetensors", interrupted_after(state.write_safetensors))
        with pytest.raises(KeyboardInterrupt):
            train_cache(config(tiny_checkpoint, tiny_dataset, out, steps=1), log=quiet)
    assert not out.exists()
    assert train_cache(config(tiny_checkpoint, tiny_dataset, out, steps=1), log=quiet).complete


def test_labels_and_bags(tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="--unnorm-key: unnorm_key is required"):
        train_cache(config(tiny_checkpoint, tiny_dataset, tmp_path / "labels", task_loss="labels"), log=quiet)
    labelled = train_cache(config(tiny_checkpoint, tiny_dataset, tmp_path / "labels", task_loss="labels",
                                  unnorm_key="tiny_sim", stage1_steps=0, steps=2), log=quiet)
    assert labelled.complete and "task" in labelled.history["train"][-1]
    bag = write_synthetic_bag(tmp_path / "bag", spec=SyntheticBagSpec(num_frames=8)).path
    distilled = train_cache(config(tiny_checkpoint, bag, tmp_path / "bag_out", stage1_steps=1, steps=1), log=quiet)
    assert distilled.complete
    summary = json.loads((tmp_path / "bag_out" / "training" / "summary.json").read_text())
    assert summary["sources"] == [{"path": str(bag), "kind": "rosbag2", "frames": 8, "frame_shapes": [[224, 224, 3]]}]
    with pytest.raises(TrainingError, match="--task-loss labels needs sim-collect data"):
        train_cache(config(tiny_checkpoint, bag, tmp_path / "bag_labels", task_loss="labels"), log=quiet)
    silent = write_synthetic_bag(tmp_path / "silent", spec=SyntheticBagSpec(num_frames=4, instruction=None)).path
    with pytest.raises(TrainingError, match="pass --instruction"):
        train_cache(config(tiny_checkpoint, silent, tmp_path / "silent_out"), log=quiet)
    assert train_cache(config(tiny_checkpoint, silent, tmp_path / "told", instruction="pick up the block",
                              stage1_steps=1, steps=0), log=quiet).complete


def test_bad_settings_are_training_errors(tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    for changes, message in [({"task_loss": "rl"}, "--task-loss"), ({"ratios": (0.5, 0.1)}, "ascending"),
                             ({"stage1_steps": 0, "steps": 0}, "nothing to train"), ({"batch_size": 0}, "--batch-size"),
                             ({"motion": "raft"}, "unknown motion signal")]:
        with pytest.raises(TrainingError, match=message):
            config(tiny_checkpoint, tiny_dataset, tmp_path, **changes)
    with pytest.raises(TrainingError, match="is not a directory"):
        train_cache(config(tiny_checkpoint, tmp_path / "missing", tmp_path / "out"), log=quiet)
    with pytest.raises(TrainingError, match="--model"):
        train_cache(config(tmp_path / "no_model", tiny_dataset, tmp_path / "out2"), log=quiet)


def test_sources_of_different_frame_sizes_are_one_clear_error(tiny_checkpoint: Path, tiny_dataset: Path,
                                                              tmp_path: Path) -> None:
    small = write_synthetic_bag(tmp_path / "small_bag", spec=SyntheticBagSpec(num_frames=4, height=64, width=64)).path
    with pytest.raises(TrainingError, match=r"--data mixes frame sizes \(.*small_bag: 64x64x3.*224x224x3"):
        train_cache(config(tiny_checkpoint, (small, tiny_dataset), tmp_path / "mixed"), log=quiet)
