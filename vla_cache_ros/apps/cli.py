"""The ``vla-cache`` command: one entry point, one subcommand per job.

Each app module contributes its subcommands through a ``register(subparsers)`` function
(``model_commands``, ``demo``, ``bench``, ``bag_commands``, ``sim_commands``); a subcommand's
handler returns an exit code. Errors the user can fix
(``UserFacingError`` and subclasses) are printed as one clear line, never as a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from vla_cache_ros.errors import UserFacingError

# Modules that contribute subcommands, in the order they appear in --help.
SUBCOMMAND_MODULES = (
    "vla_cache_ros.apps.model_commands",
    "vla_cache_ros.apps.demo",
    "vla_cache_ros.apps.bench",
    "vla_cache_ros.apps.bag_commands",
    "vla_cache_ros.apps.sim_commands",
    "vla_cache_ros.apps.train_policy",
    "vla_cache_ros.apps.train_cache",
    "vla_cache_ros.apps.cache_eval",
    "vla_cache_ros.apps.train_drafter",
    "vla_cache_ros.apps.serve",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="vla-cache",
        description="Adaptive visual-token KV caching for VLA policies on ROS 2 arms.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    unavailable = []
    for module_name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            # An area whose optional dependency is missing (e.g. mujoco on a GPU box that only
            # benchmarks) drops out of the command list instead of breaking every command.
            missing = error.name or "?"
            if missing.startswith("vla_cache_ros") and missing != module_name:
                raise  # a broken import inside the package is a bug, not a missing dependency
            area = module_name.removeprefix("vla_cache_ros.apps.").removesuffix("_commands")
            unavailable.append(f"{area} (needs {missing})")
            continue
        module.register(subparsers)
    if unavailable:
        parser.epilog = "unavailable here: " + ", ".join(unavailable)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``vla-cache``; returns the process exit code."""
    return run_command(build_parser(), argv)


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand's handler; user errors print one line (exit
    2), Ctrl-C exits 130, SIGTERM where a command turns it into an interrupt 143."""
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserFacingError as error:
        print(f"vla-cache {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # Ctrl-C: 130; SIGTERM (subprocesses.Terminated): 143
        print(f"vla-cache {args.command}: interrupted", file=sys.stderr)
        return int(getattr(interrupt, "exit_code", 130))


if __name__ == "__main__":
    sys.exit(main())
