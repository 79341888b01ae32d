"""CPU weight prepacking: same results as the plain projections, the right choice made (or
refused, with the reason) for each device, dtype and memory situation, and one pack per model."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vla_cache_ros.cache import prepack
from vla_cache_ros.cache.engine import KVReuseEngine
from vla_cache_ros.cache.prepack import PackedLinear, decoder_projections, projection_bytes
from vla_cache_ros.errors import ConfigurationError
from vla_cache_ros.models.tiny import random_model
from vla_cache_ros.synthetic import SyntheticScene

INSTRUCTION = "pick up the red cube"


@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_matches_plain_linear(bias):
    torch.manual_seed(0)
    linear = nn.Linear(96, 160, bias=bias)
    packed = PackedLinear(linear)
    with torch.no_grad():
        for rows in (2, 7, 93):
            inputs = torch.randn(1, rows, 96)
            torch.testing.assert_close(packed(inputs), linear(inputs), rtol=1e-5, atol=1e-6)
        single = torch.randn(1, 1, 96)  # a decode row goes through the plain weight, bit for bit
        assert torch.equal(packed(single), F.linear(single, linear.weight, linear.bias))


def test_auto_leaves_narrow_decoders_plain():
    """Below MIN_PACKED_WIDTH oneDNN's per-call overhead costs more than packing saves."""
    model = random_model("tiny", device="cpu", dtype=torch.float32)
    projections = decoder_projections(model.language_model)
    assert not projections.prepacked and "hidden size 64 is below 512" in projections.reason
    assert decoder_projections(model.language_model, prepack=True).prepacked  # demanded: packs anyway


def test_auto_packs_on_cpu_float32_and_shares_one_pack(tiny_model, monkeypatch):
    monkeypatch.setattr(prepack, "MIN_PACKED_WIDTH", 64)  # treat the miniature decoder as wide enough
    first = KVReuseEngine(tiny_model.language_model)
    second = KVReuseEngine(tiny_model.language_model, prepack=True)
    assert first.projections.prepacked and "prepacked" in first.projections.reason
    assert first.projections is second.projections  # packed once per model
    assert isinstance(first.projections.layers[0].q, PackedLinear)
    model_layer = tiny_model.language_model.model.layers[0]
    assert first.projections.layers[0].q.linear is model_layer.self_attn.q_proj
    # the model's own modules (and so the stock forward) are untouched
    assert isinstance(model_layer.self_attn.q_proj, nn.Linear)
    assert not any(isinstance(module, PackedLinear) for module in tiny_model.modules())


def test_off_uses_the_model_modules_themselves(tiny_model):
    projections = KVReuseEngine(tiny_model.language_model, prepack=False).projections
    assert not projections.prepacked and "disabled" in projections.reason
    layer = tiny_model.language_model.model.layers[1]
    assert projections.layers[1].q is layer.self_attn.q_proj
    assert projections.layers[1].down is layer.mlp.down_proj


def test_auto_skips_packing_when_memory_is_short(tiny_model, monkeypatch):
    monkeypatch.setattr(prepack, "MIN_PACKED_WIDTH", 64)
    needed = projection_bytes(list(tiny_model.language_model.model.layers))
    monkeypatch.setattr(prepack, "available_memory_bytes", lambda: needed)  # copy would take 100 %
    model = random_model("tiny", device="cpu", dtype=torch.float32)  # a model not packed yet
    projections = decoder_projections(model.language_model)
    assert not projections.prepacked
    assert "GiB available" in projections.reason
    assert decoder_projections(model.language_model, prepack=True).prepacked  # demanded: packs anyway


def test_unsupported_dtype_is_named():
    model = random_model("tiny", device="cpu", dtype=torch.float16)
    projections = decoder_projections(model.language_model)
    assert not projections.prepacked and "float16" in projections.reason
    with pytest.raises(ConfigurationError, match="cannot prepack decoder weights: dtype float16"):
        decoder_projections(model.language_model, prepack=True)


def test_failed_self_check_falls_back_or_refuses(monkeypatch, caplog):
    monkeypatch.setattr(prepack, "MIN_PACKED_WIDTH", 64)
    monkeypatch.setattr(prepack, "_self_check", lambda linear, packed: "packed GEMM disagrees")
    model = random_model("tiny", device="cpu", dtype=torch.float32)
    with caplog.at_level(logging.WARNING, logger=prepack.__name__):
        projections = decoder_projections(model.language_model)
    assert not projections.prepacked and projections.reason == "packed GEMM disagrees"
    assert "not prepacking decoder weights: packed GEMM disagrees" in caplog.text
    with pytest.raises(ConfigurationError, match="packed GEMM disagrees"):
        decoder_projections(model.language_model, prepack=True)


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                    reason="this CPU has no oneDNN bfloat16 support")
def test_bfloat16_packed_prefill_agrees_with_plain(tiny_checkpoint):
    from vla_cache_ros.models import load_vla

    model = load_vla(tiny_checkpoint, dtype=torch.bfloat16)
    frame = SyntheticScene(seed=5, height=200, width=260).frame(0)
    embeddings = model.assemble_embeddings(model.encode_image(model.preprocess(frame).pixel_values),
                                           model.prompt_ids(INSTRUCTION))
    plain = KVReuseEngine(model.language_model, prepack=False).prefill(embeddings, model.num_visual_tokens)
    packed_engine = KVReuseEngine(model.language_model, prepack=True)
    assert packed_engine.projections.prepacked
    packed = packed_engine.prefill(embeddings, model.num_visual_tokens)
    scale = float(plain.last_logits.abs().max())
    assert float((packed.last_logits - plain.last_logits).abs().max()) < 0.05 * scale


def test_missing_onednn_ops_are_named(monkeypatch):
    monkeypatch.setattr(prepack, "REQUIRED_OPS", ("_linear_pointwise", "_no_such_packing_op"))
    model = random_model("tiny", device="cpu", dtype=torch.float32)
    projections = decoder_projections(model.language_model, prepack=False)
    assert not projections.prepacked
    with pytest.raises(ConfigurationError, match="lacks _no_such_packing_op"):
        decoder_projections(model.language_model, prepack=True)
