"""``vla-cache train-policy``: a short run writes a loadable checkpoint; user errors are one line, exit 2."""
from __future__ import annotations

from pathlib import Path

import pytest

from test.training.conftest import make_episode, write_dataset
from vla_cache_ros.apps.cli import main
from vla_cache_ros.apps.train_policy import (
    DEFAULT_LABEL_QUANTUM_M,
    DEFAULT_LABEL_QUANTUM_RAD,
    PRECISIONS,
    PRESET_NAMES,
    SAVE_DTYPES,
)
from vla_cache_ros.models.vla import load_vla
from vla_cache_ros.training import loop, model

SHORT = ["--preset", "micro", "--batch-size", "2", "--val-frames", "2", "--greedy-frames", "1", "--threads", "2",
         "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("cli_data"), episodes=4)


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("vla-cache train-policy: error: "), error
    return error


def test_train_policy_writes_a_checkpoint_and_resumes(data: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "policy"
    argv = ["train-policy", "--data", str(data), "--out", str(out), "--steps", "3", *SHORT]
    assert main([*argv, "--stop-at-step", "2"]) == 0
    assert "(step 2/3)" in capsys.readouterr().out
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "resuming" in printed and "(step 3/3)" in printed and "held-out: loss" in printed
    assert load_vla(out).predict_action(make_episode(9, "pick").images[0], "pick up the red cube").shape == (7,)


def test_several_data_directories_train_together(data: Path, tmp_path: Path) -> None:
    """`--data A B`: B's episodes (here a policy-driven DAgger collection, failures kept) join A's;
    A's statistics normalise both; the summary names both directories."""
    import json

    from vla_cache_ros.sim.dataset import episode_path, write_episode

    dagger = tmp_path / "dagger"
    for index in range(2):
        record = make_episode(50 + index, "touch")
        record.success = False
        write_episode(episode_path(dagger, index), record)
    (dagger / "manifest.json").write_text(json.dumps({"policy": {"model": "earlier_run"}}))
    out = tmp_path / "policy"
    assert main(["train-policy", "--data", str(data), str(dagger), "--out", str(out), "--steps", "1",
                 "--val-fraction", "0", *SHORT]) == 0
    summary = json.loads((out / "training" / "summary.json").read_text())
    assert summary["data"]["more"] == [str(dagger)] and summary["config"]["more_data"] == [str(dagger)]
    assert summary["data"]["train_seeds"][-2:] == [50, 51]
    stats = json.loads((data / "dataset_statistics.json").read_text())
    assert load_vla(out).config.raw["norm_stats"] == stats


def test_user_errors_are_one_line(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out")
    assert "not a directory" in one_line_error(
        capsys, ["train-policy", "--data", str(tmp_path / "missing"), "--out", out, *SHORT])
    assert "--val-fraction" in one_line_error(
        capsys, ["train-policy", "--data", str(data), "--out", out, "--val-fraction", "1.5", *SHORT])
    assert "--steps" in one_line_error(
        capsys, ["train-policy", "--data", str(data), "--out", out, "--steps", "0", *SHORT])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("x")
    assert "not empty" in one_line_error(
        capsys, ["train-policy", "--data", str(data), "--out", str(tmp_path / "busy"), "--steps", "1", *SHORT])


def test_the_parser_offers_what_the_library_accepts() -> None:
    assert PRESET_NAMES == tuple(model.PRESETS)
    assert PRECISIONS == loop.PRECISIONS and SAVE_DTYPES == loop.SAVE_DTYPES
    assert (DEFAULT_LABEL_QUANTUM_M, DEFAULT_LABEL_QUANTUM_RAD) == (loop.DEFAULT_LABEL_QUANTUM_M,
                                                                   loop.DEFAULT_LABEL_QUANTUM_RAD)


def test_sigterm_saves_the_last_step(data: Path, tmp_path: Path) -> None:
    """Regression: `kill` (SIGTERM, what schedulers and `timeout` send) ended a run without
    saving, losing every step since the last --save-every; it now saves like Ctrl-C. It exits
    143 (128 + SIGTERM), not Ctrl-C's 130, so a scheduler can tell the two apart."""
    import re
    import signal
    import subprocess
    import sys
    import time

    from vla_cache_ros.training.state import load_state

    out, log = tmp_path / "policy", tmp_path / "stderr.txt"
    argv = ["train-policy", "--data", str(data), "--out", str(out), "--steps", "100000", "--save-every", "100000",
            "--eval-every", "100000", *[a for a in SHORT if a != "--quiet"]]
    with log.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "vla_cache_ros.apps.cli", *argv],
                                   stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        deadline = time.monotonic() + 120
        while not [int(n) for n in re.findall(r"(\d+)/100000", log.read_text()) if int(n) >= 3]:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM, log.read_text()[-2000:]
    saved = int(re.search(r"interrupted: saved step (\d+)", stdout).group(1))
    assert saved >= 3 and load_state(out / "training" / "state").step == saved
