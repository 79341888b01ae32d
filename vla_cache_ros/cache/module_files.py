"""Files of a small trained module that rides along with a VLA (the learned cache policy, the
drafter): one directory holding a JSON config and safetensors weights, how a model directory
carries its own copy, and how a ``--x DIR`` option / ``x_path`` node parameter names one.

A module directory holds ``<name>.json`` (``{"format": ..., **config fields}``) and
``<name>.safetensors`` (the ``state_dict``, float32 on CPU). Nothing is pickled. Reading checks
the files, the format tag, the config (its dataclass validates itself) and that the weights fit
it, and reports every failure as one :class:`~vla_cache_ros.errors.CheckpointError` naming the
directory and what is wrong.

Core module: no ROS.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from vla_cache_ros.errors import CheckpointError, ConfigurationError
from vla_cache_ros.models.checkpoint import write_safetensors

NO_MODULE = "none"
"""The option / parameter value that turns the model directory's own module off."""

ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass(frozen=True)
class ModuleFiles:
    """Where and how one kind of module is stored.

    Attributes:
        what: its name in messages (``cache policy``).
        stem: file name stem: ``<stem>.json`` and ``<stem>.safetensors``.
        format: the format tag written into, and required of, the JSON config.
        subdirectory: a model directory's own copy lives in ``MODEL/<subdirectory>/``.
        hint: how to make one, appended when the files are missing.
    """

    what: str
    stem: str
    format: str
    subdirectory: str
    hint: str

    @property
    def config_file(self) -> str:
        """``<stem>.json``."""
        return f"{self.stem}.json"

    @property
    def weights_file(self) -> str:
        """``<stem>.safetensors``."""
        return f"{self.stem}.safetensors"


def save_module(files: ModuleFiles, directory: str | Path, module: nn.Module, config: Any) -> Path:
    """Write ``module``'s weights and its dataclass ``config`` (tuples as lists) into
    ``directory`` (created; files readable like the model's, ``models.checkpoint.write_safetensors``);
    returns the directory."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    settings = {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(config).items()}
    write_safetensors({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
                      out / files.weights_file, {"format": files.format})
    (out / files.config_file).write_text(json.dumps({"format": files.format, **settings}, indent=2) + "\n")
    return out


def load_module(files: ModuleFiles, directory: str | Path, config_type: type,
                build: Callable[[Any], ModuleT]) -> ModuleT:
    """Read a module written by :func:`save_module`: ``config_type(**fields)`` (unknown keys
    ignored), ``build(config)``, then its weights; returned in eval mode (float32, CPU).

    Raises:
        CheckpointError: no such directory (or not a directory), missing files, unreadable or
            foreign JSON, a config its dataclass refuses, a weights file that is not readable
            safetensors (naming the file), weights whose names or shapes do not fit the config.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(directory)
    if not root.exists():
        raise CheckpointError(f"{files.what} {root}: no such directory ({files.hint})")
    if not root.is_dir():
        raise CheckpointError(f"{files.what} {root}: is not a directory (give the directory holding "
                              f"{files.config_file} and {files.weights_file})")
    config_path, weights_path = root / files.config_file, root / files.weights_file
    for path in (config_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"{files.what} {root}: {path.name} is missing ({files.hint})")
    try:
        document = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{files.what} {config_path}: not readable JSON ({error})") from None
    if not isinstance(document, dict) or document.get("format") != files.format:
        raise CheckpointError(f"{files.what} {config_path}: format is not {files.format!r}")
    settings = {k: v for k, v in document.items() if k in config_type.__dataclass_fields__}
    try:
        module = build(config_type(**settings))
    except (ConfigurationError, TypeError, ValueError) as error:
        raise CheckpointError(f"{files.what} {root}: {error}") from None
    try:
        state = load_file(str(weights_path))
    except (OSError, SafetensorError) as error:
        raise CheckpointError(f"{files.what} {weights_path}: not a readable safetensors file "
                              f"({_first_line(error)})") from None
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as error:
        raise CheckpointError(f"{files.what} {root}: weights do not fit its config ({_first_line(error)})") from None
    return module.eval()


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def default_directory(files: ModuleFiles, model_path: str | Path) -> Path | None:
    """``MODEL/<subdirectory>`` when it holds such a module's config, else None."""
    candidate = Path(model_path) / files.subdirectory
    return candidate if (candidate / files.config_file).is_file() else None


def resolve_directory(files: ModuleFiles, value: str | None, model_path: str | Path | None) -> Path | None:
    """The directory to load for an option / parameter ``value``: the value itself when given
    (None for :data:`NO_MODULE`), else the model directory's own (:func:`default_directory`),
    else None. Loading checks the directory (CheckpointError)."""
    if value is not None and value.strip():
        return None if value.strip().lower() == NO_MODULE else Path(value.strip()).expanduser()
    return default_directory(files, model_path) if model_path is not None else None
