"""Resumable training state in safetensors + JSON (never pickle, so never ``torch.save``).

A state directory holds ``tensors.safetensors`` (the model's float32 weights under ``model.*``,
every optimiser tensor under ``optimizer.<parameter name>.<key>`` and the torch RNG states
under ``rng.*``) and ``state.json`` (step, the run's settings, the optimiser's scalar state and
parameter groups, the metric history). It is written to a fresh directory and swapped into
place, so an interrupted save leaves the previous state readable (``previous`` is kept until
the new one is complete and read when the current one is missing).

A new run is resumable from its first save on; :func:`fresh_start` makes a start stopped or
failed before that leave ``--out`` as it found it, so that the same command starts again.
"""
from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from vla_cache_ros.errors import TrainingError, one_line
from vla_cache_ros.models.checkpoint import write_safetensors

TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"


@dataclass
class TrainingState:
    """What a run needs to continue exactly where it stopped.

    Attributes:
        step: optimiser steps done.
        settings: the run's defining settings (a resume must match them).
        history: metric records (lists of dicts), e.g. ``{"train": [...], "val": [...]}``.
        model: module key -> float32 tensor.
        optimizer: the optimiser's ``state_dict()``, keyed by parameter name instead of index.
        rng: name -> uint8 RNG state tensor (``cpu``, ``cuda:<i>``).
    """

    step: int
    settings: dict[str, Any]
    history: dict[str, list[dict[str, Any]]]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, torch.Tensor]


def optimizer_state_by_name(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, Any]:
    """``optimizer.state_dict()`` with parameter indices replaced by parameter names.

    ``names`` maps ``id(parameter)`` to its name. Returns ``{"state": {name: {key: value}},
    "param_groups": [{..., "params": [names]}]}``.
    """
    state_dict = optimizer.state_dict()
    index_to_name = {}
    index = 0
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            index_to_name[index] = names[id(parameter)]
            index += 1
    groups = [{**group, "params": [index_to_name[i] for i in group["params"]]} for group in state_dict["param_groups"]]
    return {"state": {index_to_name[i]: dict(v) for i, v in state_dict["state"].items()}, "param_groups": groups}


def load_optimizer_state(optimizer: torch.optim.Optimizer, by_name: dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_state_by_name` for an optimiser built the same way.

    Raises:
        TrainingError: the saved groups do not name the optimiser's parameters in its order.
    """
    saved_groups = by_name["param_groups"]
    current = optimizer.state_dict()["param_groups"]
    if len(saved_groups) != len(current) or [len(g["params"]) for g in saved_groups] != \
            [len(g["params"]) for g in current]:
        raise TrainingError("the saved optimiser state does not match the model's parameters")
    name_to_index = {}
    groups = []
    for saved, group in zip(saved_groups, current):
        name_to_index.update(zip(saved["params"], group["params"]))
        # JSON turned tuples (betas) into lists; the optimiser's own groups hold tuples.
        settings = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}
        groups.append({**settings, "params": group["params"]})
    state = {name_to_index[name]: value for name, value in by_name["state"].items()}
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_state(directory: Path, state: TrainingState) -> None:
    """Write ``state`` to ``directory`` (replacing what is there only once the new one is complete)."""
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v.detach().float().cpu().contiguous()
                                        for k, v in state.model.items()}
    scalars: dict[str, dict[str, Any]] = {}
    for name, entries in state.optimizer["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{name}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(name, {})[key] = value
    tensors.update({f"rng.{name}": value.cpu().contiguous() for name, value in state.rng.items()})
    document = {"step": state.step, "settings": state.settings, "history": state.history,
                "optimizer": {"param_groups": state.optimizer["param_groups"], "scalars": scalars,
                              "tensor_keys": {name: sorted(k for k, v in entries.items()
                                                           if isinstance(v, torch.Tensor))
                                              for name, entries in state.optimizer["state"].items()}},
                "rng": sorted(state.rng)}
    fresh = directory.with_name(directory.name + ".new")
    previous = directory.with_name(directory.name + ".previous")
    if fresh.exists():
        shutil.rmtree(fresh)
    fresh.mkdir(parents=True)
    write_safetensors(tensors, fresh / TENSORS_FILE, {"format": "vla_cache_training_state/1"})
    (fresh / STATE_FILE).write_text(json.dumps(document, indent=1) + "\n")
    if directory.exists():
        if previous.exists():
            shutil.rmtree(previous)
        directory.rename(previous)
    fresh.rename(directory)
    if previous.exists():
        shutil.rmtree(previous)


def state_exists(directory: Path) -> bool:
    """Whether a (complete) state is stored at ``directory`` or its kept ``.previous``."""
    return any((d / STATE_FILE).is_file() for d in (directory, directory.with_name(directory.name + ".previous")))


def load_state(directory: Path) -> TrainingState:
    """Read a state written by :func:`save_state` (falling back to ``.previous`` after a crash mid-swap).

    Raises:
        TrainingError: missing, unreadable or inconsistent files.
    """
    if not (directory / STATE_FILE).is_file():
        directory = directory.with_name(directory.name + ".previous")
    try:
        document = json.loads((directory / STATE_FILE).read_text())
        tensors = load_file(str(directory / TENSORS_FILE))
    except (OSError, json.JSONDecodeError, SafetensorError) as error:
        raise TrainingError(f"cannot read the training state in {directory}: {one_line(error)}") from None
    optimizer_state: dict[str, dict[str, Any]] = {}
    saved = document["optimizer"]
    try:
        for name, keys in saved["tensor_keys"].items():
            optimizer_state[name] = {key: tensors[f"optimizer.{name}.{key}"] for key in keys}
        for name, values in saved["scalars"].items():
            optimizer_state.setdefault(name, {}).update(values)
        rng = {name: tensors[f"rng.{name}"] for name in document["rng"]}
    except KeyError as error:
        raise TrainingError(f"the training state in {directory} lacks tensor {error}") from None
    model = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    return TrainingState(step=int(document["step"]), settings=document["settings"], history=document["history"],
                         model=model, optimizer={"state": optimizer_state, "param_groups": saved["param_groups"]},
                         rng=rng)


@contextmanager
def fresh_start(out_dir: Path, state_dir: Path, keep: tuple[Path, ...] = ()) -> Iterator[None]:
    """Around a run's start up to and including its first save: when it is stopped there
    (Ctrl-C, SIGTERM) or fails before a state is saved in ``state_dir``, remove what it wrote
    into ``out_dir`` -- all but the files ``keep`` (paths relative to ``out_dir``), and
    ``out_dir`` itself when the run created it -- and re-raise.

    Without a state ``out_dir`` cannot be resumed, and a new run refuses a non-empty one, so what
    a stopped start left behind (tokenizer files, a half-written first state) made the same
    command fail. A resumed run (a state is there) removes nothing."""
    created = not out_dir.exists()
    try:
        yield
    except BaseException:
        if out_dir.is_dir() and not state_exists(state_dir):
            _remove_all_but(out_dir, {out_dir / path for path in keep})
            if created and not any(out_dir.iterdir()):
                out_dir.rmdir()
        raise


def _remove_all_but(directory: Path, keep: set[Path]) -> None:
    """Remove what ``directory`` holds except the files ``keep`` (and the directories above them)."""
    for path in directory.iterdir():
        if path in keep:
            continue
        if any(path in kept.parents for kept in keep):
            _remove_all_but(path, keep)
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """The torch RNG states a run draws from (CPU, and the CUDA device in use)."""
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states[f"cuda:{device.index or 0}"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng(states: dict[str, torch.Tensor], device: torch.device) -> None:
    """Put back what :func:`rng_states` saved (a CUDA state only on the same kind of device)."""
    torch.set_rng_state(states["cpu"])
    key = f"cuda:{device.index or 0}"
    if device.type == "cuda" and key in states:
        torch.cuda.set_rng_state(states[key], device)


@dataclass
class ModuleTrainResult:
    """What a ``train-cache`` / ``train-drafter`` call did (a small module beside a frozen VLA)."""

    out_dir: Path
    step: int
    total_steps: int
    resumed_from: int
    history: dict[str, list[dict[str, Any]]]

    @property
    def complete(self) -> bool:
        """Whether every step is done."""
        return self.step >= self.total_steps


def identity_settings(config: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    """The JSON-ready values of a dataclass config's run-defining ``keys`` (paths as text, the
    ``data`` directories as a list of text, tuples as lists): what a resume must match."""
    values = asdict(config)
    return {key: (str(values[key]) if isinstance(values[key], Path) else
                  [str(v) for v in values[key]] if key == "data" else
                  list(values[key]) if isinstance(values[key], tuple) else values[key]) for key in keys}
