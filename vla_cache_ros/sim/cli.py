"""``vla-cache sim-collect``: record scripted-expert episodes as a dataset and as rosbag2."""
from __future__ import annotations

import argparse
from pathlib import Path

from vla_cache_ros.sim.collect import CollectConfig, collect
from vla_cache_ros.sim.tasks import FAMILIES


def _families(text: str) -> tuple[str, ...]:
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
    parser.add_argument("--families", type=_families, default=tuple(sorted(FAMILIES)),
                        help=f"comma-separated task families, cycled (default {','.join(sorted(FAMILIES))})")
    parser.add_argument("--dataset-name", default="vla_cache_sim", help="norm-stats key (unnorm_key)")
    parser.add_argument("--no-bags", action="store_true", help="write the dataset only, no rosbag2")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_sim_collect)


def _sim_collect(args: argparse.Namespace) -> int:
    config = CollectConfig(out_dir=args.out, episodes=args.episodes, seed=args.seed, families=args.families,
                           dataset_name=args.dataset_name, record_bags=not args.no_bags)
    summary = collect(config, progress=not args.quiet)
    print(f"{summary.episodes} episodes in {args.out} ({summary.newly_recorded} recorded now)")
    for family in sorted(summary.episodes_by_family):
        print(f"  {family:6s} expert success {summary.successes_by_family.get(family, 0)}"
              f"/{summary.episodes_by_family[family]}")
    if summary.stats_path is not None:
        print(f"norm stats: {summary.stats_path}")
    return 0
