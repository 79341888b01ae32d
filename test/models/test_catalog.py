"""Short model names: the shipped policy by default, the seeded random tiny one, directories first."""
from __future__ import annotations

from pathlib import Path

import pytest

from vla_cache_ros.errors import ConfigurationError
from vla_cache_ros.models import catalog
from vla_cache_ros.models.config import load_config
from vla_cache_ros.runtime.loop import check_model_path


def test_the_default_is_the_shipped_policy_with_its_own_statistics() -> None:
    resolved = catalog.resolve_model(None)
    assert resolved.name == catalog.DEFAULT_MODEL and resolved.unnorm_key == "vla_cache_sim"
    assert resolved.path == catalog.PACKAGE_DIR / "data" / "models" / "sim_policy"
    # The key exists in the checkpoint, and it is the only one.
    statistics = load_config(resolved.path).action_statistics()
    assert statistics.select(None).dataset == "vla_cache_sim"
    assert catalog.resolve_model("", "other").unnorm_key == "other"  # an explicit key wins
    # The node takes the name as model_path too.
    assert check_model_path("sim_policy") == str(resolved.path)


def test_tiny_is_written_once_under_the_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLA_CACHE_HOME", str(tmp_path))
    first = catalog.resolve_model("tiny")
    assert first.path == tmp_path / "tiny-seed0" and first.unnorm_key == "tiny_sim"
    written = (first.path / "model.safetensors").stat().st_mtime_ns
    assert catalog.resolve_model("tiny").path == first.path
    assert (first.path / "model.safetensors").stat().st_mtime_ns == written


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
    monkeypatch.chdir(Path(__file__).parent)
    monkeypatch.setattr(catalog, "SHIPPED_DIR", tmp_path / "missing")
    with pytest.raises(ConfigurationError, match="shipped model 'sim_policy' is missing from this installation"):
        catalog.resolve_model(None)
