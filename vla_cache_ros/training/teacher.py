"""What a frozen VLA says about frames: its input embeddings and its own greedy action tokens,
the self-distillation targets of ``train-cache`` (``training/lac.py``; ``train-drafter``,
``training/drafter.py``, shares the embeddings and takes its tokens from the policy in the cache
mode it drafts for). No labels are needed, so a user's own bags suffice.

Both go through the same code as inference: the model's preprocessing, vision tower and
projector, and the cache engine's uncached prefill and greedy decode.
"""
from __future__ import annotations

import numpy as np
import torch

from vla_cache_ros.cache.engine import KVReuseEngine
from vla_cache_ros.models.norm_stats import ACTION_DIM
from vla_cache_ros.models.vla import OpenVLA


@torch.no_grad()
def frame_embeddings(model: OpenVLA, images: list[np.ndarray], instruction: str
                     ) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Decoder input embeddings of frames under one instruction, and their model-input frames.

    Args:
        images: B RGB uint8 (H, W, 3) frames.
        instruction: the instruction of every frame.

    Returns:
        ``[BOS | N visual | prompt after BOS]`` embeddings (B, L, hidden) in the model dtype, and
        the B model-input RGB frames (S, S, 3) uint8.

    Raises:
        InstructionError: an empty or overlong instruction.
    """
    prepared = [model.preprocess(image) for image in images]
    visual = model.encode_image(torch.cat([p.pixel_values for p in prepared]))
    prompt = model.prompt_ids(instruction).unsqueeze(0)
    text = model.language_model.get_input_embeddings()(prompt).expand(len(images), -1, -1)
    embeddings = torch.cat([text[:, :1], visual.to(text.dtype), text[:, 1:]], dim=1)
    return embeddings, [p.model_input_rgb for p in prepared]


@torch.no_grad()
def greedy_tokens(engine: KVReuseEngine, embeddings: torch.Tensor, num_visual: int) -> torch.Tensor:
    """The uncached model's greedy tokens, one row at a time through the engine.

    Args:
        embeddings: (B, L, hidden) rows of :func:`frame_embeddings`.
        num_visual: N visual tokens per row.

    Returns:
        (B, 7) int64 tokens.
    """
    rows = []
    for row in embeddings:
        prefill = engine.prefill(row[None], num_visual)
        rows.append(engine.decode(prefill, ACTION_DIM).tokens)
    return torch.stack(rows)
