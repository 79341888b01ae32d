"""``vla-cache make-tiny``: write a seeded random miniature OpenVLA-format checkpoint."""
from __future__ import annotations

import argparse

from vla_cache_ros.models.tiny import PRESETS, make_tiny_checkpoint


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the model subcommands."""
    parser = subparsers.add_parser("make-tiny", help="write a random miniature OpenVLA-format checkpoint")
    parser.add_argument("directory", help="output directory (created)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="model size preset")
    parser.add_argument("--shard-mb", type=float, default=None,
                        help="split weights into shards of at most this many MB (with an index)")
    parser.set_defaults(handler=_make_tiny)


def _make_tiny(args: argparse.Namespace) -> int:
    shard = int(args.shard_mb * 1e6) if args.shard_mb else None
    path = make_tiny_checkpoint(args.directory, seed=args.seed, preset=args.preset, max_shard_bytes=shard)
    print(f"wrote {args.preset} checkpoint (seed {args.seed}) to {path}")
    return 0
