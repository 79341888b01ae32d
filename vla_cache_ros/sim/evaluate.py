"""Closed-loop evaluation (``vla-cache sim-eval``): success per cache mode, the project's LIBERO table.

For each mode (``off``, ``fixed:0.5``, ``vla_cache``, ``learned:0.7``, or ``expert`` as a sanity
row) the same episodes are run -- episode ``i`` has seed ``seed + i`` and family
``families[i % len]`` -- with the real ``vla_cache_node`` driving ``sim_arm_node`` over ROS 2
topics. This module is ROS-free: it plans the episodes (:func:`schedule`), aggregates the results
(success rate per family with 95 % Wilson intervals, mean episode length, step latency per stage,
inference rate, actual cache ratio, speedup against ``off``) and writes ``results.json``,
``results.md`` and PNG plots. The ROS side, which starts the processes and runs each episode, is
:class:`vla_cache_ros.ros.sim_eval_client.RosEpisodeRunner` behind the :class:`EpisodeRunner`
interface.

Latency on a shared machine (the simulator, the node and whatever else runs share the CPUs) is
only comparable between modes measured under the same conditions, so:

- one policy node serves every cache mode (switched live) and the modes are interleaved in
  rounds over the same seeds, the order rotating each round (:func:`schedule`);
- start-up is not measured: :data:`DEFAULT_WARMUP_EPISODES` uncounted warm-up rounds, and the
  first :data:`DEFAULT_WARMUP_STEPS` steps of every counted episode are left out of the latency
  figures (both options of the command);
- latency is the node's own timing of each step per stage (:class:`~vla_cache_ros.stages.StepRecord`),
  reported as p50 and p90 (and mean);
- the speedup against ``off`` is the median over seeds of per-seed ratios of median step
  latencies (:func:`paired_speedup`), which does not depend on which mode ran first.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from vla_cache_ros.cache.modes import (
    CacheModeError,
    check_decode,
    check_lm_head,
    default_sweep,
    describe_modes,
    mode_names,
    parse_mode,
    split_mode_list,
)
from vla_cache_ros.errors import ConfigurationError
from vla_cache_ros.sim.tasks import FAMILIES
from vla_cache_ros.stages import STAGES, StepRecord

EXPERT = "expert"
DEFAULT_EVAL_SEED = 100_000  # far from the seeds sim-collect uses by default (0, 1, 2, ...)
DEFAULT_EVAL_MODES = ",".join(default_sweep(representative_only=True))
"""``off,fixed:0.5,vla_cache``: one spec per cache mode (each row costs many episodes)."""


@dataclass(frozen=True)
class EvalMode:
    """One row of the evaluation: a cache mode with its ratio, or the scripted expert."""

    label: str
    cache_mode: str | None = None
    cache_ratio: float | None = None

    @property
    def is_expert(self) -> bool:
        return self.cache_mode is None


def parse_modes(text: str) -> tuple[EvalMode, ...]:
    """``"off,fixed:0.5,vla_cache,expert"`` -> modes: cache mode specs of the registry
    (:mod:`vla_cache_ros.cache.modes`; a bare name keeps the node's configured ratio) or ``expert``.

    Raises:
        ConfigurationError: no mode, a repeated one, a malformed or unknown spec, a ratio for expert.
    """
    modes = []
    for item in split_mode_list(text):
        name, _, ratio_text = item.partition(":")
        if name == EXPERT:
            if ratio_text:
                raise ConfigurationError("the expert mode takes no ratio")
            modes.append(EvalMode(EXPERT))
            continue
        if name not in mode_names():
            raise CacheModeError(f"unknown mode {name!r}; available: {describe_modes()}, or {EXPERT} "
                                 "(the scripted expert)")
        spec = parse_mode(item)
        modes.append(EvalMode(item, spec.name, spec.ratio if spec.ratio_given else None))
    return tuple(modes)


DEFAULT_WARMUP_EPISODES = 1
"""Uncounted warm-up rounds (``--warmup-episodes``): after the policy node starts, every cache mode
runs this many episodes (seeds after the plan's) that no figure includes, so lazy initialisation,
allocator growth, first-seen GEMM shapes and the simulator's start-up are not in the table."""
DEFAULT_WARMUP_STEPS = 2
"""Inference steps left out of the latency figures at the start of every counted episode
(``--warmup-steps``): the steps right after the mode switch and the simulator reset (a step of the
previous episode still in flight, the cache's full recompute on the new scene)."""
REFERENCE_MODE = "off"
"""The cache mode speedups are measured against (the uncached policy)."""


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate; see ``vla-cache sim-eval --help`` for the meaning of each field."""

    modes: tuple[EvalMode, ...]
    episodes: int
    out_dir: Path
    model_path: Path | None = None
    families: tuple[str, ...] = tuple(sorted(FAMILIES))
    seed: int = DEFAULT_EVAL_SEED
    episode_timeout_s: float = 30.0
    unnorm_key: str = ""
    device: str = "cpu"
    num_threads: int = 0
    action_period_s: float = 0.1
    camera_rate_hz: float = 10.0
    startup_timeout_s: float = 180.0
    warmup_episodes: int = DEFAULT_WARMUP_EPISODES
    warmup_steps: int = DEFAULT_WARMUP_STEPS
    cache_policy_path: str = ""  # the node's cache_policy_path ("": the model's own; "none": none)
    decode: str = "greedy"  # the node's decode setting for every cache mode
    drafter_path: str = ""  # the node's drafter_path ("": the model's own; "none": none), drafting speculative
    lm_head: str = "screened"  # the node's lm_head (cache.modes.LM_HEAD_CHOICES)

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ConfigurationError(f"--episodes must be at least 1, got {self.episodes}")
        check_decode(self.decode)
        check_lm_head(self.lm_head)
        if any(not mode.is_expert for mode in self.modes):
            if self.model_path is None:
                raise ConfigurationError("--model is required for cache modes (only 'expert' runs without one)")
            if not Path(self.model_path).expanduser().is_dir():
                raise ConfigurationError(f"--model {self.model_path} is not a directory")
        unknown = [name for name in self.families if name not in FAMILIES]
        if unknown or not self.families:
            raise ConfigurationError(f"unknown task families {unknown}; choose from {sorted(FAMILIES)}")
        if not self.episode_timeout_s > 0:
            raise ConfigurationError("--episode-timeout must be positive")
        if self.warmup_episodes < 0:
            raise ConfigurationError(f"--warmup-episodes must be 0 or more, got {self.warmup_episodes}")
        if self.warmup_steps < 0:
            raise ConfigurationError(f"--warmup-steps must be 0 or more, got {self.warmup_steps}")

    def episode_plan(self) -> list[tuple[int, int, str]]:
        """(index, seed, family) of every counted episode; identical for every mode."""
        return [(i, self.seed + i, self.families[i % len(self.families)]) for i in range(self.episodes)]

    def warmup_plan(self) -> list[tuple[int, int, str]]:
        """(index, seed, family) of the uncounted warm-up episodes: negative indices -1, -2, ...
        and the seeds after the plan's (``seed + episodes``, ...), so none repeats a counted one."""
        return [(-1 - w, self.seed + self.episodes + w, self.families[w % len(self.families)])
                for w in range(self.warmup_episodes)]


@dataclass(frozen=True)
class PlannedEpisode:
    """One entry of :func:`schedule`: which mode runs which episode, and whether it counts."""

    mode: EvalMode
    index: int
    seed: int
    family: str
    counted: bool


def round_order(modes: Sequence[EvalMode], round_index: int) -> list[EvalMode]:
    """The modes of round ``round_index``, rotated by it (ABC, BCA, CAB, ABC, ...): over the rounds
    each mode runs first (and last) equally often."""
    if not modes:
        return []
    shift = round_index % len(modes)
    return [*modes[shift:], *modes[:shift]]


def schedule(config: EvalConfig) -> list[PlannedEpisode]:
    """Every episode of the evaluation in the order it runs.

    The cache modes share one policy node and are interleaved: first ``warmup_episodes``
    uncounted rounds, then round ``i`` runs counted episode ``i`` in every cache mode, in the
    order :func:`round_order` gives for ``i`` (the warm-up rounds rotate the same way). Episodes of
    one seed thus run back to back, and a slow spell of the machine falls on every mode alike.
    The expert, which needs no node, runs all its episodes afterwards.
    """
    cache_modes = [mode for mode in config.modes if not mode.is_expert]
    planned = []
    for counted, plan in ((False, config.warmup_plan() if cache_modes else []), (True, config.episode_plan())):
        for round_index, (index, seed, family) in enumerate(plan):
            planned += [PlannedEpisode(mode, index, seed, family, counted)
                        for mode in round_order(cache_modes, round_index)]
    for mode in config.modes:
        if mode.is_expert:
            planned += [PlannedEpisode(mode, index, seed, family, True)
                        for index, seed, family in config.episode_plan()]
    return planned


@dataclass
class EpisodeResult:
    """One episode of one mode. Times in seconds; ``length_s`` is simulated time to the end.

    ``steps``: every inference step the policy node ran in this mode from the simulator reset to
    the end of the episode, in order (a step still in flight from the previous mode is not here);
    empty for the expert.
    """

    mode: str
    index: int
    seed: int
    family: str
    instruction: str
    success: bool
    timed_out: bool
    length_s: float
    wall_s: float
    steps: list[StepRecord] = field(default_factory=list)

    @property
    def inference_steps(self) -> int:
        return len(self.steps)

    def timed_steps(self, warmup_steps: int) -> list[StepRecord]:
        """The steps the latency figures use: all but the first ``warmup_steps``."""
        return self.steps[warmup_steps:]


class EpisodeRunner(Protocol):
    """Runs episodes (implemented over ROS 2 in ``ros/sim_eval_client``)."""

    def switch_mode(self, mode: EvalMode) -> None:
        """Make ``mode`` drive the following episodes: start the policy node the first time, then
        switch its cache mode and ratio live; for the expert, stop the node. Called before each
        episode whose mode differs from the previous episode's."""

    def run_episode(self, mode: EvalMode, index: int, seed: int, family: str) -> EpisodeResult:
        """Reset the simulator to ``seed`` / ``family`` and run one episode to success or timeout."""

    def stop_mode(self) -> None:
        """Stop whatever drives the arm (the policy node, the expert); called once at the end."""


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate (sensible for small n and 0 % / 100 %)."""
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def _rate_block(results: list[EpisodeResult]) -> dict:
    successes = sum(r.success for r in results)
    low, high = wilson_interval(successes, len(results))
    return {"episodes": len(results), "successes": successes,
            "success_rate": successes / len(results) if results else float("nan"),
            "ci95": [low, high],
            "mean_length_s": sum(r.length_s for r in results) / len(results) if results else float("nan")}


def _spread(values: list[float]) -> dict[str, float] | None:
    """p50, p90 (linear interpolation) and mean of ``values``; None if there are none."""
    if not values:
        return None
    array = np.asarray(values, dtype=float)
    return {"p50": float(np.percentile(array, 50)), "p90": float(np.percentile(array, 90)),
            "mean": float(array.mean())}


def _episode_median_ms(result: EpisodeResult, warmup_steps: int) -> float | None:
    totals = [step.times_ms["total"] for step in result.timed_steps(warmup_steps) if "total" in step.times_ms]
    return float(np.median(totals)) if totals else None


def paired_speedup(reference: list[EpisodeResult], rows: list[EpisodeResult],
                   warmup_steps: int) -> tuple[float | None, int]:
    """Speedup of ``rows`` over ``reference`` (the ``off`` episodes), paired by seed.

    For every seed both ran with timed steps: reference's median total step latency over this
    mode's (each over the episode's steps after the first ``warmup_steps``); the result is the
    median of these per-seed ratios, with the number of seeds paired. A machine that is slow for
    a while slows the episodes of one round together, so their ratio, and the median over seeds,
    stays put whichever mode ran first. (None, 0) when no seed pairs up.
    """
    reference_ms = {(r.index, r.seed): _episode_median_ms(r, warmup_steps) for r in reference}
    ratios = []
    for result in rows:
        base, own = reference_ms.get((result.index, result.seed)), _episode_median_ms(result, warmup_steps)
        if base is not None and own is not None and own > 0:
            ratios.append(base / own)
    return (float(np.median(ratios)) if ratios else None), len(ratios)


def summarize(results: list[EpisodeResult], modes: tuple[EvalMode, ...],
              warmup_steps: int = DEFAULT_WARMUP_STEPS) -> dict:
    """Per mode (label -> row): overall and per-family success (with Wilson 95 % CI), mean length;
    ``inference_steps`` (all steps) and ``latency_steps`` (those timed: each episode's steps after
    the first ``warmup_steps``); ``latency_ms_p50/_p90/_mean`` of the whole step (``total``) and
    ``stage_latency_ms`` (stage -> p50, p90, mean) over the timed steps; ``inference_hz`` (all
    steps per wall second of the episodes); ``cache_ratio_mean`` (actual reuse over all steps);
    ``speedup_vs_off`` and ``speedup_pairs`` (:func:`paired_speedup`; None without an ``off`` row).
    Latency fields are None for the expert. ``results`` holds counted episodes only.
    """
    reference_label = next((mode.label for mode in modes if mode.cache_mode == REFERENCE_MODE), None)
    reference = [r for r in results if r.mode == reference_label]
    summary: dict = {}
    for mode in modes:
        rows = [r for r in results if r.mode == mode.label]
        if not rows:
            continue
        steps = [step for r in rows for step in r.steps]
        timed = [step for r in rows for step in r.timed_steps(warmup_steps)]
        stages = {stage: _spread([step.times_ms[stage] for step in timed if stage in step.times_ms])
                  for stage in STAGES}
        total = stages["total"] or {}
        wall = sum(r.wall_s for r in rows)
        speedup, pairs = (paired_speedup(reference, rows, warmup_steps) if reference and not mode.is_expert
                          else (None, 0))
        summary[mode.label] = {
            "cache_mode": mode.cache_mode or EXPERT,
            "cache_ratio": mode.cache_ratio,
            "overall": _rate_block(rows),
            "families": {family: _rate_block([r for r in rows if r.family == family])
                         for family in sorted({r.family for r in rows})},
            "inference_steps": len(steps),
            "latency_steps": len(timed),
            "latency_ms_p50": total.get("p50"),
            "latency_ms_p90": total.get("p90"),
            "latency_ms_mean": total.get("mean"),
            "stage_latency_ms": {stage: spread for stage, spread in stages.items() if spread is not None},
            "inference_hz": len(steps) / wall if steps and wall > 0 else None,
            "cache_ratio_mean": sum(step.actual_ratio for step in steps) / len(steps) if steps else None,
            "speedup_vs_off": speedup,
            "speedup_pairs": pairs,
        }
    return summary


def method_notes(config: EvalConfig) -> dict[str, str]:
    """What the figures include and how they were obtained, in words (results.json ``method``,
    the notes under the markdown table)."""
    cache_modes = [mode for mode in config.modes if not mode.is_expert]
    rounds = "; ".join(" → ".join(mode.label for mode in round_order(cache_modes, i))
                       for i in range(min(2, len(cache_modes))))
    return {
        "order": ("one policy node serves every cache mode, switched live; the modes are interleaved in "
                  "rounds over the same seeds: round i runs episode i in every mode, the order rotated each "
                  f"round ({rounds + '; ...' if rounds else 'no cache mode'}); the expert, if any, runs its "
                  "episodes afterwards without the node"),
        "warmup": (f"{config.warmup_episodes} uncounted warm-up round(s) after the node starts (seeds "
                   f"{config.seed + config.episodes}.., every cache mode) are in no figure; in every counted "
                   f"episode the first {config.warmup_steps} inference step(s) after the mode switch and "
                   "simulator reset are left out of the latency figures"),
        "latency": ("the node's own wall time of each inference step (preprocess, vision, select, prefill, "
                    "decode; 'total' is the whole step, un-normalising and cache commit included; no ROS "
                    "transport or queueing), over the timed steps of the counted episodes; p50 and p90 "
                    "(mean in results.json); stage columns are p50"),
        "speedup": (f"per seed, {REFERENCE_MODE}'s median total step latency divided by the mode's (same "
                    "seed, same round), then the median over the seeds both ran; independent of which mode "
                    "ran first"),
        "decode": decode_note(config),
        "lm_head": (f"greedy tokens through the {config.lm_head} LM head (node parameter lm_head; screened: "
                    "the full head's tokens from a bf16 pass plus float32 for the rows that could be the "
                    "maximum, float32 models only)"),
        "rates": ("Hz: all inference steps of the mode per wall second of its counted episodes (the untimed "
                  "first steps included); cache ratio: visual tokens actually reused, mean over the same "
                  "steps; success: Wilson 95 % interval"),
    }


def decode_note(config: EvalConfig) -> str:
    """How the node decodes the action tokens and, when speculatively, where its draft comes from
    (``drafter_path`` as the node resolves it: ``none``, a directory, or empty for the model's own)."""
    if config.decode != "speculative":
        return f"{config.decode} decoding of the action tokens in every cache mode"
    drafter = config.drafter_path.strip()
    draft = ("the previous step's tokens" if drafter.lower() == "none" else f"learned drafter {drafter}" if drafter
             else "the model directory's own drafter/ if it has one, else the previous step's tokens")
    return (f"speculative decoding in every cache mode (the greedy tokens, a draft verified inside the "
            f"prefill, fewer decode passes); draft: {draft}")


def _fmt(value: float | None, pattern: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else pattern.format(value)


TABLE_STAGES = tuple(stage for stage in STAGES if stage != "total")
"""The stage columns of the markdown table (p50 ms each); ``total`` has its own column."""


def markdown_table(summary: dict, families: tuple[str, ...]) -> str:
    """The results as a markdown table: one row per mode. Latency columns in ms: the whole step's
    p50 (p90), then each stage's p50; the notes of :func:`method_notes` say which steps count."""
    header = (["mode", "success (95 % CI)", *families, "mean length s", "step ms p50 (p90)",
               *(f"{stage} ms" for stage in TABLE_STAGES), "Hz", "cache ratio", "speedup vs off"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in summary.items():
        overall = row["overall"]
        cells = [label, f"{100 * overall['success_rate']:.0f} % ({100 * overall['ci95'][0]:.0f}–"
                        f"{100 * overall['ci95'][1]:.0f}) of {overall['episodes']}"]
        for family in families:
            block = row["families"].get(family)
            cells.append(f"{100 * block['success_rate']:.0f} % of {block['episodes']}" if block else "–")
        step = ("–" if row["latency_ms_p50"] is None
                else f"{row['latency_ms_p50']:.1f} ({row['latency_ms_p90']:.1f})")
        stages = row.get("stage_latency_ms", {})
        cells += [_fmt(overall["mean_length_s"], "{:.1f}"), step,
                  *(_fmt(stages[stage]["p50"] if stage in stages else None, "{:.1f}") for stage in TABLE_STAGES),
                  _fmt(row["inference_hz"], "{:.2f}"), _fmt(row["cache_ratio_mean"], "{:.2f}"),
                  _fmt(row["speedup_vs_off"], "{:.2f}×") + (f" ({row['speedup_pairs']} seeds)"
                                                           if row["speedup_vs_off"] is not None else "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_notes(config: EvalConfig) -> str:
    """:func:`method_notes` as a markdown list (printed under the table)."""
    return "".join(f"- {name}: {text}.\n" for name, text in method_notes(config).items())


def write_plots(summary: dict, families: tuple[str, ...], out_dir: Path) -> list[Path]:
    """success_by_family.png (bars with 95 % CI) and latency.png (p50 step latency per mode, whisker
    to p90)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(summary)
    families = tuple(f for f in families if any(f in summary[label]["families"] for label in labels))
    paths = []
    figure, axes = plt.subplots(figsize=(max(5.0, 1.6 * len(labels) * len(families) / 2), 3.5))
    width = 0.8 / max(1, len(labels))
    for m, label in enumerate(labels):
        rates, errors = [], [[], []]
        for family in families:
            block = summary[label]["families"].get(family)
            rate = block["success_rate"] if block else 0.0
            low, high = block["ci95"] if block else (0.0, 0.0)
            rates.append(rate)
            errors[0].append(rate - low)
            errors[1].append(high - rate)
        positions = [f + (m - (len(labels) - 1) / 2) * width for f in range(len(families))]
        axes.bar(positions, rates, width, yerr=errors, capsize=3, label=label)
    axes.set_xticks(range(len(families)), families)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("success rate (95 % CI)")
    axes.legend(fontsize="small")
    figure.tight_layout()
    paths.append(out_dir / "success_by_family.png")
    figure.savefig(paths[-1], dpi=100)
    plt.close(figure)

    timed = [label for label in labels if summary[label]["latency_ms_p50"] is not None]
    if timed:
        p50 = [summary[label]["latency_ms_p50"] for label in timed]
        p90 = [summary[label]["latency_ms_p90"] for label in timed]
        figure, axes = plt.subplots(figsize=(max(4.0, 1.2 * len(timed)), 3.0))
        axes.bar(timed, p50, yerr=[[0.0] * len(timed), [high - mid for mid, high in zip(p50, p90)]], capsize=3)
        axes.set_ylabel("step latency ms (p50, to p90)")
        figure.tight_layout()
        paths.append(out_dir / "latency.png")
        figure.savefig(paths[-1], dpi=100)
        plt.close(figure)
    return paths


def _episode_entry(result: EpisodeResult, warmup_steps: int) -> dict:
    entry = {f.name: getattr(result, f.name) for f in fields(result) if f.name != "steps"}
    entry["inference_steps"] = result.inference_steps
    entry["latency_ms_p50"] = _episode_median_ms(result, warmup_steps)
    entry["cache_ratio_mean"] = (sum(step.actual_ratio for step in result.steps) / len(result.steps)
                                 if result.steps else None)
    return entry


def write_reports(config: EvalConfig, results: list[EpisodeResult], summary: dict,
                  hardware: str = "") -> list[Path]:
    """results.json (config, method, summary, every counted episode), results.md and the plots."""
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    document = {
        "model": str(config.model_path) if config.model_path else None,
        "modes": [mode.label for mode in config.modes], "episodes_per_mode": config.episodes,
        "families": list(config.families), "seed": config.seed,
        "episode_timeout_s": config.episode_timeout_s, "action_period_s": config.action_period_s,
        "warmup_episodes": config.warmup_episodes, "warmup_steps": config.warmup_steps,
        "device": config.device, "decode": config.decode, "lm_head": config.lm_head, "hardware": hardware,
        "method": method_notes(config),
        "summary": summary,
        "episodes": [_episode_entry(r, config.warmup_steps) for r in results],
    }
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    markdown_path = out_dir / "results.md"
    markdown_path.write_text(
        f"# sim-eval: {config.episodes} episodes per mode, seeds {config.seed}..{config.seed + config.episodes - 1}\n\n"
        f"Model: `{config.model_path}`; device {config.device}{'; ' + hardware if hardware else ''}.\n\n"
        + markdown_table(summary, config.families) + "\n" + markdown_notes(config))
    return [json_path, markdown_path, *write_plots(summary, config.families, out_dir)]


def run_evaluation(config: EvalConfig, runner: EpisodeRunner,
                   progress: bool = True) -> tuple[list[EpisodeResult], dict]:
    """Run every episode of :func:`schedule` through ``runner``; returns (the counted results,
    their :func:`summarize`)."""
    planned = schedule(config)
    results: list[EpisodeResult] = []
    current: EvalMode | None = None
    try:
        with tqdm(total=len(planned), desc="sim-eval", unit="ep", disable=not progress) as bar:
            for item in planned:
                if item.mode != current:
                    runner.switch_mode(item.mode)
                    current = item.mode
                result = runner.run_episode(item.mode, item.index, item.seed, item.family)
                bar.update(1)
                if not item.counted:
                    bar.set_postfix(mode=item.mode.label, warmup=True)
                    continue
                results.append(result)
                done = [r for r in results if r.mode == item.mode.label]
                bar.set_postfix(mode=item.mode.label, success=f"{sum(r.success for r in done)}/{len(done)}")
    finally:
        runner.stop_mode()
    return results, summarize(results, config.modes, config.warmup_steps)
