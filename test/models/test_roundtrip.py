"""make-tiny -> load -> predict: determinism, sharding, dataset statistics, dtype, offline loading."""
from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

from test.models.helpers import INSTRUCTION, expected_normalized, expected_unnormalized, read_tensors
from vla_cache_ros.models.checkpoint import weight_files
from vla_cache_ros.models.tiny import make_tiny_checkpoint
from vla_cache_ros.models.vla import ACTION_DIM, OpenVLA, load_vla

SHARD_BYTES = 2_000_000


def assert_same_tensors(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    """Same names, and every tensor bit-identical."""
    assert sorted(left) == sorted(right)
    different = [name for name in left if not torch.equal(left[name], right[name])]
    assert not different, f"tensors differ: {different[:5]}"


def test_same_seed_gives_identical_files_and_actions(tmp_path: Path, frame: np.ndarray) -> None:
    first = make_tiny_checkpoint(tmp_path / "a", seed=5)
    second = make_tiny_checkpoint(tmp_path / "b", seed=5)
    assert_same_tensors(read_tensors(first), read_tensors(second))
    for name in ("config.json", "tokenizer.json", "preprocessor_config.json"):
        assert (first / name).read_text() == (second / name).read_text(), name
    actions = [load_vla(d).predict_action(frame, INSTRUCTION, unnorm_key="tiny_sim") for d in (first, second)]
    np.testing.assert_array_equal(actions[0], actions[1])


def test_different_seed_gives_different_weights(tmp_path: Path, tiny_dir: Path) -> None:
    other = read_tensors(make_tiny_checkpoint(tmp_path / "other", seed=1))
    base = read_tensors(tiny_dir)
    assert sorted(other) == sorted(base)
    for name in ("projector.fc1.weight", "language_model.model.embed_tokens.weight",
                 "language_model.model.layers.0.self_attn.q_proj.weight",
                 "vision_backbone.featurizer.blocks.0.ls1.scale_factor",
                 "vision_backbone.fused_featurizer.patch_embed.proj.weight"):
        assert not torch.equal(other[name], base[name]), name
    stats = [json.loads((d / "config.json").read_text())["norm_stats"] for d in (tmp_path / "other", tiny_dir)]
    assert stats[0] != stats[1]


def test_predict_is_repeatable_and_in_range(tiny_model: OpenVLA, tiny_dir: Path, frame: np.ndarray) -> None:
    prediction = tiny_model.predict_action_tokens(frame, INSTRUCTION)
    tokens = prediction.tokens.tolist()
    assert len(tokens) == ACTION_DIM
    low, high = tiny_model.action_tokenizer.action_token_range
    assert (low, high) == (31745, 31999)
    assert all(low <= t <= high for t in tokens), tokens
    assert prediction.logits.shape == (ACTION_DIM, 32064)
    assert prediction.tokens.tolist() == prediction.logits.argmax(dim=1).tolist()

    action = tiny_model.predict_action(frame, INSTRUCTION, unnorm_key="tiny_sim")
    assert action.shape == (ACTION_DIM,) and np.all(np.isfinite(action))
    np.testing.assert_array_equal(action, tiny_model.predict_action(frame, INSTRUCTION, unnorm_key="tiny_sim"))
    stats = json.loads((tiny_dir / "config.json").read_text())["norm_stats"]["tiny_sim"]["action"]
    expected = expected_unnormalized(expected_normalized(tokens), stats["q01"], stats["q99"], stats["mask"])
    np.testing.assert_allclose(action, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(5, 7, 3), (480, 640, 3), (224, 224, 3)])
def test_any_image_size_is_accepted(tiny_model: OpenVLA, shape: tuple[int, int, int]) -> None:
    image = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    prepared = tiny_model.preprocess(image)
    assert prepared.pixel_values.shape == (1, 6, 224, 224)
    assert prepared.model_input_rgb.shape == (224, 224, 3)
    assert tiny_model.predict_action(image, INSTRUCTION, unnorm_key="tiny_alt").shape == (ACTION_DIM,)


def test_exactly_seven_greedy_steps_even_when_eos_wins(tiny_dir: Path, frame: np.ndarray) -> None:
    """A generate() that stops at EOS would return one token here; the reference runs 7 steps."""
    model = load_vla(tiny_dir)
    head = model.language_model.lm_head
    biased = nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[model.tokenizer.eos_token_id] = 1e4
    model.language_model.lm_head = biased
    tokens = model.predict_action_tokens(frame, INSTRUCTION).tokens.tolist()
    assert tokens == [model.tokenizer.eos_token_id] * ACTION_DIM


def test_sharded_checkpoint_loads_and_predicts_identically(tmp_path: Path, tiny_model: OpenVLA,
                                                           frame: np.ndarray) -> None:
    sharded = make_tiny_checkpoint(tmp_path / "sharded", seed=0, max_shard_bytes=SHARD_BYTES)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(shards) > 2 and "model.safetensors" not in shards
    assert sorted(set(index["weight_map"].values())) == shards
    assert [p.name for p in weight_files(sharded)] == shards
    assert sorted(index["weight_map"]) == sorted(read_tensors(sharded))

    model = load_vla(sharded)
    reference = dict(tiny_model.named_parameters())
    loaded = dict(model.named_parameters())
    assert sorted(loaded) == sorted(reference)
    assert all(torch.equal(loaded[name], reference[name]) for name in loaded)
    ours, theirs = model.predict_action_tokens(frame, INSTRUCTION), tiny_model.predict_action_tokens(frame, INSTRUCTION)
    assert ours.tokens.tolist() == theirs.tokens.tolist()
    torch.testing.assert_close(ours.logits, theirs.logits, rtol=0, atol=0)


def test_remaking_a_directory_replaces_old_weights(tmp_path: Path) -> None:
    """A stale shard index must not shadow a new single-file checkpoint written over it."""
    directory = tmp_path / "reused"
    make_tiny_checkpoint(directory, seed=0, max_shard_bytes=SHARD_BYTES)
    make_tiny_checkpoint(directory, seed=1)
    assert [p.name for p in directory.glob("*.safetensors")] == ["model.safetensors"]
    assert not (directory / "model.safetensors.index.json").exists()
    expected = read_tensors(make_tiny_checkpoint(tmp_path / "fresh", seed=1))
    model = load_vla(directory)
    torch.testing.assert_close(model.projector.fc1.weight, expected["projector.fc1.weight"], rtol=0, atol=0)


def test_dataset_statistics_merge_into_norm_stats(checkpoint_copy: Callable[..., Path], frame: np.ndarray) -> None:
    extra: dict[str, Any] = {
        "my_robot": {"action": {"q01": [-0.1, -0.2, -0.3, -1.0, -2.0, -3.0, 0.0],
                                "q99": [0.1, 0.4, 0.3, 1.0, 0.0, 3.0, 1.0],
                                "mask": [True, True, True, True, True, False, False]}},
        "tiny_alt": {"action": {"q01": [0.0] * 7, "q99": [10.0] * 7, "mask": [True] * 7}},
    }
    directory = checkpoint_copy()
    (directory / "dataset_statistics.json").write_text(json.dumps(extra))
    model = load_vla(directory)
    assert sorted(model.config.norm_stats) == ["my_robot", "tiny_alt", "tiny_sim"]
    tokens = model.predict_action_tokens(frame, INSTRUCTION).tokens.tolist()
    normalized = expected_normalized(tokens)
    for key in ("my_robot", "tiny_alt"):
        stats = extra[key]["action"]
        np.testing.assert_allclose(model.predict_action(frame, INSTRUCTION, unnorm_key=key),
                                   expected_unnormalized(normalized, stats["q01"], stats["q99"], stats["mask"]),
                                   rtol=0, atol=1e-12)


def test_bfloat16_load(tiny_dir: Path, frame: np.ndarray) -> None:
    model = load_vla(tiny_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    low, high = model.action_tokenizer.action_token_range
    tokens = model.predict_action_tokens(frame, INSTRUCTION).tokens.tolist()
    assert len(tokens) == ACTION_DIM and all(low <= t <= high for t in tokens)
    assert np.all(np.isfinite(model.predict_action(frame, INSTRUCTION, unnorm_key="tiny_sim")))


def test_loading_opens_no_network_connection(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                             frame: np.ndarray) -> None:
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        attempts.append(args)
        raise OSError("network access during model loading")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model = load_vla(tiny_dir)
    model.predict_action(frame, INSTRUCTION, unnorm_key="tiny_sim")
    assert attempts == []


def test_tiny_tokenizer_round_trips_text(tiny_model: OpenVLA) -> None:
    text = "In: What action should the robot take to pick up the red cube?\nOut:"
    ids = tiny_model.tokenizer(text)["input_ids"]
    assert tiny_model.tokenizer.decode(ids, skip_special_tokens=True) == text


def test_weight_files_get_the_same_mode_as_every_other_file(tmp_path: Path) -> None:
    # safetensors writes 0600 by itself: a checkpoint readable only by its writer (config.json not).
    import os
    import stat

    old = os.umask(0o022)
    try:
        single = make_tiny_checkpoint(tmp_path / "single", seed=0)
        sharded = make_tiny_checkpoint(tmp_path / "sharded", seed=0, max_shard_bytes=4_000_000)
    finally:
        os.umask(old)
    for directory in (single, sharded):
        expected = stat.S_IMODE((directory / "config.json").stat().st_mode)
        assert expected == 0o644
        for path in weight_files(directory):
            assert stat.S_IMODE(path.stat().st_mode) == expected, path
