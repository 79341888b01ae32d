"""OpenVLA-format checkpoint loading without remote code: config, vision, projector, LLM, processing.

Public API: ``load_vla(path, device="cpu", dtype=torch.float32)`` returns an ``OpenVLA`` with
``predict_action(image, instruction, unnorm_key=None) -> np.ndarray`` (the uncached path).
The names are resolved lazily so that light users of the package (the CLI parser, bag tools)
do not pay for importing torch and transformers.
"""
from __future__ import annotations

from typing import Any

__all__ = ["ACTION_DIM", "OpenVLA", "load_vla"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from vla_cache_ros.models import vla

        return getattr(vla, name)
    raise AttributeError(f"module 'vla_cache_ros.models' has no attribute {name!r}")
