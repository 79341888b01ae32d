"""The action-token loss is OpenVLA's (full-sequence labels, -100 elsewhere); state round-trips exactly."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vla_cache_ros.errors import TrainingError
from vla_cache_ros.models.norm_stats import ACTION_DIM
from vla_cache_ros.models.processor import prompt_token_ids
from vla_cache_ros.training.data import action_tokens, load_training_data
from vla_cache_ros.training.loop import make_optimizer
from vla_cache_ros.training.model import (
    IGNORE_INDEX,
    action_logits,
    action_loss,
    attention_loss,
    build_policy,
    class_weights,
    forward,
    make_batch,
)
from vla_cache_ros.training.state import (
    TrainingState,
    load_optimizer_state,
    load_state,
    optimizer_state_by_name,
    save_state,
)


def test_loss_equals_full_sequence_cross_entropy_with_ignored_labels(tiny_dataset: Path, tmp_path: Path) -> None:
    data = load_training_data(tiny_dataset, 0.0, 0)
    model = build_policy("micro", data.norm_stats, tmp_path, seed=0)
    targets = torch.from_numpy(action_tokens(model.action_tokenizer, data.action_stats, data.train.actions))
    rows = [0, 7]  # one pick and one touch frame: different prompt lengths, so one is padded
    instructions = [data.train.instruction(r) for r in rows]
    assert len(set(len(prompt_token_ids(model.tokenizer, text)) for text in instructions)) == 2
    batch = make_batch(model, [data.train.images[r] for r in rows], instructions, targets[rows])
    loss = action_loss(action_logits(model, batch), batch.targets)
    per_frame = []
    for row, text in zip(rows, instructions):
        # OpenVLA's layout: the whole sequence with all 7 action tokens, labels -100 except on them.
        prompt = torch.tensor(prompt_token_ids(model.tokenizer, text))
        ids = torch.cat([prompt, targets[row]])[None]
        pixels = model.processor(data.train.images[row]).pixel_values
        with torch.no_grad():  # the inference path's own assembly as the reference
            embeddings = model.assemble_embeddings(model.encode_image(pixels), ids[0])
        labels = torch.full(embeddings.shape[:2], IGNORE_INDEX)
        labels[0, -ACTION_DIM:] = targets[row]
        per_frame.append(model.language_model(inputs_embeds=embeddings, labels=labels).loss)
    torch.testing.assert_close(loss, torch.stack(per_frame).mean(), rtol=1e-5, atol=1e-5)


def test_training_state_round_trips_exactly(tiny_dataset: Path, tmp_path: Path) -> None:
    data = load_training_data(tiny_dataset, 0.0, 0)
    model = build_policy("micro", data.norm_stats, tmp_path / "model", seed=0)
    optimizer = make_optimizer(model, 1e-3, 0.01)
    targets = torch.from_numpy(action_tokens(model.action_tokenizer, data.action_stats, data.train.actions))
    batch = make_batch(model, list(data.train.images[:2]), [data.train.instruction(0)] * 2, targets[:2])
    action_loss(action_logits(model, batch), batch.targets).backward()
    optimizer.step()
    names = {id(p): n for n, p in model.named_parameters()}
    saved = TrainingState(step=1, settings={"seed": 0}, history={"train": [{"step": 1, "loss": 2.0}]},
                          model=dict(model.state_dict()), optimizer=optimizer_state_by_name(optimizer, names),
                          rng={"cpu": torch.get_rng_state()})
    save_state(tmp_path / "state", saved)
    save_state(tmp_path / "state", saved)  # replacing an existing state
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "state"]
    assert not any(p.suffix in (".pt", ".bin", ".pkl") for p in (tmp_path / "state").iterdir())
    loaded = load_state(tmp_path / "state")
    assert loaded.step == 1 and loaded.settings == {"seed": 0} and loaded.history == saved.history
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model[name], tensor), name
    assert torch.equal(loaded.rng["cpu"], saved.rng["cpu"])
    fresh = make_optimizer(model, 1e-3, 0.01)
    load_optimizer_state(fresh, loaded.optimizer)
    original, restored = optimizer.state_dict(), fresh.state_dict()
    assert restored["param_groups"] == original["param_groups"]
    for index, entries in original["state"].items():
        for key, value in entries.items():
            assert torch.equal(restored["state"][index][key], value), (index, key)
    assert np.isclose(float(restored["state"][0]["step"]), 1.0)


def test_class_weights_favour_rare_tokens_and_keep_the_mean_loss_scale() -> None:
    targets = torch.tensor([[5, 7]] * 8 + [[6, 7]] * 2)  # dimension 0: 80 % / 20 %; dimension 1: one class
    weights = class_weights(targets, vocab=10, power=0.5)
    assert weights.shape == (2, 10)
    assert weights[0, 6] / weights[0, 5] == pytest.approx(2.0)  # (0.2 / 0.8) ** -0.5
    assert float(weights[0][targets[:, 0]].mean()) == pytest.approx(1.0)
    assert torch.all(weights[1, [7]] == 1.0) and weights[0, 0] == 0.0  # unseen tokens weigh nothing
    capped = class_weights(torch.tensor([[0]] * 99 + [[1]]), vocab=2, power=1.0, max_ratio=5.0)
    assert capped[0, 1] / capped[0, 0] == pytest.approx(5.0)
    assert torch.equal(class_weights(targets, 10, power=0.0)[0, 5:7], torch.ones(2))
    logits = torch.randn(10, 2, 10)
    # Uniform weights give the plain mean; the weighted loss moves towards the rare rows' loss.
    assert action_loss(logits, targets, torch.ones(2, 10)) == pytest.approx(float(action_loss(logits, targets)))


def test_training_state_files_are_not_private(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        save_state(tmp_path / "state", TrainingState(step=0, settings={}, history={}, model={"w": torch.ones(2)},
                                                     optimizer={"param_groups": [], "state": {}}, rng={}))
    finally:
        os.umask(old)
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "state").iterdir()} == {0o644}


def test_attention_loss_is_the_log_probability_on_each_pointed_patch() -> None:
    batch, heads, length, visual = 2, 4, 12, 8
    pointed = torch.tensor([[3, 5, 0], [7, IGNORE_INDEX, 2]])  # the second frame's destination is off-image
    logits = torch.zeros(batch, heads, length, requires_grad=True)
    uniform = attention_loss(torch.softmax(logits, -1), pointed, visual)
    assert uniform.item() == pytest.approx(np.log(length))  # every key equally likely
    uniform.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # All of each head's mass on its point's visual token (sequence position 1 + patch): loss 0;
    # the ignored point and the unsupervised fourth head do not count.
    sharp = torch.zeros(batch, heads, length)
    for row in range(batch):
        for head in range(3):
            patch = int(pointed[row, head])
            sharp[row, head, 1 + max(patch, 0)] = 1.0
    sharp[1, 1] = 1.0 / length  # off-image point: whatever it attends to
    sharp[:, 3, 0] = 1.0
    assert attention_loss(sharp, pointed, visual).item() == pytest.approx(0.0, abs=1e-5)
    # Mass on the neighbouring token is not what is supervised.
    moved = sharp.roll(1, dims=2)
    assert attention_loss(moved, pointed, visual).item() > 10
    with pytest.raises(TrainingError, match="needs 3 heads in decoder layer"):
        attention_loss(sharp[:, :2], pointed, visual)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_the_supervised_row_equals_eager_attention(kv_heads: int) -> None:
    """forward() keeps the decoder's SDPA and recomputes the supervised row: the same probabilities
    (and action logits) as running every layer in eager attention, with grouped KV heads too;
    gradients reach the layer's query and key projections through them."""
    from vla_cache_ros.models.tiny import random_model

    model = random_model("tiny")
    text = model.llama_config
    if kv_heads != text.num_key_value_heads:  # a grouped-query copy of the tiny decoder
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(**{**text.to_dict(), "num_key_value_heads": kv_heads})
        model.language_model = LlamaForCausalLM(config).eval()
    layer, start = 1, torch.tensor([270, 275])
    images = [np.full((224, 224, 3), 40 * row, np.uint8) for row in range(2)]
    batch = make_batch(model, images, ["pick up the red cube", "touch the blue ball please"],
                       torch.full((2, ACTION_DIM), 31900))
    batch = type(batch)(batch.pixel_values, batch.input_ids, start, batch.targets, None, None, None)
    model.language_model.requires_grad_(True)
    logits, _, _, rows = forward(model, batch, attention_layer=layer)
    model.language_model.set_attn_implementation("eager")
    features = model.vision(batch.pixel_values)
    text_embeddings = model.language_model.get_input_embeddings()(batch.input_ids)
    embeddings = torch.cat([text_embeddings[:, :1], model.projector(features), text_embeddings[:, 1:]], dim=1)
    eager = model.language_model.model(inputs_embeds=embeddings, use_cache=False, output_attentions=True)
    expected = eager.attentions[layer][torch.arange(2), :, start]  # (B, H, T)
    torch.testing.assert_close(rows, expected.float(), rtol=1e-4, atol=1e-6)
    assert float(rows.detach()[:, :, start.max() + 1:].abs().sum()) == 0.0
    rows[:, 0, 5].sum().backward()
    projections = model.language_model.model.layers[layer].self_attn
    assert projections.q_proj.weight.grad.abs().sum() > 0 and projections.k_proj.weight.grad.abs().sum() > 0
    assert logits.shape == (2, ACTION_DIM, text.vocab_size)
