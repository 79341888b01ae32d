"""Image preprocessing and prompt construction, against values computed independently here.

OpenVLA's processor applies the ``tvf_*`` fields of preprocessor_config.json (bf16-rounded
DINOv2 constants), not its top-level ``means``/``stds`` (issue 10, item 8); expected pixels are
computed here with PIL and numpy, with the constants written out.
"""
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

from test.models.helpers import INSTRUCTION
from vla_cache_ros.errors import CheckpointError, ConfigurationError
from vla_cache_ros.models.processor import ImageProcessor, build_prompt, prompt_token_ids
from vla_cache_ros.models.tiny import DINOV2_ID, SIGLIP_ID
from vla_cache_ros.models.vla import OpenVLA, load_vla

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


def pil_numpy_pixels(rgb: np.ndarray, means: list[list[float]], stds: list[list[float]]) -> torch.Tensor:
    """(x / 255 - mean) / std per backbone with numpy, channel-stacked: (1, 3 * backbones, H, W)."""
    unit = rgb.astype(np.float64) / 255.0
    planes = [((unit - np.array(m)) / np.array(s)).transpose(2, 0, 1) for m, s in zip(means, stds)]
    return torch.from_numpy(np.concatenate(planes, axis=0)[None]).float()


def test_preprocess_matches_torchvision_with_saved_bf16_constants(tiny_model: OpenVLA, tiny_dir: Path,
                                                                  frame: np.ndarray) -> None:
    saved = json.loads((tiny_dir / "preprocessor_config.json").read_text())
    # OpenVLA's layout: both constant sets, the tvf_* ones are applied
    assert saved["means"] == [IMAGENET_MEAN, HALF] and saved["stds"] == [IMAGENET_STD, HALF]
    assert [p["mean"] for p in saved["tvf_normalize_params"]] == [DINOV2_MEAN_BF16, HALF]
    assert [p["std"] for p in saved["tvf_normalize_params"]] == [DINOV2_STD_BF16, HALF]
    assert saved["tvf_resize_params"] == [{"antialias": True, "interpolation": 3, "max_size": None,
                                           "size": [224, 224]}] * 2
    assert saved["tvf_crop_params"] == [{"output_size": [224, 224]}] * 2
    assert saved["tvf_do_letterbox"] is False and saved["image_resize_strategy"] == "resize-naive"
    resized = torchvision_resize(frame)
    prepared = tiny_model.preprocess(frame)
    np.testing.assert_array_equal(prepared.model_input_rgb, np.asarray(resized))
    expected = torchvision_pixels(resized, [DINOV2_MEAN_BF16, HALF], [DINOV2_STD_BF16, HALF])
    torch.testing.assert_close(prepared.pixel_values, expected, rtol=0, atol=1e-6)


def openvla_preprocessor(strategy: str = "resize-naive", **changes: object) -> dict:
    """OpenVLA-7B's preprocessor_config.json (fused DINOv2 + SigLIP), written out here, with changes."""
    size: object = [224, 224] if strategy == "resize-naive" else 224
    data = {
        "image_processor_type": "PrismaticImageProcessor", "image_resize_strategy": strategy,
        "input_sizes": [[3, 224, 224], [3, 224, 224]], "interpolations": ["bicubic", "bicubic"],
        "means": [IMAGENET_MEAN, HALF], "stds": [IMAGENET_STD, HALF],
        "tvf_crop_params": [{"output_size": [224, 224]}, {"output_size": [224, 224]}],
        "tvf_do_letterbox": strategy == "letterbox", "tvf_letterbox_fill": None,
        "tvf_normalize_params": [{"inplace": False, "mean": DINOV2_MEAN_BF16, "std": DINOV2_STD_BF16},
                                 {"inplace": False, "mean": HALF, "std": HALF}],
        "tvf_resize_params": [{"antialias": True, "interpolation": 3, "max_size": None, "size": size}] * 2,
        "use_fused_vision_backbone": True,
    }
    data.update(changes)
    return data


def processor_for(tmp_path: Path, data: dict, center_crop: bool = False) -> ImageProcessor:
    """The processor a checkpoint directory holding only ``data`` as preprocessor_config.json gets."""
    directory = tmp_path / f"preprocessor_{len(list(tmp_path.iterdir()))}"
    directory.mkdir()
    (directory / "preprocessor_config.json").write_text(json.dumps(data))
    return ImageProcessor.from_checkpoint(directory, [DINOV2_ID, SIGLIP_ID], 224, center_crop)


def test_tvf_constants_win_over_means_and_stds(tmp_path: Path, frame: np.ndarray) -> None:
    """The reported example: the two constant sets differ; OpenVLA applies tvf_normalize_params."""
    prepared = processor_for(tmp_path, openvla_preprocessor())(frame)
    rgb = np.asarray(Image.fromarray(frame).resize((224, 224), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(prepared.model_input_rgb, rgb)
    expected = pil_numpy_pixels(rgb, [DINOV2_MEAN_BF16, HALF], [DINOV2_STD_BF16, HALF])
    torch.testing.assert_close(prepared.pixel_values, expected, rtol=0, atol=1e-5)
    with_means_stds = pil_numpy_pixels(rgb, [IMAGENET_MEAN, HALF], [IMAGENET_STD, HALF])
    shift = (prepared.pixel_values[:, :3] - with_means_stds[:, :3]).abs().max().item()
    assert shift > 0.005  # what using means/stds would have got wrong


def test_constant_sets_far_apart_leave_no_doubt(tmp_path: Path, frame: np.ndarray) -> None:
    data = openvla_preprocessor(means=[[0.1, 0.1, 0.1], [0.9, 0.9, 0.9]], stds=[[2.0] * 3, [3.0] * 3],
                                tvf_normalize_params=[{"mean": [0.3, 0.4, 0.5], "std": [0.25, 0.5, 1.0]},
                                                      {"mean": [0.6, 0.7, 0.8], "std": [0.2, 0.3, 0.4]}])
    prepared = processor_for(tmp_path, data)(frame)
    rgb = np.asarray(Image.fromarray(frame).resize((224, 224), Image.Resampling.BICUBIC))
    expected = pil_numpy_pixels(rgb, [[0.3, 0.4, 0.5], [0.6, 0.7, 0.8]], [[0.25, 0.5, 1.0], [0.2, 0.3, 0.4]])
    torch.testing.assert_close(prepared.pixel_values, expected, rtol=0, atol=1e-5)


def letterboxed(frame: np.ndarray, fill: tuple[int, int, int]) -> np.ndarray:
    """OpenVLA's letterbox by hand: floor((side - w) / 2) columns left and right, floor((side - h) / 2)
    rows top and bottom, in ``fill``."""
    height, width = frame.shape[:2]
    side = max(height, width)
    vertical, horizontal = (side - height) // 2, (side - width) // 2
    out = np.empty((height + 2 * vertical, width + 2 * horizontal, 3), np.uint8)
    out[...] = np.array(fill, np.uint8)
    out[vertical:vertical + height, horizontal:horizontal + width] = frame
    return out


@pytest.mark.parametrize("rows", [181, 180])  # even and odd height difference to the 263-px width
def test_letterbox_pads_with_the_fill_value_first(tmp_path: Path, frame: np.ndarray, rows: int) -> None:
    fill = (124, 116, 104)
    image = np.ascontiguousarray(frame[:rows])
    processor = processor_for(tmp_path, openvla_preprocessor("letterbox", tvf_letterbox_fill=list(fill)))
    prepared = processor(image)
    np.testing.assert_array_equal(processor.resize(image), prepared.model_input_rgb)
    padded = letterboxed(image, fill)
    short, long = sorted(padded.shape[:2])
    assert long - short in (0, 1)
    # torchvision's int resize: shorter side -> 224, longer -> int(224 * long / short); then centre crop
    target = (224, int(224 * long / short))
    width, height = target if padded.shape[1] >= padded.shape[0] else target[::-1]
    resized = np.asarray(Image.fromarray(padded).resize((width, height), Image.Resampling.BICUBIC))
    top, left = (height - 224) // 2, (width - 224) // 2  # never odd here: both 0
    rgb = resized[top:top + 224, left:left + 224]
    np.testing.assert_array_equal(prepared.model_input_rgb, rgb)
    assert (prepared.model_input_rgb[:25] == np.array(fill, np.uint8)).all()  # the border is the fill colour
    assert (prepared.model_input_rgb[-25:] == np.array(fill, np.uint8)).all()
    expected = pil_numpy_pixels(rgb, [DINOV2_MEAN_BF16, HALF], [DINOV2_STD_BF16, HALF])
    torch.testing.assert_close(prepared.pixel_values, expected, rtol=0, atol=1e-5)


def test_letterbox_fill_defaults_to_openvla_rule(tmp_path: Path, frame: np.ndarray) -> None:
    """Without tvf_letterbox_fill: int(255 * m) of the last backbone's ``means`` (SigLIP: 127)."""
    prepared = processor_for(tmp_path, openvla_preprocessor("letterbox"))(frame)
    assert (prepared.model_input_rgb[:25] == 127).all()


def test_resize_crop_strategy_resizes_the_short_side_then_crops(tmp_path: Path, frame: np.ndarray) -> None:
    prepared = processor_for(tmp_path, openvla_preprocessor("resize-crop", tvf_do_letterbox=None))(frame)
    resized = np.asarray(Image.fromarray(frame).resize((int(224 * 263 / 181), 224), Image.Resampling.BICUBIC))
    left = int(round((resized.shape[1] - 224) / 2.0))  # torchvision's centre-crop offset
    np.testing.assert_array_equal(prepared.model_input_rgb, resized[:, left:left + 224])


def test_means_and_stds_without_tvf_fields(tmp_path: Path, frame: np.ndarray) -> None:
    """Older / miniature layout: no tvf_* fields, so means/stds are applied (bicubic resize-naive)."""
    data = {"image_resize_strategy": "resize-naive", "means": [[0.2, 0.3, 0.4], HALF], "stds": [[0.5] * 3, HALF]}
    prepared = processor_for(tmp_path, data)(frame)
    rgb = np.asarray(Image.fromarray(frame).resize((224, 224), Image.Resampling.BICUBIC))
    torch.testing.assert_close(prepared.pixel_values, pil_numpy_pixels(rgb, [[0.2, 0.3, 0.4], HALF], [[0.5] * 3, HALF]),
                               rtol=0, atol=1e-5)


def _set(path: str, value: object) -> Callable[[dict], None]:
    """An editor setting ``tvf_x[i].key`` (or a top-level field) in a preprocessor config; None deletes."""
    def apply(data: dict) -> None:
        if "." in path:
            name, key = path.split(".")
            field, index = name.split("[")
            entry = dict(data[field][int(index[:-1])])
            entry[key] = value
            data[field] = [entry if i == int(index[:-1]) else e for i, e in enumerate(data[field])]
        elif value is None:
            del data[path]
        else:
            data[path] = value
    return apply


@pytest.mark.parametrize("edit, message", [
    (_set("image_resize_strategy", "resize-magic"),
     "field 'image_resize_strategy' is 'resize-magic'; supported: resize-naive, resize-crop, letterbox"),
    (_set("tvf_resize_params[0].interpolation", 7), "field 'tvf_resize_params[0].interpolation' is 7; supported PIL"),
    (_set("tvf_resize_params[1].interpolation", "bicubic"), "field 'tvf_resize_params[1].interpolation' is 'bicubic'"),
    (_set("tvf_resize_params[0].size", "224"), "field 'tvf_resize_params[0].size' must be a positive integer or"),
    (_set("tvf_resize_params[0].antialias", "yes"), "field 'tvf_resize_params[0].antialias' must be true or false"),
    (_set("tvf_normalize_params[1].std", [0.5, 0.0, 0.5]),
     "field 'tvf_normalize_params[1].std' must be three positive numbers"),
    (_set("tvf_normalize_params[0].mean", [0.5, 0.5]), "field 'tvf_normalize_params[0].mean' must be three finite"),
    (_set("tvf_crop_params", None), "field 'tvf_crop_params' must list one object per vision backbone (2)"),
    (_set("tvf_crop_params[1].output_size", [112, 112]),
     "field 'tvf_crop_params[1].output_size' is [112, 112], but the model's image size is 224"),
    (_set("tvf_do_letterbox", True), "field 'tvf_do_letterbox' is True but 'image_resize_strategy' is 'resize-naive'"),
    (lambda data: data.update(image_resize_strategy="letterbox", tvf_do_letterbox=True, tvf_letterbox_fill=[300, 0, 0]),
     "field 'tvf_letterbox_fill' must be three integers in 0-255"),
    (lambda data: [data.pop(k) for k in list(data) if k.startswith("tvf_") or k in ("means",)],
     "'means' and 'stds' must list one triple per vision backbone"),
    (lambda data: data.clear() or data.update(means=[[0.5, "x", 0.5], HALF], stds=[HALF, HALF]),
     "field 'means[0]' must be three finite numbers"),
])
def test_malformed_preprocessor_config_names_the_field(tmp_path: Path, edit: Callable[[dict], None],
                                                       message: str) -> None:
    data = openvla_preprocessor()
    edit(data)
    with pytest.raises(CheckpointError) as info:
        processor_for(tmp_path, data)
    assert message in str(info.value) and "preprocessor_config.json" in str(info.value)


def test_malformed_preprocessor_config_refuses_the_checkpoint(checkpoint_copy: Callable[..., Path]) -> None:
    directory = checkpoint_copy()
    data = json.loads((directory / "preprocessor_config.json").read_text())
    data["tvf_resize_params"][0]["interpolation"] = 9
    (directory / "preprocessor_config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"preprocessor_config.json: field 'tvf_resize_params\[0\]"):
        load_vla(directory)


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
