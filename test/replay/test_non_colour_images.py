"""Bags whose camera topic carries depth or 16-bit images are refused, never replayed as colour.

Bags are real rosbag2 files written with ``rosbags``; payloads are real PNGs from OpenCV's
encoder (issue 10, item 6: ``16UC1; png compressed`` from a depth camera used to produce actions).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from vla_cache_ros.apps.bag_commands import main
from vla_cache_ros.errors import BagError
from vla_cache_ros.replay.bag_reader import BagReader, ros2_typestore
from vla_cache_ros.replay.bag_writer import BagWriter
from vla_cache_ros.replay.frames import FrameReader
from vla_cache_ros.replay.messages import COMPRESSED_IMAGE_TYPE, header_message, string_message

DEPTH_FORMAT = "16UC1; png compressed "
COLOUR_FORMAT = "rgb8; png compressed bgr8"
START_NS = 1_700_000_000 * 1_000_000_000
TOPIC = "/camera/depth/image_raw/compressed"


def depth_png(index: int) -> bytes:
    """A 16-bit depth frame in millimetres (1.0-1.3 m), PNG-encoded as image_transport does."""
    depth = (1000 + 10 * index + np.arange(24 * 32, dtype=np.uint16)).reshape(24, 32) % 1300
    ok, buffer = cv2.imencode(".png", depth.astype(np.uint16))
    assert ok
    return buffer.tobytes()


def colour_png(index: int) -> bytes:
    """An 8-bit BGR frame, PNG-encoded."""
    bgr = np.full((24, 32, 3), (10 * index) % 256, dtype=np.uint8)
    ok, buffer = cv2.imencode(".png", bgr)
    assert ok
    return buffer.tobytes()


def write_bag(path: Path, frames: list[tuple[str, bytes]], storage: str = "mcap") -> Path:
    """A bag with an instruction and one CompressedImage per (format, payload), 100 ms apart."""
    cls = ros2_typestore().types[COMPRESSED_IMAGE_TYPE]
    with BagWriter(path, storage=storage) as writer:
        writer.write("/instruction", string_message("pick up the block"), START_NS - 1)
        for index, (image_format, payload) in enumerate(frames):
            stamp = START_NS + index * 100_000_000
            message = cls(header=header_message(stamp, "depth_optical_frame"), format=image_format,
                          data=np.frombuffer(payload, dtype=np.uint8))
            writer.write(TOPIC, message, stamp)
    return path


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_depth_topic_is_refused_when_the_reader_is_made(tmp_path: Path, storage: str) -> None:
    bag_path = write_bag(tmp_path / "depth", [(DEPTH_FORMAT, depth_png(i)) for i in range(4)], storage)
    with BagReader(bag_path) as bag:
        with pytest.raises(BagError) as info:
            FrameReader(bag)
    text = str(info.value)
    assert f"image 0 on {TOPIC}" in text and repr(DEPTH_FORMAT) in text and "depth" in text
    assert "\n" not in text


def test_a_depth_frame_later_in_the_bag_stops_iteration(tmp_path: Path) -> None:
    frames = [(COLOUR_FORMAT, colour_png(0)), (COLOUR_FORMAT, colour_png(1)), (DEPTH_FORMAT, depth_png(2)),
              (COLOUR_FORMAT, colour_png(3))]
    with BagReader(write_bag(tmp_path / "mixed", frames)) as bag:
        reader = FrameReader(bag)  # the first frame is colour: accepted
        seen = []
        with pytest.raises(BagError, match=rf"image 2 on {TOPIC} .*'16UC1; png compressed '"):
            for frame in reader:
                seen.append(frame.index)
    assert seen == [0, 1]


def test_replay_of_a_depth_bag_exits_2_before_loading_the_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The reported example: ``vla-cache replay`` produced actions from a depth topic."""
    from vla_cache_ros.models.tiny import make_tiny_checkpoint

    model = make_tiny_checkpoint(tmp_path / "tiny", seed=0)
    bag_path = write_bag(tmp_path / "depth", [(DEPTH_FORMAT, depth_png(i)) for i in range(3)])
    out = tmp_path / "out"
    code = main(["replay", str(bag_path), "--model", str(model), "--modes", "off", "--unnorm-key", "tiny_sim",
                 "--out", str(out), "--no-plots", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vla-cache replay: error: "), captured.err
    assert repr(DEPTH_FORMAT) in lines[0] and TOPIC in lines[0]
    assert "replaying" not in captured.err and captured.out == ""  # no model loaded, no step run
    assert not (out / "replay.json").exists()
