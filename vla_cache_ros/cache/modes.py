"""Cache settings as users write them: the registry of cache modes, mode specs (``off``,
``fixed:0.5``, ``vla_cache``, ``learned:0.7``) and the CPU weight-prepacking choice (``auto`` /
``on`` / ``off``).

The registry is the one place a cache mode is declared: its name, what a bare spec means, how its
selector is built, which ratios the default sweeps try and, for a mode that needs something
loaded first (``learned`` needs a trained cache policy), why it cannot run without it. The
policy, the node's parameter table, the benchmark, the offline replay, the demo and sim-eval ask
it; adding a mode means adding one :class:`CacheMode` to :data:`BUILTIN_MODES` (or calling
:func:`register_mode`).

Light on purpose: no torch (nor numpy) import, so option parsing and parameter tables stay
cheap. Selector classes are imported on first use, by :func:`build_selector`.
"""
from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, NamedTuple

from vla_cache_ros.errors import CacheModeError, ConfigurationError

SelectorFactory = Callable[..., Any]
"""Builds a selector (see :class:`vla_cache_ros.cache.selectors.Selector`) from keyword options."""


@dataclass(frozen=True)
class CacheMode:
    """One cache mode as the registry knows it.

    Attributes:
        name: what users type (``cache_mode`` parameter, ``--modes``); no ``:`` or ``,``.
        summary: one line for help texts.
        bare_ratio: the cache ratio of a spec without ``:R`` (``off``: 0; the others: 1, i.e. no cap).
        selector: ``"module:attribute"`` of the selector factory (imported on first use, so the
            registry stays light), a factory, or None when the selector is supplied at run time
            (``CachedVLAPolicy.register_selector``) -- such a mode is known but unavailable until then.
        unavailable_reason: why a mode without ``selector`` cannot run (shown to the user).
        sweep: the specs of this mode the default comparisons run, representative first.
    """

    name: str
    summary: str
    bare_ratio: float = 1.0
    selector: str | SelectorFactory | None = None
    unavailable_reason: str = ""
    sweep: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or any(char in self.name for char in ":, ") or not 0.0 <= self.bare_ratio <= 1.0:
            raise ValueError(f"bad cache mode declaration {self!r}")
        if self.selector is None and not self.unavailable_reason:
            raise ValueError(f"cache mode {self.name!r} has no selector and no unavailable_reason")
        if any(spec.partition(":")[0] != self.name for spec in self.sweep):
            raise ValueError(f"cache mode {self.name!r}: sweep specs must start with its name: {self.sweep}")

    @property
    def builtin_selector(self) -> bool:
        """Whether the registry can build this mode's selector by itself (no extra files)."""
        return self.selector is not None


_SELECTORS = "vla_cache_ros.cache.selectors"

BUILTIN_MODES: tuple[CacheMode, ...] = (
    CacheMode("off", "no reuse: every visual token recomputed (the uncached baseline)", bare_ratio=0.0,
              selector=f"{_SELECTORS}:OffSelector", sweep=("off",)),
    CacheMode("fixed", "reuse the round(r*N) most static tokens", selector=f"{_SELECTORS}:FixedRatioSelector",
              sweep=("fixed:0.5", "fixed:0.75")),
    CacheMode("vla_cache", "VLA-Cache's rule: static minus task-relevant tokens, capped at r*N",
              selector=f"{_SELECTORS}:VLACacheSelector", sweep=("vla_cache",)),
    CacheMode("learned", "a trained token selector and ratio predictor; r bounds the predicted ratio",
              unavailable_reason="no trained cache policy is loaded; give one made by vla-cache train-cache "
                                 "(node: cache_policy_path; commands: --cache-policy) or put it in the model "
                                 "directory's cache_policy/", sweep=("learned",)),
)

_REGISTRY: dict[str, CacheMode] = {mode.name: mode for mode in BUILTIN_MODES}

MODE_NAMES: tuple[str, ...] = tuple(_REGISTRY)
"""Names of the built-in modes, ``("off", "fixed", "vla_cache", "learned")``: the constant for
tables built at import (the node's ``cache_mode`` choices). :func:`mode_names` also lists modes
registered at run time."""


def register_mode(mode: CacheMode) -> None:
    """Add a mode to the registry (a plugin, a test). Raises ValueError if the name is taken."""
    if mode.name in _REGISTRY:
        raise ValueError(f"cache mode {mode.name!r} is already registered")
    _REGISTRY[mode.name] = mode


def unregister_mode(name: str) -> None:
    """Remove a mode added by :func:`register_mode`.

    Raises:
        ValueError: ``name`` is a built-in mode (a bug in the caller).
        KeyError: no such mode.
    """
    if name in MODE_NAMES:
        raise ValueError(f"built-in cache mode {name!r} cannot be removed")
    del _REGISTRY[name]


def mode_names() -> tuple[str, ...]:
    """Every known mode name, built-in first, in registration order."""
    return tuple(_REGISTRY)


def describe_modes(names: Collection[str] | None = None) -> str:
    """``off, fixed, vla_cache`` for ``names`` (default: every known mode, each one that needs
    something loaded first followed by why, e.g. ``learned (no trained cache policy is loaded)``)."""
    if names is not None:
        return ", ".join(names) or "none"
    return ", ".join(mode.name if mode.builtin_selector else f"{mode.name} ({mode.unavailable_reason})"
                     for mode in _REGISTRY.values())


def get_mode(name: str) -> CacheMode:
    """The registry entry of ``name``.

    Raises:
        CacheModeError: no such mode; the message lists the known ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CacheModeError(f"unknown cache mode {name!r}; available: {describe_modes()}") from None


def check_ratio(ratio: float) -> float:
    """A cache ratio as a float in [0, 1].

    Raises:
        ConfigurationError: not finite or outside [0, 1].
    """
    value = float(ratio)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ConfigurationError(f"cache ratio must lie in [0, 1], got {ratio}")
    return value


def check_max_token_age(age: int) -> int:
    """A token age bound (steps a token may be reused in a row) >= 1.

    Raises:
        ConfigurationError: below 1.
    """
    if int(age) < 1:
        raise ConfigurationError(f"max_token_age must be >= 1, got {age}")
    return int(age)


def check_available(name: str, available: Collection[str]) -> str:
    """``name`` if it is among ``available`` (the modes a policy can run now), else raise.

    Raises:
        CacheModeError: unknown (the message lists ``available``), or known but not runnable here
            (the message says why, e.g. "no trained cache policy is loaded", and lists ``available``).
    """
    if name in available:
        return name
    if name not in _REGISTRY:
        raise CacheModeError(f"unknown cache mode {name!r}; available: {describe_modes(available)}")
    raise _not_available(_REGISTRY[name], available)


def _not_available(mode: CacheMode, available: Collection[str]) -> CacheModeError:
    reason = mode.unavailable_reason or "its selector is not set up in this policy"
    return CacheModeError(f"cache mode {mode.name!r} is not available: {reason}; "
                          f"available: {describe_modes(available)}")


def runnable_modes() -> tuple[str, ...]:
    """Modes whose selector the registry builds by itself (``learned`` is not among them)."""
    return tuple(mode.name for mode in _REGISTRY.values() if mode.builtin_selector)


def build_selector(name: str, **options: Any) -> Any:
    """A new selector for mode ``name``; ``options`` go to its factory (``vla_cache``: threshold,
    top_k_static, top_k_relevant, attention_layer).

    Raises:
        CacheModeError: unknown mode, or one whose selector must be supplied at run time.
    """
    mode = get_mode(name)
    factory = mode.selector
    if factory is None:
        raise _not_available(mode, runnable_modes())
    if isinstance(factory, str):
        module, _, attribute = factory.partition(":")
        factory = getattr(importlib.import_module(module), attribute)
    return factory(**options)


def default_sweep(representative_only: bool = False) -> tuple[str, ...]:
    """The mode specs compared by default (benchmark, replay, offline demo, the live demo's
    sweep): every mode the registry can run by itself, at each of its sweep specs --
    ``("off", "fixed:0.5", "fixed:0.75", "vla_cache")``. ``representative_only``: one spec per
    mode, ``("off", "fixed:0.5", "vla_cache")`` (sim-eval, where each mode costs many episodes)."""
    specs: list[str] = []
    for mode in _REGISTRY.values():
        if mode.builtin_selector:
            specs.extend(mode.sweep[:1] if representative_only else mode.sweep)
    return tuple(specs)


DEFAULT_SWEEP: tuple[str, ...] = default_sweep()
""":func:`default_sweep` of the built-in modes, for option defaults built at import."""


class ModeSpec(NamedTuple):
    """One parsed mode spec: ``ModeSpec("fixed:0.5", "fixed", 0.5)``."""

    text: str  # as written, without surrounding blanks
    name: str
    ratio: float  # cache ratio in [0, 1]: the given one, or the mode's bare_ratio

    @property
    def ratio_given(self) -> bool:
        """Whether the spec gave a ratio (``fixed:0.5``) rather than a bare name."""
        return ":" in self.text


def parse_mode(spec: str) -> ModeSpec:
    """``"fixed:0.5"`` -> ``ModeSpec("fixed:0.5", "fixed", 0.5)``; a bare name takes the mode's
    default ratio (``off``: 0, others: 1, i.e. no cap).

    Raises:
        CacheModeError: no name, unknown name (listing the known ones), a ratio that is not a
            number or lies outside [0, 1].
    """
    text = spec.strip()
    name, _, ratio = text.partition(":")
    if not name:
        raise CacheModeError(f"bad mode spec {spec!r}: no mode name")
    mode = get_mode(name)
    try:
        value = float(ratio) if ratio else mode.bare_ratio
    except ValueError:
        raise CacheModeError(f"bad mode spec {spec!r}: ratio must be a number") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise CacheModeError(f"bad mode spec {spec!r}: the cache ratio must lie in [0, 1]")
    return ModeSpec(text, name, value)


def parse_mode_spec(spec: str) -> tuple[str, float]:
    """``fixed:0.5`` -> ("fixed", 0.5); see :func:`parse_mode` (same errors)."""
    parsed = parse_mode(spec)
    return parsed.name, parsed.ratio


def split_mode_list(text: str, option: str = "--modes") -> list[str]:
    """``"off, fixed:0.5,vla_cache"`` -> ``["off", "fixed:0.5", "vla_cache"]`` (items not parsed).

    Raises:
        CacheModeError: no item, or an item listed twice (``option`` names the setting).
    """
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items:
        raise CacheModeError(f"{option} lists no mode")
    repeated = sorted({item for item in items if items.count(item) > 1})
    if repeated:
        raise CacheModeError(f"{option} repeats a mode: {', '.join(repeated)}")
    return items


def parse_mode_list(text: str, option: str = "--modes") -> list[ModeSpec]:
    """A comma-separated list of mode specs, parsed (errors of :func:`split_mode_list` and
    :func:`parse_mode`)."""
    return [parse_mode(item) for item in split_mode_list(text, option)]


DECODE_SETTINGS = ("greedy", "speculative")
"""How action tokens are decoded: ``greedy`` one forward pass per token after the first;
``speculative`` verifies a draft (the previous step's tokens) inside the prefill first. Both give
the greedy tokens (see ``cache.engine``)."""


def check_decode(name: str) -> str:
    """``name`` if it is one of :data:`DECODE_SETTINGS`.

    Raises:
        ConfigurationError: any other value (the message lists the settings).
    """
    return _checked_choice(name, DECODE_SETTINGS, "decode setting")


def _checked_choice(name: str, choices: tuple[str, ...], what: str) -> str:
    """``name`` if it is in ``choices``; else ConfigurationError naming ``what`` and the choices."""
    if name not in choices:
        raise ConfigurationError(f"unknown {what} {name!r}; choose from {', '.join(choices)}")
    return name


LM_HEAD_CHOICES = ("screened", "full")
"""How the greedy token is taken from the LM head: ``screened`` through a bfloat16 screen that
recomputes in float32 only the rows that could hold the maximum (``cache/lm_head.py``; the same
tokens); ``full`` runs the whole head."""


def check_lm_head(name: str) -> str:
    """``name`` if it is one of :data:`LM_HEAD_CHOICES`.

    Raises:
        ConfigurationError: any other value (the message lists the choices).
    """
    return _checked_choice(name, LM_HEAD_CHOICES, "lm_head")


PREPACK_CHOICES: dict[str, bool | None] = {"auto": None, "on": True, "off": False}


def parse_prepack(text: str) -> bool | None:
    """``auto`` / ``on`` / ``off`` -> the ``prepack`` argument of the engine: None / True / False."""
    try:
        return PREPACK_CHOICES[str(text).strip().lower()]
    except KeyError:
        raise ConfigurationError(
            f"weight prepacking must be one of {', '.join(PREPACK_CHOICES)}, got {text!r}") from None
