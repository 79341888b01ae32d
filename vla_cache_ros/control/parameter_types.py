"""Check one node parameter value against its :class:`~vla_cache_ros.control.settings.ParameterSpec`.

Used for values from params files before rclpy declares them (rclpy itself would stop with a
25-line traceback on an integer written for a double) and for every live change (rclpy checks
declared types and ranges, but lets NaN through a range). Users write YAML the way they think of
numbers, so whole numbers are accepted where doubles are expected (``cache_ratio: 1``,
``joint_lower_limits: [-3, -3, 3]``); strings are never taken for numbers (``"0.5"`` is refused),
and neither are booleans (YAML ``yes``).

Errors name the parameter, the value (user text clipped) and what is expected, on one line.
"""
from __future__ import annotations

import math
from typing import Any

from vla_cache_ros.errors import ConfigurationError, clip_text

_KIND_WORDS = {
    "bool": "true or false", "int": "an integer", "double": "a number",
    "string": "a string", "double_array": "a list of numbers",
    "string_array": "a list of strings",
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _refuse(spec: Any, value: Any, expected: str) -> ConfigurationError:
    shown = clip_text(repr(value))
    return ConfigurationError(f"parameter {spec.name}: got {shown} ({type(value).__name__}), "
                              f"expected {expected}")


def _in_range(spec: Any, number: float) -> None:
    if not math.isfinite(number):
        raise ConfigurationError(f"parameter {spec.name}: got {number}, expected a finite number")
    low, high = spec.minimum, spec.maximum
    if (low is not None and number < low) or (high is not None and number > high):
        raise ConfigurationError(f"parameter {spec.name}: got {number:g}, expected a value in "
                                 f"[{low:g}, {high:g}]")


def coerce_parameter(spec: Any, value: Any) -> Any:
    """Return ``value`` in the parameter's declared type, or raise why it cannot be used.

    Args:
        spec: the parameter's ``ParameterSpec`` (``kind``, ``minimum``/``maximum``, ``choices``).
        value: a plain Python value as parsed from YAML or received from a parameter service.

    Returns:
        The value with whole numbers turned into floats for ``double`` / ``double_array``;
        lists as lists.

    Raises:
        ConfigurationError: wrong type (a string for a number, a float for an integer, ...),
            NaN / inf, out of the spec's range, or not one of its choices.
    """
    kind = spec.kind
    expected = _KIND_WORDS[kind]
    if kind == "bool":
        if not isinstance(value, bool):
            raise _refuse(spec, value, expected)
        return value
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise _refuse(spec, value, expected)
        _in_range(spec, float(value))
        return value
    if kind == "double":
        if not _is_number(value):
            raise _refuse(spec, value, expected)
        number = float(value)
        _in_range(spec, number)
        return number
    if kind == "string":
        if not isinstance(value, str):
            raise _refuse(spec, value, expected)
        if spec.choices and value not in spec.choices:
            raise ConfigurationError(f"parameter {spec.name}: got {clip_text(repr(value))}, "
                                     f"expected one of {', '.join(spec.choices)}")
        return value
    if not isinstance(value, (list, tuple)):
        raise _refuse(spec, value, expected)
    if kind == "double_array":
        if not all(_is_number(item) for item in value):
            raise _refuse(spec, value, expected)
        numbers = [float(item) for item in value]
        bad = [number for number in numbers if not math.isfinite(number)]
        if bad:
            raise ConfigurationError(f"parameter {spec.name}: contains {bad[0]}, expected "
                                     "finite numbers")
        return numbers
    if not all(isinstance(item, str) for item in value):  # string_array
        raise _refuse(spec, value, expected)
    return list(value)
