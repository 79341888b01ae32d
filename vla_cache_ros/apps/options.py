"""Command-line options several ``vla-cache`` commands share (light: no torch at import).

``--cache-policy``: the learned cache policy that makes ``--modes learned`` runnable. Omitted, a
model directory's own ``cache_policy/`` is used when it has one (how the shipped model carries
its trained cache); ``none`` turns that off. Resolved at run time by
``cache.learned.resolve_cache_policy``.

``--drafter``: the learned drafter whose tokens are the draft of ``--decode speculative``.
Omitted, a model directory's own ``drafter/`` is used when it has one; ``none`` turns that off
(the draft is then the previous step's tokens). Resolved by ``cache.drafter.resolve_drafter``.
"""
from __future__ import annotations

import argparse


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
