"""``vla-cache demo`` (default): a few closed-loop episodes of the shipped policy over ROS 2, and a
GIF of one of them with the reused visual tokens overlaid.

The episodes run on ``sim-eval``'s machinery, imported: :class:`~vla_cache_ros.sim.evaluate.
EvalConfig` plans them (seed ``seed + i``, task families cycled) and
:class:`~vla_cache_ros.ros.sim_eval_client.RosEpisodeRunner` starts ``sim_arm_node`` and
``vla_cache_node`` (actuation on, one cache mode) as separate processes on a private ROS 2 domain
and runs each episode through the simulator's reset service and episode status. Beside it, a
:class:`~vla_cache_ros.ros.reuse_recorder.ReuseRecorder` in this process pairs the camera frames
with the node's ``~/reused_tokens`` masks. One line is printed per episode (task, outcome, steps,
mean cache ratio, latency) and a summary at the end; the first successful episode (else the
first) is written as an animated GIF (:mod:`vla_cache_ros.apps.reuse_animation`).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vla_cache_ros.errors import ConfigurationError

DEFAULT_MODE = "vla_cache"
DEFAULT_EPISODES = 3
DEFAULT_OUT = Path("out/demo")
ANIMATION_NAME = "episode.gif"


def parse_demo_mode(text: str, cache_policy: bool = False) -> Any:
    """One cache mode spec (``vla_cache``, ``fixed:0.5``, ...) as sim-eval's ``EvalMode``;
    ``cache_policy``: whether a learned cache policy will be loaded (``learned`` runs then).

    Raises:
        ConfigurationError: not exactly one spec, ``expert`` (no cache to show), or a mode that
            cannot run without extra files (``learned`` without a trained cache policy).
    """
    from vla_cache_ros.cache.modes import check_available, runnable_modes
    from vla_cache_ros.sim.evaluate import parse_modes

    modes = parse_modes(text)
    if len(modes) != 1:
        raise ConfigurationError(f"--mode takes one cache mode, got {text!r}")
    mode = modes[0]
    if mode.is_expert:
        raise ConfigurationError("--mode expert has no cache to show; `vla-cache sim-eval --modes expert` "
                                 "runs the scripted expert")
    check_available(mode.cache_mode, runnable_modes() + (("learned",) if cache_policy else ()))
    return mode


def episode_line(result: Any, total: int) -> str:
    """``episode 1/3 [touch] 'touch the blue cube': success in 6.2 s, 48 steps, cache ratio
    0.41, latency 38.5 ms`` for one :class:`~vla_cache_ros.sim.evaluate.EpisodeResult` (cache
    ratio: mean share of visual tokens reused; latency: median step time, as the node timed it)."""
    outcome = (f"success in {result.length_s:.1f} s" if result.success
               else f"timeout after {result.length_s:.1f} s" if result.timed_out
               else f"failed after {result.length_s:.1f} s")
    steps = result.steps
    ratio = f"{sum(step.actual_ratio for step in steps) / len(steps):.2f}" if steps else "n/a"
    totals = sorted(step.times_ms["total"] for step in steps if "total" in step.times_ms)
    latency = f"{totals[len(totals) // 2]:.1f} ms" if totals else "n/a"
    return (f"episode {result.index + 1}/{total} [{result.family}] {result.instruction!r}: {outcome}, "
            f"{len(steps)} steps, cache ratio {ratio}, latency {latency}")


def summary_line(label: str, row: dict) -> str:
    """The one-line summary of sim-eval's ``summarize`` row of the demo's mode (latency over each
    episode's steps after the first few, see ``EvalConfig.warmup_steps``)."""
    overall = row["overall"]

    def value(key: str, pattern: str) -> str:
        return "n/a" if row.get(key) is None else pattern.format(row[key])

    return (f"{label}: {overall['successes']}/{overall['episodes']} successful, mean cache ratio "
            f"{value('cache_ratio_mean', '{:.2f}')}, step latency p50 {value('latency_ms_p50', '{:.1f}')} ms "
            f"(p90 {value('latency_ms_p90', '{:.1f}')} ms), {value('inference_hz', '{:.1f}')} steps/s")


@dataclass
class Animated:
    """The episode chosen for the animation: the first success, else the first episode."""

    result: Any = None
    steps: list = field(default_factory=list)

    def offer(self, result: Any, steps: list) -> None:
        """Keep this episode if it is a better choice than the one kept (and has steps)."""
        if not steps:
            return
        if self.result is None or (result.success and not self.result.success):
            self.result, self.steps = result, steps


def steps_of_episode(steps: list, start_s: float, end_s: float) -> list:
    """The recorded steps whose camera frame was taken between the episode's reset and its end
    (ROS time = system time here: the simulator stamps with its wall clock)."""
    return [step for step in steps if start_s <= step.stamp_s <= end_s]


def write_animation(path: Path, animated: Animated, label: str) -> int:
    """Write the chosen episode's GIF; returns its frame count."""
    from vla_cache_ros.apps.reuse_animation import AnimationStep, write_gif

    result = animated.result
    outcome = "success" if result.success else "no success"
    title = f"episode {result.index + 1} [{label}]: {result.instruction!r} ({outcome})"
    return write_gif(path, [AnimationStep(s.frame, s.mask, s.latency_ms) for s in animated.steps], title)


def parse_families(text: str) -> tuple[str, ...]:
    """``--families`` as ``sim-collect`` / ``sim-eval`` parse it, imported when used: the demo's
    parser must build where the simulator area cannot be imported."""
    from vla_cache_ros.apps.sim_commands import parse_families as parse

    return parse(text)


def run_episodes(args: argparse.Namespace, env: dict[str, str], threads: int | None) -> int:
    """Run ``args.episodes`` episodes of ``args.mode``; print per-episode lines, a summary and
    where the files are. ``env`` (the private ROS domain) is already in ``os.environ``.

    Raises:
        ConfigurationError: a bad option; CheckpointError: an unknown model, a broken cache policy
            or drafter directory (naming the file), before any node starts; EvalError: a node that
            died or a service that did not answer (its log's tail in the message).
    """
    from vla_cache_ros.apps.options import checked_cache_policy, checked_drafter, describe_draft, module_parameter
    from vla_cache_ros.models.catalog import resolve_model
    from vla_cache_ros.sim.evaluate import EvalConfig, summarize

    model = resolve_model(args.model, args.unnorm_key)
    cache_policy = checked_cache_policy(args.cache_policy, model.path)  # a broken one (or drafter): one error
    drafter = checked_drafter(args.drafter, model.path)  # before the nodes start
    mode = parse_demo_mode(args.mode, cache_policy is not None)
    config = EvalConfig(
        modes=(mode,), episodes=args.episodes, out_dir=args.out, model_path=model.path, seed=args.seed,
        episode_timeout_s=args.episode_timeout, unnorm_key=model.unnorm_key or "", num_threads=threads or 0,
        startup_timeout_s=args.startup_timeout, cache_policy_path=module_parameter(cache_policy),
        decode=args.decode, drafter_path=module_parameter(drafter),
        **({"families": args.families} if args.families else {}))
    decoding = (f", speculative decoding (draft: {describe_draft(drafter)})" if args.decode == "speculative"
                else "")
    print(f"vla-cache demo: ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']} "
          f"(discovery {env['ROS_AUTOMATIC_DISCOVERY_RANGE'].lower()}); child logs in {args.log_dir}/")
    print(f"model {model.name or model.path} ({model.path}), mode {mode.label}{decoding}, {config.episodes} episode(s) "
          f"of at most {config.episode_timeout_s:g} s; starting sim_arm_node and vla_cache_node ...", flush=True)

    from vla_cache_ros.ros.reuse_recorder import ReuseRecorder
    from vla_cache_ros.ros.sim_eval_client import RosEpisodeRunner

    results: list = []
    animated = Animated()
    interrupted: KeyboardInterrupt | None = None
    with RosEpisodeRunner(config, log_dir=args.log_dir) as runner, ReuseRecorder() as recorder:
        try:
            runner.switch_mode(mode)
            for index, seed, family in config.episode_plan():
                recorder.start()
                result = runner.run_episode(mode, index, seed, family)
                end_s = time.time()
                steps = steps_of_episode(recorder.stop(), end_s - result.wall_s, end_s)
                results.append(result)
                animated.offer(result, steps)
                print(episode_line(result, config.episodes), flush=True)
        except KeyboardInterrupt as stop:
            interrupted = stop
            print("interrupted; stopping ...", flush=True)
    # Ctrl-C ends the demo early (0); SIGTERM (Terminated) exits 143, as the README says.
    stopped_code = int(getattr(interrupted, "exit_code", 0))
    if not results:
        return stopped_code if interrupted is not None else 1
    row = summarize(results, config.modes, config.warmup_steps)[mode.label]
    print(summary_line(mode.label, row))
    if animated.result is not None:
        path = Path(args.out) / ANIMATION_NAME
        frames = write_animation(path, animated, mode.label)
        print(f"animation: {path} (episode {animated.result.index + 1}, {frames} frames; tinted patches = "
              "visual tokens whose K/V were reused)")
    else:
        print("animation: none (no reuse masks were heard; see the vla_cache_node log)")
    print(f"logs: {args.log_dir}/")
    return stopped_code
