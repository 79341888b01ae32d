"""Command-line options several ``vla-cache`` commands share (light: no torch at import).

``--cache-policy``: the learned cache policy that makes ``--modes learned`` runnable. Omitted, a
model directory's own ``cache_policy/`` is used when it has one (how the shipped model carries
its trained cache); ``none`` turns that off. Resolved by ``cache.learned.resolve_cache_policy``;
commands whose policy runs in another process (a node, a server replica) resolve and read it
first with :func:`checked_cache_policy`, so a broken directory is one error before anything starts.

``--drafter``: the learned drafter whose tokens are the draft of ``--decode speculative``.
Omitted, a model directory's own ``drafter/`` is used when it has one; ``none`` turns that off
(the draft is then the previous step's tokens). Resolved by ``cache.drafter.resolve_drafter``;
commands whose policy runs in another process (a node, a server replica) resolve and read it
first with :func:`checked_drafter`, so a broken directory is one error before anything starts.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def add_cache_policy_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--cache-policy DIR`` to ``parser``."""
    parser.add_argument("--cache-policy", default=None,
                        help="learned cache policy directory (vla-cache train-cache output) for the learned "
                             "mode (default: the model directory's own cache_policy/, if any; 'none': no policy)")


def add_drafter_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--drafter DIR`` to ``parser``."""
    parser.add_argument("--drafter", default=None,
                        help="learned drafter directory (vla-cache train-drafter output) drafting the speculative "
                             "decode's tokens (default: the model directory's own drafter/, if any; 'none': the "
                             "previous step's tokens are the draft)")


def checked_cache_policy(value: str | None, model_path: str | Path | None) -> Path | None:
    """The cache policy directory a ``--cache-policy`` value selects for ``model_path`` (see
    ``cache.learned.resolve_cache_policy``; None: no policy), read once to check it. Imports torch.

    Raises:
        CheckpointError: the directory lacks ``cache_policy.json`` / ``cache_policy.safetensors``
            or they are malformed (the message names the directory and the file).
    """
    from vla_cache_ros.cache.learned import load_cache_policy, resolve_cache_policy

    return _checked_module(resolve_cache_policy(value, model_path), load_cache_policy)


def checked_drafter(value: str | None, model_path: str | Path | None) -> Path | None:
    """The drafter directory a ``--drafter`` value selects for ``model_path`` (see
    ``cache.drafter.resolve_drafter``; None: no drafter), read once to check it. Imports torch.

    Raises:
        CheckpointError: the directory lacks ``drafter.json`` / ``drafter.safetensors`` or they are
            malformed (the message names the directory and the file).
    """
    from vla_cache_ros.cache.drafter import load_drafter, resolve_drafter

    return _checked_module(resolve_drafter(value, model_path), load_drafter)


def _checked_module(directory: Path | None, load: Callable[[Path], object]) -> Path | None:
    """``directory`` after ``load`` read it (its errors pass through); None stays None."""
    if directory is not None:
        load(directory)
    return directory


def module_parameter(directory: Path | None) -> str:
    """A checked directory as the node's ``cache_policy_path`` / ``drafter_path`` value:
    the directory, or ``none`` (so the node loads exactly what was checked)."""
    return "none" if directory is None else str(directory)


def describe_draft(drafter: str | Path | None) -> str:
    """Where speculative decoding's draft comes from, in words: ``learned drafter DIR`` for a
    drafter directory, else ``previous step's tokens`` (as ``vla-cache bench`` reports it)."""
    return f"learned drafter {drafter}" if drafter else "previous step's tokens"
