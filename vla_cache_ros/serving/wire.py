"""What travels between a robot and the policy server, and the checks on it.

Two request formats, both JSON (never pickle):

- ``POST /act`` (OpenVLA ``deploy.py``'s): ``{"image": <json-numpy array (H, W, 3) uint8>,
  "instruction": str, "unnorm_key": str | null}`` -> the 7-D action as a json-numpy array. The
  ``{"encoded": "<that JSON as a string>"}`` form deploy.py accepts for clients without
  json-numpy is accepted too and answered the same way (a JSON string). Stateless.
- ``POST /step`` (sessions): header :data:`SESSION_HEADER` = the session id (Serve routes on it),
  body ``{"instruction": str, "image": {"encoding": "raw" | "png" | "jpeg", "data": base64,
  "shape": [H, W, 3] (raw only)}, "settings": {"mode": str, "cache_ratio": float,
  "max_token_age": int, "decode": str} (each optional), "reset": bool (optional)}`` -> ``{"action": [7 floats],
  "session": {...}, "stats": {...}}`` (see :func:`step_response`).

Every check raises :class:`~vla_cache_ros.errors.InvalidInputError` with the reason (the server
answers 400 with it). Sizes are checked before anything is decoded: the request's length, then
an image's stated or header dimensions before its pixels are decompressed.

Image encoding: raw uint8 is lossless and costs nothing to encode; PNG is lossless and smaller
on the wire but costs encode/decode time; JPEG is small but lossy (the model then sees another
image than the camera's: actions differ from the local policy's). docs/benchmarks.md measures
the three; the client's default is raw (see :data:`DEFAULT_ENCODING`).
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from vla_cache_ros.errors import ConfigurationError, InvalidInputError, clip_text

SESSION_HEADER = "serve_multiplexed_model_id"
"""The header that carries the session id: Ray Serve's model-multiplexing header, so every
request of one session goes to the replica that holds its cache."""
ENCODINGS = ("raw", "png", "jpeg")
DEFAULT_ENCODING = "raw"
"""Lossless and free to encode: on loopback and LANs the fastest (docs/benchmarks.md)."""
SETTING_NAMES = ("mode", "cache_ratio", "max_token_age", "decode")
STEP_FIELDS = ("instruction", "image", "settings", "reset", "session_id")
MAX_SESSION_ID_CHARS = 256


@dataclass(frozen=True)
class Limits:
    """What the server accepts.

    Attributes:
        max_request_bytes: the largest request body (bytes); larger ones get 413.
        max_image_pixels: the largest image (H * W), checked before decoding.
        max_instruction_chars: the longest instruction (characters).
    """

    max_request_bytes: int = 16 * 2**20
    max_image_pixels: int = 4096 * 4096
    max_instruction_chars: int = 2000

    def __post_init__(self) -> None:
        for name in ("max_request_bytes", "max_image_pixels", "max_instruction_chars"):
            if int(getattr(self, name)) < 1:
                raise ConfigurationError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class SessionSettings:
    """Cache settings a request asks for (None: keep the session's current one)."""

    mode: str | None = None
    cache_ratio: float | None = None
    max_token_age: int | None = None
    decode: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The settings that are set, by their wire names."""
        return {name: value for name, value in (("mode", self.mode), ("cache_ratio", self.cache_ratio),
                                                ("max_token_age", self.max_token_age), ("decode", self.decode))
                if value is not None}


@dataclass(frozen=True)
class StepRequest:
    """One decoded ``/step`` request."""

    instruction: str
    image: np.ndarray
    settings: SessionSettings
    reset: bool


# ------------------------------------------------------------------------------- images
def encode_image(rgb: np.ndarray, encoding: str = DEFAULT_ENCODING, jpeg_quality: int = 95
                 ) -> dict[str, Any]:
    """An RGB uint8 (H, W, 3) frame as the ``image`` field of a ``/step`` request.

    Raises:
        InvalidInputError: not (H, W, 3) uint8; unknown ``encoding``.
    """
    image = np.ascontiguousarray(rgb)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInputError(f"image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if encoding == "raw":
        return {"encoding": "raw", "shape": list(image.shape),
                "data": base64.b64encode(image.data).decode("ascii")}
    if encoding not in ENCODINGS:
        raise InvalidInputError(f"unknown image encoding {encoding!r}; one of {', '.join(ENCODINGS)}")
    from PIL import Image

    buffer = io.BytesIO()
    options = {"quality": int(jpeg_quality)} if encoding == "jpeg" else {"compress_level": 1}
    Image.fromarray(image).save(buffer, format=encoding.upper(), **options)
    return {"encoding": encoding, "data": base64.b64encode(buffer.getvalue()).decode("ascii")}


def _check_pixels(height: int, width: int, limits: Limits) -> None:
    if height < 1 or width < 1:
        raise InvalidInputError(f"image is empty ({height} x {width})")
    if height * width > limits.max_image_pixels:
        raise InvalidInputError(f"image of {height} x {width} pixels exceeds the server's limit of "
                                f"{limits.max_image_pixels} pixels")


def _b64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise InvalidInputError(f"{what} must be a base64 string, got {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(f"{what} is not valid base64") from None


def decode_image(field: Any, limits: Limits) -> np.ndarray:
    """The ``image`` field of a ``/step`` request -> RGB uint8 (H, W, 3).

    Raises:
        InvalidInputError: malformed field, unknown encoding, a shape that is not (H, W, 3), data
            of the wrong length, an undecodable PNG/JPEG, or too many pixels (checked from the
            stated shape or the file header, before decompressing).
    """
    if not isinstance(field, Mapping):
        raise InvalidInputError("image must be an object with encoding and data")
    encoding = field.get("encoding")
    if encoding not in ENCODINGS:
        raise InvalidInputError(f"image encoding must be one of {', '.join(ENCODINGS)}, got "
                                f"{clip_text(repr(encoding))}")
    unknown = sorted(set(field) - {"encoding", "data", "shape"})
    if unknown:
        raise InvalidInputError(f"unknown image fields: {', '.join(map(str, unknown))}")
    if encoding == "raw":
        shape = field.get("shape")
        if (not isinstance(shape, list) or len(shape) != 3 or shape[2] != 3
                or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape)):
            raise InvalidInputError(f"raw image shape must be [H, W, 3] integers, got {clip_text(repr(shape))}")
        _check_pixels(shape[0], shape[1], limits)
        data = _b64(field.get("data"), "image data")
        expected = math.prod(shape)
        if len(data) != expected:
            raise InvalidInputError(f"raw image data has {len(data)} bytes, shape {shape} needs {expected}")
        return np.frombuffer(data, dtype=np.uint8).reshape(shape)
    if "shape" in field:
        raise InvalidInputError(f"{encoding} images carry their own shape: leave shape out")
    return _decode_file(_b64(field.get("data"), "image data"), encoding, limits)


def _decode_file(data: bytes, encoding: str, limits: Limits) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=[encoding.upper()]) as image:
            width, height = image.size  # read from the header: nothing decompressed yet
            _check_pixels(height, width, limits)
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise InvalidInputError(f"image is not a readable {encoding.upper()} "
                                f"({type(error).__name__}: {clip_text(str(error))})") from None


def check_array_image(image: Any) -> np.ndarray:
    """A decoded json-numpy ``image`` of ``/act`` -> RGB uint8 (H, W, 3).

    Raises:
        InvalidInputError: not an array, or not (H, W, 3) uint8.
    """
    if not isinstance(image, np.ndarray):
        raise InvalidInputError(f"image must be a json-numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInputError(f"image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
    return image


def checked_array_hook(limits: Limits, decode: Any) -> Any:
    """A JSON ``object_hook`` that checks a json-numpy array's stated shape before ``decode``
    (json-numpy's own ``object_hook``) turns its base64 into pixels: an image (H, W, 3) uint8
    within ``limits.max_image_pixels``. Other objects pass through ``decode`` unchanged.

    Raises:
        InvalidInputError: a shape that is not a list of 3 positive integers ending in 3, a dtype
            other than uint8, or more pixels than the limit.
    """
    def hook(obj: dict) -> Any:
        if "__numpy__" in obj:
            shape, dtype = obj.get("shape"), obj.get("dtype")
            if not (isinstance(shape, list) and len(shape) == 3 and shape[2] == 3
                    and all(isinstance(n, int) and not isinstance(n, bool) for n in shape)):
                raise InvalidInputError(f"image must be RGB uint8 (H, W, 3), got shape {clip_text(repr(shape))}")
            if dtype not in ("|u1", "uint8"):
                raise InvalidInputError(f"image must be RGB uint8 (H, W, 3), got dtype {clip_text(repr(dtype))}")
            _check_pixels(shape[0], shape[1], limits)
        return decode(obj)
    return hook


# ----------------------------------------------------------------------------- requests
def check_size(length: int, limits: Limits) -> None:
    """Refuse a body longer than the limit (raised before it is parsed)."""
    if length > limits.max_request_bytes:
        raise InvalidInputError(f"request of {length} bytes exceeds the server's limit of "
                                f"{limits.max_request_bytes} bytes")


def parse_json(body: bytes, limits: Limits, object_hook: Any = None) -> dict[str, Any]:
    """The request body as a JSON object (``object_hook``: e.g. json-numpy's).

    Raises:
        InvalidInputError: too long, not UTF-8 JSON, not an object, or an array the hook cannot
            build.
    """
    check_size(len(body), limits)
    try:
        data = json.loads(body, object_hook=object_hook)
    except InvalidInputError:  # from a checking object_hook: its own reason
        raise
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"body is not valid JSON ({clip_text(str(error))})") from None
    except (ValueError, TypeError, KeyError, binascii.Error) as error:  # base64, dtype, shape
        raise InvalidInputError(f"body holds an array that cannot be decoded ({type(error).__name__}: "
                                f"{clip_text(str(error))})") from None
    except RecursionError:
        raise InvalidInputError("body is nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"body must be a JSON object, got {type(data).__name__}")
    return data


def check_instruction(value: Any, limits: Limits) -> str:
    """A non-empty instruction within the length limit.

    Raises:
        InvalidInputError: missing, not a string, empty, or too long.
    """
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"instruction must be a non-empty string, got {clip_text(repr(value))}")
    if len(value) > limits.max_instruction_chars:
        raise InvalidInputError(f"instruction of {len(value)} characters exceeds the limit of "
                                f"{limits.max_instruction_chars}")
    return value.strip()


def check_session_id(value: Any) -> str:
    """A session id: 1-256 printable characters.

    Raises:
        InvalidInputError: missing, empty, too long or not printable.
    """
    if not isinstance(value, str) or not value or len(value) > MAX_SESSION_ID_CHARS or not value.isprintable():
        raise InvalidInputError(f"session id (header {SESSION_HEADER}) must be 1-{MAX_SESSION_ID_CHARS} "
                                f"printable characters, got {clip_text(repr(value))}")
    return value


def parse_settings(value: Any) -> SessionSettings:
    """The ``settings`` object: types only (the session checks mode names and ranges).

    Raises:
        InvalidInputError: not an object, an unknown setting, or a value of the wrong type.
    """
    if value is None:
        return SessionSettings()
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"settings must be an object, got {type(value).__name__}")
    unknown = sorted(set(value) - set(SETTING_NAMES))
    if unknown:
        raise InvalidInputError(f"unknown session settings: {', '.join(map(str, unknown))} (known: "
                                f"{', '.join(SETTING_NAMES)})")
    mode, ratio, age = value.get("mode"), value.get("cache_ratio"), value.get("max_token_age")
    decode = value.get("decode")
    for name, text in (("mode", mode), ("decode", decode)):
        if text is not None and not isinstance(text, str):
            raise InvalidInputError(f"settings.{name} must be a string, got {clip_text(repr(text))}")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float))):
        raise InvalidInputError(f"settings.cache_ratio must be a number, got {clip_text(repr(ratio))}")
    if age is not None and (isinstance(age, bool) or not isinstance(age, int)):
        raise InvalidInputError(f"settings.max_token_age must be an integer, got {clip_text(repr(age))}")
    return SessionSettings(mode, None if ratio is None else float(ratio), age, decode)


def parse_step_request(body: bytes, session_id: str, limits: Limits) -> StepRequest:
    """A ``/step`` body (for the session named by the header) -> :class:`StepRequest`.

    Raises:
        InvalidInputError: see the checks above; an unknown field; a ``session_id`` field that
            differs from the header's.
    """
    data = parse_json(body, limits)
    unknown = sorted(set(data) - set(STEP_FIELDS))
    if unknown:
        raise InvalidInputError(f"unknown fields: {', '.join(map(str, unknown))} (known: {', '.join(STEP_FIELDS)})")
    if "session_id" in data and data["session_id"] != session_id:
        raise InvalidInputError(f"session_id in the body ({clip_text(repr(data['session_id']))}) differs "
                                f"from the {SESSION_HEADER} header ({clip_text(repr(session_id))})")
    reset = data.get("reset", False)
    if not isinstance(reset, bool):
        raise InvalidInputError(f"reset must be true or false, got {clip_text(repr(reset))}")
    if "image" not in data:
        raise InvalidInputError("image is missing")
    return StepRequest(check_instruction(data.get("instruction"), limits),
                       decode_image(data["image"], limits), parse_settings(data.get("settings")), reset)


def step_request_body(image: np.ndarray, instruction: str, settings: SessionSettings,
                      encoding: str = DEFAULT_ENCODING, reset: bool = False) -> bytes:
    """The ``/step`` body for one frame (what :class:`~vla_cache_ros.serving.client.RemotePolicy`
    sends)."""
    body = {"instruction": instruction, "image": encode_image(image, encoding),
            "settings": settings.as_dict(), "reset": bool(reset)}
    return json.dumps(body).encode()


def stats_fields(stats: Any) -> dict[str, Any]:
    """A ``StepStats`` as JSON-able fields (stage times in milliseconds)."""
    return {"mode": stats.mode, "target_ratio": float(stats.target_ratio),
            "actual_ratio": float(stats.actual_ratio), "reused_tokens": int(stats.reused_tokens),
            "recomputed_tokens": int(stats.recomputed_tokens),
            "times_ms": {stage: 1000.0 * float(seconds) for stage, seconds in stats.times_s.items()},
            "flops": float(stats.flops), "flops_uncached": float(stats.flops_uncached),
            "prefill_flops": float(stats.prefill_flops),
            "prefill_flops_uncached": float(stats.prefill_flops_uncached),
            "token_layer_computations": int(stats.token_layer_computations),
            "reuse_indices": [int(index) for index in stats.reuse_indices],
            "action_tokens": [int(token) for token in stats.action_tokens],
            "cache_reset": bool(stats.cache_reset), "decode": str(stats.decode),
            "draft_tokens": int(stats.draft_tokens), "accepted_draft_tokens": int(stats.accepted_draft_tokens),
            "decode_passes": int(stats.decode_passes)}


def step_response(action: np.ndarray, stats: Any, session: Mapping[str, Any]) -> dict[str, Any]:
    """The ``/step`` answer: ``action`` (7 floats, exactly the policy's float64 values: JSON keeps
    every digit), ``session`` (id, ``restarted``: null or why the cache started empty —
    ``new``, ``idle``, ``reset``; replica; steps) and ``stats`` (:func:`stats_fields`)."""
    return {"action": [float(value) for value in np.asarray(action, dtype=np.float64)],
            "session": dict(session), "stats": stats_fields(stats)}
