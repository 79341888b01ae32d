"""Gripper hysteresis: debounced open/close, OpenVLA and inverted conventions, custom commands."""
from __future__ import annotations

import math

import pytest

from vla_cache_ros.control.gripper import GripperConfig, GripperHysteresis
from vla_cache_ros.errors import InvalidInputError


def test_openvla_convention_with_hysteresis() -> None:
    gripper = GripperHysteresis(GripperConfig(hysteresis=0.2, command_open=0.04,
                                              command_closed=0.0))
    assert gripper.command == 0.04  # initially open
    assert gripper.update(0.45) == 0.04  # inside the band: no change
    assert gripper.update(0.39) == 0.0  # below 0.4: close
    assert gripper.update(0.55) == 0.0  # inside the band: stays closed
    assert gripper.update(0.61) == 0.04  # above 0.6: open
    gripper.update(0.0)
    gripper.reset()
    assert gripper.is_open


def test_inverted_convention() -> None:
    gripper = GripperHysteresis(GripperConfig(action_open=0.0, action_closed=1.0,
                                              initially_open=False))
    assert gripper.update(0.1) == 1.0  # 0.1 means "nearly open" in this convention
    assert gripper.update(0.9) == 0.0


def test_bad_config_and_values() -> None:
    with pytest.raises(InvalidInputError, match="must differ"):
        GripperConfig(action_open=1.0, action_closed=1.0)
    with pytest.raises(InvalidInputError, match="hysteresis must be <= 0.99"):
        GripperConfig(hysteresis=1.5)
    with pytest.raises(InvalidInputError, match="gripper action must be finite"):
        GripperHysteresis().update(math.nan)


def test_action_goals_only_when_the_decision_changes() -> None:
    """The action output's mapping: the same hysteresis as the topic, a goal per change."""
    from vla_cache_ros.control.gripper import GoalGate

    gripper = GripperHysteresis(GripperConfig(hysteresis=0.2, command_open=0.04,
                                              command_closed=0.0))
    gate = GoalGate()
    sent = []
    for value in [1.0, 0.9, 0.45, 0.39, 0.2, 0.55, 0.61, 0.7]:
        goal = gate.take(gripper.update(value), actuate=True)
        if goal is not None:
            gate.delivered(goal)
            sent.append(goal)
    assert sent == [0.04, 0.0, 0.04]  # first decision, close below 0.4, open above 0.6


def test_goal_gate_retries_undelivered_and_resends_after_actuation_or_reset() -> None:
    from vla_cache_ros.control.gripper import GoalGate

    gate = GoalGate()
    assert gate.take(None, actuate=True) is None
    assert gate.take(1.0, actuate=True) == 1.0  # not delivered (no server yet) ...
    assert gate.take(1.0, actuate=True) == 1.0  # ... so offered again
    gate.delivered(1.0)
    assert gate.take(1.0, actuate=True) is None
    assert gate.take(1.0, actuate=False) is None  # dry run: nothing goes out ...
    assert gate.take(1.0, actuate=True) == 1.0  # ... and the decision is sent again after
    gate.delivered(1.0)
    gate.reset()  # activation
    assert gate.take(1.0, actuate=True) == 1.0
