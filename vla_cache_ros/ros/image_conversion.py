"""sensor_msgs Image / CompressedImage <-> (H, W, 3) uint8 RGB arrays, in numpy (no cv_bridge).

cv_bridge does not install from PyPI for ROS 2, so the node converts images itself. Functions
are duck-typed on the message fields (``height, width, encoding, is_bigendian, step, data``;
``format, data`` for CompressedImage), so this module imports neither rclpy nor message
packages, and works on rosbags' message objects too.

Supported raw encodings: ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8``, ``mono8``. Alpha is dropped
(not composited); mono is replicated to three channels. Rows may be padded (``step`` larger than
``width * channels``); ``data`` must hold exactly ``step * height`` bytes.

Byte order: every supported encoding has one byte per channel, so ``is_bigendian`` cannot change
how the bytes are read; it is still checked to be 0 or 1. Multi-byte encodings (``16UC1``,
``mono16``, ``rgb16``, float depth, ...), where the flag would matter, are rejected rather than
guessed at: they are not what an RGB policy should see.

Compressed images are decoded with OpenCV's ``imdecode`` (imported on first use): JPEG and PNG,
in the plain (``jpeg``) and image_transport (``rgb8; jpeg compressed bgr8``) format spellings;
``compressedDepth`` and unknown formats are rejected.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vla_cache_ros.errors import UserFacingError

CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
"""Supported raw encodings and their channel counts (all 8 bits per channel)."""

COMPRESSED_FORMATS = ("jpeg", "jpg", "png")


class ImageConversionError(UserFacingError, ValueError):
    """An image message cannot be converted (unsupported encoding, inconsistent size/step/data)."""


def _as_bytes(data: Any) -> np.ndarray:
    """A flat uint8 view (or copy, for lists) of a message's ``data`` field."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype.itemsize == 1 else \
            np.frombuffer(data.tobytes(), dtype=np.uint8)
    try:
        return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    except TypeError:
        try:
            return np.asarray(list(data), dtype=np.uint8)
        except (TypeError, ValueError, OverflowError) as error:
            raise ImageConversionError(f"image data is not a byte sequence ({error})") from None


def _to_rgb(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """(H, W, C) pixels in ``encoding`` -> contiguous (H, W, 3) RGB copy."""
    if encoding == "mono8":
        return np.repeat(pixels, 3, axis=2)
    if encoding in ("bgr8", "bgra8"):
        return np.ascontiguousarray(pixels[:, :, 2::-1])
    return np.ascontiguousarray(pixels[:, :, :3])


def image_to_rgb(msg: Any) -> np.ndarray:
    """Convert a sensor_msgs/Image-like object to a new (H, W, 3) uint8 RGB array.

    Raises:
        ImageConversionError: unsupported encoding (named in the message), non-positive size,
            ``step`` shorter than a row, a data length other than ``step * height``, or an
            ``is_bigendian`` other than 0/1.
    """
    encoding = str(msg.encoding).strip().lower()
    if encoding not in CHANNELS:
        raise ImageConversionError(
            f"unsupported image encoding {msg.encoding!r}; supported: {', '.join(CHANNELS)}")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"image size must be positive, got {width}x{height}")
    if int(msg.is_bigendian) not in (0, 1):
        raise ImageConversionError(f"is_bigendian must be 0 or 1, got {msg.is_bigendian}")
    channels = CHANNELS[encoding]
    row_bytes = width * channels
    if step < row_bytes:
        raise ImageConversionError(
            f"image step {step} is shorter than a row ({width} px x {channels} bytes = "
            f"{row_bytes}) for {encoding}")
    data = _as_bytes(msg.data)
    if data.size != step * height:
        raise ImageConversionError(
            f"image data has {data.size} bytes but step x height = {step} x {height} = "
            f"{step * height}")
    rows = data.reshape(height, step)[:, :row_bytes]
    return _to_rgb(rows.reshape(height, width, channels), encoding)


def compressed_image_to_rgb(msg: Any) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage-like object (JPEG / PNG) to (H, W, 3) uint8 RGB.

    Raises:
        ImageConversionError: unsupported format (e.g. compressedDepth) or undecodable data.
    """
    import cv2  # first use only: keeps the module importable and light without OpenCV

    image_format = str(msg.format).strip().lower()
    if "compresseddepth" in image_format or (
            image_format and not any(name in image_format for name in COMPRESSED_FORMATS)):
        raise ImageConversionError(
            f"unsupported compressed image format {msg.format!r}; supported: JPEG, PNG")
    data = _as_bytes(msg.data)
    if data.size == 0:
        raise ImageConversionError("compressed image has no data")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageConversionError(
            f"could not decode compressed image ({data.size} bytes, format {msg.format!r})")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
        raise ImageConversionError(
            f"expected a non-empty (H, W, 3) uint8 RGB array, got {rgb.dtype} {rgb.shape}")
    return rgb


def rgb_to_image_fields(rgb: np.ndarray, encoding: str = "rgb8") -> dict[str, Any]:
    """Fields of a sensor_msgs/Image holding ``rgb`` in ``encoding`` (rows unpadded).

    ``mono8`` uses ITU-R BT.601 luma weights (as OpenCV's RGB2GRAY), ``rgba8`` / ``bgra8``
    an opaque alpha. Returns ``height, width, encoding, is_bigendian, step, data`` (bytes).
    """
    rgb = _check_rgb(rgb)
    encoding = encoding.strip().lower()
    if encoding not in CHANNELS:
        raise ImageConversionError(
            f"cannot encode to {encoding!r}; supported: {', '.join(CHANNELS)}")
    if encoding == "mono8":
        luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        pixels = np.clip(np.rint(luma), 0, 255).astype(np.uint8)[:, :, None]
    else:
        pixels = rgb[:, :, ::-1] if encoding.startswith("bgr") else rgb
        if CHANNELS[encoding] == 4:
            alpha = np.full(rgb.shape[:2] + (1,), 255, dtype=np.uint8)
            pixels = np.concatenate([pixels, alpha], axis=2)
    height, width, channels = pixels.shape
    return {"height": height, "width": width, "encoding": encoding, "is_bigendian": 0,
            "step": width * channels, "data": np.ascontiguousarray(pixels).tobytes()}


def rgb_to_compressed_fields(rgb: np.ndarray, image_format: str = "jpeg",
                             jpeg_quality: int = 95) -> dict[str, Any]:
    """Fields of a sensor_msgs/CompressedImage holding ``rgb`` as JPEG or PNG.

    ``format`` is spelled as image_transport does (``rgb8; jpeg compressed bgr8``).
    """
    import cv2

    rgb = _check_rgb(rgb)
    image_format = image_format.strip().lower()
    if image_format not in COMPRESSED_FORMATS:
        raise ImageConversionError(f"cannot compress to {image_format!r}; use jpeg or png")
    extension = ".png" if image_format == "png" else ".jpg"
    params = [] if extension == ".png" else [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
    ok, buffer = cv2.imencode(extension, np.ascontiguousarray(rgb[:, :, ::-1]), params)
    if not ok:
        raise ImageConversionError(f"OpenCV failed to encode a {rgb.shape} image as {extension}")
    name = "png" if extension == ".png" else "jpeg"
    return {"format": f"rgb8; {name} compressed bgr8", "data": buffer.tobytes()}


def fill_message(msg: Any, fields: dict[str, Any]) -> Any:
    """Set ``fields`` on a message object (e.g. from :func:`rgb_to_image_fields`); return it."""
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg
