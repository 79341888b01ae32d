"""Invariants of the K/V-reuse engine and CachedVLAPolicy (issue 3 §5 a-c, plus resets)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from vla_cache_ros.cache.engine import KVReuseEngine
from vla_cache_ros.errors import ConfigurationError
from vla_cache_ros.policy import CachedVLAPolicy
from vla_cache_ros.synthetic import SyntheticScene

INSTRUCTION = "pick up the red cube"


@pytest.fixture()
def scene() -> SyntheticScene:
    return SyntheticScene(seed=3, height=200, width=260)


@pytest.mark.parametrize("prepack", [False, True])
def test_empty_reuse_matches_uncached_reference(tiny_model, scene, prepack):
    """(a) R empty => identical action tokens, logits within 1e-5 (fp32, grouped-query heads),
    with plain and with CPU-prepacked projection weights."""
    assert tiny_model.llama_config.num_key_value_heads < tiny_model.llama_config.num_attention_heads
    engine = KVReuseEngine(tiny_model.language_model, prepack=prepack)
    assert engine.projections.prepacked is prepack
    for index in (0, 5):
        frame = scene.frame(index)
        reference = tiny_model.predict_action_tokens(frame, INSTRUCTION)
        prepared = tiny_model.preprocess(frame)
        embeddings = tiny_model.assemble_embeddings(tiny_model.encode_image(prepared.pixel_values),
                                                    tiny_model.prompt_ids(INSTRUCTION))
        prefill = engine.prefill(embeddings, tiny_model.num_visual_tokens, reuse=None)
        decoded = engine.decode(prefill, 7)
        assert decoded.tokens.tolist() == reference.tokens.tolist()
        assert torch.max(torch.abs(decoded.logits - reference.logits)).item() < 1e-5


def test_off_mode_policy_matches_reference_action(tiny_model, scene):
    """Mode off through the policy gives the reference predict_action output."""
    policy = CachedVLAPolicy(tiny_model, mode="off", unnorm_key="tiny_sim")
    for index in range(3):
        action, stats = policy.step(scene.frame(index), INSTRUCTION)
        assert stats.reused_tokens == 0
        np.testing.assert_array_equal(action, tiny_model.predict_action(scene.frame(index), INSTRUCTION, "tiny_sim"))


@pytest.mark.parametrize("lm_head", ["full", "screened"])
@pytest.mark.parametrize("mode,ratio", [("fixed", 0.25), ("fixed", 0.5), ("fixed", 1.0), ("vla_cache", 1.0)])
def test_same_frame_twice_matches_uncached(tiny_model, scene, mode, ratio, lm_head):
    """(b) The same frame twice with any ratio => the uncached output, though tokens are reused.
    With the screened LM head a row's logits exist only where it recomputed them (-inf at the
    rows proven lower): those are compared."""
    policy = CachedVLAPolicy(tiny_model, mode=mode, cache_ratio=ratio, unnorm_key="tiny_sim", lm_head=lm_head)
    frame = scene.frame(2)
    reference = tiny_model.predict_action_tokens(frame, INSTRUCTION)
    policy.step(frame, INSTRUCTION)
    captured = {}
    original_decode = policy.engine.decode

    def capture(prefill, steps):
        result = original_decode(prefill, steps)
        captured["logits"] = result.logits
        return result

    policy.engine.decode = capture  # observe the real decode's logits
    action, stats = policy.step(frame, INSTRUCTION)
    assert stats.reused_tokens > 0
    if mode == "fixed":
        assert stats.reused_tokens == round(ratio * tiny_model.num_visual_tokens)
    assert stats.action_tokens.tolist() == reference.tokens.tolist()
    computed = torch.isfinite(captured["logits"])
    assert lm_head == "screened" or bool(computed.all())
    assert torch.max(torch.abs(captured["logits"][computed] - reference.logits[computed])).item() < 1e-5


def test_cache_survives_instruction_change(tiny_model, scene):
    """Visual K/V precede the text, so a cached step under a new instruction equals uncached."""
    policy = CachedVLAPolicy(tiny_model, mode="fixed", cache_ratio=1.0, unnorm_key="tiny_sim")
    frame = scene.frame(4)
    policy.step(frame, INSTRUCTION)
    other = "push the green block to the blue square"
    _, stats = policy.step(frame, other)
    assert stats.reused_tokens == tiny_model.num_visual_tokens
    assert stats.action_tokens.tolist() == tiny_model.predict_action_tokens(frame, other).tokens.tolist()


def _count_computed_rows(engine) -> tuple[list[int], list]:
    """Forward hooks on every layer's q projection and MLP output projection (the modules the
    engine really calls: the model's Linear layers, or their prepacked stand-ins) counting the
    token rows processed."""
    counts = [0, 0]
    handles = []

    def on_q(module, inputs, output):
        counts[0] += inputs[0].shape[1]

    def on_down(module, inputs, output):
        counts[1] += inputs[0].shape[1]

    for projections in engine.projections.layers:
        handles.append(projections.q.register_forward_hook(on_q))
        handles.append(projections.down.register_forward_hook(on_down))
    return counts, handles


@pytest.mark.parametrize("prepack", [False, True])
def test_stats_count_real_computations(tiny_model, scene, prepack):
    """(c) Token-layer computations performed (hooked) equal StepStats; reused rows skip the MLP."""
    policy = CachedVLAPolicy(tiny_model, mode="fixed", cache_ratio=0.5, unnorm_key="tiny_sim", prepack=prepack)
    assert policy.engine.projections.prepacked is prepack
    layers = tiny_model.llama_config.num_hidden_layers
    reported = 0
    for index in range(4):
        counts, handles = _count_computed_rows(policy.engine)
        try:
            _, stats = policy.step(scene.frame(index), INSTRUCTION)
        finally:
            for handle in handles:
                handle.remove()
        decode_rows = layers * 6  # 6 single-token decode forwards after the prefill
        prefill_rows = counts[0] - decode_rows
        assert prefill_rows == stats.token_layer_computations
        reported += stats.token_layer_computations
        assert policy.engine.counters.prefill_token_layers == reported
        assert policy.engine.counters.decode_token_layers == decode_rows * (index + 1)
        assert counts[1] - decode_rows == stats.token_layer_computations
        sequence_length = stats.token_layer_computations // layers + stats.reused_tokens
        assert stats.token_layer_computations == layers * (sequence_length - stats.reused_tokens)
        assert stats.reused_tokens + stats.recomputed_tokens == tiny_model.num_visual_tokens
        if index > 0:
            assert stats.reused_tokens == 128
            assert stats.prefill_flops < stats.prefill_flops_uncached
            assert stats.flops < stats.flops_uncached
        else:
            assert stats.cache_reset and stats.reused_tokens == 0


def test_reset_and_image_size_change_invalidate_cache(tiny_model, scene):
    policy = CachedVLAPolicy(tiny_model, mode="fixed", cache_ratio=0.5, unnorm_key="tiny_sim")
    policy.step(scene.frame(0), INSTRUCTION)
    assert policy.step(scene.frame(1), INSTRUCTION)[1].reused_tokens == 128
    policy.reset()
    _, stats = policy.step(scene.frame(2), INSTRUCTION)
    assert stats.cache_reset and stats.reused_tokens == 0
    other_camera = SyntheticScene(seed=3, height=120, width=160).frame(3)
    _, stats = policy.step(other_camera, INSTRUCTION)
    assert stats.cache_reset and stats.reused_tokens == 0


def test_settings_validation_and_thread_safety(tiny_model, scene):
    policy = CachedVLAPolicy(tiny_model, mode="fixed", cache_ratio=0.5, unnorm_key="tiny_sim")
    with pytest.raises(ConfigurationError, match="unknown cache mode 'bogus'"):
        policy.set_mode("bogus")
    with pytest.raises(ConfigurationError, match="no trained cache policy"):
        policy.set_mode("learned")
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigurationError, match="cache ratio"):
            policy.set_cache_ratio(bad)
    errors: list[BaseException] = []
    stop = threading.Event()

    def tuner() -> None:
        values = [0.0, 0.25, 0.75, 1.0]
        i = 0
        while not stop.is_set():
            try:
                policy.set_cache_ratio(values[i % 4])
                policy.set_mode(["fixed", "vla_cache", "off"][i % 3])
            except BaseException as error:  # pragma: no cover - reported below
                errors.append(error)
            i += 1
            time.sleep(0.0005)  # a parameter callback rate, not a GIL-starving spin

    thread = threading.Thread(target=tuner)
    thread.start()
    try:
        for index in range(6):
            _, stats = policy.step(scene.frame(index), INSTRUCTION)
            assert stats.mode in ("fixed", "vla_cache", "off")
            if stats.mode == "fixed" and not stats.cache_reset:
                assert stats.reused_tokens == round(stats.target_ratio * 256)
    finally:
        stop.set()
        thread.join()
    assert not errors
    policy.set_mode("fixed")
    policy.set_cache_ratio(0.25)
    assert policy.step(scene.frame(7), INSTRUCTION)[1].reused_tokens == 64


def test_bfloat16_runs_and_reuses(tiny_checkpoint, scene):
    from vla_cache_ros.models import load_vla

    model = load_vla(tiny_checkpoint, dtype=torch.bfloat16)
    policy = CachedVLAPolicy(model, mode="fixed", cache_ratio=0.5, unnorm_key="tiny_sim")
    policy.step(scene.frame(0), INSTRUCTION)
    action, stats = policy.step(scene.frame(0), INSTRUCTION)
    assert stats.reused_tokens == 128 and np.all(np.isfinite(action))
    reference = model.predict_action_tokens(scene.frame(0), INSTRUCTION)
    assert stats.action_tokens.tolist() == reference.tokens.tolist()


def test_reuse_without_cache_is_refused(tiny_model, scene):
    engine = KVReuseEngine(tiny_model.language_model)
    prepared = tiny_model.preprocess(scene.frame(0))
    embeddings = tiny_model.assemble_embeddings(tiny_model.encode_image(prepared.pixel_values),
                                                tiny_model.prompt_ids(INSTRUCTION))
    with pytest.raises(ConfigurationError, match="without a compatible visual K/V cache"):
        engine.prefill(embeddings, tiny_model.num_visual_tokens, reuse=torch.tensor([1, 2]))


@pytest.mark.parametrize("halves_equal", [True, False])
def test_rotary_matches_transformers(halves_equal):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from vla_cache_ros.cache.engine import RotaryTables, apply_rotary

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 9, 16, generator=generator)
    freqs = torch.randn(1, 9, 8, generator=generator)
    angles = torch.cat([freqs, freqs], dim=-1) if halves_equal else torch.randn(1, 9, 16, generator=generator)
    tables = RotaryTables.from_rotary(angles.cos(), angles.sin())
    assert tables.halves_equal is halves_equal
    expected, _ = apply_rotary_pos_emb(x, x, angles.cos(), angles.sin())
    torch.testing.assert_close(apply_rotary(x, tables), expected, rtol=0, atol=1e-6)


def test_failed_prefill_drops_the_cache(tiny_model, scene):
    """The cache is updated in place, so a step that fails must not leave it behind."""
    policy = CachedVLAPolicy(tiny_model, mode="fixed", cache_ratio=1.0, unnorm_key="tiny_sim")
    policy.step(scene.frame(0), INSTRUCTION)
    original = policy.engine.prefill

    def failing(*args, **kwargs):
        raise RuntimeError("simulated failure inside the decoder")

    policy.engine.prefill = failing
    with pytest.raises(RuntimeError):
        policy.step(scene.frame(0), INSTRUCTION)
    policy.engine.prefill = original
    _, stats = policy.step(scene.frame(0), INSTRUCTION)
    assert stats.reused_tokens == 0  # nothing reused from a possibly half-written cache
