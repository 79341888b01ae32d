"""OpenVLA-format checkpoint loading without remote code: config, vision, projector, LLM, processing.

Public API: ``load_vla(path, device="cpu", dtype=torch.float32)`` returns an ``OpenVLA`` with
``predict_action(image, instruction, unnorm_key=None) -> np.ndarray`` (the uncached path).
"""
from vla_cache_ros.models.vla import ACTION_DIM, OpenVLA, load_vla

__all__ = ["ACTION_DIM", "OpenVLA", "load_vla"]
