"""Seeded random miniature checkpoints in OpenVLA's exact on-disk format.

``make_tiny_checkpoint(dir)`` writes config.json (real timm ids + ``timm_model_kwargs`` to
shrink them), safetensors weights (optionally sharded with an index), tokenizer files built with
the ``tokenizers`` library, preprocessor_config.json in OpenVLA's layout (top-level ImageNet
``means``/``stds`` and the ``tvf_*`` transform fields holding the bf16-rounded DINOv2 constants
that OpenVLA's processor applies) and norm_stats for two datasets. Presets: ``tiny`` (tests,
demo) and ``midsize`` (benchmark: hidden 1024, 8 layers, 16 heads). ``single_backbone=True``
writes a DINOv2-only (unfused) variant.
Random weights give meaningless but deterministic actions; the lm_head rows of the action tokens
are scaled up so that greedy decoding lands on action tokens, and DINOv2's LayerScale factors
are drawn at random (timm initialises them to 1e-5, which would make every block a near no-op).
"""
from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from vla_cache_ros.errors import ConfigurationError
from vla_cache_ros.models.checkpoint import write_safetensors
from vla_cache_ros.models.config import parse_config
from vla_cache_ros.models.processor import (
    BICUBIC_PIL_CODE,
    ImageProcessor,
    default_normalization,
    parse_preprocessor_config,
)
from vla_cache_ros.models.vision import module_key_to_checkpoint_key

DINOV2_ID = "vit_large_patch14_reg4_dinov2.lvd142m"
SIGLIP_ID = "vit_so400m_patch14_siglip_224"
# OpenVLA's saved (bf16-rounded) DINOv2 constants, applied through tvf_normalize_params, and SigLIP's.
DINOV2_MEAN_BF16 = [0.484375, 0.455078125, 0.40625]
DINOV2_STD_BF16 = [0.228515625, 0.2236328125, 0.224609375]
SIGLIP_MEAN = [0.5, 0.5, 0.5]
SIGLIP_STD = [0.5, 0.5, 0.5]
VOCAB_SIZE = 32064
ACTION_LOGIT_GAIN = 4.0
LAYER_SCALE_RANGE = (0.2, 1.0)

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "vision": {"depth": 3, "embed_dim": 48, "num_heads": 2},
        "text": {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 4,
                 "num_attention_heads": 4, "num_key_value_heads": 2},
    },
    "midsize": {
        "vision": {"depth": 4, "embed_dim": 192, "num_heads": 3},
        "text": {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8,
                 "num_attention_heads": 16, "num_key_value_heads": 16},
    },
    # OpenVLA-7B's shapes: full DINOv2-L + SigLIP-so400m, Llama-2-7B (LlamaConfig defaults).
    # Only built in memory (random_model) for GPU benchmarks; never written to disk by default.
    "openvla-7b": {"vision": {}, "text": {}},
}

TRAINING_SENTENCES = [
    "In: What action should the robot take to {}?\nOut:",
    "pick up the {} cube", "push the {} block to the {} square", "touch the {} ball",
    "put the {} object on the plate", "open the drawer", "close the gripper", "move left", "move right",
]
COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]


def build_tokenizer(directory: Path) -> PreTrainedTokenizerFast:
    """Train a small Llama-style (SentencePiece-like BPE) tokenizer and save it to ``directory``."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    # Fuse before Strip: decoders act per token, so stripping first would drop every word's space.
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    corpus = []
    for template in TRAINING_SENTENCES:
        for colour in COLOURS:
            corpus.append(template.format(colour, colour).lower())
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=list(string.printable) + ["▁"], show_progress=False)
    tokenizer.train_from_iterator(corpus * 4, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                      unk_token="<unk>", pad_token="<PAD>")
    wrapped.save_pretrained(str(directory))
    return wrapped


def tiny_config(preset: str, pad_token_id: int, norm_stats: dict[str, Any],
                single_backbone: bool = False) -> dict[str, Any]:
    """config.json contents for a preset (fused DINOv2 + SigLIP, or DINOv2 only)."""
    spec = PRESETS[preset]
    text = {"model_type": "llama", "pad_token_id": pad_token_id, "torch_dtype": "bfloat16",
            "vocab_size": VOCAB_SIZE, "max_position_embeddings": 1024}
    text.update(spec["text"])
    model_ids = [DINOV2_ID] if single_backbone else [DINOV2_ID, SIGLIP_ID]
    return {
        "architectures": ["OpenVLAForActionPrediction"],
        "model_type": "openvla",
        "arch_specifier": "no-align+gelu-mlp" if single_backbone else "no-align+fused-gelu-mlp",
        "llm_backbone_id": f"{preset}-random-llama",
        "vision_backbone_id": "dinov2-vit-l" if single_backbone else "dinosiglip-vit-so-224px",
        "use_fused_vision_backbone": not single_backbone,
        "timm_model_ids": model_ids,
        "timm_override_act_layers": [None] * len(model_ids),
        "timm_model_kwargs": [dict(spec["vision"]) for _ in model_ids],
        "image_sizes": [224] * len(model_ids),
        "image_resize_strategy": "resize-naive",
        "n_action_bins": 256,
        "pad_to_multiple_of": 64,
        "pad_token_id": pad_token_id,
        "norm_stats": norm_stats,
        "text_config": text,
        "torch_dtype": "bfloat16",
    }


def preprocessor_config(timm_model_ids: list[str], image_size: int = 224) -> dict[str, Any]:
    """preprocessor_config.json as OpenVLA's export writes it, for ``timm_model_ids``.

    Top-level ``means``/``stds`` are the standard constants (ImageNet for DINOv2, 0.5 for
    SigLIP); ``tvf_normalize_params`` hold what the processor applies: the bf16-rounded DINOv2
    values and SigLIP's 0.5. Resize-naive, bicubic (PIL code 3), antialiased, no letterbox.
    """
    normalize = [{"inplace": False, "mean": SIGLIP_MEAN, "std": SIGLIP_STD} if "siglip" in model_id
                 else {"inplace": False, "mean": DINOV2_MEAN_BF16, "std": DINOV2_STD_BF16}
                 for model_id in timm_model_ids]
    standard = [default_normalization(model_id) for model_id in timm_model_ids]
    return {
        "image_processor_type": "PrismaticImageProcessor",
        "image_resize_strategy": "resize-naive",
        "input_sizes": [[3, image_size, image_size] for _ in timm_model_ids],
        "interpolations": ["bicubic" for _ in timm_model_ids],
        "means": [list(mean) for mean, _ in standard],
        "stds": [list(std) for _, std in standard],
        "processor_class": "PrismaticProcessor",
        "tvf_crop_params": [{"output_size": [image_size, image_size]} for _ in timm_model_ids],
        "tvf_do_letterbox": False,
        "tvf_letterbox_fill": None,
        "tvf_normalize_params": normalize,
        "tvf_resize_params": [{"antialias": True, "interpolation": BICUBIC_PIL_CODE, "max_size": None,
                               "size": [image_size, image_size]} for _ in timm_model_ids],
        "use_fused_vision_backbone": len(timm_model_ids) > 1,
    }


def example_norm_stats(seed: int) -> dict[str, Any]:
    """Two datasets' statistics in OpenVLA's norm_stats layout (7-D actions, gripper unmasked)."""
    generator = torch.Generator().manual_seed(seed)

    def entry(scale: float) -> dict[str, Any]:
        low = (-scale * (1 + torch.rand(6, generator=generator))).tolist() + [0.0]
        high = (scale * (1 + torch.rand(6, generator=generator))).tolist() + [1.0]
        action = {"q01": low, "q99": high, "mean": [0.0] * 6 + [0.5], "std": [scale] * 6 + [0.5],
                  "min": [2 * v for v in low[:6]] + [0.0], "max": [2 * v for v in high[:6]] + [1.0],
                  "mask": [True] * 6 + [False]}
        proprio = {k: [0.0] * 7 for k in ("q01", "q99", "mean", "std", "min", "max")}
        return {"action": action, "proprio": proprio, "num_transitions": 1000, "num_trajectories": 10}

    return {"tiny_sim": entry(0.01), "tiny_alt": entry(0.05)}


def remove_weight_files(directory: Path) -> None:
    """Delete the weights (and shard index) a previous run left in ``directory``.

    Otherwise a stale index would win over a new single file, or stale shards would linger; and
    unlinking (rather than overwriting in place) leaves any process that still reads the old
    files with an intact copy.
    """
    for stale in [directory / "model.safetensors.index.json", *directory.glob("*.safetensors")]:
        stale.unlink(missing_ok=True)


def save_weights(state: dict[str, torch.Tensor], directory: Path, dtype: torch.dtype,
                 max_shard_bytes: int | None) -> None:
    """Write checkpoint tensors as one safetensors file or as shards with an index."""
    tensors = {module_key_to_checkpoint_key(k): v.detach().to(dtype).contiguous() for k, v in state.items()}
    remove_weight_files(directory)
    if max_shard_bytes is None:
        write_safetensors(tensors, directory / "model.safetensors", {"format": "pt"})
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    weight_map = {}
    for index, shard in enumerate(shards, start=1):
        filename = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(shard, directory / filename, {"format": "pt"})
        weight_map.update({name: filename for name in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def random_model(preset: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 seed: int = 0, work_dir: str | Path | None = None):
    """Build a random ``OpenVLA`` of a preset directly in memory (no weights on disk).

    Weights are created on the meta device and materialised on ``device`` (so a 7B-shaped model
    never exists twice); matrices get N(0, 0.02), norm scales 1, biases 0. The tokenizer and
    processor files go to ``work_dir`` (a temporary directory when None).
    """
    import tempfile

    from vla_cache_ros.models.vla import OpenVLA, materialize_rotary

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    directory = Path(work_dir or tempfile.mkdtemp(prefix=f"vla-{preset}-"))
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(directory)
    config = parse_config(tiny_config(preset, int(tokenizer.pad_token_id), example_norm_stats(seed)))
    processor = ImageProcessor.naive(224, [tuple(DINOV2_MEAN_BF16), tuple(SIGLIP_MEAN)],
                                     [tuple(DINOV2_STD_BF16), tuple(SIGLIP_STD)])
    with torch.device("meta"):
        model = OpenVLA(config, tokenizer, processor)
    model = model.to_empty(device=device).to(dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2 or name.endswith(("pos_embed", "cls_token", "reg_token", "latent")):
                parameter.normal_(0.0, 0.02, generator=generator)
            elif name.endswith("bias"):
                parameter.zero_()
            else:
                parameter.fill_(1.0)
        low, high = model.action_tokenizer.action_token_range
        model.language_model.lm_head.weight[low:high + 1] *= ACTION_LOGIT_GAIN
    materialize_rotary(model, device)
    model.eval()
    model.requires_grad_(False)
    return model


def make_tiny_checkpoint(path: str | Path, seed: int = 0, preset: str = "tiny",
                         dtype: torch.dtype = torch.float32, max_shard_bytes: int | None = None,
                         single_backbone: bool = False) -> Path:
    """Write a seeded random OpenVLA-format checkpoint to ``path`` and return the directory.

    Args:
        path: output directory (created; weights already there are replaced).
        seed: seeds the weights and the example norm_stats (same seed -> identical files).
        preset: key of ``PRESETS``.
        dtype: dtype of the saved tensors.
        max_shard_bytes: when given, shard the weights and write ``model.safetensors.index.json``.
        single_backbone: DINOv2 only (unfused vision, 2-layer projector) instead of DINOv2 + SigLIP.
    """
    from vla_cache_ros.models.vla import OpenVLA  # local import: vla imports this module's siblings

    if preset not in PRESETS:
        raise ConfigurationError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise ConfigurationError(f"{directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(directory)
    norm_stats = example_norm_stats(seed)
    config_dict = tiny_config(preset, int(tokenizer.pad_token_id), norm_stats, single_backbone)
    (directory / "config.json").write_text(json.dumps(config_dict, indent=2))
    preprocessor = preprocessor_config(config_dict["timm_model_ids"])
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    torch.manual_seed(seed)
    config = parse_config(config_dict)
    processor = ImageProcessor(parse_preprocessor_config(preprocessor, config.num_backbones, 224, "tiny"))
    model = OpenVLA(config, tokenizer, processor)
    low, high = model.action_tokenizer.action_token_range
    with torch.no_grad():
        model.language_model.lm_head.weight[low:high + 1] *= ACTION_LOGIT_GAIN
        for name, parameter in model.vision.named_parameters():
            if name.endswith((".ls1.gamma", ".ls2.gamma")):
                parameter.uniform_(*LAYER_SCALE_RANGE)
    save_weights(model.state_dict(), directory, dtype, max_shard_bytes)
    return directory
