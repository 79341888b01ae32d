"""Vision tower and projector of an OpenVLA checkpoint, built from timm without weights.

Backbones come from ``timm_model_ids`` (fused DINOv2 + SigLIP, or one backbone). Features are
the output of the second-to-last transformer block, prefix tokens (CLS / registers) dropped; a
fused tower concatenates both backbones' features on channels. The projector is OpenVLA's MLP:
fused ``fc1 -> GELU -> fc2 -> GELU -> fc3`` with a 4x expansion, single ``fc1 -> GELU -> fc2``.
"""
from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn

from vla_cache_ros.errors import CheckpointError, one_line

# Checkpoint key prefix per backbone slot, as in OpenVLA's export.
BACKBONE_PREFIXES = ("vision_backbone.featurizer.", "vision_backbone.fused_featurizer.")


def create_backbone(model_id: str, image_size: int, act_layer: str | None,
                    extra_kwargs: dict[str, Any]) -> nn.Module:
    """Create one timm ViT with OpenVLA's arguments (no pretrained weights, no classifier)."""
    if not timm.is_model(model_id):
        raise CheckpointError(f"unknown timm model id {model_id!r} in timm_model_ids")
    kwargs = dict(pretrained=False, num_classes=0, img_size=image_size, act_layer=act_layer)
    kwargs.update(extra_kwargs)
    try:
        return timm.create_model(model_id, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as error:
        raise CheckpointError(f"cannot build timm model {model_id!r} with {extra_kwargs}: {one_line(error)}") from error


class VisionTower(nn.Module):
    """One or two timm backbones producing patch features from the second-to-last block."""

    def __init__(self, backbones: list[nn.Module]) -> None:
        super().__init__()
        self.featurizer = backbones[0]
        self.fused_featurizer = backbones[1] if len(backbones) > 1 else None

    @property
    def backbones(self) -> list[nn.Module]:
        """The backbones in channel order."""
        return [b for b in (self.featurizer, self.fused_featurizer) if b is not None]

    @property
    def embed_dim(self) -> int:
        """Channels of the (concatenated) features."""
        return sum(int(b.embed_dim) for b in self.backbones)

    def num_patches(self) -> int:
        """Visual tokens per image."""
        return int(self.featurizer.patch_embed.num_patches)

    @staticmethod
    def _features(backbone: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        # Output of block depth-2 without the final norm, prefix tokens dropped (timm strips them);
        # stop_early skips the last block, whose output is never used.
        index = len(backbone.blocks) - 2
        return backbone.forward_intermediates(pixels, indices=[index], stop_early=True, norm=False,
                                              output_fmt="NLC", intermediates_only=True)[0]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3*num_backbones, S, S) -> (B, N, embed_dim) patch features."""
        features = []
        for slot, backbone in enumerate(self.backbones):
            features.append(self._features(backbone, pixel_values[:, 3 * slot:3 * slot + 3]))
        return torch.cat(features, dim=2) if len(features) > 1 else features[0]


class Projector(nn.Module):
    """OpenVLA's MLP from vision features to the language model's embedding size (exact GELU)."""

    def __init__(self, vision_dim: int, llm_dim: int, fused: bool) -> None:
        super().__init__()
        self.fused = fused
        self.act = nn.GELU()
        if fused:
            hidden = 4 * vision_dim
            self.fc1 = nn.Linear(vision_dim, hidden)
            self.fc2 = nn.Linear(hidden, llm_dim)
            self.fc3: nn.Linear | None = nn.Linear(llm_dim, llm_dim)
        else:
            self.fc1 = nn.Linear(vision_dim, llm_dim)
            self.fc2 = nn.Linear(llm_dim, llm_dim)
            self.fc3 = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, N, vision_dim) -> (B, N, llm_dim)."""
        x = self.fc2(self.act(self.fc1(features)))
        if self.fc3 is not None:
            x = self.fc3(self.act(x))
        return x


def checkpoint_key_to_module_key(key: str) -> str:
    """Translate an OpenVLA checkpoint key to this package's module key.

    DINOv2's LayerScale is stored as ``ls1.scale_factor`` / ``ls2.scale_factor``; timm calls the
    parameter ``gamma``. The vision backbones live under ``vision.`` here.
    """
    if key.startswith("vision_backbone."):
        key = "vision." + key[len("vision_backbone."):]
        if key.endswith(".scale_factor"):
            key = key[: -len(".scale_factor")] + ".gamma"
    return key


def module_key_to_checkpoint_key(key: str) -> str:
    """Inverse of ``checkpoint_key_to_module_key`` (used when writing checkpoints)."""
    if key.startswith("vision."):
        key = "vision_backbone." + key[len("vision."):]
        if (".ls1.gamma" in key or ".ls2.gamma" in key) and key.endswith(".gamma"):
            key = key[: -len(".gamma")] + ".scale_factor"
    return key
