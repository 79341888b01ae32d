"""Input validation: vectors, scalars and joint selection reject bad data with clear messages."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vla_cache_ros.control.validation import (
    InvalidInputError,
    finite_scalar,
    finite_vector,
    message_joint_positions,
    pick_joint_positions,
    positive_scalar,
)
from vla_cache_ros.errors import UserFacingError


def test_finite_vector_returns_float_copy() -> None:
    source = [1, 2, 3]
    result = finite_vector(source, "x", size=3)
    assert result.dtype == np.float64 and result.tolist() == [1.0, 2.0, 3.0]
    array = np.ones(2)
    assert finite_vector(array, "x") is not array


@pytest.mark.parametrize("values, size, fragment", [
    ([1.0, math.nan], None, "non-finite values: [1]=nan"),
    ([math.inf, 0.0], None, "[0]=inf"),
    ([1.0, 2.0], 3, "must have 3 values, got 2"),
    ([[1.0], [2.0]], None, "one-dimensional"),
    (["a", "b"], None, "sequence of numbers"),
])
def test_finite_vector_rejects(values: object, size: int | None, fragment: str) -> None:
    with pytest.raises(InvalidInputError, match="action") as info:
        finite_vector(values, "action", size=size)
    assert fragment in str(info.value)
    # User input, not a bug: never mistaken for a ValueError (which means a bug here).
    assert isinstance(info.value, UserFacingError) and not isinstance(info.value, ValueError)


def test_scalars() -> None:
    assert finite_scalar("0.5", "r", 0.0, 1.0) == 0.5
    with pytest.raises(InvalidInputError, match="r must be <= 1.0"):
        finite_scalar(1.5, "r", 0.0, 1.0)
    with pytest.raises(InvalidInputError, match="finite"):
        finite_scalar(math.nan, "r")
    with pytest.raises(InvalidInputError, match="period must be > 0"):
        positive_scalar(0.0, "period")


def test_pick_joint_positions_orders_by_wanted() -> None:
    assert pick_joint_positions(["b", "a", "c"], [2.0, 1.0, 3.0], ["a", "b"]) == {"a": 1.0,
                                                                                  "b": 2.0}
    # A NaN in a joint we do not use is irrelevant.
    assert pick_joint_positions(["a", "x"], [1.0, math.nan], ["a"]) == {"a": 1.0}
    assert message_joint_positions(["a", "b"], [1.0, 2.0]).tolist() == [1.0, 2.0]


def test_pick_joint_positions_takes_part_of_the_joints_and_ignores_other_publishers() -> None:
    # Joints 1-3 from one publisher: only those are picked (the rest come from another).
    assert pick_joint_positions(["a", "b"], [1.0, 2.0], ["a", "b", "c"]) == {"a": 1.0, "b": 2.0}
    # A gripper driver's fingers only: irrelevant, even if the message is otherwise malformed.
    assert pick_joint_positions(["finger_l", "finger_r"], [0.01, math.nan], ["a", "b"]) == {}
    assert pick_joint_positions(["finger", "finger"], [0.01], ["a"]) == {}


@pytest.mark.parametrize("names, positions, wanted, fragment", [
    (["a", "b"], [1.0], ["a"], "2 names but 1 positions"),
    (["a", "b"], [math.nan, 2.0], ["a"], "non-finite positions for ['a']"),
    (["a", "a"], [1.0, 2.0], ["a"], "duplicate joint names"),
    (["a", "x", "x"], [1.0, 2.0, 3.0], ["a"], "duplicate joint names"),
    (["a", "b"], ["p", 2.0], ["a"], "must be numbers"),
])
def test_pick_joint_positions_rejects(names: list[str], positions: list[float],
                                      wanted: list[str], fragment: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        pick_joint_positions(names, positions, wanted)
    assert fragment in str(info.value)


@pytest.mark.parametrize("names, positions, fragment", [
    (["a", "b"], [1.0, math.inf], "non-finite"),
    (["a", "b"], [1.0], "2 names but 1 positions"),
])
def test_message_joint_positions_rejects(names: list[str], positions: list[float],
                                         fragment: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        message_joint_positions(names, positions)
    assert fragment in str(info.value)
