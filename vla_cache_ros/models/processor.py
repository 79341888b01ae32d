"""Image and prompt preprocessing, as OpenVLA's reference processor does it.

Image: RGB uint8 of any size -> PIL bicubic resize to 224x224 (PIL's resampling is
antialiased) -> optional LIBERO-style centre crop of 0.9 area resized back -> [0, 1] ->
normalised per vision backbone with the constants saved in ``preprocessor_config.json`` (the
bf16-rounded DINOv2 values in OpenVLA's export), channel-stacked for a fused backbone.
Prompt: ``"In: What action should the robot take to {instruction.lower()}?\\nOut:"``, tokenised
with BOS, and token 29871 appended unless already last (as the reference ``predict_action``).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vla_cache_ros.errors import CheckpointError, ConfigurationError

# Standard constants, used when a checkpoint ships no preprocessor_config.json.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
SPACE_TOKEN_ID = 29871
LIBERO_CROP_AREA = 0.9


def default_normalization(timm_model_id: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Standard mean/std for a timm backbone family (SigLIP: 0.5; others: ImageNet)."""
    if "siglip" in timm_model_id.lower():
        return SIGLIP_MEAN, SIGLIP_STD
    return IMAGENET_MEAN, IMAGENET_STD


@dataclass
class PreparedImage:
    """One preprocessed frame: model input tensor plus the 224x224 RGB it was made from."""

    pixel_values: torch.Tensor  # (1, 3 * num_backbones, S, S) float32
    model_input_rgb: np.ndarray  # (S, S, 3) uint8: what the vision tower sees, before normalising


class ImageProcessor:
    """Turns RGB frames into normalised pixel tensors for one or two vision backbones."""

    def __init__(self, image_size: int, means: list[tuple[float, ...]], stds: list[tuple[float, ...]],
                 center_crop: bool = False) -> None:
        if len(means) != len(stds) or not means:
            raise ConfigurationError("image processor needs one mean and one std per backbone")
        self.image_size = int(image_size)
        self.means = [tuple(float(v) for v in m) for m in means]
        self.stds = [tuple(float(v) for v in s) for s in stds]
        self.center_crop = center_crop

    @classmethod
    def from_checkpoint(cls, directory: Path, timm_model_ids: list[str], image_size: int,
                        center_crop: bool = False) -> "ImageProcessor":
        """Read constants from ``preprocessor_config.json`` when present, else use the standard ones."""
        path = directory / "preprocessor_config.json"
        if path.is_file():
            try:
                data: dict[str, Any] = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise CheckpointError(f"{path}: malformed JSON ({error})") from error
            means, stds = data.get("means"), data.get("stds")
            if (not isinstance(means, list) or not isinstance(stds, list)
                    or len(means) != len(timm_model_ids) or len(stds) != len(timm_model_ids)):
                raise CheckpointError(f"{path}: 'means' and 'stds' must list one triple per vision backbone")
            return cls(image_size, [tuple(m) for m in means], [tuple(s) for s in stds], center_crop)
        pairs = [default_normalization(model_id) for model_id in timm_model_ids]
        return cls(image_size, [p[0] for p in pairs], [p[1] for p in pairs], center_crop)

    def resize(self, image: np.ndarray) -> np.ndarray:
        """Resize (and optionally centre-crop) an RGB uint8 frame to the model input size."""
        validate_rgb_image(image)
        size = self.image_size
        pil = Image.fromarray(np.ascontiguousarray(image), mode="RGB")
        pil = pil.resize((size, size), Image.Resampling.BICUBIC)
        if self.center_crop:
            side = math.sqrt(LIBERO_CROP_AREA) * size
            offset = (size - side) / 2.0
            pil = pil.resize((size, size), Image.Resampling.BILINEAR,
                             box=(offset, offset, offset + side, offset + side))
        return np.asarray(pil, dtype=np.uint8)

    def __call__(self, image: np.ndarray) -> PreparedImage:
        """Preprocess one frame into ``PreparedImage``."""
        resized = self.resize(image)
        unit = torch.from_numpy(resized.astype(np.float32) / 255.0).permute(2, 0, 1)
        planes = []
        for mean, std in zip(self.means, self.stds):
            mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
            std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
            planes.append((unit - mean_t) / std_t)
        return PreparedImage(pixel_values=torch.cat(planes, dim=0).unsqueeze(0), model_input_rgb=resized)


def validate_rgb_image(image: Any) -> None:
    """Raise ``ConfigurationError`` unless ``image`` is a non-empty (H, W, 3) uint8 array."""
    if not isinstance(image, np.ndarray):
        raise ConfigurationError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ConfigurationError(f"image must have shape (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise ConfigurationError(f"image must be uint8 RGB, got dtype {image.dtype}")


def build_prompt(instruction: str) -> str:
    """OpenVLA's prompt for an instruction."""
    return f"In: What action should the robot take to {instruction.lower()}?\nOut:"


def prompt_token_ids(tokenizer: Any, instruction: str) -> list[int]:
    """Token ids of the prompt with BOS, and 29871 appended unless it is already the last id."""
    if not isinstance(instruction, str) or not instruction.strip():
        raise ConfigurationError("instruction must be a non-empty string")
    ids = list(tokenizer(build_prompt(instruction), add_special_tokens=True)["input_ids"])
    if ids[-1] != SPACE_TOKEN_ID:
        ids.append(SPACE_TOKEN_ID)
    return ids
