"""Image conversion on real sensor_msgs messages: encodings, padding, errors, round trips."""
from __future__ import annotations

import importlib.util
import struct
import subprocess
import sys

import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from vla_cache_ros.errors import UserFacingError
from vla_cache_ros.image_conversion import (
    CHANNELS,
    CompressedFormat,
    ImageConversionError,
    compressed_image_to_rgb,
    encoding_problem,
    fill_message,
    image_to_mask,
    image_to_rgb,
    mask_to_image_fields,
    parse_compressed_format,
    rgb_to_compressed_fields,
    rgb_to_image_fields,
)

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
    assert isinstance(info.value, UserFacingError) and not isinstance(info.value, ValueError)


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


def test_mask_round_trip_as_mono8() -> None:
    """The node's ~/reused_tokens: 255 where True, 0 elsewhere, one byte per cell."""
    mask = RNG.random((16, 16)) < 0.4
    msg = fill_message(Image(), mask_to_image_fields(mask))
    assert (msg.encoding, msg.height, msg.width, msg.step) == ("mono8", 16, 16, 16)
    assert set(bytes(msg.data)) <= {0, 255} and bytes(msg.data).count(255) == mask.sum()
    np.testing.assert_array_equal(image_to_mask(msg), mask)
    with pytest.raises(ImageConversionError, match=r"\(H, W\) bool mask"):
        mask_to_image_fields(mask.astype(np.uint8))


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
    ("16UC1; compressedDepth png", b"\x89PNG", "is a depth image (compressedDepth)"),
    ("tiff", b"II*\x00", "unsupported compressed image format 'tiff'"),
    ("jpeg", b"not a jpeg", "could not decode compressed image (10 bytes"),
    ("jpeg", b"", "has no data"),
])
def test_compressed_errors(image_format: str, data: bytes, fragment: str) -> None:
    msg = CompressedImage(format=image_format, data=data)
    with pytest.raises(ImageConversionError) as info:
        compressed_image_to_rgb(msg)
    assert fragment in str(info.value)


# --- images that are not colour (issue 10, item 6) ------------------------------------------

DEPTH_MM = (1000 + 37 * np.arange(6 * 5, dtype=np.uint16)).reshape(6, 5)  # 1.0-2.1 m, as a depth camera
ACCEPTED_LIST = "(rgb8, bgr8, rgba8, bgra8, mono8)"


def encoded(extension: str, pixels: np.ndarray) -> bytes:
    """Real image-file bytes from OpenCV's encoder (pixels in OpenCV's BGR order when 3-channel)."""
    import cv2

    ok, buffer = cv2.imencode(extension, pixels)
    assert ok
    return buffer.tobytes()


def compressed_depth_payload(depth: np.ndarray) -> bytes:
    """compressed_depth_image_transport's layout: a 12-byte header (format, quantisation A, B), PNG."""
    return struct.pack("<iff", 0, 0.0, 0.0) + encoded(".png", depth)


def test_depth_png_through_image_transport_is_refused() -> None:
    """The reported example: a 16UC1 depth frame, PNG-compressed by image_transport. Before the
    fix it was decoded to 8 bits (values 3-8) and used as a colour frame."""
    msg = CompressedImage(format="16UC1; png compressed ", data=encoded(".png", DEPTH_MM))
    with pytest.raises(ImageConversionError) as info:
        compressed_image_to_rgb(msg)
    text = str(info.value)
    assert "'16UC1; png compressed '" in text and "depth" in text and ACCEPTED_LIST in text
    assert "\n" not in text and isinstance(info.value, UserFacingError)


@pytest.mark.parametrize("image_format, payload, fragment", [
    ("32FC1; compressedDepth", compressed_depth_payload(DEPTH_MM), "is a depth image (compressedDepth)"),
    ("16UC1; compressedDepth png", compressed_depth_payload(DEPTH_MM), "is a depth image (compressedDepth)"),
    ("16UC1; compressedDepth rvl", b"\x00" * 20, "is a depth image (compressedDepth)"),
    ("mono16; png compressed ", encoded(".png", DEPTH_MM), "declares encoding mono16 (16-bit)"),
    ("rgb16; png compressed bgr16", encoded(".png", np.dstack([DEPTH_MM] * 3)),
     "declares compressed as bgr16 (16-bit)"),
    ("bgr16; png compressed bgr16", encoded(".png", np.dstack([DEPTH_MM] * 3)),
     "declares compressed as bgr16 (16-bit)"),
    ("16UC1; jpeg compressed ", encoded(".jpg", (DEPTH_MM // 8).astype(np.uint8)),
     "declares encoding 16UC1 (16-bit unsigned, 1 channel: depth)"),
    ("32FC1; png compressed ", encoded(".png", DEPTH_MM), "declares encoding 32FC1 (32-bit float, 1 channel: depth)"),
    ("bayer_rggb8; jpeg compressed ", encoded(".jpg", (DEPTH_MM // 8).astype(np.uint8)),
     "declares encoding bayer_rggb8 (Bayer mosaic"),
])
def test_declared_non_colour_formats_are_refused(image_format: str, payload: bytes, fragment: str) -> None:
    msg = CompressedImage(format=image_format, data=payload)
    with pytest.raises(ImageConversionError) as info:
        compressed_image_to_rgb(msg)
    assert repr(image_format) in str(info.value) and fragment in str(info.value)


@pytest.mark.parametrize("image_format, pixels, fragment", [
    ("png", DEPTH_MM, "decodes to 16-bit integer pixels, 1 channel"),
    ("", DEPTH_MM, "decodes to 16-bit integer pixels, 1 channel"),
    ("rgb8; png compressed bgr8", np.dstack([DEPTH_MM] * 3), "decodes to 16-bit integer pixels, 3 channels"),
    ("jpeg", DEPTH_MM.astype(np.float32) / 1000.0, "decodes to 32-bit float pixels, 1 channel"),
])
def test_decoded_bit_depth_is_checked_whatever_the_format_says(
        image_format: str, pixels: np.ndarray, fragment: str) -> None:
    """A format that hides the depth (plain ``png``, empty, or a false ``rgb8``) is caught by
    the decoded pixels: OpenCV keeps the real depth with IMREAD_UNCHANGED."""
    extension = ".tiff" if pixels.dtype == np.float32 else ".png"  # real float payload: TIFF
    msg = CompressedImage(format=image_format, data=encoded(extension, pixels))
    with pytest.raises(ImageConversionError) as info:
        compressed_image_to_rgb(msg)
    assert repr(image_format) in str(info.value) and fragment in str(info.value)


def test_mono_and_colour_orders_decode_correctly() -> None:
    grey = (DEPTH_MM // 8).astype(np.uint8)
    mono = CompressedImage(format="mono8; png compressed ", data=encoded(".png", grey))
    np.testing.assert_array_equal(compressed_image_to_rgb(mono), np.dstack([grey] * 3))
    # color_space: rgb -> the encoder was handed RGB, so OpenCV's "BGR" result is RGB already
    rgb_order = CompressedImage(format="rgb8; png compressed rgb8", data=encoded(".png", RGB))
    np.testing.assert_array_equal(compressed_image_to_rgb(rgb_order), RGB)
    bgr_order = CompressedImage(format="rgb8; png compressed bgr8", data=encoded(".png", RGB[:, :, ::-1]))
    np.testing.assert_array_equal(compressed_image_to_rgb(bgr_order), RGB)
    # 16-bit colour JPEG'd by image_transport is converted to bgr8 first: an 8-bit colour payload
    from_16 = CompressedImage(format="rgb16; png compressed bgr8", data=encoded(".png", RGB[:, :, ::-1]))
    np.testing.assert_array_equal(compressed_image_to_rgb(from_16), RGB)
    # alpha (plain png from another driver) is dropped
    bgra = np.dstack([RGB[:, :, ::-1], np.full(RGB.shape[:2], 7, np.uint8)])
    np.testing.assert_array_equal(compressed_image_to_rgb(CompressedImage(format="png", data=encoded(".png", bgra))),
                                  RGB)


@pytest.mark.parametrize("text, expected", [
    ("rgb8; jpeg compressed bgr8", ("rgb8", "jpeg", "bgr8")),
    ("mono8; jpeg compressed ", ("mono8", "jpeg", None)),
    ("16UC1; png compressed ", ("16UC1", "png", None)),
    ("rgb16; png compressed bgr16", ("rgb16", "png", "bgr16")),
    ("32FC1; compressedDepth", ("32FC1", "compresseddepth", None)),
    ("16UC1; compressedDepth png", ("16UC1", "compresseddepth", None)),
    ("jpeg", (None, "jpeg", None)),
    ("JPG", (None, "jpeg", None)),
    ("png", (None, "png", None)),
    ("", (None, "", None)),
])
def test_parse_compressed_format(text: str, expected: tuple) -> None:
    assert parse_compressed_format(text) == CompressedFormat(text, *expected)


@pytest.mark.parametrize("encoding, problem", [
    ("rgb8", None), ("BGR8", None), ("mono8", None), ("bgra8", None),
    ("16UC1", "16-bit unsigned, 1 channel: depth"),
    ("32FC1", "32-bit float, 1 channel: depth"),
    ("16SC1", "16-bit signed, 1 channel"),
    ("64FC3", "64-bit float, 3 channels"),
    ("8UC3", "8-bit unsigned, 3 channels: generic 8-bit data, not a colour or mono encoding"),
    ("mono16", "16-bit"), ("rgba16", "16-bit"),
    ("bayer_rggb8", "Bayer mosaic (not demosaiced)"),
    ("yuv422", "not an 8-bit colour or mono encoding"),
])
def test_encoding_problem(encoding: str, problem: str | None) -> None:
    assert encoding_problem(encoding) == problem


def test_raw_depth_message_names_why() -> None:
    msg = Image(height=6, width=5, encoding="16UC1", step=10, data=DEPTH_MM.tobytes())
    with pytest.raises(ImageConversionError, match=r"'16UC1' \(16-bit unsigned, 1 channel: depth\)"):
        image_to_rgb(msg)


def test_module_does_not_import_rclpy() -> None:
    code = ("import sys, vla_cache_ros.image_conversion, vla_cache_ros.control; "
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
