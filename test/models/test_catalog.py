"""Short model names: the default (tiny, until a trained policy ships), the trained sim_policy
when present, directories first, clear errors otherwise."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vla_cache_ros.errors import ConfigurationError
from vla_cache_ros.models import catalog
from vla_cache_ros.models.config import load_config
from vla_cache_ros.runtime.loop import check_model_path


def test_the_default_is_tiny_written_once_under_the_cache_home(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLA_CACHE_HOME", str(tmp_path))
    first = catalog.resolve_model(None)
    assert first.name == catalog.DEFAULT_MODEL == "tiny" and first.unnorm_key == "tiny_sim"
    assert first.path == tmp_path / "tiny-seed0"
    assert "tiny_sim" in load_config(first.path).action_statistics().usable
    written = (first.path / "model.safetensors").stat().st_mtime_ns
    assert catalog.resolve_model("tiny").path == first.path
    assert (first.path / "model.safetensors").stat().st_mtime_ns == written
    assert catalog.resolve_model("", "tiny_alt").unnorm_key == "tiny_alt"  # an explicit key wins
    assert check_model_path("tiny") == str(first.path)  # the node takes the name as model_path


def test_the_trained_policy_resolves_where_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLA_CACHE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(catalog, "SHIPPED_DIR", tmp_path / "shipped")
    with pytest.raises(ConfigurationError, match="trained model 'sim_policy' is not in this installation"):
        catalog.resolve_model("sim_policy")
    with pytest.raises(ConfigurationError, match="not in this installation"):
        check_model_path("sim_policy")
    shutil.copytree(catalog.ensure_tiny_model(), tmp_path / "shipped" / "sim_policy")
    resolved = catalog.resolve_model("sim_policy")
    assert resolved.path == tmp_path / "shipped" / "sim_policy" and resolved.unnorm_key == "vla_cache_sim"
    assert check_model_path("sim_policy") == str(resolved.path)


def test_directories_win_and_unknown_names_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = tmp_path / "sim_policy"
    own.mkdir()
    monkeypatch.chdir(tmp_path)
    resolved = catalog.resolve_model("sim_policy")
    assert resolved.path == Path("sim_policy") and resolved.name is None and resolved.unnorm_key is None
    with pytest.raises(ConfigurationError, match=r"'nope' is neither a checkpoint directory nor a known name"):
        catalog.resolve_model("nope")
    with pytest.raises(ConfigurationError, match=r"not a directory \(nor a known name: sim_policy, tiny\)"):
        check_model_path("nope")


def test_a_short_model_path_brings_its_own_statistics_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert catalog.unnorm_key_for("tiny", "") == "tiny_sim"
    assert catalog.unnorm_key_for("tiny", "tiny_alt") == "tiny_alt"
    assert catalog.unnorm_key_for("/some/dir", "") is None
    (tmp_path / "tiny").mkdir()
    monkeypatch.chdir(tmp_path)
    assert catalog.unnorm_key_for("tiny", "") is None  # a directory named like a short name is a directory


def test_predict_takes_a_short_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Regression (a new user's trial): `vla-cache predict tiny` said 'model directory tiny does not
    exist' although serve, replay, the node and the demo take the name; its unnorm_key follows it."""
    from vla_cache_ros.apps import cli

    monkeypatch.setenv("VLA_CACHE_HOME", str(tmp_path))
    assert cli.main(["predict", "tiny"]) == 0
    by_name = capsys.readouterr().out
    assert cli.main(["predict", str(tmp_path / "tiny-seed0"), "--unnorm-key", "tiny_sim"]) == 0
    assert capsys.readouterr().out == by_name and by_name.startswith("tokens ")
    assert cli.main(["predict", "tinyy"]) == 2
    assert "'tinyy' is neither a checkpoint directory nor a known name" in capsys.readouterr().err


def test_a_stop_while_tiny_is_written_leaves_no_half_written_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the first `--model tiny` (the README's `vla-cache demo`, sim-eval, the node)
    writes the checkpoint; a Ctrl-C or SIGTERM while its weights were written left config.json
    without weights, which every later run took as made and failed to load. Here the stop
    lands in the weights' write; the next resolve writes a whole checkpoint."""
    from vla_cache_ros.models import tiny

    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setenv("VLA_CACHE_HOME", str(tmp_path))
    with monkeypatch.context() as patch:
        patch.setattr(tiny, "save_weights", interrupted)
        with pytest.raises(KeyboardInterrupt):
            catalog.resolve_model("tiny")
    assert not (tmp_path / "tiny-seed0").exists() and list(tmp_path.iterdir()) == []
    resolved = catalog.resolve_model("tiny")
    assert (resolved.path / "model.safetensors").is_file(), sorted(p.name for p in resolved.path.iterdir())
    assert "tiny_sim" in load_config(resolved.path).action_statistics().usable
