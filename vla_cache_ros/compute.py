"""Where the policy runs: one place that turns device / dtype / thread options into torch settings.

The node, the benchmark, the replay comparison and ``vla-cache predict`` all take a device name,
a dtype name and a CPU thread count from the user. Checking them here, before any weight is
read, means ``device: cuda`` on a machine without a GPU is one clear line at start-up instead of
a traceback after minutes of loading.
"""
from __future__ import annotations

from typing import Any

from vla_cache_ros.errors import ConfigurationError

DTYPE_NAMES = ("float32", "bfloat16", "float16")


def resolve_device(name: str) -> Any:
    """``name`` (``cpu``, ``cuda``, ``cuda:1``, ...) as a ``torch.device`` that exists here.

    Raises:
        ConfigurationError: not a torch device name, or a CUDA device this machine lacks.
    """
    import torch

    try:
        device = torch.device(str(name).strip())
    except (RuntimeError, ValueError, TypeError):
        raise ConfigurationError(f"device {name!r} is not a torch device name "
                                 "(expected cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigurationError(f"device {name!r} requested but this machine has no CUDA "
                                     "GPU that torch can use; set device to cpu")
        if device.index is not None and device.index >= count:
            raise ConfigurationError(f"device {name!r} requested but only {count} CUDA "
                                     f"device(s) exist (cuda:0 .. cuda:{count - 1})")
    elif device.type != "cpu":  # mps / xpu / meta: this package runs on CPU and CUDA only
        raise ConfigurationError(f"device {name!r} is not supported; expected cpu, cuda or cuda:N")
    return device


def resolve_dtype(name: str) -> Any:
    """``float32`` / ``bfloat16`` / ``float16`` as a torch dtype.

    Raises:
        ConfigurationError: any other name.
    """
    import torch

    if name not in DTYPE_NAMES:
        raise ConfigurationError(f"dtype {name!r} is not supported; expected one of "
                                 f"{', '.join(DTYPE_NAMES)}")
    return getattr(torch, name)


def set_cpu_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads for torch (None or 0: torch's default).

    Raises:
        ConfigurationError: a negative count.
    """
    if threads is None or threads == 0:
        return
    if threads < 0:
        raise ConfigurationError(f"threads must be >= 0, got {threads}")
    import torch

    torch.set_num_threads(int(threads))
