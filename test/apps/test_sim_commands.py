"""sim-eval's model option: short names or directories, resolved before anything starts."""
from __future__ import annotations

from pathlib import Path

import pytest

from vla_cache_ros.apps.cli import main as cli_main


def test_sim_eval_refuses_an_unknown_model_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["sim-eval", "--model", "no_such_model", "--episodes", "1", "--out", str(tmp_path / "eval")])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "'no_such_model' is neither a checkpoint directory nor a known name" in error[0]
    assert not (tmp_path / "eval").exists()  # refused before any process or report
