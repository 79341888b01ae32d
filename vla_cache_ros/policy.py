"""CachedVLAPolicy: observation -> action + StepStats, with visual-token KV reuse between steps.

Owns the model, the ``KVReuseEngine``, a selector per mode and the per-token bookkeeping. One
call to ``step`` runs preprocess -> vision -> select -> prefill (partial recompute) -> decode (the
stages of :mod:`vla_cache_ros.stages`) and reports what it did. Which modes exist, how their
selectors are built and why one is unavailable is the mode registry's business
(:mod:`vla_cache_ros.cache.modes`); the policy holds one selector per mode it can run.

Settings (``set_mode``, ``set_cache_ratio``, ``reset``) may be called from another thread (a ROS
parameter callback) while ``step`` runs: they are recorded under a lock and take effect at the
start of the next step. ROS-free.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_cache_ros.cache.engine import KVReuseEngine, PromptKV
from vla_cache_ros.cache.flops import DecoderDims, StepFlops, VisionDims, step_flops
from vla_cache_ros.cache.modes import (
    build_selector,
    check_available,
    check_decode,
    check_lm_head,
    check_max_token_age,
    check_ratio,
    get_mode,
    runnable_modes,
)
from vla_cache_ros.cache.selectors import SelectionContext, SelectionReport, Selector
from vla_cache_ros.cache.tokens import TokenStates, extract_patches
from vla_cache_ros.cache.tokens import reuse_mask as token_reuse_mask
from vla_cache_ros.models.vla import ACTION_DIM, OpenVLA, load_vla
from vla_cache_ros.stages import STAGES, StageClock, StepRecord, device_sync

DEFAULT_MAX_TOKEN_AGE = 20


@dataclass
class StepStats:
    """What one policy step did and how long each stage took (``times_s``: seconds per name of
    :data:`~vla_cache_ros.stages.STAGES`)."""

    mode: str
    target_ratio: float
    reused_tokens: int
    recomputed_tokens: int
    actual_ratio: float
    times_s: dict[str, float]
    flops: float
    flops_uncached: float
    prefill_flops: float
    prefill_flops_uncached: float
    token_layer_computations: int  # counted inside the engine during prefill
    reuse_indices: np.ndarray = field(repr=False)
    action_tokens: np.ndarray = field(repr=False)
    cache_reset: bool = False  # the cache was (re)initialised at this step
    decode: str = "greedy"  # the decode setting of this step (engine.DECODE_SETTINGS)
    draft_source: str | None = None  # where the draft came from: "drafter", "previous" (last step's tokens), None
    draft_tokens: int = 0  # tokens of the draft verified in the prefill (0: none)
    accepted_draft_tokens: int = 0  # leading draft tokens equal to the greedy output
    decode_passes: int = ACTION_DIM - 1  # sequential single-token forward passes after the prefill
    predicted_ratio: float | None = None  # learned mode: the ratio the predictor chose (nan: no cache yet)
    ratio_cap: float | None = None  # learned mode: the cache_ratio bound applied to it
    recovered_tokens: int = 0  # learned mode: tokens due for reuse recomputed by stochastic recovery

    @property
    def reuse_mask(self) -> np.ndarray:
        """(grid, grid) bool, True where the visual token was reused this step (16x16 for
        OpenVLA's 256 tokens; row-major over the model-input frame's patches, see
        :func:`~vla_cache_ros.cache.tokens.reuse_mask`)."""
        return token_reuse_mask(self.reuse_indices, self.reused_tokens + self.recomputed_tokens)

    @property
    def flops_ratio(self) -> float:
        """flops / flops_uncached: the step's analytic cost relative to an uncached step."""
        return self.flops / self.flops_uncached if self.flops_uncached else 1.0

    @property
    def prefill_flops_ratio(self) -> float:
        """prefill_flops / prefill_flops_uncached."""
        return self.prefill_flops / self.prefill_flops_uncached if self.prefill_flops_uncached else 1.0

    @property
    def flops_saved_fraction(self) -> float:
        """1 - flops_ratio."""
        return 1.0 - self.flops_ratio

    def record(self) -> StepRecord:
        """The step's mode, ratios and stage times in milliseconds (what the node publishes per
        step on ``~/step_stats``)."""
        return StepRecord(self.mode, float(self.target_ratio), float(self.actual_ratio),
                          {stage: 1000.0 * float(seconds) for stage, seconds in self.times_s.items()},
                          bool(self.cache_reset))


def vision_dims(model: OpenVLA) -> VisionDims:
    """FLOPs-relevant sizes of the model's vision tower and projector."""
    backbones = []
    for backbone in model.vision.backbones:
        blocks = len(backbone.blocks)
        tokens = model.num_visual_tokens + int(getattr(backbone, "num_prefix_tokens", 0))
        patch_px = int(backbone.patch_embed.patch_size[0])
        backbones.append((int(backbone.embed_dim), int(backbone.blocks[0].mlp.fc1.out_features),
                          blocks - 1, tokens, patch_px))
    layers = [(fc.in_features, fc.out_features)
              for fc in (model.projector.fc1, model.projector.fc2, model.projector.fc3) if fc is not None]
    return VisionDims(tuple(backbones), tuple(layers), model.num_visual_tokens)


class CachedVLAPolicy:
    """A VLA policy whose decoder prefill reuses visual-token K/V between consecutive steps.

    Args:
        model: the loaded VLA (several policies may share one).
        mode, cache_ratio: the starting mode (a registry name) and ratio in [0, 1].
        unnorm_key: the dataset statistics actions are un-normalised with.
        max_token_age: a token reused this many steps in a row is recomputed.
        selectors: selectors for modes the registry cannot build by itself (``learned``).
        selector_options: keyword options per mode for the registry's selector factories, e.g.
            ``{"vla_cache": {"threshold": 0.99}}``.
        prepack: the engine's CPU weight-prepacking choice (None: automatic).
        engine: an engine over ``model`` to share (its prepacked weights) instead of building
            one; the policy server's sessions share their replica's. Steps of policies sharing
            an engine must not run concurrently.
        decode: ``greedy`` or ``speculative`` (a draft of the action tokens is verified inside
            the prefill; identical output, fewer decode passes the more of it is right).
        drafter: a trained drafter (``vla-cache train-drafter`` output directory, or a loaded
            ``DrafterNet`` / ``Drafter``) whose argmax tokens are the speculative draft, computed
            before the prefill (its time counts in the prefill stage); None: the draft is the
            previous step's tokens (none on an episode's first step).
        cache_policy: a trained cache policy (``vla-cache train-cache`` output directory, or its
            loaded ``CacheSelectorNet``) that makes ``learned`` runnable; None: ``learned``
            stays unavailable unless ``selectors`` supplies it.
        cache_policy_seed: seeds the learned selector's stochastic recovery.
        lm_head: ``screened`` (default): greedy tokens through a bfloat16 screen of the float32 LM
            head that recomputes in float32 only the rows that could hold the maximum
            (``cache/lm_head.py``; the same tokens); ``full``: the whole head on every row.
            Ignored when ``engine`` is given (the engine's own).

    Raises:
        CacheModeError: ``mode`` unknown or not runnable; a ``selectors`` key that is no known mode.
        ConfigurationError: ``cache_ratio`` or ``max_token_age`` out of range; an unknown ``decode``.
        CheckpointError: an unreadable ``cache_policy`` or ``drafter``, or a drafter trained
            for another model.
    """

    def __init__(self, model: OpenVLA, mode: str = "fixed", cache_ratio: float = 0.5,
                 unnorm_key: str | None = None, max_token_age: int = DEFAULT_MAX_TOKEN_AGE,
                 selectors: Mapping[str, Selector] | None = None,
                 selector_options: Mapping[str, Mapping[str, Any]] | None = None,
                 prepack: bool | None = None, engine: KVReuseEngine | None = None,
                 decode: str = "greedy", cache_policy: Any = None, cache_policy_seed: int = 0,
                 drafter: Any = None, lm_head: str = "screened") -> None:
        self.model = model
        if engine is None:
            engine = KVReuseEngine(model.language_model, prepack=prepack,
                                   screened_head=check_lm_head(lm_head) == "screened")
        self.engine = engine
        self.num_visual = model.num_visual_tokens
        self.unnorm_key = unnorm_key
        options = selector_options or {}
        self._selectors: dict[str, Selector] = {
            name: build_selector(name, **options.get(name, {})) for name in runnable_modes()}
        self.cache_policy_source: str | None = None
        if cache_policy is not None:
            self._selectors["learned"] = self._learned_selector(cache_policy, cache_policy_seed)
        for name, selector in (selectors or {}).items():
            get_mode(name)  # a mode must be declared in the registry before a policy runs it
            self._selectors[name] = selector
        self._decoder_dims = DecoderDims.from_config(model.llama_config)
        self._vision_dims = vision_dims(model)
        self._lock = threading.Lock()
        self._mode = self._check_mode(mode)
        self._ratio = check_ratio(cache_ratio)
        self._max_token_age = check_max_token_age(max_token_age)
        self._decode = check_decode(decode)
        self._drafter = None if drafter is None else self._load_drafter(drafter)
        self._previous_tokens: torch.Tensor | None = None  # the previous step's tokens (a draft, a drafter input)
        self._previous_hidden: torch.Tensor | None = None  # its last prompt hidden state (a drafter input)
        self._reset_requested = False
        self._tokens = TokenStates(self.num_visual)
        self._prompt_kv: PromptKV | None = None
        self._previous_attention: np.ndarray | None = None
        self._input_shape: tuple[int, ...] | None = None
        self._prompt_memo: tuple[str, torch.Tensor] | None = None
        self._sync = device_sync(model.device)

    @classmethod
    def from_pretrained(cls, model_path: str | Path, mode: str = "fixed", cache_ratio: float = 0.5,
                        unnorm_key: str | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32,
                        center_crop: bool = False, **kwargs: Any) -> "CachedVLAPolicy":
        """Load a checkpoint directory and wrap it."""
        model = load_vla(model_path, device=device, dtype=dtype, center_crop=center_crop)
        return cls(model, mode=mode, cache_ratio=cache_ratio, unnorm_key=unnorm_key, **kwargs)

    # --- settings (thread-safe) -------------------------------------------------------------
    def available_modes(self) -> list[str]:
        """Mode names this policy can run (registry order; ``learned`` once its selector is set)."""
        return list(self._selectors)

    def _check_mode(self, mode: str) -> str:
        return check_available(mode, self._selectors)

    def set_mode(self, mode: str) -> None:
        """Switch mode; takes effect at the next step.

        Raises:
            CacheModeError: unknown, or not runnable by this policy (the message says why and
                lists :meth:`available_modes`).
        """
        with self._lock:
            self._mode = self._check_mode(mode)

    def set_cache_ratio(self, ratio: float) -> None:
        """Set the target/maximum cache ratio in [0, 1]; takes effect at the next step."""
        with self._lock:
            self._ratio = check_ratio(ratio)

    def set_max_token_age(self, age: int) -> None:
        """Tokens reused this many steps in a row are recomputed (bounded staleness)."""
        with self._lock:
            self._max_token_age = check_max_token_age(age)

    def set_decode(self, decode: str) -> None:
        """``greedy`` or ``speculative``; takes effect at the next step.

        Raises:
            ConfigurationError: another value.
        """
        with self._lock:
            self._decode = check_decode(decode)

    @property
    def decode(self) -> str:
        """Current decode setting."""
        return self._decode

    def _learned_selector(self, cache_policy: Any, seed: int) -> Selector:
        from vla_cache_ros.cache.learned import CacheSelectorNet, LearnedSelector, load_cache_policy

        net = cache_policy if isinstance(cache_policy, CacheSelectorNet) else load_cache_policy(cache_policy)
        self.cache_policy_source = "in memory" if isinstance(cache_policy, CacheSelectorNet) else str(cache_policy)
        selector = LearnedSelector(net, seed=seed, source=self.cache_policy_source)
        # A policy trained for another model is refused now, not at the first learned step.
        selector.check_model(self.num_visual, int(self.model.config.image_sizes[0]))
        return selector

    def _load_drafter(self, drafter: Any) -> Any:
        from vla_cache_ros.cache.drafter import load_drafter_for

        loaded = load_drafter_for(drafter)
        tokenizer = self.model.action_tokenizer
        loaded.check_model(self.model.llama_config.hidden_size, self.num_visual, tokenizer.first_action_token)
        loaded.net.to(self.model.device)
        return loaded

    @property
    def last_hidden(self) -> torch.Tensor | None:
        """(hidden,) final-norm hidden state at the last prompt position of the latest step (a
        drafter's ``previous_hidden``; computed with that step's reuse); None before a step or
        after a reset."""
        return self._previous_hidden

    @property
    def drafter_source(self) -> str | None:
        """Where the loaded drafter came from (a directory or ``in memory``); None without one."""
        return None if self._drafter is None else self._drafter.source

    def load_cache_policy(self, cache_policy: Any, seed: int = 0) -> None:
        """Make ``learned`` runnable with a trained cache policy (a directory or a loaded net).

        Raises:
            CheckpointError: an unreadable cache policy (nothing changes then).
        """
        self.register_selector("learned", self._learned_selector(cache_policy, seed))

    def register_selector(self, name: str, selector: Selector) -> None:
        """Make mode ``name`` (declared in the registry, e.g. ``learned``) runnable with ``selector``.

        Raises:
            CacheModeError: ``name`` is not a known mode.
        """
        get_mode(name)
        with self._lock:
            self._selectors[name] = selector

    def reset(self) -> None:
        """Start a new episode: the next step recomputes every token."""
        with self._lock:
            self._reset_requested = True

    @property
    def mode(self) -> str:
        """Current mode."""
        return self._mode

    @property
    def cache_ratio(self) -> float:
        """Current target ratio."""
        return self._ratio

    # --- the step ---------------------------------------------------------------------------
    def _begin_step(self, image_shape: tuple[int, ...]) -> tuple[str, float, int, bool, str]:
        with self._lock:
            mode, ratio, max_age, decode = self._mode, self._ratio, self._max_token_age, self._decode
            reset = self._reset_requested or image_shape != self._input_shape
            self._reset_requested = False
        if reset:
            self._tokens.reset()
            self._prompt_kv = None
            self._previous_attention = None
            self._previous_tokens = None
            self._previous_hidden = None
            self._input_shape = image_shape
            for selector in self._selectors.values():  # a learned selector restarts its recovery draws
                reseed = getattr(selector, "reseed", None)
                if reseed is not None:
                    reseed()
        return mode, ratio, max_age, reset, decode

    def check_instruction(self, instruction: str) -> int:
        """Tokenise ``instruction`` (memoised) and return its prompt length in tokens.

        Raises:
            InstructionError: empty, or too long for the model's context (the message shows at
                most ~200 characters of the text).
        """
        return int(self._prompt_ids(instruction).shape[-1])

    def _prompt_ids(self, instruction: str) -> torch.Tensor:
        """Token ids of the prompt, tokenised once per instruction (it rarely changes).

        Raises:
            InstructionError: see :meth:`check_instruction`.
        """
        memo = self._prompt_memo
        if memo is not None and memo[0] == instruction:
            return memo[1]
        ids = self.model.prompt_ids(instruction)
        self._prompt_memo = (instruction, ids)
        return ids

    def _draft(self, decode: str, visual: torch.Tensor, embeddings: torch.Tensor
                ) -> tuple[torch.Tensor | None, str | None]:
        """The speculative draft of this step and its source: the drafter's tokens when one is
        loaded (also on an episode's first step), else the previous step's tokens, else none."""
        if decode != "speculative":
            return None, None
        if self._drafter is not None:
            prompt = embeddings[:, 1 + self.num_visual:]
            return self._drafter.draft(visual, prompt, self._previous_tokens, self._previous_hidden), "drafter"
        if self._previous_tokens is not None:
            return self._previous_tokens, "previous"
        return None, None

    @torch.no_grad()
    def step(self, image: np.ndarray, instruction: str, state: np.ndarray | None = None
             ) -> tuple[np.ndarray, StepStats]:
        """One inference: RGB uint8 (H, W, 3) frame + instruction -> 7-D action and stats.

        ``state`` (proprioception) is accepted for interface compatibility; OpenVLA ignores it.
        """
        clock = StageClock(self._sync)
        mode, ratio, max_age, reset, decode = self._begin_step(tuple(getattr(image, "shape", ())))
        selector = self._selectors[mode]

        prepared = self.model.preprocess(image)
        prompt_ids = self._prompt_ids(instruction)
        clock.lap("preprocess")

        visual = self.model.encode_image(prepared.pixel_values)
        clock.lap("vision", sync=True)

        patches = extract_patches(prepared.model_input_rgb, self.num_visual)
        eligible = np.zeros(self.num_visual, dtype=bool)
        if self._tokens.valid and self._prompt_kv is not None:
            eligible = self._tokens.ages < max_age
        context = SelectionContext(
            frame=prepared.model_input_rgb, patches=patches, similarity=self._tokens.similarity(patches),
            ages=self._tokens.ages.copy(), eligible=eligible, previous_attention=self._previous_attention,
            target_ratio=ratio, num_layers=self.engine.num_layers, reference_patches=self._tokens.reference_patches)
        reuse = np.asarray(selector.select(context), dtype=np.int64)
        report: SelectionReport | None = getattr(selector, "last_report", None)
        reuse = reuse[eligible[reuse]] if reuse.size else reuse  # never reuse an ineligible token
        relevance_layer = selector.relevance_layer(self.engine.num_layers)
        clock.lap("select")

        embeddings = self.model.assemble_embeddings(visual, prompt_ids)
        draft, draft_source = self._draft(decode, visual, embeddings)
        cached, self._prompt_kv = self._prompt_kv, None  # updated in place: dropped if prefill fails
        prefill = self.engine.prefill(embeddings, self.num_visual, torch.from_numpy(reuse), cached,
                                      relevance_layer, draft)
        clock.lap("prefill", sync=True)

        decoded = self.engine.decode(prefill, ACTION_DIM)
        clock.lap("decode", sync=True)

        action = self.model.decode_action(decoded.tokens.numpy(), self.unnorm_key)
        self._prompt_kv = prefill.prompt_kv
        self._previous_tokens = decoded.tokens
        self._previous_hidden = prefill.last_hidden
        self._tokens.commit(patches, reuse)
        self._previous_attention = None if prefill.relevance is None else prefill.relevance.float().cpu().numpy()
        times = clock.finish()

        length = embeddings.shape[1]
        draft_positions = 0 if prefill.draft_logits is None else int(prefill.draft_logits.shape[0])
        cached = step_flops(self._vision_dims, self._decoder_dims, length, prefill.computed_positions.cpu().numpy(),
                            ACTION_DIM, draft_positions, ACTION_DIM - decoded.passes)
        uncached = step_flops(self._vision_dims, self._decoder_dims, length, np.arange(length), ACTION_DIM)
        stats = StepStats(
            mode=mode, target_ratio=ratio, reused_tokens=int(reuse.size),
            recomputed_tokens=self.num_visual - int(reuse.size), actual_ratio=reuse.size / self.num_visual,
            times_s=times, flops=float(cached.total), flops_uncached=float(uncached.total),
            prefill_flops=float(cached.prefill), prefill_flops_uncached=float(uncached.prefill),
            token_layer_computations=prefill.token_layer_computations,
            reuse_indices=reuse, action_tokens=decoded.tokens.numpy(), cache_reset=reset, decode=decode,
            draft_source=draft_source, draft_tokens=0 if draft is None else int(draft.numel()),
            accepted_draft_tokens=decoded.accepted_draft_tokens, decode_passes=decoded.passes,
            predicted_ratio=None if report is None else report.predicted_ratio,
            ratio_cap=None if report is None else report.ratio_cap,
            recovered_tokens=0 if report is None else report.recovered_tokens)
        return action, stats


__all__ = ["CachedVLAPolicy", "StepStats", "StepFlops", "STAGES"]
