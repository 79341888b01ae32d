"""Image and prompt preprocessing, as OpenVLA's reference processor does it.

Image: OpenVLA's ``PrismaticImageProcessor`` (``processing_prismatic.py`` in its HF export) is
reproduced from the saved ``preprocessor_config.json``, per vision backbone, with
``torchvision.transforms.functional`` on a PIL image as the reference does:

1. ``image_resize_strategy``: ``letterbox`` first pads the frame to a square with
   ``tvf_letterbox_fill`` (symmetric border, ``floor(difference / 2)`` on each side, exactly as
   the reference; so an odd difference leaves it one pixel short, which step 3 absorbs);
   ``resize-naive`` and ``resize-crop`` do not pad.
2. ``TVF.resize`` with ``tvf_resize_params[i]``: ``size`` (``[S, S]`` for resize-naive, an
   int for the shorter side otherwise), ``interpolation`` (a PIL code: 3 = bicubic),
   ``max_size``, ``antialias`` (PIL always antialiases).
3. ``TVF.center_crop`` to ``tvf_crop_params[i].output_size`` (a no-op for resize-naive).
4. [0, 1] scaling, then ``TVF.normalize`` with ``tvf_normalize_params[i]`` -- in OpenVLA's
   export these are the bf16-rounded DINOv2 constants (mean 0.484375, 0.455078125, 0.40625;
   std 0.228515625, 0.2236328125, 0.224609375), *not* the top-level ``means``/``stds``
   (0.485, 0.456, 0.406 / 0.229, 0.224, 0.225): the saved ``tvf_*`` values override what
   the processor would compute from ``means``/``stds``, so they are what the model saw.
5. Fused backbones (DINOv2 + SigLIP) are stacked on channels.

Fallbacks (older or miniature checkpoints): without ``tvf_*`` fields, ``means``/``stds`` give
the normalisation and the resize is bicubic to the model's image size; without a
``preprocessor_config.json``, the standard constants of each backbone family are used
(ImageNet for DINOv2, 0.5 for SigLIP). A missing ``image_resize_strategy`` means
``resize-naive`` (what every OpenVLA release saves). Malformed or unsupported fields raise
``CheckpointError`` naming the field.

Optional LIBERO evaluation crop (``center_crop``): after the steps above, the middle 0.9 of
the area (side sqrt(0.9) * S) is resized back to S x S bilinearly, as OpenVLA's LIBERO
evaluation does. ``model_input_rgb`` is the first backbone's RGB after steps 1-3 and the crop.

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
import torchvision.transforms.functional as TVF
from PIL import Image
from torchvision.transforms import InterpolationMode

from vla_cache_ros.errors import CheckpointError, ConfigurationError

# Standard constants, used when a checkpoint ships no preprocessor_config.json.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
SPACE_TOKEN_ID = 29871
LIBERO_CROP_AREA = 0.9
RESIZE_STRATEGIES = ("resize-naive", "resize-crop", "letterbox")
DEFAULT_RESIZE_STRATEGY = "resize-naive"
BICUBIC_PIL_CODE = 3
TVF_FIELDS = ("tvf_resize_params", "tvf_crop_params", "tvf_normalize_params")

# PIL resampling codes, as OpenVLA saves ``interpolation`` (torchvision's own table, inverted;
# code 0 is NEAREST, the first mode torchvision lists for it).
INTERPOLATION_BY_CODE: dict[int, InterpolationMode] = {}
for _mode, _code in TVF.pil_modes_mapping.items():
    INTERPOLATION_BY_CODE.setdefault(_code, _mode)


def default_normalization(timm_model_id: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Standard mean/std for a timm backbone family (SigLIP: 0.5; others: ImageNet)."""
    if "siglip" in timm_model_id.lower():
        return SIGLIP_MEAN, SIGLIP_STD
    return IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class BackboneTransform:
    """One backbone's eval transform: resize -> centre crop -> [0, 1] -> normalise.

    Attributes:
        resize_size: ``TVF.resize`` size: ``(H, W)`` pixels, or an int for the shorter side.
        interpolation: resampling filter.
        antialias: passed to ``TVF.resize`` (PIL input is always antialiased).
        max_size: ``TVF.resize``'s bound on the longer side (None: unbounded).
        crop_size: ``(H, W)`` of the centre crop = the backbone's input size.
        mean: per-channel mean subtracted after scaling to [0, 1] (RGB).
        std: per-channel divisor (RGB), all > 0.
    """

    resize_size: tuple[int, int] | int
    interpolation: InterpolationMode
    antialias: bool
    max_size: int | None
    crop_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def naive(cls, image_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> "BackboneTransform":
        """Bicubic, antialiased resize straight to ``image_size`` squared (OpenVLA's resize-naive)."""
        return cls((image_size, image_size), InterpolationMode.BICUBIC, True, None, (image_size, image_size),
                   _triple(mean, "mean", "image processor"), _triple(std, "std", "image processor", positive=True))

    @property
    def geometry(self) -> tuple[Any, ...]:
        """What decides the resized pixels (backbones sharing it share one resize)."""
        return self.resize_size, self.interpolation, self.antialias, self.max_size, self.crop_size


@dataclass
class PreparedImage:
    """One preprocessed frame: model input tensor plus the S x S RGB it was made from."""

    pixel_values: torch.Tensor  # (1, 3 * num_backbones, S, S) float32
    model_input_rgb: np.ndarray  # (S, S, 3) uint8: what the vision tower sees, before normalising


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _triple(value: Any, name: str, where: str, positive: bool = False) -> tuple[float, float, float]:
    """Three finite floats (> 0 when ``positive``), else CheckpointError naming ``name``."""
    if (not isinstance(value, (list, tuple)) or len(value) != 3 or not all(_is_number(v) for v in value)
            or (positive and not all(v > 0 for v in value))):
        expected = "three positive numbers" if positive else "three finite numbers"
        raise CheckpointError(f"{where}: field '{name}' must be {expected}, got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


def _size(value: Any, name: str, where: str, allow_int: bool) -> tuple[int, int] | int:
    """A positive int (when ``allow_int``) or a pair of positive ints, else CheckpointError."""
    def positive(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    if allow_int and positive(value):
        return int(value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(positive(v) for v in value):
        return (int(value[0]), int(value[1]))
    if isinstance(value, (list, tuple)) and len(value) == 1 and positive(value[0]):
        return (int(value[0]), int(value[0]))  # torchvision reads [S] as S x S for a crop
    expected = "a positive integer or [height, width]" if allow_int else "[height, width]"
    raise CheckpointError(f"{where}: field '{name}' must be {expected}, got {value!r}")


def _entries(data: dict[str, Any], name: str, count: int, where: str) -> list[dict[str, Any]]:
    """``data[name]``: a list of one object per backbone, else CheckpointError."""
    value = data.get(name)
    if not isinstance(value, list) or len(value) != count or not all(isinstance(v, dict) for v in value):
        raise CheckpointError(f"{where}: field '{name}' must list one object per vision backbone ({count})")
    return value


def _backbone_transform(data: dict[str, Any], index: int, count: int, where: str) -> BackboneTransform:
    """Backbone ``index``'s transform from the ``tvf_*`` fields."""
    resize = _entries(data, "tvf_resize_params", count, where)[index]
    crop = _entries(data, "tvf_crop_params", count, where)[index]
    normalize = _entries(data, "tvf_normalize_params", count, where)[index]
    prefix = f"tvf_resize_params[{index}]"
    if "size" not in resize:
        raise CheckpointError(f"{where}: missing required field '{prefix}.size'")
    size = _size(resize["size"], f"{prefix}.size", where, allow_int=True)
    code = resize.get("interpolation", BICUBIC_PIL_CODE)
    if isinstance(code, bool) or not isinstance(code, int) or code not in INTERPOLATION_BY_CODE:
        codes = ", ".join(f"{c} = {m.value}" for c, m in sorted(INTERPOLATION_BY_CODE.items()))
        raise CheckpointError(f"{where}: field '{prefix}.interpolation' is {code!r}; supported PIL codes: {codes}")
    antialias = resize.get("antialias", True)
    if not isinstance(antialias, bool):
        raise CheckpointError(f"{where}: field '{prefix}.antialias' must be true or false, got {antialias!r}")
    max_size = resize.get("max_size")
    if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int) or max_size <= 0):
        raise CheckpointError(f"{where}: field '{prefix}.max_size' must be null or a positive integer, "
                              f"got {max_size!r}")
    if "output_size" not in crop:
        raise CheckpointError(f"{where}: missing required field 'tvf_crop_params[{index}].output_size'")
    crop_size = _size(crop["output_size"], f"tvf_crop_params[{index}].output_size", where, allow_int=True)
    crop_pair = crop_size if isinstance(crop_size, tuple) else (crop_size, crop_size)
    mean = _triple(normalize.get("mean"), f"tvf_normalize_params[{index}].mean", where)
    std = _triple(normalize.get("std"), f"tvf_normalize_params[{index}].std", where, positive=True)
    return BackboneTransform(size, INTERPOLATION_BY_CODE[code], antialias, max_size, crop_pair, mean, std)


def _letterbox_fill(data: dict[str, Any], means: list[tuple[float, float, float]], where: str
                    ) -> tuple[int, int, int]:
    """``tvf_letterbox_fill`` (three 0-255 ints), or OpenVLA's rule when absent: ``int(255 * m)``
    for each channel of the last backbone's ``means`` entry."""
    fill = data.get("tvf_letterbox_fill")
    if fill is None:
        return tuple(int(255 * m) for m in means[-1])  # type: ignore[return-value]
    if (not isinstance(fill, list) or len(fill) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in fill)):
        raise CheckpointError(f"{where}: field 'tvf_letterbox_fill' must be three integers in 0-255, got {fill!r}")
    return (fill[0], fill[1], fill[2])


@dataclass(frozen=True)
class PreprocessorSpec:
    """Everything the image processor does, per backbone (see the module docstring).

    Attributes:
        transforms: one :class:`BackboneTransform` per backbone, in channel order.
        letterbox_fill: RGB fill (0-255) of the square padding, or None for no letterbox.
        source: where the settings came from, e.g. ``"tvf_* fields of .../preprocessor_config.json"``.
    """

    transforms: tuple[BackboneTransform, ...]
    letterbox_fill: tuple[int, int, int] | None
    source: str


def parse_preprocessor_config(data: Any, num_backbones: int, image_size: int, where: str) -> PreprocessorSpec:
    """Validate a ``preprocessor_config.json`` object and return the processor it describes.

    Uses the ``tvf_*`` fields when any is present (then all three are required), else
    ``means``/``stds`` with a bicubic resize to ``image_size``. Each backbone's crop must
    produce ``image_size`` x ``image_size`` pixels (the vision tower's input).

    Raises:
        CheckpointError: naming the field that is missing, malformed, unsupported or
            inconsistent (``image_resize_strategy`` vs ``tvf_do_letterbox``, crop vs image size).
    """
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: expected a JSON object")
    strategy = data.get("image_resize_strategy", DEFAULT_RESIZE_STRATEGY)
    if strategy not in RESIZE_STRATEGIES:
        raise CheckpointError(
            f"{where}: field 'image_resize_strategy' is {strategy!r}; supported: {', '.join(RESIZE_STRATEGIES)}")
    letterbox = strategy == "letterbox"
    saved_letterbox = data.get("tvf_do_letterbox")
    if saved_letterbox is not None and saved_letterbox != letterbox:
        raise CheckpointError(f"{where}: field 'tvf_do_letterbox' is {saved_letterbox!r} but "
                              f"'image_resize_strategy' is {strategy!r}")
    means, stds = data.get("means"), data.get("stds")
    if any(name in data for name in TVF_FIELDS):
        transforms = tuple(_backbone_transform(data, i, num_backbones, where) for i in range(num_backbones))
        source = f"tvf_* fields of {where}"
        if letterbox and data.get("tvf_letterbox_fill") is None:
            if not isinstance(means, list) or len(means) != num_backbones:
                raise CheckpointError(f"{where}: letterbox needs 'tvf_letterbox_fill' or one 'means' triple "
                                      "per vision backbone")
    else:
        if (not isinstance(means, list) or not isinstance(stds, list)
                or len(means) != num_backbones or len(stds) != num_backbones):
            raise CheckpointError(f"{where}: 'means' and 'stds' must list one triple per vision backbone")
        transforms = tuple(BackboneTransform.naive(image_size, _triple(m, f"means[{i}]", where),
                                                   _triple(s, f"stds[{i}]", where, positive=True))
                           for i, (m, s) in enumerate(zip(means, stds)))
        source = f"means/stds of {where} (no tvf_* fields)"
    for index, transform in enumerate(transforms):
        if transform.crop_size != (image_size, image_size):
            raise CheckpointError(
                f"{where}: field 'tvf_crop_params[{index}].output_size' is {list(transform.crop_size)}, but the "
                f"model's image size is {image_size}")
    fill = None
    if letterbox:
        fill = _letterbox_fill(
            data, [_triple(m, f"means[{i}]", where) for i, m in enumerate(means or [])], where)
    return PreprocessorSpec(transforms, fill, source)


def letterbox_pad(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Pad to (about) a square with a ``fill`` border: ``floor((side - w) / 2)`` left and right,
    ``floor((side - h) / 2)`` top and bottom, ``side = max(w, h)`` (OpenVLA's letterbox rule)."""
    width, height = image.size
    side = max(width, height)
    horizontal, vertical = (side - width) // 2, (side - height) // 2
    return TVF.pad(image, [horizontal, vertical, horizontal, vertical], fill=fill, padding_mode="constant")


class ImageProcessor:
    """Turns RGB frames into normalised pixel tensors for one or two vision backbones."""

    def __init__(self, spec: PreprocessorSpec, center_crop: bool = False) -> None:
        if not spec.transforms:
            raise ValueError("image processor needs at least one backbone transform")
        self.spec = spec
        self.center_crop = center_crop
        self.image_size = spec.transforms[0].crop_size[0]

    @classmethod
    def naive(cls, image_size: int, means: list[tuple[float, ...]], stds: list[tuple[float, ...]],
              center_crop: bool = False, source: str = "given constants") -> "ImageProcessor":
        """Resize-naive (bicubic to ``image_size``) with one mean/std triple per backbone."""
        if len(means) != len(stds) or not means:
            raise ConfigurationError("image processor needs one mean and one std per backbone")
        transforms = tuple(BackboneTransform.naive(image_size, m, s) for m, s in zip(means, stds))
        return cls(PreprocessorSpec(transforms, None, source), center_crop)

    @classmethod
    def from_checkpoint(cls, directory: Path, timm_model_ids: list[str], image_size: int,
                        center_crop: bool = False) -> "ImageProcessor":
        """The processor ``preprocessor_config.json`` describes, else standard constants per backbone.

        Raises CheckpointError for malformed JSON or fields (see :func:`parse_preprocessor_config`).
        """
        path = directory / "preprocessor_config.json"
        if path.is_file():
            try:
                data: Any = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise CheckpointError(f"{path}: malformed JSON ({error})") from error
            return cls(parse_preprocessor_config(data, len(timm_model_ids), image_size, str(path)), center_crop)
        pairs = [default_normalization(model_id) for model_id in timm_model_ids]
        return cls.naive(image_size, [p[0] for p in pairs], [p[1] for p in pairs], center_crop,
                         source="standard constants (no preprocessor_config.json)")

    @property
    def means(self) -> list[tuple[float, float, float]]:
        """The normalisation mean applied per backbone."""
        return [t.mean for t in self.spec.transforms]

    @property
    def stds(self) -> list[tuple[float, float, float]]:
        """The normalisation std applied per backbone."""
        return [t.std for t in self.spec.transforms]

    def _libero_crop(self, image: Image.Image) -> Image.Image:
        size = image.size[0]
        side = math.sqrt(LIBERO_CROP_AREA) * size
        offset = (size - side) / 2.0
        return image.resize((size, size), Image.Resampling.BILINEAR,
                            box=(offset, offset, offset + side, offset + side))

    def _geometry(self, image: Image.Image, transform: BackboneTransform) -> np.ndarray:
        """Resize, centre-crop (and LIBERO-crop): (S, S, 3) uint8."""
        size = list(transform.resize_size) if isinstance(transform.resize_size, tuple) else [transform.resize_size]
        resized = TVF.resize(image, size, interpolation=transform.interpolation, max_size=transform.max_size,
                             antialias=transform.antialias)
        cropped = TVF.center_crop(resized, list(transform.crop_size))
        if self.center_crop:
            cropped = self._libero_crop(cropped)
        return np.asarray(cropped, dtype=np.uint8)

    def _padded(self, image: np.ndarray) -> Image.Image:
        """The validated frame as a PIL image, letterboxed when the spec says so."""
        validate_rgb_image(image)
        pil = Image.fromarray(np.ascontiguousarray(image), mode="RGB")
        return pil if self.spec.letterbox_fill is None else letterbox_pad(pil, self.spec.letterbox_fill)

    def resize(self, image: np.ndarray) -> np.ndarray:
        """The first backbone's model-input RGB, (S, S, 3) uint8, for an (H, W, 3) uint8 frame."""
        return self._geometry(self._padded(image), self.spec.transforms[0])

    def __call__(self, image: np.ndarray) -> PreparedImage:
        """Preprocess one (H, W, 3) uint8 RGB frame into ``PreparedImage``.

        Raises ConfigurationError for anything but a non-empty (H, W, 3) uint8 array.
        """
        pil = self._padded(image)
        resized: dict[tuple[Any, ...], np.ndarray] = {}
        planes = []
        for transform in self.spec.transforms:
            if transform.geometry not in resized:
                resized[transform.geometry] = self._geometry(pil, transform)
            rgb = resized[transform.geometry]
            unit = torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)
            planes.append(TVF.normalize(unit, list(transform.mean), list(transform.std)))
        first = resized[self.spec.transforms[0].geometry]
        return PreparedImage(pixel_values=torch.cat(planes, dim=0).unsqueeze(0), model_input_rgb=first)


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
