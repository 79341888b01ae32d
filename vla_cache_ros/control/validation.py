"""Input checks shared by the control layer: finite vectors, scalars and joint selection.

Everything that reaches the mapping or safety code passes through these helpers, so a NaN
joint reading, a 6-D action where 7 were expected, or a malformed JointState fails here with a
message that names the input and what was wrong with it. A JointState carrying only some (or
none) of the configured joints is not malformed: joint states may come from several publishers
and are merged by name (see :meth:`~vla_cache_ros.control.controller.Controller.on_joint_state`).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

from vla_cache_ros.errors import InvalidInputError


def finite_vector(values: Any, name: str, size: int | None = None) -> np.ndarray:
    """Return ``values`` as a new 1-D float64 array, checking length and finiteness.

    Args:
        values: any sequence or array of numbers.
        name: what the values are, used in the error message (e.g. ``"action"``).
        size: required length, or None for any length.

    Raises:
        InvalidInputError: not numeric, not 1-D, wrong length, or containing NaN / inf.
    """
    try:
        array = np.array(values, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as error:
        raise InvalidInputError(f"{name} must be a sequence of numbers ({error})") from None
    if array.ndim != 1:
        raise InvalidInputError(f"{name} must be one-dimensional, got shape {array.shape}")
    if size is not None and array.shape[0] != size:
        raise InvalidInputError(f"{name} must have {size} values, got {array.shape[0]}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        shown = ", ".join(f"[{i}]={array[i]}" for i in bad[:4])
        raise InvalidInputError(f"{name} contains non-finite values: {shown}")
    return array


def finite_scalar(value: Any, name: str, minimum: float | None = None,
                  maximum: float | None = None) -> float:
    """Return ``value`` as a finite float within ``[minimum, maximum]`` (either bound optional)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InvalidInputError(f"{name} must be finite, got {number}")
    if minimum is not None and number < minimum:
        raise InvalidInputError(f"{name} must be >= {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise InvalidInputError(f"{name} must be <= {maximum}, got {number}")
    return number


def positive_scalar(value: Any, name: str) -> float:
    """Return ``value`` as a finite float > 0."""
    number = finite_scalar(value, name)
    if number <= 0.0:
        raise InvalidInputError(f"{name} must be > 0, got {number}")
    return number


def _joint_state_arrays(names: Sequence[str],
                        positions: Iterable[float]) -> tuple[list[str], np.ndarray]:
    """Names and positions of a JointState-like pair as a list and a float array.

    Raises:
        InvalidInputError: positions that are not numbers, or not one per name.
    """
    names = [str(name) for name in names]
    try:
        raw = np.array(list(positions), dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InvalidInputError(f"joint_states.position must be numbers ({error})") from None
    if raw.ndim != 1 or raw.shape[0] != len(names):
        raise InvalidInputError(f"joint_states has {len(names)} names but {raw.size} positions")
    return names, raw


def message_joint_positions(names: Sequence[str], positions: Iterable[float]) -> np.ndarray:
    """Every position of a JointState-like (names, positions) pair, in message order.

    What the controller uses when no joint names are configured.

    Raises:
        InvalidInputError: names and positions differ in length, or a position is NaN / inf.
    """
    _, raw = _joint_state_arrays(names, positions)
    return finite_vector(raw, "joint_states.position")


def pick_joint_positions(names: Sequence[str], positions: Iterable[float],
                         wanted: Sequence[str]) -> dict[str, float]:
    """The ``wanted`` joints a JointState-like (names, positions) pair carries, in ``wanted`` order.

    A message may carry only some of the wanted joints, or none (an empty dict): several
    publishers may share the topic, e.g. an arm's joint_state_broadcaster and a gripper driver
    that publishes only its finger joints. A message with none of the wanted joints is not
    checked further (it is someone else's); joints not wanted are ignored, NaN included.

    Raises:
        InvalidInputError: (for a message carrying a wanted joint) names and positions differ in
            length, duplicate joint names, or a wanted joint's position is NaN / inf.
    """
    listed = [str(name) for name in names]
    wanted_set = set(wanted)
    if not wanted_set.intersection(listed):
        return {}
    listed, raw = _joint_state_arrays(listed, positions)
    if len(set(listed)) != len(listed):
        raise InvalidInputError(f"joint_states has duplicate joint names: {listed}")
    index = {joint: i for i, joint in enumerate(listed)}
    picked = {joint: float(raw[index[joint]]) for joint in wanted if joint in index}
    bad = [joint for joint, value in picked.items() if not math.isfinite(value)]
    if bad:
        raise InvalidInputError(f"joint_states has non-finite positions for {bad}")
    return picked
