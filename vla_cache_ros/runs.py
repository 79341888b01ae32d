"""Cache modes side by side over the same frames: the core of ``vla-cache bench``, ``vla-cache
replay`` and ``vla-cache demo --offline``.

:class:`ModeRunner` puts one :class:`~vla_cache_ros.policy.CachedVLAPolicy` per mode spec on one
shared model (the code the node runs) and steps them interleaved: every mode on frame 0, then
every mode on frame 1, and so on. Background load and clock changes then hit all modes alike, so
ratios of median times measured in one run compare like with like (modes run one after the other
in blocks gave speedups from 0.69x to 5x for the same setting). The first ``warmup`` steps of each
mode -- the first one computes every token -- are left out of the timing medians. Stage names
come from :mod:`vla_cache_ros.stages`.

Also here: the one device / dtype / threads setup of these commands (:func:`prepare_compute`,
built on :mod:`vla_cache_ros.compute`) and the line naming the hardware the numbers come from.
This module sits above ``policy`` and ``cache``; nothing in them imports it.
"""
from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vla_cache_ros.cache.modes import ModeSpec, check_decode, check_lm_head, parse_mode
from vla_cache_ros.compute import resolve_device, resolve_dtype, set_cpu_threads
from vla_cache_ros.errors import CacheModeError, ConfigurationError
from vla_cache_ros.models.vla import OpenVLA
from vla_cache_ros.policy import CachedVLAPolicy, StepStats
from vla_cache_ros.stages import STAGES


def prepare_compute(device: str, dtype: str | None = None, threads: int | None = None
                    ) -> tuple[torch.device, torch.dtype]:
    """Check ``device``, apply ``threads`` (None or 0: torch's default), resolve ``dtype`` (None:
    bfloat16 on CUDA, float32 elsewhere), before any weight is read.

    Raises:
        ConfigurationError: an unknown or absent device, a negative thread count, an unsupported dtype.
    """
    resolved = resolve_device(device)
    set_cpu_threads(threads)
    return resolved, resolve_dtype(dtype or ("bfloat16" if resolved.type == "cuda" else "float32"))


def machine_description(device: str) -> str:
    """One line naming the hardware the numbers come from (GPU name, or CPU, cores and threads)."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")


def check_decode_list(decodes: Sequence[str]) -> list[str]:
    """Decode settings to compare, ``greedy`` (the baseline) first, each once.

    Raises:
        ConfigurationError: an unknown setting, a repeat, or not starting with ``greedy``.
    """
    checked = [check_decode(name) for name in decodes]
    if not checked or checked[0] != "greedy" or len(set(checked)) != len(checked):
        raise ConfigurationError(f"decode settings must start with greedy (the baseline) and be listed once "
                                 f"each, got {list(decodes)}")
    return checked


def check_lm_head_list(heads: Sequence[str]) -> list[str]:
    """LM-head settings to compare (``policy.CachedVLAPolicy``'s ``lm_head``), the baseline's
    first, each once.

    Raises:
        ConfigurationError: an unknown setting, a repeat or none.
    """
    if not heads:
        raise ConfigurationError("no LM-head setting given (choose from screened, full)")
    checked = [check_lm_head(name) for name in heads]
    if len(set(checked)) != len(checked):
        raise ConfigurationError(f"LM-head settings must be listed once each, got {list(heads)}")
    return checked


def run_key(spec: str, decode: str, lm_head: str | None = None) -> str:
    """The key of a mode spec run with a decode setting (and, when several LM-head settings are
    compared, a head other than the first): the spec itself for ``greedy`` with the first head."""
    key = spec if decode == "greedy" else f"{spec} {decode}"
    return key if lm_head is None else f"{key} {lm_head} head"


@dataclass(frozen=True)
class ModeStep:
    """One step of one mode on one frame."""

    frame_index: int  # 0-based position of the frame in this run
    spec: str  # the run's key: the mode spec as written, e.g. "fixed:0.5", + " speculative" if so decoded
    action: np.ndarray  # (7,) un-normalised action
    stats: StepStats  # times_s per stage, reuse, FLOPs, action_tokens (7,)
    timed: bool  # counted in the timing medians (not a warm-up step)


class ModeRunner:
    """One policy per mode spec on one shared model, stepped frame by frame over all modes.

    Args:
        model: the loaded VLA every policy shares.
        specs: mode specs (``off``, ``fixed:0.5``, ...); the first is the baseline that speedups
            and agreement are measured against.
        unnorm_key: dataset statistics the actions are un-normalised with.
        warmup: steps per mode left out of the timing medians (the first step computes every token).
        decodes: decode settings (``engine.DECODE_SETTINGS``) each mode runs with, ``greedy``
            first; a run is keyed by its spec (greedy) or ``"<spec> <decode>"`` (``"fixed:0.5
            speculative"``), spec by spec in :attr:`keys`.
        lm_heads: LM-head settings (``cache.modes.LM_HEAD_CHOICES``) each run is repeated with;
            the first is the baseline's, the others add ``" <head> head"`` to the key.
        policy_options: further keyword arguments of every ``CachedVLAPolicy`` (``prepack``,
            ``max_token_age``, ``selector_options``, ``cache_policy``: a directory is loaded once
            and shared; each policy gets its own selector, hence its own recovery generator;
            ``drafter``: a directory is loaded once and shared, the speculative runs draft with it).

    Raises:
        CacheModeError: no spec, a spec listed twice, a malformed or unknown spec, or a mode that
            cannot run here (``learned`` without a trained cache policy).
        CheckpointError: an unreadable cache policy or drafter, or a drafter for another model.
        ConfigurationError: ``warmup`` < 0; decode settings unknown, repeated or not starting
            with ``greedy``; LM-head settings unknown or repeated.
    """

    def __init__(self, model: OpenVLA, specs: Sequence[str], unnorm_key: str | None = None, warmup: int = 1,
                 decodes: Sequence[str] = ("greedy",), lm_heads: Sequence[str] = ("screened",),
                 **policy_options: Any) -> None:
        parsed = [parse_mode(spec) for spec in specs]
        texts = [spec.text for spec in parsed]
        if not parsed or len(set(texts)) != len(texts):
            raise CacheModeError(f"modes to compare must be listed once each, got {list(specs)}")
        if warmup < 0:
            raise ConfigurationError(f"warm-up steps must be >= 0, got {warmup}")
        decodes = check_decode_list(decodes)
        heads = check_lm_head_list(lm_heads)
        self.cache_policy_source: str | None = None
        if policy_options.get("cache_policy") is not None:
            from vla_cache_ros.cache.learned import CacheSelectorNet, load_cache_policy

            source = policy_options["cache_policy"]
            self.cache_policy_source = "in memory" if isinstance(source, CacheSelectorNet) else str(source)
            if not isinstance(source, CacheSelectorNet):
                policy_options["cache_policy"] = load_cache_policy(source)
        self.drafter_source: str | None = None
        if policy_options.get("drafter") is not None:
            from vla_cache_ros.cache.drafter import load_drafter_for

            policy_options["drafter"] = load_drafter_for(policy_options["drafter"])
            self.drafter_source = policy_options["drafter"].source
        self.model = model
        self.specs: list[ModeSpec] = parsed
        self.decodes: list[str] = decodes
        self.lm_heads: list[str] = heads
        self.warmup = int(warmup)
        self._runs = [(run_key(spec.text, decode, None if head == heads[0] else head), spec, decode, head)
                      for spec in parsed for decode in decodes for head in heads]
        self.policies: dict[str, CachedVLAPolicy] = {
            key: CachedVLAPolicy(model, mode=spec.name, cache_ratio=spec.ratio, unnorm_key=unnorm_key,
                                 decode=decode, lm_head=head, **policy_options)
            for key, spec, decode, head in self._runs}
        self.keys: list[str] = list(self.policies)
        self.steps: dict[str, list[ModeStep]] = {key: [] for key in self.keys}
        self.frames = 0

    def runs(self) -> list[tuple[str, ModeSpec, str]]:
        """(key, spec, decode) of every run, in :attr:`keys` order."""
        return [(key, spec, decode) for key, spec, decode, _ in self._runs]

    @property
    def baseline(self) -> str:
        """The first spec, decoded greedily: speedups and agreement are measured against it."""
        return self.keys[0]

    @property
    def num_visual(self) -> int:
        """N, the visual tokens per frame."""
        return self.model.num_visual_tokens

    def step_frame(self, image: np.ndarray, instruction: str, state: np.ndarray | None = None
                   ) -> list[ModeStep]:
        """Step every mode, in spec order, on one RGB uint8 (H, W, 3) frame; returns those steps.

        Raises:
            InstructionError: the instruction is empty or too long (from the first policy).
        """
        timed = self.frames >= self.warmup
        stepped = []
        for text, policy in self.policies.items():
            action, stats = policy.step(image, instruction, state=state)
            step = ModeStep(self.frames, text, action, stats, timed)
            self.steps[text].append(step)
            stepped.append(step)
        self.frames += 1
        return stepped

    def timed_steps(self, spec: str) -> list[ModeStep]:
        """The steps of ``spec`` counted in timing medians (all of them when every step is warm-up)."""
        steps = self.steps[spec]
        return [step for step in steps if step.timed] or steps

    def median_s(self, spec: str) -> dict[str, float]:
        """Median wall time (s) per stage of :data:`~vla_cache_ros.stages.STAGES` over the timed
        steps of ``spec``.

        Raises:
            ValueError: no frame has been stepped yet (a bug in the caller).
        """
        steps = self.timed_steps(spec)
        if not steps:
            raise ValueError("no frame has been stepped")
        return {stage: statistics.median(step.stats.times_s[stage] for step in steps) for stage in STAGES}

    def speedup(self, spec: str, stage: str = "total") -> float:
        """Median ``stage`` time of the baseline divided by that of ``spec``, both from this run."""
        return self.median_s(self.baseline)[stage] / self.median_s(spec)[stage]

    def token_agreement(self, spec: str, timed_only: bool = False) -> float:
        """Fraction of action tokens of ``spec`` equal to the baseline's on the same frames."""
        return float(np.mean([np.mean(step.stats.action_tokens == base.stats.action_tokens)
                              for step, base in self._pairs(spec, timed_only)]))

    def identical_action_fraction(self, spec: str, timed_only: bool = False) -> float:
        """Fraction of frames on which ``spec`` gave exactly the baseline's action."""
        return float(np.mean([np.array_equal(step.action, base.action)
                              for step, base in self._pairs(spec, timed_only)]))

    def _pairs(self, spec: str, timed_only: bool) -> list[tuple[ModeStep, ModeStep]]:
        """(step of ``spec``, baseline step) per frame; ``timed_only``: as :meth:`timed_steps` selects."""
        pairs = list(zip(self.steps[spec], self.steps[self.baseline]))
        return ([pair for pair in pairs if pair[0].timed] or pairs) if timed_only else pairs
