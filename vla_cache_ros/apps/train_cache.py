"""``vla-cache train-cache``: train the learned cache (LAC) of a frozen VLA on frame pairs.

``train-cache --model DIR --data DIR... --out DIR`` trains a Cached Token Selector and a Cache
Ratio Predictor (Stage I: attention regression; Stage II: self-distillation or labels + a reward
for caching more) on consecutive frames of ``sim-collect`` datasets or rosbag2 recordings, and
writes ``cache_policy.json`` + ``cache_policy.safetensors`` into ``--out`` (what
``--cache-policy`` and the node's ``cache_policy_path`` load). The same command resumes; Ctrl-C
or SIGTERM saves first. Method and choices: ``training/lac.py`` and docs/learned_cache.md.
Torch is imported only when the command runs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

# Names only, so that building the parser does not import torch.
TASK_LOSSES = ("distill", "labels")
MOTIONS = ("frame_difference", "flow")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train-cache`` subcommand."""
    parser = subparsers.add_parser(
        "train-cache", help="train a learned cache policy (LAC) for a frozen VLA (resumable)",
        description="Trains the learned cache of a frozen OpenVLA-format model on consecutive frame pairs: Stage I "
                    "regresses the model's text->vision attention, Stage II minimises the task loss "
                    "(self-distillation against the uncached model, or recorded action labels) minus a reward "
                    "for caching more. --out receives the cache policy; the same command resumes.")
    parser.add_argument("--model", type=Path, required=True, help="the VLA's checkpoint directory (kept frozen)")
    parser.add_argument("--data", type=Path, nargs="+", required=True,
                        help="sim-collect directories and/or rosbag2 recordings (camera + instruction)")
    parser.add_argument("--out", type=Path, required=True, help="cache policy directory (created or resumed)")
    parser.add_argument("--stage1-steps", type=int, default=200, help="Stage I steps (default 200)")
    parser.add_argument("--steps", type=int, default=1000, help="Stage II steps (default 1000)")
    parser.add_argument("--batch-size", type=int, default=8, help="frame pairs per step (default 8)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    parser.add_argument("--ratio-weight", type=float, default=0.5,
                        help="λ: weight of the reward for caching more, -Σ p_j r_j (default 0.5)")
    parser.add_argument("--task-loss", choices=TASK_LOSSES, default="distill",
                        help="distill: KL to the uncached model's own outputs (no labels; bags work); labels: "
                             "cross-entropy against recorded actions (sim-collect data)")
    parser.add_argument("--gumbel-temperature", type=float, default=1.0, help="τ of the ratio's Gumbel-softmax")
    parser.add_argument("--mask-temperature", type=float, default=0.5,
                        help="temperature of the token mask's sigmoid, in score-logit units")
    parser.add_argument("--motion", choices=MOTIONS, default="frame_difference",
                        help="motion signal beside the frame (default frame_difference; flow: OpenCV DIS)")
    parser.add_argument("--ratios", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
                        help="candidate cache ratios, comma-separated, ascending")
    parser.add_argument("--width", type=int, default=24, help="channels of the selector's trunk (default 24)")
    parser.add_argument("--recovery-probability", type=float, default=0.05,
                        help="stochastic recovery at inference: chance a token due for reuse is recomputed")
    parser.add_argument("--attention-layer", type=int, default=None,
                        help="decoder layer of Stage I's attention target (default: the middle one)")
    parser.add_argument("--instruction", default=None, help="instruction of bags that record none")
    parser.add_argument("--unnorm-key", default=None, help="norm-stats key of label targets (--task-loss labels)")
    parser.add_argument("--max-frames", type=int, default=None, help="read at most this many frames per --data")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share held out (default 0.1)")
    parser.add_argument("--val-pairs", type=int, default=64, help="held-out pairs per evaluation (default 64)")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between evaluations")
    parser.add_argument("--save-every", type=int, default=100, help="steps between saves")
    parser.add_argument("--seed", type=int, default=0, help="seeds the split, the batches and the noise")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--stop-at-step", type=int, default=None,
                        help="stop (saved) at this step; the same command later continues")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_train_cache)


def _ratios(text: str) -> tuple[float, ...]:
    from vla_cache_ros.errors import TrainingError

    try:
        return tuple(float(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise TrainingError(f"--ratios must be comma-separated numbers, got {text!r}") from None


def _train_cache(args: argparse.Namespace) -> int:
    from vla_cache_ros.subprocesses import sigterm_as_keyboard_interrupt
    from vla_cache_ros.training.lac import CacheTrainConfig, train_cache

    config = CacheTrainConfig(
        model=args.model, data=tuple(args.data), out_dir=args.out, stage1_steps=args.stage1_steps, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, ratio_weight=args.ratio_weight, task_loss=args.task_loss,
        gumbel_temperature=args.gumbel_temperature, mask_temperature=args.mask_temperature, motion=args.motion,
        ratios=_ratios(args.ratios), width=args.width, recovery_probability=args.recovery_probability,
        attention_layer=args.attention_layer, instruction=args.instruction, unnorm_key=args.unnorm_key,
        max_frames=args.max_frames, val_fraction=args.val_fraction, val_pairs=args.val_pairs,
        eval_every=args.eval_every, save_every=args.save_every, seed=args.seed, threads=args.threads,
        progress=not args.quiet)
    with sigterm_as_keyboard_interrupt():
        result = train_cache(config, until_step=args.stop_at_step)
    last = result.history["val"][-1] if result.history["val"] else None
    if last is not None:
        print("held-out: " + ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k not in ("step", "stage")))
    print(f"cache policy: {result.out_dir} (step {result.step}/{result.total_steps}); "
          f"curves: {result.out_dir / 'training' / 'cache_curves.png'}")
    return 0
