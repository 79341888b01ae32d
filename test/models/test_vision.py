"""Vision tower (second-to-last block, prefix dropped, LayerScale rename) and projector (exact GELU)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from test.models.helpers import INSTRUCTION, exact_gelu, linear, read_tensors
from vla_cache_ros.models.vision import checkpoint_key_to_module_key, module_key_to_checkpoint_key
from vla_cache_ros.models.vla import OpenVLA

SLOTS = ("featurizer", "fused_featurizer")


def independent_backbone(directory: Path, slot: int) -> nn.Module:
    """The slot's timm ViT built from config.json and loaded from the file by this test alone."""
    config = json.loads((directory / "config.json").read_text())
    model = timm.create_model(config["timm_model_ids"][slot], pretrained=False, num_classes=0,
                              img_size=config["image_sizes"][slot], act_layer=None,
                              **config["timm_model_kwargs"][slot])
    prefix = f"vision_backbone.{SLOTS[slot]}."
    state = {k[len(prefix):].replace(".scale_factor", ".gamma"): v
             for k, v in read_tensors(directory).items() if k.startswith(prefix)}
    model.load_state_dict(state, strict=True)
    return model.eval()


def block_outputs(model: nn.Module, pixels: torch.Tensor) -> list[torch.Tensor]:
    """timm's forward written out: embed, position, pre-norm, then every block's output (patches only)."""
    with torch.no_grad():
        x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(pixels))))
        outputs = []
        for block in model.blocks:
            x = block(x)
            outputs.append(x[:, model.num_prefix_tokens:])
    return outputs


@pytest.mark.parametrize("slot, prefix_tokens", [(0, 5), (1, 0)])
def test_features_are_second_to_last_block_without_prefix(tiny_model: OpenVLA, tiny_dir: Path,
                                                          frame: np.ndarray, slot: int, prefix_tokens: int) -> None:
    pixels = tiny_model.preprocess(frame).pixel_values
    backbone = independent_backbone(tiny_dir, slot)
    assert backbone.num_prefix_tokens == prefix_tokens  # DINOv2-reg: CLS + 4 registers; SigLIP: none
    outputs = block_outputs(backbone, pixels[:, 3 * slot:3 * slot + 3])
    with torch.no_grad():
        features = tiny_model.vision(pixels)
    width = backbone.embed_dim
    assert features.shape == (1, 256, 2 * width)
    ours = features[..., slot * width:(slot + 1) * width]
    torch.testing.assert_close(ours, outputs[-2], rtol=1e-5, atol=1e-5)
    assert (ours - outputs[-1]).abs().max() > 1e-2  # the last block's output is a different thing


def test_dinov2_layerscale_stored_as_scale_factor_loads_into_gamma(tiny_model: OpenVLA, tiny_dir: Path) -> None:
    tensors = read_tensors(tiny_dir)
    vision_keys = [k for k in tensors if k.startswith("vision_backbone.")]
    assert not [k for k in vision_keys if k.endswith(".gamma")]
    stored = {k: v for k, v in tensors.items() if k.endswith(".scale_factor")}
    depth = len(tiny_model.vision.featurizer.blocks)
    assert len(stored) == 2 * depth and all(k.startswith("vision_backbone.featurizer.") for k in stored)
    for block in range(depth):
        for ls in ("ls1", "ls2"):
            loaded = getattr(tiny_model.vision.featurizer.blocks[block], ls).gamma
            torch.testing.assert_close(loaded, stored[f"vision_backbone.featurizer.blocks.{block}.{ls}.scale_factor"],
                                       rtol=0, atol=0)
    first = stored["vision_backbone.featurizer.blocks.0.ls1.scale_factor"]
    assert not torch.equal(first, stored["vision_backbone.featurizer.blocks.0.ls2.scale_factor"])
    assert first.std() > 0  # distinct values, so a swapped or mis-indexed load would show


@pytest.mark.parametrize("module_key, checkpoint_key", [
    ("vision.featurizer.blocks.3.ls2.gamma", "vision_backbone.featurizer.blocks.3.ls2.scale_factor"),
    ("vision.fused_featurizer.attn_pool.latent", "vision_backbone.fused_featurizer.attn_pool.latent"),
    ("projector.fc3.bias", "projector.fc3.bias"),
    ("language_model.model.norm.weight", "language_model.model.norm.weight"),
])
def test_key_translation_round_trips(module_key: str, checkpoint_key: str) -> None:
    assert module_key_to_checkpoint_key(module_key) == checkpoint_key
    assert checkpoint_key_to_module_key(checkpoint_key) == module_key


def test_fused_projector_is_three_layers_with_exact_gelu(tiny_model: OpenVLA, tiny_dir: Path) -> None:
    tensors = read_tensors(tiny_dir)
    assert sorted(k for k in tensors if k.startswith("projector.")) == [
        f"projector.fc{i}.{p}" for i in (1, 2, 3) for p in ("bias", "weight")]
    vision_dim = tiny_model.vision.embed_dim
    hidden = tiny_model.llama_config.hidden_size
    assert tensors["projector.fc1.weight"].shape == (4 * vision_dim, vision_dim)
    assert tensors["projector.fc2.weight"].shape == (hidden, 4 * vision_dim)
    assert tensors["projector.fc3.weight"].shape == (hidden, hidden)
    features = torch.randn(1, 256, vision_dim, generator=torch.Generator().manual_seed(0)) * 3
    expected = linear(exact_gelu(linear(exact_gelu(linear(features, tensors, "projector.fc1")), tensors,
                                        "projector.fc2")), tensors, "projector.fc3")
    with torch.no_grad():
        ours = tiny_model.projector(features)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    tanh = linear(F.gelu(linear(F.gelu(linear(features, tensors, "projector.fc1"), approximate="tanh"), tensors,
                                "projector.fc2"), approximate="tanh"), tensors, "projector.fc3")
    assert (tanh - expected).abs().max() > 1e-4  # the comparison above can tell the two GELUs apart


def test_single_backbone_checkpoint(single_model: OpenVLA, single_dir: Path, frame: np.ndarray) -> None:
    """DINOv2 only: 3 input channels, unfused 256 x embed_dim features, 2-layer projector."""
    tensors = read_tensors(single_dir)
    assert not [k for k in tensors if k.startswith("vision_backbone.fused_featurizer.")]
    assert sorted(k for k in tensors if k.startswith("projector.")) == [
        f"projector.fc{i}.{p}" for i in (1, 2) for p in ("bias", "weight")]
    assert single_model.vision.fused_featurizer is None and single_model.projector.fc3 is None
    pixels = single_model.preprocess(frame).pixel_values
    assert pixels.shape == (1, 3, 224, 224)
    backbone = independent_backbone(single_dir, 0)
    with torch.no_grad():
        features = single_model.vision(pixels)
    torch.testing.assert_close(features, block_outputs(backbone, pixels)[-2], rtol=1e-5, atol=1e-5)
    hidden = single_model.llama_config.hidden_size
    assert tensors["projector.fc1.weight"].shape == (hidden, backbone.embed_dim)
    assert tensors["projector.fc2.weight"].shape == (hidden, hidden)
    expected = linear(exact_gelu(linear(features, tensors, "projector.fc1")), tensors, "projector.fc2")
    torch.testing.assert_close(single_model.encode_image(pixels), expected, rtol=1e-5, atol=1e-5)
    assert single_model.predict_action(frame, INSTRUCTION, unnorm_key="tiny_sim").shape == (7,)
