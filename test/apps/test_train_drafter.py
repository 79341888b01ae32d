"""``vla-cache train-drafter``: a short run writes a loadable drafter and prints its held-out
acceptance beside the previous-step draft's; user errors are one line, exit 2."""
from __future__ import annotations

from pathlib import Path

import pytest

from test.training.conftest import write_dataset
from vla_cache_ros.apps.cli import main
from vla_cache_ros.apps.train_drafter import INPUTS
from vla_cache_ros.cache.drafter import DRAFTER_INPUTS, load_drafter

SHORT = ["--batch-size", "4", "--width", "8", "--threads", "1", "--device", "cpu", "--quiet", "--val-fraction", "0.34"]


def test_the_parser_names_the_drafters_inputs() -> None:
    assert INPUTS == DRAFTER_INPUTS  # spelled twice so that --help does not import torch


def test_train_drafter_writes_a_drafter_and_reports(tiny_checkpoint: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    data = write_dataset(tmp_path / "data", episodes=4)
    out = tmp_path / "drafter"
    argv = ["train-drafter", "--model", str(tiny_checkpoint), "--data", str(data), "--out", str(out), "--steps", "3",
            "--inputs", "visual,previous", *SHORT]
    assert main([*argv, "--stop-at-step", "1"]) == 0
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "resuming" in printed and "held-out (3 steps): all 7 tokens right" in printed
    assert "previous-step draft" in printed and f"drafter: {out} (step 3/3)" in printed
    assert load_drafter(out).config.inputs == ("visual", "previous")
    refused = ["train-drafter", "--model", str(tiny_checkpoint), "--data", str(data), "--out", str(tmp_path / "x"),
               "--inputs", "visual,depth", *SHORT]
    assert main(refused) == 2 and not (tmp_path / "x").exists()
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("vla-cache train-drafter: error: drafter inputs"), error
