"""Input validation: vectors, scalars and joint selection reject bad data with clear messages."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vla_cache_ros.control.validation import (InvalidInputError, finite_scalar, finite_vector,
                                              positive_scalar, select_joint_positions)
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
    assert isinstance(info.value, UserFacingError) and isinstance(info.value, ValueError)


def test_scalars() -> None:
    assert finite_scalar("0.5", "r", 0.0, 1.0) == 0.5
    with pytest.raises(InvalidInputError, match="r must be <= 1.0"):
        finite_scalar(1.5, "r", 0.0, 1.0)
    with pytest.raises(InvalidInputError, match="finite"):
        finite_scalar(math.nan, "r")
    with pytest.raises(InvalidInputError, match="period must be > 0"):
        positive_scalar(0.0, "period")


def test_select_joint_positions_orders_by_wanted() -> None:
    result = select_joint_positions(["b", "a", "c"], [2.0, 1.0, 3.0], ["a", "b"])
    assert result.tolist() == [1.0, 2.0]
    # A NaN in a joint we do not use is irrelevant.
    assert select_joint_positions(["a", "x"], [1.0, math.nan], ["a"]).tolist() == [1.0]
    assert select_joint_positions(["a", "b"], [1.0, 2.0], []).tolist() == [1.0, 2.0]


@pytest.mark.parametrize("names, positions, wanted, fragment", [
    (["a", "b"], [1.0], ["a"], "2 names but 1 positions"),
    (["a", "b"], [1.0, 2.0], ["a", "z"], "lacks configured joints ['z']"),
    (["a", "b"], [math.nan, 2.0], ["a"], "non-finite positions for ['a']"),
    (["a", "a"], [1.0, 2.0], ["a"], "duplicate joint names"),
    (["a", "b"], [1.0, math.inf], [], "non-finite"),
])
def test_select_joint_positions_rejects(names: list[str], positions: list[float],
                                        wanted: list[str], fragment: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        select_joint_positions(names, positions, wanted)
    assert fragment in str(info.value)
