"""The OpenVLA model assembled from a local Hugging Face export, and its uncached reference path.

``load_vla(path)`` builds vision tower, projector and ``LlamaForCausalLM`` on the meta device,
streams the safetensors weights straight into them (no second copy), loads the tokenizer
without remote code, and returns an ``OpenVLA`` whose ``predict_action`` reproduces the
reference ``predict_action``: ``[BOS | visual tokens | prompt | 29871]`` then exactly 7 greedy
argmax steps over the full vocabulary, decoded and un-normalised.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoTokenizer, LlamaForCausalLM
from transformers.utils import logging as transformers_logging

from vla_cache_ros.errors import CheckpointError, InstructionError, clip_text
from vla_cache_ros.models.action_tokenizer import ActionTokenizer
from vla_cache_ros.models.checkpoint import assign_tensors, iter_tensors, weight_files
from vla_cache_ros.models.config import OpenVLAConfig, load_config, one_line
from vla_cache_ros.models.norm_stats import ACTION_DIM, NormStats
from vla_cache_ros.models.processor import ImageProcessor, PreparedImage, prompt_token_ids
from vla_cache_ros.models.vision import Projector, VisionTower, checkpoint_key_to_module_key, create_backbone

CHARS_PER_TOKEN_BOUND = 16
"""No Llama SentencePiece token spans more than 16 characters of ordinary text: an instruction
longer than 16 characters per free context position cannot fit, and is refused before it is
tokenised at all."""

# transformers renamed the KV-cache argument ``past_key_values`` -> ``cache`` (5.24; the old name is
# removed in 5.40). The reference path speaks whichever the installed version has; the cache
# engine never uses it (it drives the layer modules directly).
CACHE_KWARG = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def returned_cache(output: Any) -> Any:
    """The KV cache a transformers forward returned, under either attribute name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


@dataclass
class ActionPrediction:
    """Greedy action tokens and the logits each was chosen from."""

    tokens: torch.Tensor  # (ACTION_DIM,) int64
    logits: torch.Tensor  # (ACTION_DIM, vocab) float32


class OpenVLA(nn.Module):
    """Vision tower + projector + Llama decoder, with OpenVLA's pre- and post-processing."""

    def __init__(self, config: OpenVLAConfig, tokenizer: Any, processor: ImageProcessor) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.processor = processor
        backbones = [
            create_backbone(model_id, size, act, kwargs)
            for model_id, size, act, kwargs in zip(config.timm_model_ids, config.image_sizes,
                                                   config.timm_override_act_layers, config.timm_model_kwargs)
        ]
        self.vision = VisionTower(backbones)
        self.llama_config = config.llama_config()
        self.projector = Projector(self.vision.embed_dim, self.llama_config.hidden_size,
                                   fused=config.use_fused_vision_backbone)
        self.language_model = LlamaForCausalLM(self.llama_config)
        self.action_tokenizer = ActionTokenizer(config.vocab_size, config.pad_to_multiple_of, config.n_action_bins)
        self.action_statistics: NormStats = config.action_statistics()

    # --- properties -----------------------------------------------------------------------
    @property
    def num_visual_tokens(self) -> int:
        """Visual tokens per frame (256 for OpenVLA)."""
        return self.vision.num_patches()

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return self.language_model.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the weights."""
        return self.language_model.lm_head.weight.dtype

    # --- stages ---------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> PreparedImage:
        """RGB uint8 frame -> normalised pixels and the model-input RGB."""
        return self.processor(image)

    @torch.no_grad()
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels -> projected visual token embeddings (1, N, hidden) in the model dtype."""
        pixels = pixel_values.to(device=self.device, dtype=self.dtype)
        return self.projector(self.vision(pixels))

    @property
    def max_prompt_tokens(self) -> int:
        """Prompt tokens (BOS and the trailing 29871 included) that fit in the decoder's context
        (``max_position_embeddings``) beside the visual tokens and the 7 action tokens."""
        return int(self.llama_config.max_position_embeddings) - self.num_visual_tokens - ACTION_DIM

    def prompt_ids(self, instruction: str) -> torch.Tensor:
        """(T,) prompt ids: BOS, prompt tokens, 29871.

        Raises:
            InstructionError: empty, or too long for the model's context (checked before
                tokenising a text that cannot fit; the message shows at most ~200 characters).
        """
        if not isinstance(instruction, str) or not instruction.strip():
            raise InstructionError("instruction must be a non-empty string")
        limit = self.max_prompt_tokens
        if len(instruction) > CHARS_PER_TOKEN_BOUND * max(limit, 1):
            raise InstructionError(
                f"instruction of {len(instruction)} characters cannot fit in the model's context "
                f"(room for {limit} prompt tokens): {clip_text(instruction)!r}")
        ids = prompt_token_ids(self.tokenizer, instruction)
        if len(ids) > limit:
            raise InstructionError(
                f"instruction is {len(ids)} prompt tokens, more than the {limit} that fit in the "
                f"model's context ({self.llama_config.max_position_embeddings} positions, "
                f"{self.num_visual_tokens} visual, {ACTION_DIM} action): {clip_text(instruction)!r}")
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    @torch.no_grad()
    def assemble_embeddings(self, visual: torch.Tensor, prompt_ids: torch.Tensor) -> torch.Tensor:
        """``[BOS | visual | prompt after BOS]`` embeddings, shape (1, 1 + N + T - 1, hidden)."""
        text = self.language_model.get_input_embeddings()(prompt_ids.unsqueeze(0))
        return torch.cat([text[:, :1], visual.to(text.dtype), text[:, 1:]], dim=1)

    def decode_action(self, tokens: np.ndarray, unnorm_key: str | None = None) -> np.ndarray:
        """(7,) action-token ids -> (7,) un-normalised action (float64, robot units).

        Uses the statistics validated at load; raises as ``NormStats.select`` does for a
        missing, unknown or unusable ``unnorm_key`` (call that at start-up to fail early).
        """
        normalized = self.action_tokenizer.tokens_to_normalized(np.asarray(tokens))
        return self.action_statistics.select(unnorm_key).unnormalize(normalized)

    # --- uncached reference -----------------------------------------------------------------
    @torch.no_grad()
    def predict_action_tokens(self, image: np.ndarray, instruction: str) -> ActionPrediction:
        """Uncached reference: stock ``LlamaForCausalLM`` forward, 7 greedy steps with its cache."""
        prepared = self.preprocess(image)
        embeddings = self.assemble_embeddings(self.encode_image(prepared.pixel_values), self.prompt_ids(instruction))
        output = self.language_model(inputs_embeds=embeddings, use_cache=True)
        cache = returned_cache(output)
        step_logits = output.logits[:, -1, :]
        tokens, logits = [], []
        position = embeddings.shape[1]
        for step in range(ACTION_DIM):
            token = int(torch.argmax(step_logits, dim=-1).item())
            tokens.append(token)
            logits.append(step_logits[0].float())
            if step == ACTION_DIM - 1:
                break
            output = self.language_model(
                input_ids=torch.tensor([[token]], device=self.device), use_cache=True, **{CACHE_KWARG: cache},
                position_ids=torch.tensor([[position]], device=self.device))
            cache = returned_cache(output)
            step_logits = output.logits[:, -1, :]
            position += 1
        return ActionPrediction(torch.tensor(tokens), torch.stack(logits))

    def predict_action(self, image: np.ndarray, instruction: str, unnorm_key: str | None = None) -> np.ndarray:
        """The reference path: RGB frame + instruction -> un-normalised 7-D action."""
        prediction = self.predict_action_tokens(image, instruction)
        return self.decode_action(prediction.tokens.numpy(), unnorm_key)


def load_tokenizer(directory: Path) -> Any:
    """Load the tokenizer from local files only, never running repository code."""
    previous = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # silences "model of type openvla" from reading config.json
    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as error:
        raise CheckpointError(f"{directory}: cannot load tokenizer ({one_line(error)})") from error
    finally:
        transformers_logging.set_verbosity(previous)


def read_checkpoint_config(path: str | Path) -> OpenVLAConfig:
    """The validated config (with norm_stats) of a checkpoint directory, without reading weights.

    Cheap (JSON only): callers check ``unnorm_key`` with ``config.action_statistics().select``
    before paying for ``load_vla``. Raises CheckpointError as ``load_config`` does, or when the
    path is missing or not a directory.
    """
    directory = Path(path).expanduser()
    if not directory.exists():
        raise CheckpointError(f"model directory {directory} does not exist")
    if not directory.is_dir():
        raise CheckpointError(f"model path {directory} is not a directory")
    return load_config(directory)


def load_vla(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             center_crop: bool = False) -> OpenVLA:
    """Load an OpenVLA-format checkpoint from a local directory (safetensors only, no remote code).

    Args:
        path: directory with config.json, safetensors weights, tokenizer files and optionally
            preprocessor_config.json / dataset_statistics.json.
        device: where the weights go.
        dtype: compute dtype (float32 or bfloat16).
        center_crop: apply LIBERO-style 0.9-area centre crop in preprocessing.

    Raises:
        CheckpointError: a missing, unsafe, malformed or inconsistent checkpoint, including
            norm_stats with no usable dataset. Datasets that fall back to min/max or are unusable
            (while others are usable) are reported once with a ``logging`` warning.
    """
    directory = Path(path).expanduser()
    config = read_checkpoint_config(directory)
    config.action_statistics().log_warnings()
    files = weight_files(directory)
    tokenizer = load_tokenizer(directory)
    processor = ImageProcessor.from_checkpoint(directory, config.timm_model_ids, config.image_sizes[0], center_crop)
    try:
        with torch.device("meta"):
            model = OpenVLA(config, tokenizer, processor)
    except (TypeError, ValueError, AttributeError) as error:  # e.g. text_config sizes of the wrong type
        raise CheckpointError(
            f"{directory / 'config.json'}: cannot build the model it describes ({one_line(error)})") from error
    assign_tensors(model, iter_tensors(files, dtype, device), checkpoint_key_to_module_key)
    materialize_rotary(model, device)
    leftover = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise CheckpointError(f"checkpoint left {len(leftover)} weight(s) uninitialised: {', '.join(leftover[:5])}")
    model.eval()
    model.requires_grad_(False)
    return model


def materialize_rotary(model: OpenVLA, device: str | torch.device) -> None:
    """Recreate the rotary embedding (non-persistent buffers are not in the checkpoint)."""
    rotary_cls = type(model.language_model.model.rotary_emb)
    with torch.device("cpu"):
        rotary = rotary_cls(config=model.llama_config)
    model.language_model.model.rotary_emb = rotary.to(device)
