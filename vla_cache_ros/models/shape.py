"""What a small module trained for one VLA must match in another: the model's shape, read from
its ``config.json`` without loading weights.

The learned drafter (``cache.drafter.Drafter.check_model``) and the learned cache policy
(``cache.learned.LearnedSelector.check_model``) are trained for one model; commands that hand
them to a node or a server replica check them against this shape before anything starts, with
the same checks the policy runs when it loads them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vla_cache_ros.errors import CheckpointError, one_line
from vla_cache_ros.models.action_tokenizer import ActionTokenizer
from vla_cache_ros.models.vision import create_backbone
from vla_cache_ros.models.vla import read_checkpoint_config


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a VLA that a drafter or a cache policy depends on.

    Attributes:
        hidden_size: the language model's embedding width.
        num_visual: visual tokens per frame (``OpenVLA.num_visual_tokens``).
        first_action_token: the lowest action-token id (``ActionTokenizer.first_action_token``).
        image_size: side of the model-input frame in pixels (``config.image_sizes[0]``).
    """

    hidden_size: int
    num_visual: int
    first_action_token: int
    image_size: int


def read_model_shape(path: str | Path) -> ModelShape:
    """The :class:`ModelShape` of the checkpoint directory ``path``: its config.json read (no
    weights), the first vision backbone built on the meta device for its patch count.

    Raises:
        CheckpointError: as ``models.vla.read_checkpoint_config``, or a config that does not build.
    """
    config = read_checkpoint_config(path)
    try:
        hidden_size = int(config.llama_config().hidden_size)
        with torch.device("meta"):
            backbone = create_backbone(config.timm_model_ids[0], config.image_sizes[0],
                                       config.timm_override_act_layers[0], config.timm_model_kwargs[0])
        num_visual = int(backbone.patch_embed.num_patches)
    except (TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(
            f"{Path(path) / 'config.json'}: cannot build the model it describes ({one_line(error)})") from error
    tokenizer = ActionTokenizer(config.vocab_size, config.pad_to_multiple_of, config.n_action_bins)
    return ModelShape(hidden_size, num_visual, tokenizer.first_action_token, int(config.image_sizes[0]))
