"""Command-line options several ``vla-cache`` commands share (light: no torch at import).

``--cache-policy``: the learned cache policy that makes ``--modes learned`` runnable. Omitted, a
model directory's own ``cache_policy/`` is used when it has one (how the shipped model carries
its trained cache); ``none`` turns that off. Resolved by ``cache.learned.resolve_cache_policy``;
commands whose policy runs in another process (a node, a server replica) resolve and read it
first with :func:`checked_cache_policy`, so a broken directory, or one trained for another model
(checked against the model's config.json), is one error before anything starts.

``--drafter``: the learned drafter whose tokens are the draft of ``--decode speculative``.
Omitted, a model directory's own ``drafter/`` is used when it has one; ``none`` turns that off
(the draft is then the previous step's tokens). Resolved by ``cache.drafter.resolve_drafter``;
commands whose policy runs in another process (a node, a server replica) resolve and read it
first with :func:`checked_drafter`, so a broken directory, or one trained for another model, is
one error before anything starts.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from vla_cache_ros.cache.modes import LM_HEAD_CHOICES

if TYPE_CHECKING:
    from vla_cache_ros.models.shape import ModelShape


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
    ``cache.learned.resolve_cache_policy``; None: no policy), read once to check it and, with a
    ``model_path``, checked against that model's config.json (its visual token count and frame
    size, as the learned selector checks them; no weights are loaded). Imports torch.

    Raises:
        CheckpointError: the directory is missing, lacks ``cache_policy.json`` /
            ``cache_policy.safetensors`` or they are malformed (the message names the directory
            and the file), or the policy was trained for another model (or its config is broken).
    """
    from vla_cache_ros.cache.learned import LearnedSelector, load_cache_policy, resolve_cache_policy

    directory = resolve_cache_policy(value, model_path)
    if directory is not None:
        selector = LearnedSelector(load_cache_policy(directory), source=str(directory))
        if model_path is not None:
            shape = _model_shape(model_path)
            selector.check_model(shape.num_visual, shape.image_size)
    return directory


def add_lm_head_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--lm-head screened|full`` (the policy's ``lm_head``, see ``cache/lm_head.py``)."""
    parser.add_argument("--lm-head", choices=LM_HEAD_CHOICES, default="screened",
                        help="greedy tokens from the LM head: screened (a bf16 pass, float32 only for the rows "
                             "that could be the maximum; the same tokens; float32 models) or full "
                             "(default: %(default)s)")


def checked_drafter(value: str | None, model_path: str | Path | None) -> Path | None:
    """The drafter directory a ``--drafter`` value selects for ``model_path`` (see
    ``cache.drafter.resolve_drafter``; None: no drafter), read once to check it and, with a
    ``model_path``, checked against that model's config.json (hidden size, visual tokens,
    action-token ids: ``Drafter.check_model``, as the policy checks it at load; no weights are
    loaded). Imports torch.

    Raises:
        CheckpointError: the directory is missing, lacks ``drafter.json`` / ``drafter.safetensors``
            or they are malformed (the message names the directory and the file), or the drafter
            was trained for another model (or its config is broken).
    """
    from vla_cache_ros.cache.drafter import load_drafter_for, resolve_drafter

    directory = resolve_drafter(value, model_path)
    if directory is not None:
        drafter = load_drafter_for(directory)
        if model_path is not None:
            shape = _model_shape(model_path)
            drafter.check_model(shape.hidden_size, shape.num_visual, shape.first_action_token)
    return directory


def _model_shape(model_path: str | Path) -> ModelShape:
    """The model's shape from its config.json (no weights; imports torch)."""
    from vla_cache_ros.models.shape import read_model_shape

    return read_model_shape(model_path)


def module_parameter(directory: Path | None) -> str:
    """A checked directory as the node's ``cache_policy_path`` / ``drafter_path`` value:
    the directory, or ``none`` (so the node loads exactly what was checked)."""
    return "none" if directory is None else str(directory)


def describe_draft(drafter: str | Path | None) -> str:
    """Where speculative decoding's draft comes from, in words: ``learned drafter DIR`` for a
    drafter directory, else ``previous step's tokens`` (as ``vla-cache bench`` reports it)."""
    return f"learned drafter {drafter}" if drafter else "previous step's tokens"
