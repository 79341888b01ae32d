"""Closed-loop evaluation (``vla-cache sim-eval``): success per cache mode, the project's LIBERO table.

For each mode (``off``, ``fixed:0.5``, ``vla_cache``, ``learned:0.7``, or ``expert`` as a sanity
row) the same episodes are run -- episode ``i`` has seed ``seed + i`` and family
``families[i % len]`` -- with the real ``vla_cache_node`` driving ``sim_arm_node`` over ROS 2
topics. This module is ROS-free: it plans the episodes, aggregates the results (success rate per
family with 95 % Wilson intervals, mean episode length, inference latency and rate, actual cache
ratio) and writes ``results.json``, ``results.md`` and PNG plots. The ROS side, which starts the
processes and runs each episode, is :class:`vla_cache_ros.ros.sim_eval_client.RosEpisodeRunner`
behind the :class:`EpisodeRunner` interface.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from vla_cache_ros.cache.modes import (
    CacheModeError,
    default_sweep,
    describe_modes,
    mode_names,
    parse_mode,
    split_mode_list,
)
from vla_cache_ros.errors import ConfigurationError
from vla_cache_ros.sim.tasks import FAMILIES

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

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ConfigurationError(f"--episodes must be at least 1, got {self.episodes}")
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

    def episode_plan(self) -> list[tuple[int, int, str]]:
        """(index, seed, family) of every episode; identical for every mode."""
        return [(i, self.seed + i, self.families[i % len(self.families)]) for i in range(self.episodes)]


@dataclass
class EpisodeResult:
    """One episode of one mode. Times in seconds; ``length_s`` is simulated time to the end."""

    mode: str
    index: int
    seed: int
    family: str
    instruction: str
    success: bool
    timed_out: bool
    length_s: float
    wall_s: float
    inference_steps: int = 0
    latency_ms_sum: float = 0.0
    cache_ratio_sum: float = 0.0
    cache_ratio_count: int = 0
    latencies_ms: list[float] = field(default_factory=list)


class EpisodeRunner(Protocol):
    """Runs episodes of one mode at a time (implemented over ROS 2 in ``ros/sim_eval_client``)."""

    def start_mode(self, mode: EvalMode) -> None: ...

    def run_episode(self, mode: EvalMode, index: int, seed: int, family: str) -> EpisodeResult: ...

    def stop_mode(self) -> None: ...


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


def summarize(results: list[EpisodeResult], modes: tuple[EvalMode, ...]) -> dict:
    """Per mode: overall and per-family success (with CI), length, latency, rate, cache ratio."""
    summary: dict = {}
    for mode in modes:
        rows = [r for r in results if r.mode == mode.label]
        if not rows:
            continue
        steps = sum(r.inference_steps for r in rows)
        wall = sum(r.wall_s for r in rows)
        latencies = sorted(v for r in rows for v in r.latencies_ms)
        ratio_count = sum(r.cache_ratio_count for r in rows)
        summary[mode.label] = {
            "cache_mode": mode.cache_mode or EXPERT,
            "cache_ratio": mode.cache_ratio,
            "overall": _rate_block(rows),
            "families": {family: _rate_block([r for r in rows if r.family == family])
                         for family in sorted({r.family for r in rows})},
            "inference_steps": steps,
            "latency_ms_mean": sum(r.latency_ms_sum for r in rows) / steps if steps else None,
            "latency_ms_p50": latencies[len(latencies) // 2] if latencies else None,
            "inference_hz": steps / wall if steps and wall > 0 else None,
            "cache_ratio_mean": sum(r.cache_ratio_sum for r in rows) / ratio_count if ratio_count else None,
        }
    return summary


def _fmt(value: float | None, pattern: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else pattern.format(value)


def markdown_table(summary: dict, families: tuple[str, ...]) -> str:
    """The results as a markdown table: one row per mode."""
    header = ["mode", "success (95 % CI)"] + list(families) + ["mean length s", "latency ms", "Hz", "cache ratio"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in summary.items():
        overall = row["overall"]
        cells = [label, f"{100 * overall['success_rate']:.0f} % ({100 * overall['ci95'][0]:.0f}–"
                        f"{100 * overall['ci95'][1]:.0f}) of {overall['episodes']}"]
        for family in families:
            block = row["families"].get(family)
            cells.append(f"{100 * block['success_rate']:.0f} % of {block['episodes']}" if block else "–")
        cells += [_fmt(overall["mean_length_s"], "{:.1f}"), _fmt(row["latency_ms_mean"], "{:.1f}"),
                  _fmt(row["inference_hz"], "{:.2f}"), _fmt(row["cache_ratio_mean"], "{:.2f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_plots(summary: dict, families: tuple[str, ...], out_dir: Path) -> list[Path]:
    """success_by_family.png (bars with 95 % CI) and latency.png (mean latency per mode)."""
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

    timed = [label for label in labels if summary[label]["latency_ms_mean"] is not None]
    if timed:
        figure, axes = plt.subplots(figsize=(max(4.0, 1.2 * len(timed)), 3.0))
        axes.bar(timed, [summary[label]["latency_ms_mean"] for label in timed])
        axes.set_ylabel("mean inference latency (ms)")
        figure.tight_layout()
        paths.append(out_dir / "latency.png")
        figure.savefig(paths[-1], dpi=100)
        plt.close(figure)
    return paths


def write_reports(config: EvalConfig, results: list[EpisodeResult], summary: dict,
                  hardware: str = "") -> list[Path]:
    """results.json (config, summary, every episode), results.md and the plots."""
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    episodes = [{k: v for k, v in asdict(r).items() if k != "latencies_ms"} for r in results]
    document = {
        "model": str(config.model_path) if config.model_path else None,
        "modes": [mode.label for mode in config.modes], "episodes_per_mode": config.episodes,
        "families": list(config.families), "seed": config.seed,
        "episode_timeout_s": config.episode_timeout_s, "action_period_s": config.action_period_s,
        "device": config.device, "hardware": hardware, "summary": summary, "episodes": episodes,
    }
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    markdown_path = out_dir / "results.md"
    markdown_path.write_text(
        f"# sim-eval: {config.episodes} episodes per mode, seeds {config.seed}..{config.seed + config.episodes - 1}\n\n"
        f"Model: `{config.model_path}`; device {config.device}{'; ' + hardware if hardware else ''}. "
        "Latency is the node's end-to-end inference time per step; Hz counts steps per wall second.\n\n"
        + markdown_table(summary, config.families))
    return [json_path, markdown_path, *write_plots(summary, config.families, out_dir)]


def run_evaluation(config: EvalConfig, runner: EpisodeRunner,
                   progress: bool = True) -> tuple[list[EpisodeResult], dict]:
    """Run every mode's episodes through ``runner``; returns (results, summary)."""
    plan = config.episode_plan()
    results: list[EpisodeResult] = []
    with tqdm(total=len(plan) * len(config.modes), desc="sim-eval", unit="ep", disable=not progress) as bar:
        for mode in config.modes:
            runner.start_mode(mode)
            try:
                for index, seed, family in plan:
                    result = runner.run_episode(mode, index, seed, family)
                    results.append(result)
                    bar.update(1)
                    done = [r for r in results if r.mode == mode.label]
                    bar.set_postfix(mode=mode.label, success=f"{sum(r.success for r in done)}/{len(done)}")
            finally:
                runner.stop_mode()
    return results, summarize(results, config.modes)
