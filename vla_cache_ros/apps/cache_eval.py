"""``vla-cache cache-eval``: the learned cache against its baselines at matched reuse, offline.

The learned cache decides how much to reuse by itself, so comparing it with ``fixed`` or
``vla_cache`` at the same *setting* says little: here each baseline runs at the mean reuse ratio
the learned cache actually reached. Per recorded bag (held-out data: bags the cache policy was not
trained on), in two passes of :func:`vla_cache_ros.apps.replay.run_replay` over the same frames:

1. ``off`` and ``learned:C`` for every cap C of ``--caps`` with the main cache policy; each
   ablation variant (``--variant NAME=DIR``, and ``no recovery``: the main policy with
   ``recovery_probability`` 0) at ``--cap``;
2. ``fixed:R_C`` at the mean ratio R_C that ``learned:C`` reached over all bags (divided by the
   share of steps that can reuse at all: each bag's first step computes every token), and
   ``vla_cache:R`` at the ratio of ``--cap`` (its rule may reuse less than its cap).

Reported per row, pooled over the bags (weighted by frames): mean actual ratio, action-token
agreement with ``off``, the fraction of steps with all 7 tokens equal, mean L2 action error
against ``off`` (un-normalised), prefill and end-to-end speedup against ``off`` measured in the
same pass (the frame-weighted mean of the per-bag ratios of medians), and the median ``select``
stage (what choosing the reuse set costs). A curve (PNG) plots agreement and speedup against the
mean ratio for ``learned`` and ``fixed``. Closed-loop success at the matched ratios is
``vla-cache sim-eval``'s job (run it with the ratios printed here).

Outputs: ``cache_eval.json``, ``cache_eval.md`` (the table) and ``cache_eval_curve.png`` in
``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vla_cache_ros.apps.options import add_cache_policy_argument
from vla_cache_ros.errors import ConfigurationError

DEFAULT_CAPS = (0.3, 0.5, 0.7, 0.9)
MAIN = "learned"
NO_RECOVERY = "no recovery"
FIXED_ROW = "fixed at the same mean ratio"
VLA_CACHE_ROW = "vla_cache capped at that ratio"


@dataclass
class EvalRow:
    """One line of the table: a mode (and cache policy variant) pooled over the bags.

    Attributes:
        name: what the row shows, e.g. ``learned``, ``fixed @ learned:0.7``, ``no recovery``.
        spec: the mode spec it ran (``learned:0.7``, ``fixed:0.42``).
        variant: the cache policy variant for ``learned`` rows (else empty).
        frames: steps pooled over the bags.
        mean_ratio: mean actual reuse ratio (reused / visual tokens).
        token_agreement: fraction of action tokens equal to ``off``'s on the same frames.
        all_tokens_agree: fraction of steps whose 7 action tokens all equal ``off``'s.
        l2_vs_off: mean L2 distance to ``off``'s un-normalised action.
        speedup_total / speedup_prefill: ``off``'s median step (prefill) time over this row's,
            frame-weighted mean over the bags of the per-bag ratios.
        select_ms: frame-weighted mean over the bags of the median ``select`` stage (ms).
        timed_steps: steps behind the medians (after each bag's ``--warmup``), over all bags.
    """

    name: str
    spec: str
    variant: str
    frames: int
    mean_ratio: float
    token_agreement: float
    all_tokens_agree: float
    l2_vs_off: float
    speedup_total: float
    speedup_prefill: float
    select_ms: float
    timed_steps: int = 0


@dataclass
class CacheEvalReport:
    """What ``cache-eval`` measured (``cache_eval.json``)."""

    model: str
    cache_policy: str
    bags: list[str]
    frames_per_bag: list[int]
    caps: list[float]
    cap: float
    machine: str
    rows: list[EvalRow]
    curve: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # mode -> [{cap, ratio, agreement, speedup}]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``cache-eval`` subcommand."""
    parser = subparsers.add_parser(
        "cache-eval", help="the learned cache against fixed and vla_cache at matched reuse, on recorded bags",
        description="Replays held-out bags through off, the learned cache at several caps (and ablation variants), "
                    "then fixed and vla_cache at the mean ratio the learned cache reached; reports agreement "
                    "with off, action error, speedups and selector cost per row, and a curve of agreement and "
                    "speedup against the mean ratio (cache_eval.json, cache_eval.md, cache_eval_curve.png).")
    parser.add_argument("bags", type=Path, nargs="+",
                        help="rosbag2 recordings not used to train the cache policy (at least 2 frames each)")
    parser.add_argument("--model", default=None, help="OpenVLA-format checkpoint directory or a short name")
    add_cache_policy_argument(parser)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=DIR",
                        help="an ablation's cache policy, run at --cap beside the main one (repeatable); a "
                             "'no recovery' row (the main policy with recovery probability 0) is always added")
    parser.add_argument("--caps", default=",".join(f"{cap:g}" for cap in DEFAULT_CAPS),
                        help="caps of the learned mode for the curve (default 0.3,0.5,0.7,0.9)")
    parser.add_argument("--cap", type=float, default=None,
                        help="the cap of the table's matched comparison and of the variants, also a point of "
                             "the curve (default: the largest of --caps)")
    parser.add_argument("--out", type=Path, default=Path("out/cache_eval"),
                        help="output directory (default %(default)s)")
    parser.add_argument("--unnorm-key", default=None,
                        help="dataset statistics of the model (needed when it has several)")
    parser.add_argument("--instruction", default=None, help="instruction of bags that record none")
    parser.add_argument("--every", type=int, default=1, help="use every N-th frame")
    parser.add_argument("--max-frames", type=int, default=None, help="at most this many frames per bag (>= 2)")
    parser.add_argument("--warmup", type=int, default=1, help="steps per mode and bag left out of timing")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.set_defaults(handler=_cache_eval)


def parse_caps(text: str) -> tuple[float, ...]:
    """``"0.3,0.5"`` -> (0.3, 0.5): distinct caps in (0, 1], ascending.

    Raises:
        ConfigurationError: not numbers, out of range, or none.
    """
    try:
        caps = tuple(sorted({float(item) for item in text.split(",") if item.strip()}))
    except ValueError:
        raise ConfigurationError(f"--caps must be comma-separated numbers, got {text!r}") from None
    if not caps or any(not 0.0 < cap <= 1.0 for cap in caps):
        raise ConfigurationError(f"--caps must lie in (0, 1], got {text!r}")
    return caps


def parse_variants(items: Sequence[str]) -> dict[str, str]:
    """``["no_stage1=DIR", ...]`` -> {name: directory}.

    Raises:
        ConfigurationError: an item without ``=``, an empty or repeated name, or a reserved one.
    """
    variants: dict[str, str] = {}
    for item in items:
        name, sep, directory = item.partition("=")
        name = name.strip()
        if not sep or not name or not directory:
            raise ConfigurationError(f"--variant takes NAME=DIR, got {item!r}")
        if name in variants or name in (MAIN, NO_RECOVERY):
            raise ConfigurationError(f"--variant name {name!r} is repeated or reserved ({MAIN!r}, {NO_RECOVERY!r})")
        variants[name] = directory
    return variants


def check_inputs(args: argparse.Namespace) -> list[int]:
    """Check everything that can be checked before the model loads; return each bag's frame count.

    Raises:
        ConfigurationError: ``--out`` is a file, ``--every`` < 1, ``--max-frames`` < 2, ``--warmup``
            < 0 or not below a bag's frame count, a bag with fewer than 2 frames (nothing could be
            reused) or without an instruction (and no ``--instruction``).
        BagError: a bag that is missing or unreadable, or has no camera topic.
    """
    from vla_cache_ros.replay.bag_reader import BagReader
    from vla_cache_ros.replay.frames import FrameReader

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigurationError(f"--out {out} is a file; give a directory")
    if args.every < 1:
        raise ConfigurationError(f"--every must be >= 1, got {args.every}")
    if args.max_frames is not None and args.max_frames < 2:
        raise ConfigurationError(f"--max-frames must be >= 2 (the first step of a bag reuses nothing), "
                                 f"got {args.max_frames}")
    if args.warmup < 0:
        raise ConfigurationError(f"--warmup must be >= 0, got {args.warmup}")
    counts = []
    for bag_path in args.bags:
        with BagReader(bag_path) as bag:
            frames = FrameReader(bag, instruction=args.instruction, every=args.every, max_frames=args.max_frames)
            if args.instruction is None and frames.topics.instruction is None:
                raise ConfigurationError(f"bag {bag_path} records no instruction (std_msgs/String); pass --instruction")
            count = len(frames)
        if count < 2:
            raise ConfigurationError(f"bag {bag_path} gives {count} frame(s) (with --every {args.every}); at least 2 "
                                     "are needed: the first step of a bag computes every token")
        if args.warmup >= count:
            raise ConfigurationError(f"--warmup {args.warmup} leaves no timed step in bag {bag_path} ({count} "
                                     "frames); lower it")
        counts.append(count)
    return counts


def _load_variant(name: str, directory: str) -> Any:
    """The cache policy of ``--variant NAME=DIR`` (errors name the variant)."""
    from vla_cache_ros.cache.learned import load_cache_policy
    from vla_cache_ros.errors import CheckpointError

    if not Path(directory).is_dir():
        raise ConfigurationError(f"--variant {name}: {directory} is not a directory")
    try:
        return load_cache_policy(directory)
    except CheckpointError as error:
        raise ConfigurationError(f"--variant {name}: {error}") from None


def _spec_ratio(ratio: float) -> str:
    """A mode spec's ratio text: two decimals, never 0 (a cap of 0 would be 'off')."""
    return f"{max(0.01, round(ratio, 2)):g}"


def _pool(name: str, spec: str, variant: str, per_bag: list[Any]) -> EvalRow:
    """Pool one mode's per-bag ``ModeSummary`` objects into a row, weighted by frames."""
    frames = sum(summary.steps for summary in per_bag)

    def mean(value: Callable[[Any], float]) -> float:
        return sum(value(summary) * summary.steps for summary in per_bag) / frames

    return EvalRow(
        name=name, spec=spec, variant=variant, frames=frames,
        mean_ratio=mean(lambda s: s.mean_actual_ratio),
        token_agreement=mean(lambda s: s.token_agreement),
        all_tokens_agree=mean(lambda s: s.identical_action_fraction),
        l2_vs_off=mean(lambda s: s.vs_off.l2_mean),
        speedup_total=mean(lambda s: s.speedup_total),
        speedup_prefill=mean(lambda s: s.speedup_prefill),
        select_ms=mean(lambda s: s.median_ms["select"]),
        timed_steps=sum(summary.timed_steps for summary in per_bag),
    )


def run_cache_eval(args: argparse.Namespace, log: Callable[[str], None] = print) -> CacheEvalReport:
    """Run both passes over every bag; write the outputs into ``args.out``; return the report.

    Raises:
        ConfigurationError: bad --caps / --cap / --variant, no cache policy to evaluate.
        CheckpointError: an unreadable model or cache policy.
        BagError: an unreadable bag or one without camera frames.
    """
    from vla_cache_ros.apps.replay import ReplayOptions, load_replay_model, run_replay
    from vla_cache_ros.cache.learned import load_cache_policy, resolve_cache_policy
    from vla_cache_ros.runs import machine_description

    caps = parse_caps(args.caps)
    cap = max(caps) if args.cap is None else float(args.cap)
    if not 0.0 < cap <= 1.0:
        raise ConfigurationError(f"--cap must lie in (0, 1], got {args.cap}")
    variants_dirs = parse_variants(args.variant)
    check_inputs(args)
    if isinstance(args.cache_policy, str) and args.cache_policy.lower() == "none":
        raise ConfigurationError("--cache-policy none: cache-eval evaluates a cache policy; give its directory")
    base = ReplayOptions(bag=Path(), model=args.model, unnorm_key=args.unnorm_key, instruction=args.instruction,
                         every=args.every, max_frames=args.max_frames, warmup=args.warmup, device=args.device,
                         threads=args.threads, plots=False, progress=False)
    loaded = load_replay_model(base)
    model_path = loaded[1]
    main_dir = resolve_cache_policy(args.cache_policy, model_path)
    if main_dir is None:
        raise ConfigurationError(f"no cache policy to evaluate: give --cache-policy (the model {model_path} has "
                                 "no cache_policy/ of its own)")
    main = load_cache_policy(main_dir)
    no_recovery = load_cache_policy(main_dir)
    no_recovery.config = dataclasses.replace(no_recovery.config, recovery_probability=0.0)
    variants = {NO_RECOVERY: no_recovery, **{name: _load_variant(name, d) for name, d in variants_dirs.items()}}

    def replay(bag: Path, modes: list[str], policy: Any) -> tuple[dict[str, Any], int]:
        options = dataclasses.replace(base, bag=bag, modes=",".join(["off", *modes]), cache_policy=policy)
        report = run_replay(options, log=lambda _: None, loaded=loaded)
        return {summary.spec: summary for summary in report.modes}, report.frames

    learned_specs = [f"learned:{cap_:g}" for cap_ in sorted({*caps, cap})]
    cap_spec = f"learned:{cap:g}"
    first: dict[str, list[Any]] = {}
    frames_per_bag = []
    for index, bag in enumerate(args.bags):
        log(f"[{index + 1}/{len(args.bags)}] {bag}: off and {', '.join(learned_specs)}; variants at {cap:g}")
        summaries, frames = replay(bag, learned_specs, main)
        frames_per_bag.append(frames)
        for spec in learned_specs:
            first.setdefault(f"{MAIN}|{spec}", []).append(summaries[spec])
        for name, policy in variants.items():
            summaries, _ = replay(bag, [cap_spec], policy)
            first.setdefault(f"{name}|{cap_spec}", []).append(summaries[cap_spec])
    rows = {key: _pool(key.partition("|")[0], key.partition("|")[2], key.partition("|")[0], value)
            for key, value in first.items()}
    # The first step of every bag computes every token, in every mode: a fixed ratio r reuses
    # r * (frames - 1) / frames on average, so it is set to the learned mean divided by that share.
    reusing_share = sum(frames - 1 for frames in frames_per_bag) / sum(frames_per_bag) or 1.0
    matched = {spec: _spec_ratio(min(1.0, rows[f"{MAIN}|{spec}"].mean_ratio / reusing_share))
               for spec in learned_specs}
    baseline_specs = list(dict.fromkeys([f"fixed:{ratio}" for ratio in matched.values()]
                                        + [f"vla_cache:{matched[cap_spec]}"]))
    second: dict[str, list[Any]] = {}
    for index, bag in enumerate(args.bags):
        log(f"[{index + 1}/{len(args.bags)}] {bag}: {', '.join(baseline_specs)} (matched ratios)")
        summaries, _ = replay(bag, baseline_specs, None)
        for spec in baseline_specs:
            second.setdefault(spec, []).append(summaries[spec])
    table = [dataclasses.replace(rows[f"{MAIN}|{cap_spec}"], name=f"learned (cap {cap:g})")]
    table.append(_pool(FIXED_ROW, f"fixed:{matched[cap_spec]}", "", second[f"fixed:{matched[cap_spec]}"]))
    table.append(_pool(VLA_CACHE_ROW, f"vla_cache:{matched[cap_spec]}", "",
                       second[f"vla_cache:{matched[cap_spec]}"]))
    table += [dataclasses.replace(rows[f"{name}|{cap_spec}"], name=f"ablation: {name}") for name in variants]
    def point(cap_: float, row: EvalRow) -> dict[str, float]:
        return {"cap": cap_, "ratio": row.mean_ratio, "agreement": row.token_agreement, "speedup": row.speedup_total}

    curve_caps = [float(spec.partition(":")[2]) for spec in learned_specs]
    curve = {
        "learned": [point(c, rows[f"{MAIN}|{spec}"]) for c, spec in zip(curve_caps, learned_specs)],
        "fixed": [point(c, _pool("", f"fixed:{matched[spec]}", "", second[f"fixed:{matched[spec]}"]))
                  for c, spec in zip(curve_caps, learned_specs)],
    }
    report = CacheEvalReport(model=str(Path(model_path).resolve()), cache_policy=str(Path(main_dir).resolve()),
                             bags=[str(Path(b).resolve()) for b in args.bags],
                             frames_per_bag=frames_per_bag, caps=list(caps), cap=cap,
                             machine=machine_description(args.device), rows=table, curve=curve)
    write_outputs(report, Path(args.out))
    return report


def markdown_table(report: CacheEvalReport) -> str:
    """The tables of ``cache_eval.md``: the matched comparison with the ablations, then the curve."""
    lines = ["| row | spec | mean ratio | tokens = off | all 7 = off | L2 vs off | prefill speedup | "
             "speedup | select ms | timed steps |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in report.rows:
        lines.append(f"| {row.name} | `{row.spec}` | {row.mean_ratio:.3f} | {100 * row.token_agreement:.1f} % | "
                     f"{100 * row.all_tokens_agree:.1f} % | {row.l2_vs_off:.4f} | {row.speedup_prefill:.2f}x | "
                     f"{row.speedup_total:.2f}x | {row.select_ms:.2f} | {row.timed_steps} |")
    lines += ["", "| cap | learned: ratio / tokens = off / speedup | "
                  "fixed at that ratio: ratio / tokens = off / speedup |", "|---|---|---|"]
    for learned, fixed in zip(report.curve.get("learned", []), report.curve.get("fixed", [])):
        lines.append(f"| {learned['cap']:g} | {learned['ratio']:.3f} / {100 * learned['agreement']:.1f} % / "
                     f"{learned['speedup']:.2f}x | {fixed['ratio']:.3f} / {100 * fixed['agreement']:.1f} % / "
                     f"{fixed['speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


def write_outputs(report: CacheEvalReport, out: Path) -> None:
    """``cache_eval.json``, ``cache_eval.md`` and ``cache_eval_curve.png`` in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "cache_eval.json").write_text(json.dumps(dataclasses.asdict(report), indent=2) + "\n")
    bags = f"{len(report.bags)} bag{'s' if len(report.bags) != 1 else ''}"
    header = (f"model `{report.model}`, cache policy `{report.cache_policy}`, {bags} ({sum(report.frames_per_bag)} "
              f"frames), {report.machine}. Speedups are ratios of medians over the timed steps of one pass; on a "
              "model whose step takes a few ms, or with few timed steps, they are mostly noise.\n\n")
    (out / "cache_eval.md").write_text(header + markdown_table(report))
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, points in report.curve.items():
        ratios = [point["ratio"] for point in points]
        left.plot(ratios, [100 * point["agreement"] for point in points], marker="o", label=mode)
        right.plot(ratios, [point["speedup"] for point in points], marker="o", label=mode)
    left.set(xlabel="mean reuse ratio", ylabel="action tokens equal to off (%)", title="agreement")
    right.set(xlabel="mean reuse ratio", ylabel="speedup vs off (x)", title="end-to-end speedup")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(out / "cache_eval_curve.png", dpi=100)
    plt.close(figure)


def _cache_eval(args: argparse.Namespace) -> int:
    report = run_cache_eval(args, log=lambda line: print(line, file=sys.stderr))
    print(markdown_table(report), end="")
    print(f"outputs: {Path(args.out) / 'cache_eval.md'}, cache_eval.json, cache_eval_curve.png")
    return 0
