"""``vla-cache demo``: the embedded end-to-end run behind the README's first command.

Makes (once) the seeded miniature checkpoint, loads it without remote code, and runs the cached
policy over a generated frame sequence (static textured scene, one moving block) in every cache
mode, printing one line per step: mode, reused tokens, per-stage latency and the action. It ends
with a per-mode summary (median latency, speedup against ``off`` in this run, FLOPs ratio, and
whether actions matched ``off``).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from vla_cache_ros.models.tiny import make_tiny_checkpoint
from vla_cache_ros.policy import CachedVLAPolicy
from vla_cache_ros.synthetic import SyntheticScene

DEFAULT_MODEL_DIR = Path(os.environ.get("VLA_CACHE_HOME", Path.home() / ".cache" / "vla_cache_ros")) / "tiny-seed0"
DEMO_INSTRUCTION = "pick up the red cube"


def ensure_demo_model(directory: Path = DEFAULT_MODEL_DIR) -> Path:
    """Write the miniature checkpoint if ``directory`` has none yet."""
    if not (directory / "config.json").is_file():
        make_tiny_checkpoint(directory, seed=0)
    return directory


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser("demo", help="run the cached policy on a miniature model and generated frames")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: miniature, made once)")
    parser.add_argument("--steps", type=int, default=8, help="frames per mode (default 8)")
    parser.add_argument("--modes", default="off,fixed:0.5,fixed:0.75,vla_cache", help="comma-separated modes")
    parser.add_argument("--unnorm-key", default="tiny_sim", help="dataset statistics to un-normalise with")
    parser.set_defaults(handler=run_demo)


def parse_mode(spec: str) -> tuple[str, float]:
    """``fixed:0.5`` -> ("fixed", 0.5); ``vla_cache`` -> ("vla_cache", 1.0)."""
    name, _, ratio = spec.strip().partition(":")
    return name, float(ratio) if ratio else 1.0


def run_demo(args: argparse.Namespace) -> int:
    """Run every mode over the same frames and print per-step lines and a summary."""
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    model_dir = args.model or ensure_demo_model()
    policy = CachedVLAPolicy.from_pretrained(model_dir, mode="off", unnorm_key=args.unnorm_key)
    frames = SyntheticScene(seed=7, height=240, width=320).frames(args.steps)
    print(f"model: {model_dir}  ({policy.num_visual} visual tokens, "
          f"{policy.model.llama_config.num_hidden_layers} decoder layers)  instruction: {DEMO_INSTRUCTION!r}")
    summary = []
    reference_actions: list[np.ndarray] | None = None
    for spec in args.modes.split(","):
        mode, ratio = parse_mode(spec)
        policy.set_mode(mode)
        policy.set_cache_ratio(ratio)
        policy.reset()
        actions, totals, flops = [], [], []
        for index, frame in enumerate(frames):
            action, stats = policy.step(frame, DEMO_INSTRUCTION)
            actions.append(action)
            totals.append(stats.times_s["total"])
            flops.append(stats.flops / stats.flops_uncached)
            stages = " ".join(f"{k}={1000 * v:.1f}" for k, v in stats.times_s.items())
            print(f"[{spec:>12}] step {index}: reused {stats.reused_tokens:3d}/{policy.num_visual} "
                  f"ms: {stages}  action={np.array2string(action, precision=4, suppress_small=True)}")
        if reference_actions is None:
            reference_actions = actions
        agree = np.mean([np.allclose(a, b) for a, b in zip(actions, reference_actions)])
        summary.append((spec, float(np.median(totals[1:] or totals)), float(np.mean(flops[1:] or flops)), agree))
    base = summary[0][1]
    print("\nmode          median step ms  speedup vs first  FLOPs ratio  actions equal to first")
    for spec, median, flops_ratio, agree in summary:
        print(f"{spec:<13} {1000 * median:14.1f}  {base / median:16.2f}  {flops_ratio:11.3f}  {agree:>8.0%}")
    return 0
