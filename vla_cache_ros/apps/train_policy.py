"""``vla-cache train-policy``: behaviour cloning of a miniature OpenVLA-format policy on sim data.

``train-policy --data DIR --out DIR`` trains on a ``vla-cache sim-collect`` dataset and writes an
OpenVLA-format checkpoint that ``load_vla`` (and so the node, bench, replay and sim-eval) reads
unchanged, with resumable state, learning curves and a summary under ``DIR/training``. Running
the same command again resumes; Ctrl-C (or SIGTERM, e.g. ``kill``) saves first. The recipe:
docs/training.md. Torch is imported only when the command runs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

# Names only, so that building the parser does not import torch (training.model holds the sizes).
PRESET_NAMES = ("micro", "small", "base")
PRECISIONS = ("auto", "float32", "bfloat16")
SAVE_DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_LABEL_QUANTUM_M = 0.005
DEFAULT_LABEL_QUANTUM_RAD = 0.05


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train-policy`` subcommand."""
    parser = subparsers.add_parser(
        "train-policy", help="train a miniature OpenVLA-format policy on sim-collect data (resumable)",
        description="Behaviour cloning (next-token cross-entropy on the 7 action tokens, teacher forcing) "
                    "of a miniature OpenVLA-format policy on a `vla-cache sim-collect` dataset. --out becomes "
                    "a checkpoint that load_vla reads; the same command resumes from it.")
    parser.add_argument("--data", type=Path, nargs="+", required=True,
                        help="dataset directories written by sim-collect; the first one's norm stats normalise "
                             "every one's actions (later ones: e.g. DAgger collections made with --policy)")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory (created or resumed)")
    parser.add_argument("--preset", choices=PRESET_NAMES, default="small",
                        help="model size (micro: tests; small: CPU default; base: fused vision, for a GPU)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None, help="optimiser steps")
    length.add_argument("--epochs", type=float, default=None, help="passes over the training frames (default 5)")
    parser.add_argument("--batch-size", type=int, default=16, help="frames per step (default 16)")
    parser.add_argument("--lr", type=float, default=3e-4, help="peak AdamW learning rate (default 3e-4)")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay of matrices")
    parser.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up (default 5%% of steps, <=500)")
    parser.add_argument("--seed", type=int, default=0, help="seeds weights, split and batch order (default 0)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of each family's episodes held out by seed (default 0.1)")
    parser.add_argument("--val-frames", type=int, default=256, help="held-out frames for loss/accuracy")
    parser.add_argument("--greedy-frames", type=int, default=16,
                        help="held-out frames decoded through predict_action at each evaluation")
    parser.add_argument("--eval-every", type=int, default=250, help="steps between evaluations")
    parser.add_argument("--save-every", type=int, default=250, help="steps between saves")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bfloat16 autocast on CUDA, float32 on CPU")
    parser.add_argument("--save-dtype", choices=SAVE_DTYPES, default="float32", help="dtype of the exported weights")
    parser.add_argument("--aux-weight", type=float, default=None,
                        help="weight of the training-only auxiliary losses (object patches, offsets); default "
                             "0.5 when the dataset records object positions, else 0")
    parser.add_argument("--label-quantum-m", type=float, default=DEFAULT_LABEL_QUANTUM_M,
                        help="round translation labels to multiples of this (metres; 0: raw; default %(default)g)")
    parser.add_argument("--label-quantum-rad", type=float, default=DEFAULT_LABEL_QUANTUM_RAD,
                        help="round rotation labels to multiples of this (radians; 0: raw; default %(default)g)")
    parser.add_argument("--balance-power", type=float, default=0.0,
                        help="weight action tokens by class frequency ** -P per dimension (0: plain mean)")
    parser.add_argument("--attention-weight", type=float, default=0.0,
                        help="weight of the training-only attention supervision: heads of decoder layer 1 at the "
                             "action position pointed at the task object, destination and tcp (0: off)")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="start from the weights of another run's --out (policy and auxiliary heads) or of an "
                             "exported checkpoint directory (policy only); same preset; fresh optimiser and schedule")
    parser.add_argument("--dataset-key", default=None, help="norm-stats key (default: the dataset's only one)")
    parser.add_argument("--stop-at-step", type=int, default=None,
                        help="stop (saved) at this step; the same command later continues")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop (saved) after this much wall time; the same command later continues")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_train_policy)


def _train_policy(args: argparse.Namespace) -> int:
    from vla_cache_ros.subprocesses import sigterm_as_keyboard_interrupt
    from vla_cache_ros.training.loop import TrainConfig, train

    config = TrainConfig(
        data_dir=args.data[0], more_data=tuple(args.data[1:]), out_dir=args.out, preset=args.preset,
        steps=args.steps, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        seed=args.seed, val_fraction=args.val_fraction, val_frames=args.val_frames,
        greedy_frames=args.greedy_frames, eval_every=args.eval_every, save_every=args.save_every,
        device=args.device, threads=args.threads, precision=args.precision, save_dtype=args.save_dtype,
        dataset_key=args.dataset_key, aux_weight=args.aux_weight,
        label_quantum_m=args.label_quantum_m, label_quantum_rad=args.label_quantum_rad, init_from=args.init_from,
        balance_power=args.balance_power, attention_weight=args.attention_weight, progress=not args.quiet)
    with sigterm_as_keyboard_interrupt():  # `kill` (a scheduler, `timeout`) saves like Ctrl-C
        result = train(config, until_step=args.stop_at_step, max_minutes=args.max_minutes)
    if result.evaluation is not None:
        evaluation = result.evaluation
        print(f"held-out: loss {evaluation.loss:.4f}, token accuracy {evaluation.accuracy:.3f}, "
              f"greedy token accuracy {evaluation.greedy_accuracy:.3f}")
    print(f"checkpoint: {result.out_dir} (step {result.step}/{result.total_steps}); "
          f"curves: {result.out_dir / 'training' / 'learning_curves.png'}")
    return 0
