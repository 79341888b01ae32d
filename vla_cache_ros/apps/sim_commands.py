"""Simulator subcommands: ``sim-collect`` (expert data) and ``sim-eval`` (closed-loop evaluation)."""
from __future__ import annotations

import argparse
from pathlib import Path

from vla_cache_ros.apps.options import (
    add_cache_policy_argument,
    add_drafter_argument,
    add_lm_head_argument,
    checked_cache_policy,
    checked_drafter,
    module_parameter,
)
from vla_cache_ros.cache.modes import DECODE_SETTINGS
from vla_cache_ros.errors import UserFacingError
from vla_cache_ros.sim.collect import EXPERT_LABELS, CollectConfig, PolicyDriving, collect
from vla_cache_ros.sim.evaluate import (
    DEFAULT_EVAL_SEED,
    DEFAULT_WARMUP_EPISODES,
    DEFAULT_WARMUP_STEPS,
    EvalConfig,
    markdown_notes,
    markdown_table,
    parse_modes,
)
from vla_cache_ros.sim.tasks import FAMILIES
from vla_cache_ros.subprocesses import sigterm_as_keyboard_interrupt


def parse_families(text: str) -> tuple[str, ...]:
    """``--families pick,touch`` -> the names (argparse type: an unknown one is a usage error)."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in FAMILIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown task families {unknown}; choose from {','.join(sorted(FAMILIES))}")
    return names


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the simulator subcommands."""
    parser = subparsers.add_parser(
        "sim-collect", help="record expert episodes in the MuJoCo arm as a dataset and rosbag2",
        description="Run the scripted expert in the simulated tabletop and write one compressed "
                    "npz per episode, OpenVLA norm stats (dataset_statistics.json) and one rosbag2 "
                    "(mcap) per episode. Re-running with the same settings resumes.")
    parser.add_argument("--episodes", type=int, required=True, help="number of episodes the dataset should hold")
    parser.add_argument("--out", type=Path, required=True, help="dataset directory (created or resumed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of episode 0; episode i uses seed+i (default 0)")
    parser.add_argument("--families", type=parse_families, default=tuple(sorted(FAMILIES)),
                        help=f"comma-separated task families, cycled (default {','.join(sorted(FAMILIES))})")
    parser.add_argument("--dataset-name", default="vla_cache_sim", help="norm-stats key (unnorm_key)")
    parser.add_argument("--no-bags", action="store_true", help="write the dataset only, no rosbag2")
    parser.add_argument("--noise-fraction", type=float, default=0.0,
                        help="fraction of episodes whose executed actions get Gaussian noise while "
                             "the recorded labels stay the expert's (default 0)")
    parser.add_argument("--noise-translation", type=float, default=0.005,
                        help="noise std on dx, dy, dz in metres (default 0.005)")
    parser.add_argument("--noise-rotation", type=float, default=0.02,
                        help="noise std on droll, dpitch, dyaw in radians (default 0.02)")
    parser.add_argument("--excursion-fraction", type=float, default=0.0,
                        help="fraction of episodes in which random moves of up to --excursion-step per step "
                             "now and then replace the executed action for 1-4 steps, the expert labelling by "
                             "state (needs --expert-labels state; default 0)")
    parser.add_argument("--excursion-step", type=float, default=0.02,
                        help="largest horizontal move of one excursion step in metres (default 0.02)")
    parser.add_argument("--policy", default=None,
                        help="DAgger: this checkpoint (directory or short name) drives the arm while the expert "
                             "labels every frame; failed episodes are kept for training (needs --no-bags)")
    parser.add_argument("--unnorm-key", default=None, help="norm-stats key of --policy (default: its only one)")
    parser.add_argument("--expert-mix", type=float, default=0.0,
                        help="with --policy: per-step probability of executing the expert's action instead "
                             "(DAgger's beta; default 0)")
    parser.add_argument("--stall-steps", type=int, default=None,
                        help="with --policy: end an episode once the arm moved < 1 cm over this many steps "
                             "(0: never; default 30)")
    parser.add_argument("--expert-labels", choices=EXPERT_LABELS, default=None,
                        help="'state': each label's phase (hover, descend, close, lift, ...) follows from the "
                             "scene alone (default with --policy); 'history': the expert steps through its plan "
                             "(default when the expert drives; with --policy it told a policy at the object to "
                             "go back up)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_sim_collect)

    parser = subparsers.add_parser(
        "sim-eval", help="closed-loop success per cache mode: vla_cache_node driving sim_arm_node over ROS 2",
        description="Start sim_arm_node and one vla_cache_node (actuation on, EE twists), run the same "
                    "episodes in every mode, the cache modes interleaved in rounds over the same seeds "
                    "(switched live on the node, the order rotating each round), and report success per "
                    "task family with 95% confidence intervals, episode length, step latency p50/p90 "
                    "per stage (warm-up excluded), inference rate, actual cache ratio and the speedup "
                    "against 'off' as the median of per-seed latency ratios (results.json, results.md, "
                    "PNG plots). The mode 'expert' runs the scripted expert through the same topics as "
                    "a sanity row, after the cache modes.")
    parser.add_argument("--model", default=None,
                        help="OpenVLA-format checkpoint directory or a short name: tiny (default: seeded "
                             "random, made once) or sim_policy (the trained policy, once shipped); unused by "
                             "'expert'")
    parser.add_argument("--modes", default="off,fixed:0.5,vla_cache",
                        help="comma-separated modes: off, fixed:R, vla_cache[:R], learned[:R], expert "
                             "(default off,fixed:0.5,vla_cache)")
    add_cache_policy_argument(parser)
    parser.add_argument("--decode", choices=DECODE_SETTINGS, default="greedy",
                        help="the node's action-token decoding in every cache mode (speculative: the same "
                             "tokens, fewer decode passes; default greedy)")
    add_drafter_argument(parser)
    add_lm_head_argument(parser)
    parser.add_argument("--episodes", type=int, required=True, help="episodes per mode")
    parser.add_argument("--out", type=Path, default=Path("sim_eval"), help="report directory (default sim_eval/)")
    parser.add_argument("--families", type=parse_families, default=tuple(sorted(FAMILIES)),
                        help="comma-separated task families, cycled over episodes")
    parser.add_argument("--seed", type=int, default=DEFAULT_EVAL_SEED,
                        help=f"seed of episode 0 (default {DEFAULT_EVAL_SEED}, away from sim-collect's seeds)")
    parser.add_argument("--episode-timeout", type=float, default=30.0, help="simulated seconds per episode")
    parser.add_argument("--unnorm-key", default="",
                        help="norm-stats key of the model (empty: the short name's, or the checkpoint's only one)")
    parser.add_argument("--device", default="cpu", help="torch device of the policy node")
    parser.add_argument("--num-threads", type=int, default=0, help="torch CPU threads of the node (0: default)")
    parser.add_argument("--action-period", type=float, default=0.1,
                        help="seconds one action spans (sim-collect data: 0.1)")
    parser.add_argument("--warmup-episodes", type=int, default=DEFAULT_WARMUP_EPISODES,
                        help="uncounted warm-up rounds (one episode per cache mode each) after the node "
                             f"starts (default {DEFAULT_WARMUP_EPISODES})")
    parser.add_argument("--warmup-steps", type=int, default=DEFAULT_WARMUP_STEPS,
                        help="inference steps at the start of each episode left out of the latency "
                             f"figures (default {DEFAULT_WARMUP_STEPS})")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_sim_eval)


def _sim_collect(args: argparse.Namespace) -> int:
    policy = None
    if args.policy is not None:
        policy = PolicyDriving(args.policy, args.unnorm_key, args.expert_mix,
                               PolicyDriving.stall_steps if args.stall_steps is None else args.stall_steps,
                               args.expert_labels or PolicyDriving.expert_labels)
    elif args.unnorm_key is not None or args.expert_mix != 0.0 or args.stall_steps is not None:
        raise UserFacingError("--unnorm-key, --expert-mix and --stall-steps apply only with --policy")
    config = CollectConfig(out_dir=args.out, episodes=args.episodes, seed=args.seed, families=args.families,
                           dataset_name=args.dataset_name, record_bags=not args.no_bags,
                           noise_fraction=args.noise_fraction,
                           noise_translation_m=args.noise_translation,
                           noise_rotation_rad=args.noise_rotation, policy=policy,
                           expert_labels="history" if policy is not None else args.expert_labels or "history",
                           excursion_fraction=args.excursion_fraction, excursion_step_m=args.excursion_step)
    summary = collect(config, progress=not args.quiet)
    print(f"{summary.episodes} episodes in {args.out} ({summary.newly_recorded} recorded now)")
    driver = "expert" if policy is None else f"policy (expert mix {policy.expert_mix:g})"
    for family in sorted(summary.episodes_by_family):
        print(f"  {family:6s} {driver} success {summary.successes_by_family.get(family, 0)}"
              f"/{summary.episodes_by_family[family]}")
    if summary.stats_path is not None:
        print(f"norm stats: {summary.stats_path}")
    return 0


def eval_config(args: argparse.Namespace) -> EvalConfig:
    """``sim-eval``'s options as an :class:`EvalConfig`, with the model, the cache policy and the
    drafter resolved and checked before any process starts (the node gets the cache policy and
    drafter directories, or ``none``).

    Raises:
        CheckpointError: an unknown model, a broken cache policy or drafter directory (naming the
            file). ConfigurationError: a bad option.
    """
    from vla_cache_ros.models.catalog import resolve_model

    modes = parse_modes(args.modes)
    model_path, unnorm_key, cache_policy_path, drafter_path = None, args.unnorm_key, "", ""
    if not all(mode.is_expert for mode in modes):
        resolved = resolve_model(args.model, args.unnorm_key or None)
        model_path, unnorm_key = resolved.path, resolved.unnorm_key or ""
        cache_policy_path = module_parameter(checked_cache_policy(args.cache_policy, model_path))
        drafter_path = module_parameter(checked_drafter(args.drafter, model_path))
    return EvalConfig(
        modes=modes, episodes=args.episodes, out_dir=args.out, model_path=model_path,
        families=args.families, seed=args.seed, episode_timeout_s=args.episode_timeout,
        unnorm_key=unnorm_key, device=args.device, num_threads=args.num_threads,
        action_period_s=args.action_period, warmup_episodes=args.warmup_episodes,
        warmup_steps=args.warmup_steps, cache_policy_path=cache_policy_path, decode=args.decode,
        drafter_path=drafter_path, lm_head=args.lm_head)


def _sim_eval(args: argparse.Namespace) -> int:
    from vla_cache_ros.ros.sim_eval_client import RosEpisodeRunner  # rclpy only when evaluating
    from vla_cache_ros.sim.evaluate import run_evaluation, write_reports

    config = eval_config(args)
    # SIGTERM (a scheduler, `timeout`, `kill`) stops the nodes as Ctrl-C does, also while they
    # start: without it sim-eval died at once and left sim_arm_node and vla_cache_node running.
    with sigterm_as_keyboard_interrupt(), RosEpisodeRunner(config, log_dir=Path(args.out) / "logs") as runner:
        results, summary = run_evaluation(config, runner, progress=not args.quiet)
    paths = write_reports(config, results, summary)
    print(markdown_table(summary, config.families) + "\n" + markdown_notes(config), end="")
    print("wrote " + ", ".join(str(path) for path in paths))
    return 0
