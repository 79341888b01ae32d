"""``vla-cache train-drafter``: train the learned drafter of a frozen VLA on frame pairs.

``train-drafter --model DIR --data DIR... --out DIR`` trains a small head that guesses a step's
7 action tokens before its prefill (the speculative draft; exactness does not depend on it), by
self-distillation against the frozen model's own greedy tokens on consecutive frames of
``sim-collect`` datasets or rosbag2 recordings, and writes ``drafter.json`` +
``drafter.safetensors`` into ``--out`` (what ``--drafter`` and the node's ``drafter_path``
load; copied to ``MODEL/drafter/`` it is found without being named). It prints the held-out
full-draft acceptance and mean accepted tokens beside the previous-step draft's. The same
command resumes; Ctrl-C or SIGTERM saves first. Method: ``training/drafter.py``. Torch is
imported only when the command runs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

# Names only, so that building the parser does not import torch (cache.drafter.DRAFTER_INPUTS).
INPUTS = ("visual", "previous", "prompt", "previous_hidden")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train-drafter`` subcommand."""
    parser = subparsers.add_parser(
        "train-drafter", help="train a learned drafter for speculative decoding of a frozen VLA (resumable)",
        description="Trains a small head that drafts all 7 action tokens of a step from its frame, its "
                    "instruction and the previous step, by self-distillation against the frozen model's greedy "
                    "tokens (no labels: sim-collect data or a user's bags). The draft is verified inside the "
                    "prefill, so actions stay the model's greedy ones. --out receives the drafter; the same "
                    "command resumes.")
    parser.add_argument("--model", type=Path, required=True, help="the VLA's checkpoint directory (kept frozen)")
    parser.add_argument("--data", type=Path, nargs="+", required=True,
                        help="sim-collect directories and/or rosbag2 recordings (camera + instruction)")
    parser.add_argument("--out", type=Path, required=True, help="drafter directory (created or resumed)")
    parser.add_argument("--mode", default="off",
                        help="cache mode the drafter will draft for, whose greedy tokens are the targets: off, "
                             "fixed:R, vla_cache[:R] (default off; with reuse the tokens differ from uncached ones)")
    parser.add_argument("--steps", type=int, default=2000, help="optimiser steps (default 2000)")
    parser.add_argument("--batch-size", type=int, default=64, help="frame pairs per step (default 64)")
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate (default 2e-3)")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default 0.01)")
    parser.add_argument("--drop-previous", type=float, default=0.1,
                        help="chance that a pair's previous step is hidden, to learn first-step drafts (default 0.1)")
    parser.add_argument("--width", type=int, default=128, help="the drafter's width (default 128)")
    parser.add_argument("--pool-grid", type=int, default=4,
                        help="side of the average-pooled visual token grid the drafter reads (default 4)")
    parser.add_argument("--inputs", default=",".join(INPUTS),
                        help=f"comma-separated drafter inputs, from {', '.join(INPUTS)} (default: all)")
    parser.add_argument("--instruction", default=None, help="instruction of bags that record none")
    parser.add_argument("--max-frames", type=int, default=None, help="read at most this many frames per --data")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share held out (default 0.1)")
    parser.add_argument("--eval-every", type=int, default=250, help="steps between evaluations")
    parser.add_argument("--save-every", type=int, default=250, help="steps between saves")
    parser.add_argument("--seed", type=int, default=0, help="seeds the split, the batches and the weights")
    parser.add_argument("--device", default="auto",
                        help="where the frozen model computes its features: auto (cuda when available), cpu, cuda")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--stop-at-step", type=int, default=None,
                        help="stop (saved) at this step; the same command later continues")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_train_drafter)


def _train_drafter(args: argparse.Namespace) -> int:
    from vla_cache_ros.subprocesses import sigterm_as_keyboard_interrupt
    from vla_cache_ros.training.drafter import DrafterTrainConfig, train_drafter

    inputs = tuple(name.strip() for name in args.inputs.split(",") if name.strip())
    config = DrafterTrainConfig(
        model=args.model, data=tuple(args.data), out_dir=args.out, mode=args.mode, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, drop_previous=args.drop_previous,
        width=args.width, pool_grid=args.pool_grid, inputs=inputs, instruction=args.instruction,
        max_frames=args.max_frames, val_fraction=args.val_fraction, eval_every=args.eval_every,
        save_every=args.save_every, seed=args.seed, device=args.device, threads=args.threads,
        progress=not args.quiet)
    with sigterm_as_keyboard_interrupt():
        result = train_drafter(config, until_step=args.stop_at_step)
    last = result.history["val"][-1] if result.history["val"] else None
    if last is not None:
        print(f"held-out ({last['step']} steps): all 7 tokens right {100 * last['full_acceptance']:.1f} % of steps "
              f"(previous-step draft {100 * last['previous_full_acceptance']:.1f} %, first step "
              f"{100 * last['first_full_acceptance']:.1f} %); accepted tokens {last['accepted']:.2f} "
              f"(previous-step draft {last['previous_accepted']:.2f}); decode passes after the prefill "
              f"{last['decode_passes']:.2f} (previous-step draft {last['previous_decode_passes']:.2f})")
    print(f"drafter: {result.out_dir} (step {result.step}/{result.total_steps}); "
          f"curves: {result.out_dir / 'training' / 'drafter_curves.png'}")
    return 0
