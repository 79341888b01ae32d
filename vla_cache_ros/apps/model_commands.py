"""Model subcommands: ``vla-cache make-tiny`` and ``vla-cache predict``.

``make-tiny DIR`` writes a seeded random miniature OpenVLA-format checkpoint. ``predict DIR``
loads any OpenVLA-format checkpoint (no remote code) and prints the uncached reference action
for one image (a PNG/JPEG file, or a generated test frame), which checks a downloaded
checkpoint end to end.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vla_cache_ros.errors import ConfigurationError, one_line

# Presets small enough to write to disk (``openvla-7b`` exists only in memory, for GPU benchmarks).
# Kept here as names so that building the parser does not import torch.
DISK_PRESETS = ("tiny", "midsize")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the model subcommands."""
    parser = subparsers.add_parser("make-tiny", help="write a random miniature OpenVLA-format checkpoint")
    parser.add_argument("directory", help="output directory (created)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--preset", choices=DISK_PRESETS, default="tiny", help="model size preset")
    parser.add_argument("--shard-mb", type=float, default=None,
                        help="split weights into shards of at most this many MB (with an index)")
    parser.add_argument("--single-backbone", action="store_true",
                        help="DINOv2 only (unfused vision tower, 2-layer projector)")
    parser.set_defaults(handler=_make_tiny)

    parser = subparsers.add_parser("predict", help="load a checkpoint and print the reference action for one image")
    parser.add_argument("model", help="OpenVLA-format checkpoint directory, or a short name (tiny, sim_policy)")
    parser.add_argument("--image", type=Path, default=None, help="RGB image file (default: a generated frame)")
    parser.add_argument("--instruction", default="pick up the red cube", help="task instruction")
    parser.add_argument("--unnorm-key", default=None,
                        help="norm_stats dataset (default: the short name's; required when a directory has several)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="weight dtype")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--center-crop", action="store_true", help="LIBERO-style 0.9-area centre crop")
    parser.set_defaults(handler=_predict)


def _make_tiny(args: argparse.Namespace) -> int:
    shard = int(args.shard_mb * 1e6) if args.shard_mb else None
    from vla_cache_ros.models.tiny import make_tiny_checkpoint

    path = make_tiny_checkpoint(args.directory, seed=args.seed, preset=args.preset, max_shard_bytes=shard,
                                single_backbone=args.single_backbone)
    print(f"wrote {args.preset} checkpoint (seed {args.seed}) to {path}")
    return 0


def generated_frame(height: int = 240, width: int = 320) -> np.ndarray:
    """A deterministic RGB test frame (colour gradients and a square), uint8 (H, W, 3)."""
    rows = np.linspace(0, 255, height)[:, None]
    cols = np.linspace(0, 255, width)[None, :]
    frame = np.stack([rows + 0 * cols, cols + 0 * rows, (rows + cols) / 2], axis=-1)
    frame[height // 3:height // 2, width // 3:width // 2] = (220, 30, 30)
    return frame.astype(np.uint8)


def read_image(path: Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as error:
        raise ConfigurationError(f"image file {path} does not exist") from error
    except (UnidentifiedImageError, OSError) as error:
        raise ConfigurationError(f"cannot read image {path}: {one_line(error)}") from error


def _predict(args: argparse.Namespace) -> int:
    from vla_cache_ros.compute import resolve_device, resolve_dtype
    from vla_cache_ros.models.catalog import resolve_model
    from vla_cache_ros.models.vla import load_vla, read_checkpoint_config

    image = read_image(args.image) if args.image else generated_frame()
    # Device, dtype, statistics and unnorm_key are checked before any weight is read.
    resolve_device(args.device)
    dtype = resolve_dtype(args.dtype)
    resolved = resolve_model(args.model, args.unnorm_key)  # a short name as serve / replay / the node take it
    read_checkpoint_config(resolved.path).action_statistics().select(resolved.unnorm_key)
    model = load_vla(resolved.path, device=args.device, dtype=dtype, center_crop=args.center_crop)
    prediction = model.predict_action_tokens(image, args.instruction)
    action = model.decode_action(prediction.tokens.numpy(), resolved.unnorm_key)
    print(f"tokens {prediction.tokens.tolist()} action {np.array2string(action, precision=5, max_line_width=200)}")
    return 0
