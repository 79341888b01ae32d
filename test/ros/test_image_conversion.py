"""Image conversion on real sensor_msgs messages: encodings, padding, errors, round trips."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from vla_cache_ros.errors import UserFacingError
from vla_cache_ros.ros.image_conversion import (CHANNELS, ImageConversionError,
                                                compressed_image_to_rgb, fill_message,
                                                image_to_rgb, rgb_to_compressed_fields,
                                                rgb_to_image_fields)

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)


def raw_message(pixels: np.ndarray, encoding: str, padding: int = 0,
                is_bigendian: int = 0) -> Image:
    """Build an Image by hand (independently of the module under test), rows padded."""
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    pad = np.full((height, padding), 0xAB, dtype=np.uint8)
    data = np.concatenate([rows, pad], axis=1)
    return Image(height=height, width=width, encoding=encoding, is_bigendian=is_bigendian,
                 step=rows.shape[1] + padding, data=data.tobytes())


@pytest.mark.parametrize("padding", [0, 3])
@pytest.mark.parametrize("encoding, pixels, expected", [
    ("rgb8", RGB, RGB),
    ("bgr8", RGB[:, :, ::-1], RGB),
    ("rgba8", np.dstack([RGB, np.full(RGB.shape[:2], 9, np.uint8)]), RGB),
    ("bgra8", np.dstack([RGB[:, :, ::-1], np.full(RGB.shape[:2], 9, np.uint8)]), RGB),
    ("mono8", RGB[:, :, :1], np.repeat(RGB[:, :, :1], 3, axis=2)),
])
def test_supported_encodings(encoding: str, pixels: np.ndarray, expected: np.ndarray,
                             padding: int) -> None:
    msg = raw_message(np.ascontiguousarray(pixels), encoding, padding)
    result = image_to_rgb(msg)
    assert result.dtype == np.uint8 and result.shape == (6, 5, 3)
    np.testing.assert_array_equal(result, expected)


def test_result_does_not_alias_message_buffer() -> None:
    msg = raw_message(RGB, "rgb8")
    result = image_to_rgb(msg)
    msg.data = bytes(len(msg.data))  # the message buffer is replaced / freed
    np.testing.assert_array_equal(result, RGB)


def test_big_endian_flag_irrelevant_for_8_bit() -> None:
    little = image_to_rgb(raw_message(RGB, "bgr8", is_bigendian=0))
    big = image_to_rgb(raw_message(RGB, "bgr8", is_bigendian=1))
    np.testing.assert_array_equal(little, big)


@pytest.mark.parametrize("encoding", ["16UC1", "mono16", "rgb16", "32FC1", "yuv422", "bayer_rggb8"])
def test_unsupported_encoding_named(encoding: str) -> None:
    msg = Image(height=2, width=2, encoding=encoding, step=8, data=bytes(16))
    with pytest.raises(ImageConversionError) as info:
        image_to_rgb(msg)
    assert repr(encoding) in str(info.value) and "rgb8" in str(info.value)
    assert isinstance(info.value, UserFacingError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("changes, fragment", [
    ({"step": 14}, "step 14 is shorter than a row (5 px x 3 bytes = 15)"),
    ({"step": 16}, "90 bytes but step x height = 16 x 6 = 96"),
    ({"height": 7}, "90 bytes but step x height = 15 x 7 = 105"),
    ({"width": 0}, "size must be positive"),
    ({"data": bytes(89)}, "89 bytes"),
])
def test_inconsistent_geometry_rejected(changes: dict, fragment: str) -> None:
    msg = raw_message(RGB, "rgb8")
    for name, value in changes.items():
        setattr(msg, name, value)
    with pytest.raises(ImageConversionError) as info:
        image_to_rgb(msg)
    assert fragment in str(info.value)


@pytest.mark.parametrize("encoding", sorted(CHANNELS))
def test_inverse_round_trip(encoding: str) -> None:
    msg = fill_message(Image(), rgb_to_image_fields(RGB, encoding))
    assert msg.encoding == encoding and msg.step == 5 * CHANNELS[encoding]
    result = image_to_rgb(msg)
    if encoding == "mono8":
        import cv2
        expected = cv2.cvtColor(RGB, cv2.COLOR_RGB2GRAY)
        assert np.abs(result[:, :, 0].astype(int) - expected).max() <= 1
    else:
        np.testing.assert_array_equal(result, RGB)


def test_inverse_rejects_bad_arrays() -> None:
    with pytest.raises(ImageConversionError, match=r"\(H, W, 3\) uint8"):
        rgb_to_image_fields(RGB.astype(np.float32))
    with pytest.raises(ImageConversionError, match="cannot encode to '16uc1'"):
        rgb_to_image_fields(RGB, "16UC1")


def test_compressed_png_lossless_and_jpeg_close() -> None:
    smooth = np.zeros((32, 48, 3), np.uint8)
    smooth[..., 0] = np.linspace(0, 255, 48, dtype=np.uint8)
    smooth[..., 2] = 200
    png = fill_message(CompressedImage(), rgb_to_compressed_fields(smooth, "png"))
    assert png.format == "rgb8; png compressed bgr8"
    np.testing.assert_array_equal(compressed_image_to_rgb(png), smooth)
    jpeg = fill_message(CompressedImage(), rgb_to_compressed_fields(smooth, "jpeg"))
    decoded = compressed_image_to_rgb(jpeg)
    assert decoded.shape == smooth.shape
    assert np.abs(decoded.astype(int) - smooth).mean() < 3  # channel order is right
    jpeg.format = "jpeg"  # plain spelling from other drivers
    np.testing.assert_array_equal(compressed_image_to_rgb(jpeg), decoded)


@pytest.mark.parametrize("image_format, data, fragment", [
    ("16UC1; compressedDepth png", b"\x89PNG", "unsupported compressed image format"),
    ("tiff", b"II*\x00", "unsupported compressed image format 'tiff'"),
    ("jpeg", b"not a jpeg", "could not decode compressed image (10 bytes"),
    ("jpeg", b"", "has no data"),
])
def test_compressed_errors(image_format: str, data: bytes, fragment: str) -> None:
    msg = CompressedImage(format=image_format, data=data)
    with pytest.raises(ImageConversionError) as info:
        compressed_image_to_rgb(msg)
    assert fragment in str(info.value)


def test_module_does_not_import_rclpy() -> None:
    code = ("import sys, vla_cache_ros.ros.image_conversion, vla_cache_ros.control; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('rclpy', 'sensor_msgs', 'std_msgs', 'cv2')]; print(bad); assert not bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(importlib.util.find_spec("cv_bridge") is None,
                    reason="cv_bridge is not installed (no ROS 2 cv_bridge on PyPI); "
                           "comparison runs where a ROS 2 cv_bridge exists")
@pytest.mark.parametrize("encoding", sorted(CHANNELS))
@pytest.mark.parametrize("padding", [0, 4])
def test_identical_to_cv_bridge(encoding: str, padding: int) -> None:
    from cv_bridge import CvBridge

    pixels = RNG.integers(0, 256, size=(6, 5, CHANNELS[encoding]), dtype=np.uint8)
    msg = raw_message(pixels, encoding, padding)
    expected = CvBridge().imgmsg_to_cv2(msg, desired_encoding="rgb8")
    np.testing.assert_array_equal(image_to_rgb(msg), expected)
