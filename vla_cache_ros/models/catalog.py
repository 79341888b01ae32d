"""Short model names for the command line: the shipped trained policy and the seeded random tiny one.

Every command that takes ``--model`` (demo, replay, bench, sim-eval) and the node's
``model_path`` accept a checkpoint directory or one of these names:

- ``tiny`` (the default for now): a seeded random checkpoint (``models.tiny``), written once to
  ``$VLA_CACHE_HOME/tiny-seed0`` (default ``~/.cache/vla_cache_ros``); un-normalised with
  ``tiny_sim``. Meaningless actions: cache mechanics and speed, not task success.
- ``sim_policy``: the miniature policy trained by behaviour cloning on the simulated tabletop
  (``vla-cache train-policy``), to be shipped inside the package under
  ``vla_cache_ros/data/models/sim_policy`` with its model card once it reaches the quality bar
  (issue 12; not yet: docs/training.md says where training stands). Norm key ``vla_cache_sim``.
  It becomes ``DEFAULT_MODEL`` when it ships.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vla_cache_ros.errors import ConfigurationError

PACKAGE_DIR = Path(__file__).resolve().parent.parent
SHIPPED_DIR = PACKAGE_DIR / "data" / "models"
TINY_MODEL = "tiny"
TRAINED_MODEL = "sim_policy"
DEFAULT_MODEL = TINY_MODEL
"""What an omitted ``--model`` means; ``TRAINED_MODEL`` once a trained policy ships."""


def cache_home() -> Path:
    """Where generated checkpoints go: ``$VLA_CACHE_HOME`` or ``~/.cache/vla_cache_ros``."""
    return Path(os.environ.get("VLA_CACHE_HOME", Path.home() / ".cache" / "vla_cache_ros"))


@dataclass(frozen=True)
class ResolvedModel:
    """A checkpoint directory and the norm_stats key to un-normalise its actions with.

    Attributes:
        path: the OpenVLA-format checkpoint directory.
        unnorm_key: the key (None: the checkpoint's only one, or the caller's choice).
        name: the short name it was given by, or None for a plain directory.
    """

    path: Path
    unnorm_key: str | None
    name: str | None = None


SHORT_NAMES: dict[str, str | None] = {TRAINED_MODEL: "vla_cache_sim", TINY_MODEL: "tiny_sim"}
"""Short name -> its norm_stats key."""


def shipped_model_dir(name: str = TRAINED_MODEL) -> Path:
    """Directory of a checkpoint shipped in the package."""
    return SHIPPED_DIR / name


def ensure_tiny_model(directory: Path | None = None) -> Path:
    """The seeded random tiny checkpoint, written to ``directory`` (default
    ``cache_home()/tiny-seed0``) the first time.

    It is written beside ``directory`` and renamed into place when complete, so that a stop
    (Ctrl-C, SIGTERM) while a command writes it leaves no half-written checkpoint that every
    later ``--model tiny`` would take as made; a directory without its config or weights (left
    by an older version) is written again.
    """
    directory = directory or cache_home() / "tiny-seed0"
    if _complete_checkpoint(directory):
        return directory
    from vla_cache_ros.models.tiny import make_tiny_checkpoint

    directory.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".partial", dir=directory.parent))
    try:
        make_tiny_checkpoint(partial, seed=0)
        if directory.is_dir() and not _complete_checkpoint(directory):
            shutil.rmtree(directory)
        try:
            os.rename(partial, directory)
        except OSError:  # another process put a complete one there meanwhile
            if not _complete_checkpoint(directory):
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return directory


def _complete_checkpoint(directory: Path) -> bool:
    """``directory`` holds a config and weights (one file or an index of shards)."""
    return (directory / "config.json").is_file() and any(
        (directory / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json"))


def resolve_model(model: str | Path | None, unnorm_key: str | None = None) -> ResolvedModel:
    """Turn a ``--model`` value (None, a short name or a directory) into a checkpoint.

    Args:
        model: None or ``""`` -> ``DEFAULT_MODEL``; an existing directory; a name of
            ``SHORT_NAMES`` (a directory of the same name, e.g. a training ``--out``, wins); any
            other existing path or text with a path separator is returned as a path, so that
            the checkpoint loader names what is wrong with it.
        unnorm_key: overrides the short name's key when given.

    Raises:
        ConfigurationError: the shipped model is missing from this installation, or ``model``
            is a bare word that is neither a short name nor a directory.
    """
    text = str(model) if model not in (None, "") else DEFAULT_MODEL
    path = Path(text).expanduser()
    if path.is_dir() or (text not in SHORT_NAMES and (path.exists() or os.sep in text)):
        # A path (it exists, or is written as one): the loader names what is wrong with it.
        return ResolvedModel(path, unnorm_key, None)
    if text == TINY_MODEL:
        return ResolvedModel(ensure_tiny_model(), unnorm_key or SHORT_NAMES[TINY_MODEL], TINY_MODEL)
    if text in SHORT_NAMES:
        path = shipped_model_dir(text)
        if not (path / "config.json").is_file():
            raise ConfigurationError(
                f"the trained model {text!r} is not in this installation (expected {path}): it has not "
                "shipped yet (docs/training.md); train one with `vla-cache train-policy` and pass its "
                f"directory, or use {TINY_MODEL!r}")
        return ResolvedModel(path, unnorm_key or SHORT_NAMES[text], text)
    raise ConfigurationError(f"--model {text!r} is neither a checkpoint directory nor a known name "
                             f"({', '.join(SHORT_NAMES)})")


def unnorm_key_for(model_path: str, unnorm_key: str | None) -> str | None:
    """The norm_stats key to use: ``unnorm_key`` when given, else the short name's when
    ``model_path`` is one (and no directory of that name exists), else None (the checkpoint's
    only key). Lets the node take ``model_path: tiny`` alone, as the commands take ``--model tiny``."""
    if unnorm_key:
        return unnorm_key
    if model_path in SHORT_NAMES and not Path(model_path).expanduser().is_dir():
        return SHORT_NAMES[model_path]
    return None
