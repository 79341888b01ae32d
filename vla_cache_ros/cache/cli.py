"""``vla-cache bench``: command-line options of the cache benchmark."""
from __future__ import annotations

import argparse
from pathlib import Path

from vla_cache_ros.cache.modes import PREPACK_CHOICES, parse_prepack


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` subcommand."""
    parser = subparsers.add_parser("bench", help="uncached vs each cache mode, per stage, in one run")
    parser.add_argument("--models", default="tiny,midsize",
                        help="comma-separated: tiny, midsize, openvla-7b (GPU, in memory) or checkpoint dirs")
    parser.add_argument("--modes", default="off,fixed:0.5,fixed:0.75,vla_cache",
                        help="comma-separated modes, first must be off (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=12, help="measured steps per mode")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps after the cold first step")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="default: float32 on cpu, bfloat16 on cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--unnorm-key", default="tiny_sim", help="norm_stats key for decoding actions")
    parser.add_argument("--prepack", choices=list(PREPACK_CHOICES), default="auto",
                        help="CPU: prepacked decoder weights for every mode, off included (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("out/bench"), help="output directory")
    parser.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    from vla_cache_ros.cache.bench import run_bench

    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    run_bench([m.strip() for m in args.models.split(",") if m.strip()], args.modes, args.steps, args.warmup,
              args.device, dtype, args.threads, args.out, args.unnorm_key,
              prepack=parse_prepack(args.prepack))
    return 0
