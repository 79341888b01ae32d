"""The bag subcommands from the command line: output, exit codes, one-line errors, no ROS import."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vla_cache_ros.apps.bag_commands import main
from vla_cache_ros.replay.bag_reader import BagReader
from vla_cache_ros.replay.frames import FrameReader


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_synthetic_bag_then_bag_info(tmp_path: Path, storage: str, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    code = main(["synthetic-bag", str(out), "--storage", storage, "--frames", "5", "--size", "32", "48",
                 "--encoding", "jpeg", "--commands"])
    assert code == 0
    with BagReader(out) as bag:
        frames = list(FrameReader(bag))
    assert len(frames) == 5 and frames[0].image.shape == (32, 48, 3) and frames[0].command is not None

    assert main(["bag-info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"storage:  {storage}" in printed
    assert "/camera/image_raw/compressed  sensor_msgs/msg/CompressedImage  (5 msgs)" in printed


def test_errors_are_one_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["bag-info", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"vla-cache bag-info: error: bag not found: {tmp_path / 'missing'}"

    corrupt = tmp_path / "corrupt.mcap"
    corrupt.write_bytes(b"\x89MCAP0\r\n" + b"\x00" * 100)
    assert main(["bag-info", str(corrupt)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vla-cache bag-info: error: cannot open bag") and "corrupt or truncated" in err
    assert len(err.strip().splitlines()) == 1

    existing = tmp_path / "exists"
    existing.mkdir()
    assert main(["synthetic-bag", str(existing)]) == 2
    assert "exists already" in capsys.readouterr().err


def test_replay_modules_import_without_ros() -> None:
    code = (
        "import sys\n"
        "import vla_cache_ros.replay.bag_reader, vla_cache_ros.replay.frames, vla_cache_ros.replay.bag_writer\n"
        "import vla_cache_ros.replay.messages, vla_cache_ros.replay.synthetic_bag\n"
        "import vla_cache_ros.apps.bag_commands\n"
        "assert not [m for m in sys.modules if m.startswith('rclpy')], 'rclpy imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_full_vla_cache_cli_has_the_bag_subcommands(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from vla_cache_ros.apps.cli import build_parser
    from vla_cache_ros.apps.cli import main as vla_cache_main

    help_text = build_parser().format_help()
    for command in ("play", "record", "replay", "bag-info", "synthetic-bag"):
        assert command in help_text
    assert vla_cache_main(["bag-info", str(tmp_path / "missing")]) == 2
    assert "bag not found" in capsys.readouterr().err
