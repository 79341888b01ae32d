"""Finding and streaming safetensors weights of a local checkpoint directory (never pickles).

Supports a single ``model.safetensors`` or shards listed in ``model.safetensors.index.json``.
Tensors are read one at a time with ``pread`` (not memory-mapped) and assigned straight into
modules created on the meta device, so loading never holds two full copies of the weights:
converting bf16 -> fp32 keeps at most one source tensor beside the converted weights, and the
loaded model does not depend on the files afterwards (rewriting or truncating a checkpoint
under a running process cannot corrupt or crash it). See docs/memory.md for the measurement.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from vla_cache_ros.errors import CheckpointError, one_line

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _default_file_mode() -> int:
    """The mode ``open()`` gives a new file here: 0o666 minus the process umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file``, then the file mode every other file written here gets.

    safetensors creates its files with mode 0600, so a checkpoint written by one user (or by a
    service account) was unreadable to the others that run the node, while its config.json was
    readable: a half-readable checkpoint (issue 15).
    """
    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, _default_file_mode())


def weight_files(directory: Path) -> list[Path]:
    """Safetensors files of a checkpoint; refuses pickle-only directories with a reason."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{index}: malformed shard index ({one_line(error)})") from error
        files = sorted({directory / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{directory}: shard(s) listed in the index are missing: {', '.join(missing)}")
        return files
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    shards = sorted(directory.glob("*.safetensors"))
    if shards:
        return shards
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{directory}: only pickle weight files found ({', '.join(pickles)}); refusing to load them "
            "because unpickling can run arbitrary code. Convert the checkpoint to safetensors.")
    raise CheckpointError(f"{directory}: no weights found (expected model.safetensors or a sharded index)")


def iter_tensors(files: list[Path], dtype: torch.dtype | None, device: str | torch.device
                 ) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) for every tensor, one at a time, cast to ``dtype`` on ``device``."""
    for path in files:
        try:
            with safe_open(str(path), framework="pt", device="cpu", backend="pread") as handle:
                for name in handle.keys():
                    tensor = handle.get_tensor(name)
                    if dtype is not None and tensor.is_floating_point():
                        tensor = tensor.to(dtype)
                    yield name, tensor.to(device)
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{path}: unreadable safetensors file ({one_line(error)})") from error


def _resolve(module: torch.nn.Module, dotted: str) -> tuple[torch.nn.Module, str]:
    parts = dotted.split(".")
    owner = module
    for part in parts[:-1]:
        owner = getattr(owner, part)
    return owner, parts[-1]


def assign_tensors(module: torch.nn.Module, tensors: Iterator[tuple[str, torch.Tensor]],
                   key_map, ignore_unexpected: tuple[str, ...] = ()) -> None:
    """Assign streamed tensors into ``module``'s parameters/buffers, checking names and shapes.

    Raises ``CheckpointError`` naming the tensor on a shape mismatch, a missing tensor, or an
    unexpected one (unless its module key starts with one of ``ignore_unexpected``).
    """
    expected = dict(module.named_parameters())
    expected.update(dict(module.named_buffers()))
    persistent = set(module.state_dict().keys())
    seen: set[str] = set()
    for checkpoint_name, tensor in tensors:
        name = key_map(checkpoint_name)
        if name not in expected:
            if name.startswith(ignore_unexpected):
                continue
            raise CheckpointError(f"unexpected tensor '{checkpoint_name}' in checkpoint (no such module weight)")
        target = expected[name]
        if tuple(target.shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"shape mismatch for tensor '{checkpoint_name}': checkpoint has {tuple(tensor.shape)}, "
                f"config implies {tuple(target.shape)}")
        owner, leaf = _resolve(module, name)
        if isinstance(target, torch.nn.Parameter):
            setattr(owner, leaf, torch.nn.Parameter(tensor, requires_grad=False))
        else:
            owner.register_buffer(leaf, tensor, persistent=True)
        seen.add(name)
    missing = sorted(persistent - seen)
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise CheckpointError(f"checkpoint is missing {len(missing)} tensor(s): {shown}")
