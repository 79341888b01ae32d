"""Command-line options several ``vla-cache`` commands share (light: no torch at import).

``--cache-policy``: the learned cache policy that makes ``--modes learned`` runnable. Omitted, a
model directory's own ``cache_policy/`` is used when it has one (how the shipped model carries
its trained cache); ``none`` turns that off. Resolved at run time by
``cache.learned.resolve_cache_policy``.

``--drafter``: the learned drafter whose tokens are the draft of ``--decode speculative``.
Omitted, a model directory's own ``drafter/`` is used when it has one; ``none`` turns that off
(the draft is then the previous step's tokens). Resolved by ``cache.drafter.resolve_drafter``;
commands whose policy runs in another process (a node, a server replica) resolve and read it
first with :func:`checked_drafter`, so a broken directory is one error before anything starts.
"""
from __future__ import annotations

import argparse
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


def checked_drafter(value: str | None, model_path: str | Path | None) -> Path | None:
    """The drafter directory a ``--drafter`` value selects for ``model_path`` (see
    ``cache.drafter.resolve_drafter``; None: no drafter), read once to check it. Imports torch.

    Raises:
        CheckpointError: the directory lacks ``drafter.json`` / ``drafter.safetensors`` or they are
            malformed (the message names the directory and the file).
    """
    from vla_cache_ros.cache.drafter import load_drafter, resolve_drafter

    directory = resolve_drafter(value, model_path)
    if directory is not None:
        load_drafter(directory)
    return directory


def describe_draft(drafter: str | Path | None) -> str:
    """Where speculative decoding's draft comes from, in words: ``learned drafter DIR`` for a
    drafter directory, else ``previous step's tokens`` (as ``vla-cache bench`` reports it)."""
    return f"learned drafter {drafter}" if drafter else "previous step's tokens"
