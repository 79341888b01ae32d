"""``vla-cache replay``: cache modes side by side on a recorded bag, offline.

Every mode (``off``, ``fixed:R``, ``vla_cache``, ``learned`` when available) gets its own
:class:`~vla_cache_ros.policy.CachedVLAPolicy` over one shared model (the same code the node
runs), and every frame of the bag is fed to all of them in turn by
:class:`vla_cache_ros.runs.ModeRunner`, in one streaming pass: memory stays bounded by one frame,
and background load hits all modes alike.

Reported per mode:

- latency per stage (median over the steps after ``warmup``; the first step after a reset
  computes every token), speedup against ``off`` as the ratio of median total (and prefill) step
  times measured in this run, the actual cache ratio and the analytic FLOPs ratio;
- action fidelity against ``off`` on the same frames: action-token agreement, fraction of steps
  with identical actions, L2 error (mean, max) and max / mean absolute error per dimension after
  un-normalisation;
- the same errors against the commands recorded in the bag, when they are 7-D vectors.

Outputs: ``replay.json`` (settings, summaries, every step), ``steps.csv``, PNG plots (action
traces per mode, ratio and latency over time, a frame with the reused tokens overlaid), a summary
table on the terminal and a progress bar while running.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vla_cache_ros.cache.modes import DEFAULT_SWEEP, ModeSpec, parse_mode, parse_mode_list
from vla_cache_ros.errors import BagError, ConfigurationError
from vla_cache_ros.replay.bag_reader import BagReader
from vla_cache_ros.replay.frames import AUTO, Frame, FrameReader
from vla_cache_ros.stages import STAGES

if TYPE_CHECKING:
    from vla_cache_ros.models.vla import OpenVLA
    from vla_cache_ros.runs import ModeRunner, ModeStep

DEFAULT_MODES = ",".join(DEFAULT_SWEEP)
SPEEDUP_DEFINITION = (
    "median total (or prefill) step time of 'off' divided by that of the mode, all modes stepped "
    "in turn on every frame in this run; the first --warmup steps of each mode excluded"
)


@dataclass
class ReplayOptions:
    """Settings of one comparison run (the ``replay`` subcommand's options)."""

    bag: Path
    model: str | None = None
    modes: str = DEFAULT_MODES
    out: Path | None = None
    image_topic: str | None = AUTO
    joint_topic: str | None = AUTO
    instruction_topic: str | None = AUTO
    command_topic: str | None = AUTO
    instruction: str | None = None
    joint_alignment: str = "interpolate"
    every: int = 1
    max_frames: int | None = None
    warmup: int = 1
    unnorm_key: str | None = None
    device: str = "cpu"
    dtype: str | None = None
    center_crop: bool = False
    threads: int | None = None
    plots: bool = True
    progress: bool | None = None  # None: only on a terminal
    cache_policy: str | Any = None  # --cache-policy (see apps.options), or a loaded CacheSelectorNet
    decodes: str = "greedy"  # --decode: comma-separated decode settings, greedy first
    drafter: str | None = None  # --drafter (see apps.options)


@dataclass
class StepRecord:
    """One policy step of one mode on one frame."""

    frame_index: int
    timestamp_s: float
    mode: str
    target_ratio: float
    actual_ratio: float
    reused_tokens: int
    times_ms: dict[str, float]
    flops_ratio: float
    action: list[float]
    action_tokens: list[int]
    command: list[float] | None = None
    decode_passes: int = 0  # sequential single-token passes after the prefill
    accepted_draft_tokens: int = 0  # speculative decoding: draft tokens accepted


@dataclass
class ErrorStats:
    """Differences between two action sequences over the same frames (after un-normalisation)."""

    steps: int
    l2_mean: float
    l2_max: float
    max_abs_error: list[float]
    mean_abs_error: list[float]


@dataclass
class ModeSummary:
    """Per-run results of a replay (a mode spec with one decode setting; ``spec`` is the run's
    key, e.g. ``fixed:0.5`` or ``fixed:0.5 speculative``)."""

    spec: str
    mode: str
    target_ratio: float
    steps: int
    timed_steps: int
    median_ms: dict[str, float]
    speedup_total: float
    speedup_prefill: float
    mean_actual_ratio: float
    mean_reused_tokens: float
    flops_ratio: float
    token_agreement: float | None
    identical_action_fraction: float | None
    vs_off: ErrorStats | None
    vs_recorded: ErrorStats | None
    decode: str = "greedy"
    mean_decode_passes: float = 0.0  # sequential single-token passes after the prefill, per step
    mean_accepted_draft_tokens: float = 0.0  # speculative: leading draft tokens equal to the greedy ones


@dataclass
class ReplayReport:
    """Everything a replay produced; ``to_json`` is what replay.json holds."""

    bag: str
    model: str
    machine: str
    device: str
    instruction: str | None
    topics: dict[str, Any]
    frames: int
    warmup: int
    modes: list[ModeSummary]
    steps: list[StepRecord] = field(repr=False)
    outputs: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["speedup_definition"] = SPEEDUP_DEFINITION
        return data


def parse_modes(text: str) -> list[ModeSpec]:
    """``off,fixed:0.5,vla_cache`` -> [ModeSpec(text, name, ratio), ...], ``off`` first (added if absent).

    Raises:
        CacheModeError: no mode, a repeated one, a malformed or unknown spec.
    """
    parsed = parse_mode_list(text)
    offs = [spec for spec in parsed if spec.name == "off"]
    return (offs[:1] or [parse_mode("off")]) + [spec for spec in parsed if spec.name != "off"]


def error_stats(actions: np.ndarray, reference: np.ndarray) -> ErrorStats:
    """Error statistics of ``actions`` against ``reference`` (both (steps, dims))."""
    difference = np.asarray(actions, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    l2 = np.linalg.norm(difference, axis=1)
    return ErrorStats(
        steps=int(difference.shape[0]),
        l2_mean=float(l2.mean()),
        l2_max=float(l2.max()),
        max_abs_error=np.abs(difference).max(axis=0).tolist(),
        mean_abs_error=np.abs(difference).mean(axis=0).tolist(),
    )


def summarise(runner: ModeRunner, records: dict[str, list[StepRecord]]) -> list[ModeSummary]:
    """Per-mode summaries: timings and agreement with ``off`` from the runner, errors against
    ``off`` and against the recorded commands from ``records[spec]`` (that mode's steps in frame
    order)."""
    baseline = records[runner.baseline]
    summaries = []
    for key, spec, decode in runner.runs():
        steps = records[key]
        actions = np.array([step.action for step in steps])
        is_baseline = key == runner.baseline
        with_command = [step for step in steps if step.command is not None and len(step.command) == actions.shape[1]]
        summaries.append(ModeSummary(
            spec=key,
            mode=spec.name,
            target_ratio=spec.ratio,
            steps=len(steps),
            timed_steps=len(runner.timed_steps(key)),
            median_ms={stage: 1000.0 * value for stage, value in runner.median_s(key).items()},
            speedup_total=runner.speedup(key, "total"),
            speedup_prefill=runner.speedup(key, "prefill"),
            mean_actual_ratio=float(np.mean([step.actual_ratio for step in steps])),
            mean_reused_tokens=float(np.mean([step.reused_tokens for step in steps])),
            flops_ratio=float(np.mean([step.flops_ratio for step in steps])),
            token_agreement=None if is_baseline else runner.token_agreement(key),
            identical_action_fraction=None if is_baseline else runner.identical_action_fraction(key),
            vs_off=None if is_baseline else error_stats(actions, np.array([s.action for s in baseline])),
            vs_recorded=error_stats(
                np.array([s.action for s in with_command]), np.array([s.command for s in with_command])
            ) if with_command else None,
            decode=decode,
            mean_decode_passes=float(np.mean([step.decode_passes for step in steps])),
            mean_accepted_draft_tokens=float(np.mean([step.accepted_draft_tokens for step in steps])),
        ))
    return summaries


def load_replay_model(options: ReplayOptions) -> tuple[OpenVLA, Path, str | None]:
    """The model every mode shares, on the requested device / dtype / threads; also its directory
    and the statistics key."""
    from vla_cache_ros.models.vla import load_vla
    from vla_cache_ros.runs import prepare_compute

    _, dtype = prepare_compute(options.device, options.dtype, options.threads)
    model_path, unnorm_key = _resolve_model(options)
    model = load_vla(model_path, device=options.device, dtype=dtype, center_crop=options.center_crop)
    return model, model_path, unnorm_key


def _resolve_model(options: ReplayOptions) -> tuple[Path, str | None]:
    """A checkpoint directory or a short name of ``models.catalog`` (None: the shipped policy)."""
    from vla_cache_ros.models.catalog import resolve_model

    resolved = resolve_model(options.model, options.unnorm_key)
    return resolved.path, resolved.unnorm_key


def _step_record(step: ModeStep, frame: Frame, start_ns: int) -> StepRecord:
    command = frame.command.values.tolist() if frame.command is not None else None
    stats = step.stats
    return StepRecord(
        frame_index=frame.index,
        timestamp_s=(frame.timestamp_ns - start_ns) / 1e9,
        mode=step.spec,
        target_ratio=float(stats.target_ratio),
        actual_ratio=float(stats.actual_ratio),
        reused_tokens=int(stats.reused_tokens),
        times_ms={stage: 1000.0 * float(stats.times_s[stage]) for stage in STAGES},
        flops_ratio=float(stats.flops_ratio),
        action=np.asarray(step.action, dtype=np.float64).tolist(),
        action_tokens=np.asarray(stats.action_tokens).astype(int).tolist(),
        command=command,
        decode_passes=int(stats.decode_passes),
        accepted_draft_tokens=int(stats.accepted_draft_tokens),
    )


@dataclass
class _Overlay:
    """The frame shown in the reuse overlay plot and each mode's reused tokens on it."""

    frame_index: int = -1
    image: np.ndarray | None = None
    reused: dict[str, np.ndarray] = field(default_factory=dict)


def run_replay(options: ReplayOptions, log: Callable[[str], None] = print,
               loaded: tuple[OpenVLA, Path, str | None] | None = None) -> ReplayReport:
    """Run the comparison, write the outputs (if ``options.out``), return the report.

    ``loaded``: the model, its directory and statistics key, already loaded (a caller replaying
    several bags loads it once); None loads ``options.model``.
    """
    from vla_cache_ros.cache.drafter import resolve_drafter
    from vla_cache_ros.cache.learned import resolve_cache_policy
    from vla_cache_ros.runs import ModeRunner, check_decode_list, machine_description

    if options.warmup < 0:
        raise ConfigurationError("--warmup must be >= 0")
    specs = parse_modes(options.modes)
    decodes = check_decode_list([name.strip() for name in options.decodes.split(",") if name.strip()])
    with BagReader(options.bag) as bag:
        frames = FrameReader(
            bag, image_topic=options.image_topic, joint_topic=options.joint_topic,
            instruction_topic=options.instruction_topic, command_topic=options.command_topic,
            instruction=options.instruction, joint_alignment=options.joint_alignment,
            every=options.every, max_frames=options.max_frames, skip_before_instruction=True)
        if options.instruction is None and frames.topics.instruction is None:
            raise ConfigurationError(
                f"bag {options.bag} has no instruction topic (std_msgs/String); pass --instruction or "
                f"--instruction-topic. It has:\n{bag.describe_topics()}")
        model, model_path, unnorm_key = loaded if loaded is not None else load_replay_model(options)
        source = options.cache_policy  # a directory, 'none', None (the model's own), or a loaded net
        cache_policy = resolve_cache_policy(source, model_path) if source is None or isinstance(source, str) else source
        runner = ModeRunner(model, [spec.text for spec in specs], unnorm_key=unnorm_key, warmup=options.warmup,
                            cache_policy=cache_policy, decodes=decodes,
                            drafter=resolve_drafter(options.drafter, model_path))
        drafting = f"; speculative draft by {runner.drafter_source}" if runner.drafter_source else ""
        log(f"replaying {len(frames)} frames of {frames.topics.image} through {len(runner.keys)} runs "
            f"({', '.join(runner.keys)}) with {model_path}{drafting}")
        records: dict[str, list[StepRecord]] = {key: [] for key in runner.keys}
        overlay = _Overlay()
        overlay_step = len(frames) // 2
        instruction_used: str | None = None
        start_ns = bag.start_time_ns
        from tqdm import tqdm

        progress = tqdm(total=len(frames), unit="frame", desc="replay", file=sys.stderr,
                        disable=(not options.progress) if options.progress is not None else None)
        try:
            for step_index, frame in enumerate(frames):
                instruction = frame.instruction
                if instruction is None:  # not reached: frames before the first instruction are skipped
                    raise BagError(f"frame {frame.index} has no instruction; pass --instruction")
                instruction_used = instruction_used or instruction
                state = frame.joint_state.position if frame.joint_state is not None else None
                keep_overlay = step_index <= overlay_step  # the middle frame, or the last one seen
                for step in runner.step_frame(frame.image, instruction, state=state):
                    records[step.spec].append(_step_record(step, frame, start_ns))
                    if keep_overlay and step.spec != runner.baseline:
                        overlay.reused[step.spec] = np.asarray(step.stats.reuse_indices).copy()
                if keep_overlay:
                    overlay.frame_index, overlay.image = frame.index, frame.image
                progress.update(1)
        finally:
            progress.close()
        if not runner.frames and frames.skipped_before_instruction:
            raise BagError(f"all {frames.skipped_before_instruction} camera frames on {frames.topics.image} in bag "
                           f"{options.bag} come before the first message on {frames.topics.instruction}; "
                           "pass --instruction")
        if not runner.frames:
            raise BagError(f"no camera frames on {frames.topics.image} in bag {options.bag}")
        if frames.skipped_before_instruction:
            log(f"skipped {frames.skipped_before_instruction} frames recorded before the first message on "
                f"{frames.topics.instruction}")
        topics = asdict(frames.topics)
    report = ReplayReport(
        bag=str(options.bag),
        model=str(model_path),
        machine=machine_description(options.device),
        device=options.device,
        instruction=instruction_used,
        topics=topics,
        frames=runner.frames,
        warmup=options.warmup,
        modes=summarise(runner, records),
        steps=[record for key in runner.keys for record in records[key]],
    )
    if options.out is not None:
        report.outputs = write_outputs(report, options.out, overlay if options.plots else None,
                                       num_visual=runner.num_visual)
    return report


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def write_outputs(report: ReplayReport, out: Path, overlay: _Overlay | None, num_visual: int) -> dict[str, str]:
    """Write replay.json, steps.csv and (with ``overlay``) the PNG plots; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    outputs = {"json": str(out / "replay.json"), "csv": str(out / "steps.csv")}
    _write_csv(report.steps, out / "steps.csv")
    if overlay is not None:
        outputs.update(_write_plots(report, out, overlay, num_visual))
    report.outputs = outputs
    (out / "replay.json").write_text(json.dumps(report.to_json(), indent=2))
    return outputs


def _write_csv(steps: list[StepRecord], path: Path) -> None:
    dims = len(steps[0].action) if steps else 0
    has_command = any(step.command is not None for step in steps)
    header = ["frame_index", "timestamp_s", "mode", "target_ratio", "actual_ratio", "reused_tokens"]
    header += [f"{stage}_ms" for stage in STAGES] + ["flops_ratio", "decode_passes", "accepted_draft_tokens"]
    header += [f"action_{i}" for i in range(dims)] + [f"token_{i}" for i in range(dims)]
    if has_command:
        header += [f"command_{i}" for i in range(dims)]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for step in steps:
            row: list[Any] = [step.frame_index, f"{step.timestamp_s:.9f}", step.mode, step.target_ratio,
                              step.actual_ratio, step.reused_tokens]
            row += [f"{step.times_ms[stage]:.4f}" for stage in STAGES] + [f"{step.flops_ratio:.6f}"]
            row += [step.decode_passes, step.accepted_draft_tokens]
            row += [repr(value) for value in step.action] + step.action_tokens
            if has_command:
                valid = step.command is not None and len(step.command) == dims
                row += [repr(value) for value in step.command] if valid else [""] * dims
            writer.writerow(row)


def _by_mode(steps: list[StepRecord]) -> dict[str, list[StepRecord]]:
    grouped: dict[str, list[StepRecord]] = {}
    for step in steps:
        grouped.setdefault(step.mode, []).append(step)
    return grouped


def _write_plots(report: ReplayReport, out: Path, overlay: _Overlay, num_visual: int) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = _by_mode(report.steps)
    paths = {}

    dims = len(report.steps[0].action)
    figure, axes = plt.subplots(dims, 1, figsize=(9, 1.6 * dims + 1), sharex=True, squeeze=False)
    for spec, steps in grouped.items():
        times = [step.timestamp_s for step in steps]
        for dim in range(dims):
            axes[dim, 0].plot(times, [step.action[dim] for step in steps], label=spec, linewidth=1.2)
    baseline = next(iter(grouped.values()))
    recorded = [(s.timestamp_s, s.command) for s in baseline if s.command is not None and len(s.command) == dims]
    for dim in range(dims):
        if recorded:
            axes[dim, 0].plot([t for t, _ in recorded], [c[dim] for _, c in recorded], "k.", markersize=3,
                              label="recorded" if dim == 0 else None)
        axes[dim, 0].set_ylabel(f"a[{dim}]")
    axes[0, 0].legend(loc="upper right", fontsize="small", ncol=min(5, len(grouped) + bool(recorded)))
    axes[-1, 0].set_xlabel("bag time (s)")
    figure.suptitle("actions per mode")
    figure.tight_layout()
    paths["actions_png"] = str(out / "actions.png")
    figure.savefig(paths["actions_png"], dpi=100)
    plt.close(figure)

    figure, (ratio_axis, latency_axis) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for spec, steps in grouped.items():
        times = [step.timestamp_s for step in steps]
        ratio_axis.plot(times, [step.actual_ratio for step in steps], label=spec)
        latency_axis.plot(times, [step.times_ms["total"] for step in steps], label=spec)
    ratio_axis.set_ylabel("actual cache ratio")
    ratio_axis.set_ylim(-0.05, 1.05)
    latency_axis.set_ylabel("step latency (ms)")
    latency_axis.set_xlabel("bag time (s)")
    ratio_axis.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    paths["ratio_latency_png"] = str(out / "ratio_latency.png")
    figure.savefig(paths["ratio_latency_png"], dpi=100)
    plt.close(figure)

    if overlay.image is not None and overlay.reused:
        paths["reuse_overlay_png"] = str(out / "reuse_overlay.png")
        _plot_overlay(plt, overlay, num_visual, paths["reuse_overlay_png"])
    return paths


def reuse_mask(num_visual: int, reused: np.ndarray, height: int, width: int) -> np.ndarray:
    """(height, width) bool mask of the image area covered by the reused patches.

    Patch id = row * side + col on the model's square input grid (side = sqrt(num_visual)),
    which spans the whole frame (without centre crop).
    """
    side = math.isqrt(num_visual)
    grid = np.zeros(side * side, dtype=bool)
    grid[np.asarray(reused, dtype=np.int64)] = True
    rows = np.minimum(np.arange(height) * side // height, side - 1)
    cols = np.minimum(np.arange(width) * side // width, side - 1)
    return grid.reshape(side, side)[rows][:, cols]


def _plot_overlay(plt: Any, overlay: _Overlay, num_visual: int, path: str) -> None:
    specs = list(overlay.reused)
    image = overlay.image
    assert image is not None
    figure, axes = plt.subplots(1, len(specs), figsize=(3.2 * len(specs), 3.4), squeeze=False)
    for axis, spec in zip(axes[0], specs):
        mask = reuse_mask(num_visual, overlay.reused[spec], *image.shape[:2])
        tinted = image.astype(np.float32)
        tinted[mask] = 0.45 * tinted[mask] + 0.55 * np.array([40.0, 110.0, 255.0])
        axis.imshow(tinted.astype(np.uint8))
        axis.set_title(f"{spec}: {int(overlay.reused[spec].size)}/{num_visual} reused", fontsize="small")
        axis.axis("off")
    figure.suptitle(f"reused visual tokens (blue), frame {overlay.frame_index}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def print_summary(report: ReplayReport, file: Any = None) -> None:
    """The per-mode summary table (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file or sys.stdout, width=max(120, min(200, int(os.environ.get("COLUMNS", 160)))))
    has_recorded = any(mode.vs_recorded is not None for mode in report.modes)
    table = Table(title=f"replay of {report.bag}: {report.frames} frames, {report.machine}")
    for column in ("mode", "ratio", "total ms", "prefill ms", "speedup", "prefill speedup", "FLOPs",
                   "decode passes", "tokens = off", "L2 vs off", "max |err| vs off"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    if has_recorded:
        table.add_column("L2 vs recorded", justify="right")
    for mode in report.modes:
        row = [
            mode.spec,
            f"{mode.mean_actual_ratio:.2f}",
            f"{mode.median_ms['total']:.1f}",
            f"{mode.median_ms['prefill']:.1f}",
            f"{mode.speedup_total:.2f}x",
            f"{mode.speedup_prefill:.2f}x",
            f"{mode.flops_ratio:.3f}",
            f"{mode.mean_decode_passes:.2f}",
            "-" if mode.token_agreement is None else f"{100 * mode.token_agreement:.1f}%",
            "-" if mode.vs_off is None else f"{mode.vs_off.l2_mean:.4g}",
            "-" if mode.vs_off is None else f"{max(mode.vs_off.max_abs_error):.4g}",
        ]
        if has_recorded:
            row.append("-" if mode.vs_recorded is None else f"{mode.vs_recorded.l2_mean:.4g}")
        table.add_row(*row)
    console.print(table)
    console.print(f"speedup: {SPEEDUP_DEFINITION}.")
    for name, path in report.outputs.items():
        console.print(f"{name}: {path}")
