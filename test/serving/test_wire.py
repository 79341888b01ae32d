"""The wire format's encodings and checks (no server, no Ray)."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from vla_cache_ros.errors import InvalidInputError
from vla_cache_ros.serving.wire import (
    Limits,
    SessionSettings,
    decode_image,
    encode_image,
    parse_json,
    parse_settings,
    parse_step_request,
    step_request_body,
)

FRAME = (np.arange(12 * 16 * 3) % 251).astype(np.uint8).reshape(12, 16, 3)
LIMITS = Limits()


@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_lossless_encodings_round_trip(encoding: str) -> None:
    assert np.array_equal(decode_image(encode_image(FRAME, encoding), LIMITS), FRAME)


def test_jpeg_decodes_to_the_same_shape() -> None:
    decoded = decode_image(encode_image(FRAME, "jpeg"), LIMITS)
    assert decoded.shape == FRAME.shape and decoded.dtype == np.uint8


def test_step_body_round_trip() -> None:
    body = step_request_body(FRAME, "pick up the block", SessionSettings("fixed", 0.25, 5, "speculative"),
                             reset=True)
    request = parse_step_request(body, "robot_a", LIMITS)
    assert request.instruction == "pick up the block" and request.reset
    assert request.settings == SessionSettings("fixed", 0.25, 5, "speculative")
    assert np.array_equal(request.image, FRAME)


def _raw(shape: list, data: bytes) -> dict:
    return {"encoding": "raw", "shape": shape, "data": base64.b64encode(data).decode()}


@pytest.mark.parametrize("field, reason", [
    (_raw([12, 16, 3], b"\0" * 10), "has 10 bytes"),
    (_raw([12, 16], b"\0" * 192), "[H, W, 3]"),
    (_raw([12, 16, 4], b"\0" * 768), "[H, W, 3]"),
    (_raw([100000, 100000, 3], b"\0"), "exceeds the server's limit"),
    ({"encoding": "raw", "shape": [1, 1, 3], "data": "not base64!"}, "not valid base64"),
    ({"encoding": "bmp", "data": ""}, "encoding must be one of"),
    ({"encoding": "png", "data": base64.b64encode(b"garbage").decode()}, "not a readable PNG"),
    ("a string", "must be an object"),
])
def test_bad_images_are_refused_with_the_reason(field, reason: str) -> None:
    with pytest.raises(InvalidInputError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        decode_image(field, LIMITS)


def test_a_png_too_large_is_refused_from_its_header() -> None:
    """A small file announcing a huge image (a decompression bomb) is refused before decoding."""
    buffer = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buffer, format="PNG")
    field = {"encoding": "png", "data": base64.b64encode(buffer.getvalue()).decode()}
    assert len(buffer.getvalue()) < 100_000
    with pytest.raises(InvalidInputError, match="3000 x 3000 pixels exceeds"):
        decode_image(field, Limits(max_image_pixels=1000 * 1000))


@pytest.mark.parametrize("body, reason", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b"x" * 200, "exceeds the server's limit of 100 bytes"),
])
def test_bad_bodies(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidInputError, match=reason):
        parse_json(body, Limits(max_request_bytes=100))


@pytest.mark.parametrize("settings, reason", [
    ({"colour": "red"}, "unknown session settings: colour"),
    ({"cache_ratio": "0.5"}, "cache_ratio must be a number"),
    ({"max_token_age": 2.5}, "max_token_age must be an integer"),
    ({"mode": 3}, "mode must be a string"),
    ({"decode": True}, "decode must be a string"),
    ([1], "settings must be an object"),
])
def test_bad_settings(settings, reason: str) -> None:
    with pytest.raises(InvalidInputError, match=reason):
        parse_settings(settings)


def test_step_request_checks() -> None:
    good = json.loads(step_request_body(FRAME, "go", SessionSettings()))
    for change, reason in [({"extra": 1}, "unknown fields: extra"), ({"session_id": "b"}, "differs from"),
                           ({"instruction": ""}, "non-empty string"), ({"instruction": "x" * 3000}, "exceeds"),
                           ({"reset": "yes"}, "reset must be"), ({"image": None}, "must be an object")]:
        with pytest.raises(InvalidInputError, match=reason):
            parse_step_request(json.dumps({**good, **change}).encode(), "a", LIMITS)


def test_checked_array_hook_refuses_before_decoding() -> None:
    """The stated shape and dtype are checked before json-numpy decodes any pixel."""
    from vla_cache_ros.serving.wire import checked_array_hook

    json_numpy = pytest.importorskip("json_numpy", reason="json-numpy (requirements/serve.in) is not installed")

    hook = checked_array_hook(Limits(max_image_pixels=100), json_numpy.object_hook)
    image = np.arange(5 * 5 * 3, dtype=np.uint8).reshape(5, 5, 3)
    assert np.array_equal(json.loads(json_numpy.dumps(image), object_hook=hook), image)
    undecodable = {"__numpy__": "not base64", "dtype": "|u1"}
    for shape, reason in (([20, 20, 3], "20 x 20 pixels exceeds"), ([5, 5], "got shape"),
                          ([5, 5, True], "got shape"), ([-1, 1, 3], "empty")):
        with pytest.raises(InvalidInputError, match=reason):
            hook({**undecodable, "shape": shape})
    with pytest.raises(InvalidInputError, match="dtype"):
        hook({**undecodable, "dtype": "<f4", "shape": [5, 5, 3]})
