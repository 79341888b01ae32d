"""Every bad checkpoint gives a clear error naming the problem, from the API and as one CLI line."""
from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from test.models.helpers import read_tensors
from vla_cache_ros.apps import cli
from vla_cache_ros.errors import CheckpointError
from vla_cache_ros.models.tiny import make_tiny_checkpoint
from vla_cache_ros.models.vla import load_vla

Copy = Callable[..., Path]
REPO_ROOT = Path(__file__).resolve().parents[2]


class MarkerOnUnpickle:
    """Unpickling this creates a file: proof that a pickle was (or was not) loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (open, (str(self.marker), "w"))


def write_pickles(directory: Path, marker: Path) -> None:
    """Weights as a pickle-based checkpoint would ship them (and nothing else)."""
    payload = pickle.dumps({"projector.fc1.weight": MarkerOnUnpickle(marker)})
    (directory / "pytorch_model.bin").write_bytes(payload)
    (directory / "model.pt").write_bytes(payload)


def edit_config(**changes: Any) -> Callable[[dict[str, Any]], None]:
    """A config.json editor: set top-level or ``text_config.<field>`` values; None deletes."""
    def apply(data: dict[str, Any]) -> None:
        for key, value in changes.items():
            target, field = (data["text_config"], key[len("text_config__"):]) if key.startswith("text_config__") \
                else (data, key)
            if value is None:
                del target[field]
            else:
                target[field] = value
    return apply


def missing_directory(copy: Copy, tmp: Path) -> Path:
    return tmp / "no-such-model"


def file_not_directory(copy: Copy, tmp: Path) -> Path:
    (tmp / "model.txt").write_text("not a checkpoint")
    return tmp / "model.txt"


def no_config(copy: Copy, tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def missing_weights(copy: Copy, tmp: Path) -> Path:
    return copy(weights=False)


def pickle_only(copy: Copy, tmp: Path) -> Path:
    directory = copy(weights=False)
    write_pickles(directory, tmp / "unpickled")
    return directory


def missing_shard(copy: Copy, tmp: Path) -> Path:
    directory = copy(weights=False)
    names = read_tensors(copy())
    weight_map = {name: f"model-0000{1 + i % 2}-of-00002.safetensors" for i, name in enumerate(names)}
    index = {"metadata": {}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory


def corrupt_weights(copy: Copy, tmp: Path) -> Path:
    directory = copy(weights=False)
    (directory / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    return directory


def malformed_json(copy: Copy, tmp: Path) -> Path:
    directory = copy()
    (directory / "config.json").write_text('{"model_type": "openvla", ')
    return directory


def json_list(copy: Copy, tmp: Path) -> Path:
    directory = copy()
    (directory / "config.json").write_text("[1, 2]")
    return directory


def no_tokenizer(copy: Copy, tmp: Path) -> Path:
    directory = copy()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (directory / name).unlink()
    return directory


def truncate_fc3_bias(tensors: dict[str, torch.Tensor]) -> None:
    tensors["projector.fc3.bias"] = tensors["projector.fc3.bias"][:10].clone()


def drop_fc3_bias(tensors: dict[str, torch.Tensor]) -> None:
    del tensors["projector.fc3.bias"]


def add_fc4(tensors: dict[str, torch.Tensor]) -> None:
    tensors["projector.fc4.weight"] = torch.zeros(2, 2)


def config_case(**changes: Any) -> Callable[[Copy, Path], Path]:
    return lambda copy, tmp: copy(config=edit_config(**changes))


def tensors_case(edit: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Copy, Path], Path]:
    return lambda copy, tmp: copy(tensors=edit)


CASES = [
    pytest.param(missing_directory, r"model directory .*no-such-model does not exist", id="missing-directory"),
    pytest.param(file_not_directory, r"model path .*model.txt is not a directory", id="not-a-directory"),
    pytest.param(no_config, r"no config.json \(not an OpenVLA checkpoint directory\)", id="no-config"),
    pytest.param(missing_weights, r"no weights found \(expected model.safetensors or a sharded index\)",
                 id="missing-weights"),
    pytest.param(pickle_only, r"only pickle weight files found \(model.pt, pytorch_model.bin\); refusing to load "
                 r"them because unpickling can run arbitrary code", id="pickle-only"),
    pytest.param(missing_shard, r"shard\(s\) listed in the index are missing: model-00001-of-00002.safetensors, "
                 r"model-00002-of-00002.safetensors", id="missing-shard"),
    pytest.param(corrupt_weights, r"model.safetensors: unreadable safetensors file", id="corrupt-weights"),
    pytest.param(malformed_json, r"config.json: malformed JSON", id="malformed-json"),
    pytest.param(json_list, r"config.json: expected a JSON object at top level", id="config-not-object"),
    pytest.param(config_case(text_config=None), r"missing required field 'text_config'", id="no-text-config"),
    pytest.param(config_case(timm_model_ids="vit"), r"field 'timm_model_ids' has type str, expected list",
                 id="timm-ids-not-list"),
    pytest.param(config_case(n_action_bins="many"), r"field 'n_action_bins' must be a positive integer, got 'many'",
                 id="bad-n-action-bins"),
    pytest.param(config_case(model_type="llama"), r"model_type is 'llama', expected 'openvla'", id="wrong-model-type"),
    pytest.param(config_case(text_config__hidden_size="big"), r"invalid text_config .*hidden_size",
                 id="text-config-bad-type"),
    pytest.param(config_case(timm_model_ids=["vit_large_patch14_reg4_dinov2.lvd142m", "vit_not_a_model_patch99"]),
                 r"unknown timm model id 'vit_not_a_model_patch99' in timm_model_ids", id="unknown-timm-id"),
    pytest.param(config_case(text_config__intermediate_size=200),
                 r"shape mismatch for tensor 'language_model\.model\.layers\.\d+\.mlp\.(down|gate|up)_proj\.weight': "
                 r"checkpoint has \(\d+, \d+\), config implies \(\d+, \d+\)", id="config-shape-mismatch"),
    pytest.param(tensors_case(truncate_fc3_bias),
                 r"shape mismatch for tensor 'projector.fc3.bias': checkpoint has \(10,\), config implies \(64,\)",
                 id="weights-shape-mismatch"),
    pytest.param(tensors_case(drop_fc3_bias), r"checkpoint is missing 1 tensor\(s\): projector.fc3.bias",
                 id="missing-tensor"),
    pytest.param(tensors_case(add_fc4), r"unexpected tensor 'projector.fc4.weight'", id="unexpected-tensor"),
    pytest.param(no_tokenizer, r"cannot load tokenizer", id="no-tokenizer"),
]


@pytest.mark.parametrize("build, message", CASES)
def test_load_error_names_the_problem(checkpoint_copy: Copy, tmp_path: Path,
                                      build: Callable[[Copy, Path], Path], message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        load_vla(build(checkpoint_copy, tmp_path))


@pytest.mark.parametrize("build, message", CASES)
def test_cli_prints_one_line_without_traceback(checkpoint_copy: Copy, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               build: Callable[[Copy, Path], Path], message: str) -> None:
    code = cli.main(["predict", str(build(checkpoint_copy, tmp_path)), "--unnorm-key", "tiny_sim"])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vla-cache predict: error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert re.search(message, lines[0]), lines[0]


def test_pickles_are_never_unpickled(checkpoint_copy: Copy, tmp_path: Path) -> None:
    directory = pickle_only(checkpoint_copy, tmp_path)
    with pytest.raises(CheckpointError, match="pickle"):
        load_vla(directory)
    assert not (tmp_path / "unpickled").exists()
    pickle.loads((directory / "model.pt").read_bytes())  # the payload does work when unpickled
    assert (tmp_path / "unpickled").exists()


def test_pickles_beside_safetensors_are_ignored(checkpoint_copy: Copy, tmp_path: Path) -> None:
    directory = checkpoint_copy()
    write_pickles(directory, tmp_path / "unpickled")
    load_vla(directory)
    assert not (tmp_path / "unpickled").exists()


def test_cli_unknown_unnorm_key(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["predict", str(tiny_dir), "--unnorm-key", "bridge_orig"]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "vla-cache predict: error: unknown unnorm_key 'bridge_orig'; available: tiny_alt, tiny_sim"]


def test_cli_predict_prints_tokens_and_action(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["predict", str(tiny_dir), "--unnorm-key", "tiny_sim"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tokens [") and " action [" in lines[0]


def test_cli_predict_refuses_an_instruction_beyond_the_context(
        tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The context bound lives in the model, so the uncached reference path refuses too."""
    huge = "xq " * 20_000
    assert cli.main(["predict", str(tiny_dir), "--unnorm-key", "tiny_sim",
                     "--instruction", huge]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "cannot fit in the model's context" in line and len(line) < 500
    assert cli.main(["predict", str(tiny_dir), "--unnorm-key", "tiny_sim",
                     "--instruction", "xq " * 300]) == 2  # fits in characters, not in tokens
    assert "prompt tokens, more than the" in capsys.readouterr().err


def test_cli_missing_image_file(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["predict", str(tiny_dir), "--image", str(tmp_path / "nope.png")]) == 2
    expected = f"vla-cache predict: error: image file {tmp_path / 'nope.png'} does not exist"
    assert capsys.readouterr().err.splitlines() == [expected]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``vla-cache`` entry point when present, else ``python -m vla_cache_ros.apps.cli``."""
    script = Path(sys.executable).parent / "vla-cache"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "vla_cache_ros.apps.cli"]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120, env=env, check=False)


def test_make_tiny_command_writes_the_seeded_checkpoint(tmp_path: Path) -> None:
    result = run_cli("make-tiny", str(tmp_path / "cli"), "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"wrote tiny checkpoint (seed 3) to {tmp_path / 'cli'}"]
    expected = read_tensors(make_tiny_checkpoint(tmp_path / "api", seed=3))
    written = read_tensors(tmp_path / "cli")
    assert sorted(written) == sorted(expected)
    assert all(torch.equal(written[name], expected[name]) for name in expected)


def test_command_error_is_one_line_in_a_real_process(checkpoint_copy: Copy, tmp_path: Path) -> None:
    result = run_cli("predict", str(malformed_json(checkpoint_copy, tmp_path)))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "config.json: malformed JSON" in lines[0], result.stderr
