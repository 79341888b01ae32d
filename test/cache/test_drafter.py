"""The learned drafter: its config, pooling, files and errors, the model check, and the policy
that drafts with it -- whose actions stay exactly the greedy ones, with or without reuse."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vla_cache_ros.cache.drafter import (
    FILES,
    NO_PREVIOUS,
    Drafter,
    DrafterConfig,
    DrafterNet,
    DraftFeatures,
    default_drafter,
    load_drafter,
    pool_visual,
    resolve_drafter,
    save_drafter,
    tokens_to_bins,
)
from vla_cache_ros.errors import CheckpointError, ConfigurationError
from vla_cache_ros.policy import CachedVLAPolicy
from vla_cache_ros.synthetic import SyntheticScene

INSTRUCTION = "pick up the red cube"
HIDDEN = 64  # the tiny checkpoint's decoder width
RESET_AT = 3  # the policies start a new episode at this step


def drafter_net(model=None, seed: int = 0, **changes) -> DrafterNet:
    settings = dict(hidden_size=HIDDEN, token_offset=31744, width=16)
    if model is not None:
        settings.update(hidden_size=model.llama_config.hidden_size, num_visual=model.num_visual_tokens,
                        token_offset=model.action_tokenizer.first_action_token)
    settings.update(changes)
    torch.manual_seed(seed)
    return DrafterNet(DrafterConfig(**settings)).eval()


def features(batch: int = 2, hidden: int = HIDDEN, seed: int = 0) -> DraftFeatures:
    generator = torch.Generator().manual_seed(seed)
    previous = torch.randint(0, 256, (batch, 7), generator=generator)
    previous[0, 2] = NO_PREVIOUS
    return DraftFeatures(torch.randn(batch, 16, hidden, generator=generator), torch.randn(batch, hidden,
                                                                                            generator=generator),
                         previous, torch.randn(batch, hidden, generator=generator))


def test_bad_configs_are_refused_with_the_setting_named() -> None:
    for changes, message in [({"inputs": ("visual", "depth")}, "drafter inputs"), ({"inputs": ()}, "drafter inputs"),
                             ({"inputs": ("visual", "visual")}, "drafter inputs"), ({"pool_grid": 3}, "pool to 3x3"),
                             ({"width": 0}, "width"), ({"token_offset": -1}, "token_offset")]:
        with pytest.raises(ConfigurationError, match=message):
            DrafterConfig(**{"hidden_size": HIDDEN, "token_offset": 0, **changes})


def test_pooling_averages_grid_cells() -> None:
    visual = torch.arange(2 * 256 * 3, dtype=torch.float32).reshape(2, 256, 3)
    pooled = pool_visual(visual, 4)
    assert pooled.shape == (2, 16, 3)
    grid = visual.reshape(2, 16, 16, 3)
    torch.testing.assert_close(pooled[1, 0], grid[1, :4, :4].mean(dim=(0, 1)))  # top-left cell
    torch.testing.assert_close(pooled[0, 7], grid[0, 4:8, 12:16].mean(dim=(0, 1)))  # row 1, column 3
    torch.testing.assert_close(pool_visual(visual, 1)[:, 0], visual.mean(dim=1))
    with pytest.raises(ConfigurationError, match="pool to 3x3"):
        pool_visual(visual, 3)


def test_tokens_outside_the_action_bins_are_no_previous_token() -> None:
    bins = tokens_to_bins(torch.tensor([31744, 31999, 32000, 31743, 31800]), 31744, 256)
    assert bins.tolist() == [0, 255, NO_PREVIOUS, NO_PREVIOUS, 56]


def test_every_input_matters_and_a_missing_hidden_state_is_an_error() -> None:
    net = drafter_net()
    batch = features()
    base = net(batch)
    assert base.shape == (2, 7, 256)
    changed = {"visual": DraftFeatures(batch.visual + 1, batch.prompt, batch.previous, batch.previous_hidden),
               "prompt": DraftFeatures(batch.visual, batch.prompt + 1, batch.previous, batch.previous_hidden),
               "previous": DraftFeatures(batch.visual, batch.prompt, (batch.previous + 1) % 256, batch.previous_hidden),
               "previous_hidden": DraftFeatures(batch.visual, batch.prompt, batch.previous, batch.previous_hidden + 1)}
    for name, other in changed.items():
        assert not torch.allclose(net(other), base), name
        without = drafter_net(inputs=tuple(n for n in changed if n != name))
        torch.testing.assert_close(without(other), without(batch), msg=name)  # an unread input changes nothing
    with pytest.raises(ConfigurationError, match="hidden state"):
        net(DraftFeatures(batch.visual, batch.prompt, batch.previous, None))


def test_the_copy_gain_drafts_the_previous_tokens() -> None:
    net = drafter_net()
    with torch.no_grad():
        net.copy_gain.fill_(1e4)
    batch = features()
    drafted = net(batch).argmax(-1)
    known = batch.previous != NO_PREVIOUS
    assert torch.equal(drafted[known], batch.previous[known])


def test_files_round_trip_and_resolve(tmp_path: Path) -> None:
    net = drafter_net(trained_for={"model": "m", "steps": 3})
    out = save_drafter(tmp_path / "drafter", net)
    loaded = load_drafter(out)
    assert loaded.config == net.config and not loaded.training
    batch = features()
    torch.testing.assert_close(loaded(batch), net(batch), rtol=0, atol=0)
    assert sorted(path.name for path in out.iterdir()) == ["drafter.json", "drafter.safetensors"]
    model_dir = tmp_path / "model"
    assert default_drafter(model_dir) is None and resolve_drafter(None, model_dir) is None
    save_drafter(model_dir / "drafter", net)
    assert default_drafter(model_dir) == model_dir / "drafter" == resolve_drafter("", model_dir)
    assert resolve_drafter("none", model_dir) is None and resolve_drafter(" None ", model_dir) is None
    assert resolve_drafter(str(out), model_dir) == out and resolve_drafter(None, None) is None


def test_broken_drafters_are_checkpoint_errors(tmp_path: Path) -> None:
    good = save_drafter(tmp_path / "good", drafter_net())
    with pytest.raises(CheckpointError, match=f"drafter {tmp_path / 'nowhere'}: no such directory .*train-drafter"):
        load_drafter(tmp_path / "nowhere")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(CheckpointError, match=f"drafter {tmp_path / 'a_file'}: is not a directory"):
        load_drafter(tmp_path / "a_file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="drafter.json is missing .*train-drafter"):
        load_drafter(tmp_path / "empty")
    unreadable = "drafter.safetensors: not a readable safetensors file"
    cases = {
        "not json": (FILES.config_file, b"{", "not readable JSON"),
        "foreign": (FILES.config_file, json.dumps({"format": "other/1"}).encode(), "format is not"),
        "bad setting": (FILES.config_file, None, "drafter inputs"),
        "truncated weights": (FILES.weights_file, b"\x00" * 10, unreadable),
        "garbage weights": (FILES.weights_file, b"garbage" * 20, unreadable),
    }
    for name, (file, content, message) in cases.items():
        broken = tmp_path / name.replace(" ", "_")
        broken.mkdir()
        for part in (FILES.config_file, FILES.weights_file):
            (broken / part).write_bytes((good / part).read_bytes())
        if content is None:
            document = json.loads((good / FILES.config_file).read_text())
            document["inputs"] = ["depth"]
            content = json.dumps(document).encode()
        (broken / file).write_bytes(content)
        with pytest.raises(CheckpointError, match=message) as raised:
            load_drafter(broken)
        assert "do not fit" not in str(raised.value), raised.value
        if file == FILES.weights_file:  # the message names the file, not only its directory
            assert f"{broken / FILES.weights_file}: not a readable safetensors file" in str(raised.value)
    (tmp_path / "no_weights").mkdir()
    (tmp_path / "no_weights" / FILES.config_file).write_bytes((good / FILES.config_file).read_bytes())
    with pytest.raises(CheckpointError, match="drafter.safetensors is missing"):
        load_drafter(tmp_path / "no_weights")
    wider = save_drafter(tmp_path / "wider", drafter_net(width=32))
    (wider / FILES.weights_file).write_bytes((good / FILES.weights_file).read_bytes())
    with pytest.raises(CheckpointError, match="do not fit its config"):
        load_drafter(wider)


def test_a_drafter_for_another_model_is_refused(tiny_model) -> None:
    for changes in ({"hidden_size": 32}, {"token_offset": 100}, {"num_visual": 64, "pool_grid": 2}):
        with pytest.raises(CheckpointError, match="trained for"):
            CachedVLAPolicy(tiny_model, decode="speculative", drafter=drafter_net(tiny_model, **changes))


@pytest.mark.parametrize("mode", ["off", "fixed"])
def test_the_drafter_drafts_and_the_actions_stay_greedy(tiny_model, mode: str, tmp_path: Path) -> None:
    """A random drafter, a drafter that always says the greedy tokens and one that never does:
    the tokens and actions equal the greedy policy's at every step (with reuse in ``fixed``),
    the stats say where the draft came from, and a right draft saves every decode pass."""
    scene = SyntheticScene(seed=11, height=200, width=260)
    frames = [scene.frame(index) for index in range(5)]
    greedy = CachedVLAPolicy(tiny_model, mode=mode, cache_ratio=0.5, unnorm_key="tiny_sim")
    greedy_steps = []
    for index, frame in enumerate(frames):
        if index == RESET_AT:
            greedy.reset()
        greedy_steps.append(greedy.step(frame, INSTRUCTION))
    offset = tiny_model.action_tokenizer.first_action_token
    always = drafter_net(tiny_model)
    never = drafter_net(tiny_model)
    with torch.no_grad():  # the bins of the greedy tokens of the first frame (the tiny model's barely change)
        target = torch.tensor(greedy_steps[0][1].action_tokens) - offset
        assert ((target >= 0) & (target < 256)).all()
        always.head_bias.zero_()
        always.head_bias[torch.arange(7), target] = 1e4
        never.head_bias.zero_()
        never.head_bias[torch.arange(7), (target + 1) % 256] = 1e4
    save_drafter(tmp_path / "random", drafter_net(tiny_model, seed=3))
    checked = 0
    for name, drafter in (("random", tmp_path / "random"), ("always", always), ("never", never)):
        policy = CachedVLAPolicy(tiny_model, mode=mode, cache_ratio=0.5, unnorm_key="tiny_sim",
                                 decode="speculative", drafter=drafter)
        assert policy.drafter_source == (str(drafter) if name == "random" else "in memory")
        for index, frame in enumerate(frames):
            if index == RESET_AT:
                policy.reset()
            action, stats = policy.step(frame, INSTRUCTION)
            expected_action, expected = greedy_steps[index]
            assert stats.action_tokens.tolist() == expected.action_tokens.tolist(), (name, index)
            np.testing.assert_array_equal(action, expected_action)
            assert stats.reused_tokens == expected.reused_tokens and stats.draft_source == "drafter"
            assert stats.draft_tokens == 7  # the drafter drafts on the first step too
            if name != "random" and np.array_equal(expected.action_tokens, greedy_steps[0][1].action_tokens):
                right = name == "always"
                assert stats.accepted_draft_tokens == (7 if right else 0), (name, index)
                assert stats.decode_passes == (0 if right else 6), (name, index)
                checked += 1
    assert checked >= 4  # the steps whose greedy tokens the fixed drafters were built for


def test_without_a_drafter_the_previous_step_drafts(tiny_model) -> None:
    scene = SyntheticScene(seed=12, height=200, width=260)
    speculative = CachedVLAPolicy(tiny_model, mode="fixed", unnorm_key="tiny_sim", decode="speculative")
    greedy = CachedVLAPolicy(tiny_model, mode="fixed", unnorm_key="tiny_sim", decode="greedy",
                             drafter=drafter_net(tiny_model))
    assert speculative.drafter_source is None
    sources = []
    for index in range(3):
        _, stats = speculative.step(scene.frame(index), INSTRUCTION)
        _, plain = greedy.step(scene.frame(index), INSTRUCTION)
        assert stats.action_tokens.tolist() == plain.action_tokens.tolist()
        assert plain.draft_source is None and plain.draft_tokens == 0  # greedy decoding never drafts
        sources.append((stats.draft_source, stats.draft_tokens))
    assert sources == [(None, 0), ("previous", 7), ("previous", 7)]


def test_drafter_wrapper_drafts_action_tokens(tiny_model) -> None:
    drafter = Drafter(drafter_net(tiny_model, seed=5))
    visual = tiny_model.encode_image(tiny_model.preprocess(SyntheticScene(seed=1).frame(0)).pixel_values)
    prompt = tiny_model.language_model.get_input_embeddings()(tiny_model.prompt_ids(INSTRUCTION)[None])[:, 1:]
    first = drafter.draft(visual, prompt, None)
    later = drafter.draft(visual, prompt, first, torch.randn(tiny_model.llama_config.hidden_size))
    offset = tiny_model.action_tokenizer.first_action_token
    for draft in (first, later):
        assert draft.shape == (7,) and draft.dtype == torch.long
        assert ((draft >= offset) & (draft < offset + 256)).all()


def test_the_prefill_exposes_the_last_prompt_hidden_state(tiny_model) -> None:
    """``PrefillResult.last_hidden`` (the drafter's ``previous_hidden``): the final-norm state the
    last prompt logits are read from, the same with or without a draft appended."""
    from vla_cache_ros.cache.engine import KVReuseEngine

    engine = KVReuseEngine(tiny_model.language_model)
    frame = SyntheticScene(seed=2).frame(0)
    embeddings = tiny_model.assemble_embeddings(tiny_model.encode_image(tiny_model.preprocess(frame).pixel_values),
                                                tiny_model.prompt_ids(INSTRUCTION))
    plain = engine.prefill(embeddings, tiny_model.num_visual_tokens)
    drafted = engine.prefill(embeddings, tiny_model.num_visual_tokens, draft=torch.arange(31800, 31807))
    assert plain.last_hidden.shape == (tiny_model.llama_config.hidden_size,)
    torch.testing.assert_close(tiny_model.language_model.lm_head(plain.last_hidden).float(), plain.last_logits)
    torch.testing.assert_close(drafted.last_hidden, plain.last_hidden, rtol=0, atol=1e-6)
