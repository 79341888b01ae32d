"""Image preprocessing and prompt construction, against values computed independently here."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TVF
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from torchvision.ops import roi_align
from torchvision.transforms import InterpolationMode
from transformers import PreTrainedTokenizerFast

from vla_cache_ros.errors import ConfigurationError
from vla_cache_ros.models.processor import build_prompt, prompt_token_ids
from vla_cache_ros.models.vla import OpenVLA, load_vla

from test.models.helpers import INSTRUCTION

# OpenVLA's saved preprocessor_config.json constants (bf16-rounded DINOv2; SigLIP 0.5).
DINOV2_MEAN_BF16 = [0.484375, 0.455078125, 0.40625]
DINOV2_STD_BF16 = [0.228515625, 0.2236328125, 0.224609375]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
HALF = [0.5, 0.5, 0.5]
PROMPT = "In: What action should the robot take to pick up the red cube?\nOut:"


def torchvision_resize(image: np.ndarray) -> Image.Image:
    """The reference's resize: torchvision on a PIL image, 224x224 bicubic with antialias."""
    return TVF.resize(Image.fromarray(image), [224, 224], interpolation=InterpolationMode.BICUBIC, antialias=True)


def torchvision_pixels(resized: Image.Image, means: list[list[float]], stds: list[list[float]]) -> torch.Tensor:
    """to_tensor + normalize per backbone, channel-stacked."""
    unit = TVF.to_tensor(resized)
    return torch.cat([TVF.normalize(unit, m, s) for m, s in zip(means, stds)]).unsqueeze(0)


def test_preprocess_matches_torchvision_with_saved_bf16_constants(tiny_model: OpenVLA, tiny_dir: Path,
                                                                  frame: np.ndarray) -> None:
    saved = json.loads((tiny_dir / "preprocessor_config.json").read_text())
    assert saved["means"] == [DINOV2_MEAN_BF16, HALF] and saved["stds"] == [DINOV2_STD_BF16, HALF]
    resized = torchvision_resize(frame)
    prepared = tiny_model.preprocess(frame)
    np.testing.assert_array_equal(prepared.model_input_rgb, np.asarray(resized))
    expected = torchvision_pixels(resized, saved["means"], saved["stds"])
    torch.testing.assert_close(prepared.pixel_values, expected, rtol=0, atol=1e-6)


def test_standard_constants_without_preprocessor_config(checkpoint_copy: Callable[..., Path],
                                                        tiny_model: OpenVLA, frame: np.ndarray) -> None:
    directory = checkpoint_copy()
    (directory / "preprocessor_config.json").unlink()
    prepared = load_vla(directory).preprocess(frame)
    expected = torchvision_pixels(torchvision_resize(frame), [IMAGENET_MEAN, HALF], [IMAGENET_STD, HALF])
    torch.testing.assert_close(prepared.pixel_values, expected, rtol=0, atol=1e-6)
    with_saved = tiny_model.preprocess(frame).pixel_values
    assert (with_saved[:, :3] - prepared.pixel_values[:, :3]).abs().max() > 1e-3  # bf16 vs exact constants
    torch.testing.assert_close(with_saved[:, 3:], prepared.pixel_values[:, 3:], rtol=0, atol=0)


def test_center_crop_takes_the_middle_0_9_area(tiny_dir: Path, tiny_model: OpenVLA, frame: np.ndarray) -> None:
    """Crop of side sqrt(0.9)*224 centred in the 224 image, bilinear back to 224 (roi_align here)."""
    cropped = load_vla(tiny_dir, center_crop=True).preprocess(frame).model_input_rgb
    full = torch.from_numpy(np.array(torchvision_resize(frame))).permute(2, 0, 1).float().unsqueeze(0)
    side = math.sqrt(0.9) * 224
    start = (224 - side) / 2
    box = torch.tensor([[0.0, start, start, start + side, start + side]])
    expected = roi_align(full, box, output_size=224, spatial_scale=1.0, sampling_ratio=1, aligned=True)
    expected_rgb = expected[0].permute(1, 2, 0).round().clamp(0, 255).numpy()
    difference = np.abs(cropped.astype(np.float64) - expected_rgb)
    assert difference.max() <= 1.0 and difference.mean() < 0.2
    uncropped = tiny_model.preprocess(frame).model_input_rgb
    assert np.abs(uncropped.astype(np.float64) - expected_rgb).mean() > 5 * difference.mean() + 1


def test_prompt_text() -> None:
    assert build_prompt("Pick up the RED cube") == PROMPT


def test_prompt_ids_bos_first_space_token_once(tiny_model: OpenVLA) -> None:
    ids = tiny_model.prompt_ids(INSTRUCTION).tolist()
    assert ids[0] == tiny_model.tokenizer.bos_token_id == 1
    assert ids[-1] == 29871 and ids.count(29871) == 1
    assert ids[:-1] == tiny_model.tokenizer(PROMPT)["input_ids"]
    assert ids.count(1) == 1
    assert tiny_model.tokenizer.decode(ids[1:-1]) == PROMPT


def test_space_token_not_appended_twice() -> None:
    """A tokenizer whose prompt already ends in 29871 gets no second one (the reference's check)."""
    words = PROMPT.split()
    vocab = {"<unk>": 0, "<s>": 1, **{w: 100 + i for i, w in enumerate(dict.fromkeys(words[:-1]))}, words[-1]: 29871}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", unk_token="<unk>")
    ids = prompt_token_ids(tokenizer, INSTRUCTION)
    assert ids[0] == 1 and ids[-1] == 29871 and ids.count(29871) == 1
    assert len(ids) == 1 + len(words)


@pytest.mark.parametrize("image, message", [
    (np.zeros((10, 10), dtype=np.uint8), r"shape \(H, W, 3\)"),
    (np.zeros((10, 10, 4), dtype=np.uint8), r"shape \(H, W, 3\)"),
    (np.zeros((0, 10, 3), dtype=np.uint8), r"shape \(H, W, 3\)"),
    (np.zeros((10, 10, 3), dtype=np.float32), "uint8"),
    ([[0, 0, 0]], "numpy array"),
])
def test_bad_images_are_rejected(tiny_model: OpenVLA, image: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        tiny_model.predict_action(image, INSTRUCTION, unnorm_key="tiny_sim")  # type: ignore[arg-type]


@pytest.mark.parametrize("instruction", ["", "   "])
def test_empty_instruction_is_rejected(tiny_model: OpenVLA, frame: np.ndarray, instruction: str) -> None:
    with pytest.raises(ConfigurationError, match="instruction"):
        tiny_model.predict_action(frame, instruction, unnorm_key="tiny_sim")
