"""Cache settings as users write them: mode specs (``off``, ``fixed:0.5``, ``vla_cache``) and the
CPU weight-prepacking choice (``auto`` / ``on`` / ``off``).

One parser each for the benchmark, the offline replay, the demo and the node (light: no torch
import, so option parsing and parameter tables stay cheap).
"""
from __future__ import annotations

from vla_cache_ros.errors import ConfigurationError


def parse_mode_spec(spec: str) -> tuple[str, float]:
    """``fixed:0.5`` -> ("fixed", 0.5); a bare mode runs at ratio 1.0 (``vla_cache``: no cap), ``off`` at 0."""
    name, _, ratio = spec.strip().partition(":")
    if not name:
        raise ConfigurationError(f"bad mode spec {spec!r}: no mode name")
    try:
        value = float(ratio) if ratio else (0.0 if name == "off" else 1.0)
    except ValueError as error:
        raise ConfigurationError(f"bad mode spec {spec!r}: ratio must be a number") from error
    if not 0.0 <= value <= 1.0:
        raise ConfigurationError(f"bad mode spec {spec!r}: the cache ratio must lie in [0, 1]")
    return name, value


PREPACK_CHOICES: dict[str, bool | None] = {"auto": None, "on": True, "off": False}


def parse_prepack(text: str) -> bool | None:
    """``auto`` / ``on`` / ``off`` -> the ``prepack`` argument of the engine: None / True / False."""
    try:
        return PREPACK_CHOICES[str(text).strip().lower()]
    except KeyError:
        raise ConfigurationError(
            f"weight prepacking must be one of {', '.join(PREPACK_CHOICES)}, got {text!r}") from None
