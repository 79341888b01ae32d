"""sensor_msgs Image / CompressedImage <-> (H, W, 3) uint8 RGB arrays, in numpy (no cv_bridge).

cv_bridge does not install from PyPI for ROS 2, so the node converts images itself. Functions
are duck-typed on the message fields (``height, width, encoding, is_bigendian, step, data``;
``format, data`` for CompressedImage), so this module imports neither rclpy nor message
packages, and works on rosbags' message objects too. It is the one place that decides which
images may feed the policy: the node and ``vla-cache replay`` both convert through it.

The rule: only 8-bit colour or mono images. Raw encodings ``rgb8``, ``bgr8``, ``rgba8``,
``bgra8``, ``mono8`` are accepted; alpha is dropped (not composited); mono is replicated to three
channels. Depth, 16-bit, float and other encodings (``16UC1``, ``32FC1``, ``mono16``,
``rgb16``, ``yuv422``, Bayer, ...) are refused with a one-line :class:`ImageConversionError`
naming the encoding and why (:func:`encoding_problem`); they are not what an RGB policy should
see. Rows may be padded (``step`` larger than ``width * channels``); ``data`` must hold exactly
``step * height`` bytes. Every accepted encoding has one byte per channel, so ``is_bigendian``
cannot change how the bytes are read; it is still checked to be 0 or 1.

Compressed images: the ``format`` string is parsed as image_transport writes it
(:func:`parse_compressed_format`): ``<encoding>; <codec> compressed [<target>]`` (ROS 2
compressed_image_transport, e.g. ``rgb8; jpeg compressed bgr8``, ``16UC1; png compressed``),
``<encoding>; compressedDepth [png|rvl]`` (compressed_depth_image_transport), or a plain codec
name (``jpeg``, ``png``; older drivers). JPEG and PNG are decoded with OpenCV's ``imdecode``
(imported on first use) with ``IMREAD_UNCHANGED``, so the payload keeps its real bit depth
and channel count. Both the declared encoding/target and the decoded array must pass the rule
above, so a depth image is refused whether the format string says so or only its pixels do;
``compressedDepth`` is always depth and always refused. Decoded colour is BGR(A) unless the
format's target says ``rgb...`` (compressed_image_transport's ``color_space: rgb``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla_cache_ros.errors import ImageConversionError

CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
"""Supported raw encodings and their channel counts (all 8 bits per channel)."""

COMPRESSED_FORMATS = ("jpeg", "jpg", "png")
"""Codecs accepted in a CompressedImage (``jpg`` is read as ``jpeg``)."""

DEPTH_CODEC = "compresseddepth"
"""compressed_depth_image_transport's codec name, lower-cased (its payload is always depth)."""

ACCEPTED = f"only 8-bit colour or mono images are accepted ({', '.join(CHANNELS)})"

COLOUR_16 = ("rgb16", "bgr16", "rgba16", "bgra16")
"""16-bit colour encodings: refused as a payload, but compressed_image_transport's JPEG codec
converts them to 8-bit ``rgb8``/``bgr8`` first, so as the *source* of such a payload they pass."""

# OpenCV-style generic encodings of sensor_msgs/image_encodings.hpp: 8UC3, 16UC1, 32FC1, ...
_GENERIC_ENCODING = re.compile(r"^(8|16|32|64)([USF])C([1-4])$", re.IGNORECASE)
# Named encodings with a bit depth suffix: mono16, rgb16, bgra16, bayer_rggb16, ...
_NAMED_WITH_BITS = re.compile(r"^(mono|rgb|bgr|rgba|bgra|bayer_[a-z]{4})(8|16)$", re.IGNORECASE)


def encoding_problem(encoding: str) -> str | None:
    """Why images in ``encoding`` cannot feed the policy, or None when they can.

    ``encoding`` is a sensor_msgs/image_encodings name (case-insensitive). The answer describes
    the pixels, e.g. ``"16-bit unsigned, 1 channel: depth"`` for ``16UC1`` or ``"16-bit"`` for
    ``mono16``; anything neither accepted nor recognised is ``"not an 8-bit colour or mono
    encoding"``.
    """
    name = str(encoding).strip()
    if name.lower() in CHANNELS:
        return None
    generic = _GENERIC_ENCODING.match(name)
    if generic:
        bits, kind, channels = int(generic.group(1)), generic.group(2).upper(), int(generic.group(3))
        kinds = {"U": "unsigned", "S": "signed", "F": "float"}
        text = f"{bits}-bit {kinds[kind]}, {channels} channel{'s' if channels > 1 else ''}"
        # 16UC1 (millimetres) and 32FC1 (metres) are REP 118's depth image encodings.
        if channels == 1 and (bits, kind) in ((16, "U"), (32, "F")):
            return f"{text}: depth"
        if bits == 8 and kind == "U":
            return f"{text}: generic 8-bit data, not a colour or mono encoding"
        return text
    named = _NAMED_WITH_BITS.match(name)
    if named:
        if named.group(2) == "16":
            return "16-bit"
        return "Bayer mosaic (not demosaiced)"
    return "not an 8-bit colour or mono encoding"


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
    problem = encoding_problem(encoding)
    if problem is not None:
        raise ImageConversionError(
            f"unsupported image encoding {msg.encoding!r} ({problem}); supported: {', '.join(CHANNELS)} "
            "(8-bit colour or mono)")
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


@dataclass(frozen=True)
class CompressedFormat:
    """A CompressedImage ``format`` string, parsed (see :func:`parse_compressed_format`).

    Attributes:
        text: the string as received.
        encoding: the image's encoding before compression (``rgb8``, ``16UC1``), or None
            when the format does not say (plain ``jpeg``).
        codec: lower-case codec: ``jpeg`` (also for ``jpg``), ``png``, ``compresseddepth``,
            another name as written, or ``""`` when the string is empty.
        target: the encoding the codec holds (``bgr8``, ``bgr16``), or None when not given.
    """

    text: str
    encoding: str | None
    codec: str
    target: str | None


def parse_compressed_format(text: str) -> CompressedFormat:
    """Parse an image_transport CompressedImage ``format`` string.

    Forms (from ROS 2 compressed_image_transport and compressed_depth_image_transport):
    ``"rgb8; jpeg compressed bgr8"``, ``"mono8; jpeg compressed "`` (no target for mono),
    ``"16UC1; png compressed "``, ``"rgb16; png compressed bgr16"``,
    ``"32FC1; compressedDepth"``, ``"16UC1; compressedDepth png"``; and plain ``"jpeg"`` /
    ``"png"`` from older drivers. Never raises: judging the result is the caller's job.
    """
    raw = str(text)
    if ";" in raw:
        before, rest = raw.split(";", 1)
        encoding: str | None = before.strip() or None
    else:
        encoding, rest = None, raw
    tokens = rest.split()
    codec = tokens[0].lower() if tokens else ""
    codec = "jpeg" if codec == "jpg" else codec
    target = None
    if codec != DEPTH_CODEC and len(tokens) >= 3 and tokens[1].lower() == "compressed":
        target = tokens[2]
    return CompressedFormat(text=raw, encoding=encoding, codec=codec, target=target)


def _check_declared_format(image_format: CompressedFormat) -> None:
    """Refuse a format whose codec, source encoding or payload encoding is not 8-bit colour or mono.

    The payload's encoding is the target when one is given, else the source encoding. A 16-bit
    colour source with an 8-bit colour target is a colour image (compressed_image_transport
    converts colour to ``rgb8``/``bgr8`` for JPEG); any other refused source (depth, float,
    16-bit mono, ...) is refused whatever the target says.
    """
    shown = repr(image_format.text)
    if image_format.codec == DEPTH_CODEC:
        raise ImageConversionError(
            f"compressed image format {shown} is a depth image (compressedDepth); {ACCEPTED}")
    if image_format.codec and image_format.codec not in COMPRESSED_FORMATS:
        raise ImageConversionError(f"unsupported compressed image format {shown}; supported: JPEG, PNG")
    source, target = image_format.encoding, image_format.target
    checks = []
    if source is not None and not (target is not None and source.lower() in COLOUR_16):
        checks.append(("encoding", source))
    if target is not None:
        checks.append(("compressed as", target))
    for role, declared in checks:
        problem = encoding_problem(declared)
        if problem is not None:
            raise ImageConversionError(
                f"compressed image format {shown} declares {role} {declared} ({problem}); {ACCEPTED}")


def _decoded_to_rgb(pixels: np.ndarray, image_format: CompressedFormat) -> np.ndarray:
    """OpenCV's ``IMREAD_UNCHANGED`` result (H, W) / (H, W, 1|3|4) -> (H, W, 3) RGB.

    Channel order: OpenCV returns what the encoder was given, which is BGR(A) except when the
    format's target says ``rgb...`` (compressed_image_transport's ``color_space: rgb``).

    Raises ImageConversionError for anything but 8-bit pixels with 1, 3 or 4 channels.
    """
    shown = repr(image_format.text)
    channels = 1 if pixels.ndim == 2 else int(pixels.shape[2])
    if pixels.dtype != np.uint8:
        bits = 8 * pixels.dtype.itemsize
        kind = "float" if pixels.dtype.kind == "f" else "integer"
        raise ImageConversionError(
            f"compressed image (format {shown}) decodes to {bits}-bit {kind} pixels, {channels} "
            f"channel{'s' if channels > 1 else ''} (depth or high bit depth); {ACCEPTED}")
    if channels not in (1, 3, 4):
        raise ImageConversionError(
            f"compressed image (format {shown}) decodes to {channels} channels; {ACCEPTED}")
    if channels == 1:
        return np.repeat(pixels.reshape(pixels.shape[0], pixels.shape[1], 1), 3, axis=2)
    rgb_order = image_format.target is not None and image_format.target.lower().startswith("rgb")
    return np.ascontiguousarray(pixels[:, :, :3] if rgb_order else pixels[:, :, 2::-1])


def compressed_image_to_rgb(msg: Any) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage-like object (JPEG / PNG) to (H, W, 3) uint8 RGB.

    The format string is checked first (:func:`parse_compressed_format`), then the decoded
    pixels (``IMREAD_UNCHANGED``: real bit depth and channels); see the module docstring.

    Raises:
        ImageConversionError: a depth / 16-bit / float / otherwise non-colour image (declared
            or decoded; the message names the format), an unsupported codec, or undecodable data.
    """
    import cv2  # first use only: keeps the module importable and light without OpenCV

    image_format = parse_compressed_format(msg.format)
    _check_declared_format(image_format)
    data = _as_bytes(msg.data)
    if data.size == 0:
        raise ImageConversionError("compressed image has no data")
    try:
        pixels = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as error:
        raise ImageConversionError(
            f"could not decode compressed image ({data.size} bytes, format {msg.format!r}): "
            f"{' '.join(str(error).split())}") from None
    if pixels is None:
        raise ImageConversionError(
            f"could not decode compressed image ({data.size} bytes, format {msg.format!r})")
    return _decoded_to_rgb(pixels, image_format)


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


def mask_to_image_fields(mask: np.ndarray) -> dict[str, Any]:
    """Fields of a mono8 sensor_msgs/Image of a (H, W) bool mask: 255 where True, 0 elsewhere
    (the node's ``~/reused_tokens``: one pixel per visual token, 255 = reused)."""
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.ndim != 2 or 0 in mask.shape:
        raise ImageConversionError(f"expected a non-empty (H, W) bool mask, got {mask.dtype} {mask.shape}")
    height, width = mask.shape
    return {"height": height, "width": width, "encoding": "mono8", "is_bigendian": 0, "step": width,
            "data": (mask.astype(np.uint8) * 255).tobytes()}


def image_to_mask(msg: Any) -> np.ndarray:
    """A mono8 (or any accepted encoding) Image-like object -> (H, W) bool, True where the
    first channel is >= 128; the inverse of :func:`mask_to_image_fields`.

    Raises:
        ImageConversionError: as :func:`image_to_rgb`.
    """
    return image_to_rgb(msg)[:, :, 0] >= 128


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
