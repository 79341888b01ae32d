"""Node settings as plain data: defaults build a valid controller, changes are checked."""
from __future__ import annotations

import pytest

from vla_cache_ros.control.actions import CommandInterface
from vla_cache_ros.control.settings import (NODE_PARAMETERS, SPECS, check_change,
                                            controller_config, defaults)
from vla_cache_ros.control.validation import InvalidInputError

MODES = ["off", "fixed", "vla_cache"]
JOINTS = ["a", "b", "c", "d", "e", "f"]


def test_every_parameter_is_described_and_numeric_ones_have_ranges() -> None:
    assert len(SPECS) == len(NODE_PARAMETERS)
    for spec in NODE_PARAMETERS:
        assert spec.description, spec.name
        if spec.kind in ("int", "double"):
            assert spec.minimum is not None and spec.maximum is not None, spec.name
            assert spec.minimum <= spec.default <= spec.maximum, spec.name
    for name in ("model_path", "command_interface", "image_type", "device", "joint_names"):
        assert SPECS[name].read_only, name
    for name in ("cache_ratio", "cache_mode", "instruction", "enable_actuation",
                 "max_translation_m", "max_obs_age_s", "joint_lower_limits"):
        assert not SPECS[name].read_only, name


def test_defaults_build_a_dry_run_twist_controller() -> None:
    values = defaults()
    assert values["enable_actuation"] is False
    config = controller_config(values)
    assert config.action.interface is CommandInterface.EE_TWIST
    assert config.min_duration_s == pytest.approx(1.0 / values["control_rate_hz"])
    assert config.required_inputs == ("camera",)


def test_joint_config_requires_matching_names_and_limits() -> None:
    values = {**defaults(), "command_interface": "joint_trajectory",
              "action_semantics": "joint_delta"}
    with pytest.raises(InvalidInputError, match="needs joint_names with 6 joints"):
        controller_config(values)
    values["joint_names"] = JOINTS
    assert controller_config(values).required_inputs == ("camera", "joint_states")
    values.update(joint_lower_limits=[-1.0] * 5, joint_upper_limits=[1.0] * 5)
    with pytest.raises(InvalidInputError, match="upper_limits have 5 values but joint_names has 6"):
        controller_config(values)
    values.update(joint_lower_limits=[], joint_upper_limits=[1.0] * 5)
    with pytest.raises(InvalidInputError, match="joint_upper_limits has 5 values but joint_names"):
        controller_config(values)


@pytest.mark.parametrize("changes, fragment", [
    ({"cache_mode": "turbo"}, "cache_mode 'turbo' is not available; available: off"),
    ({"cache_mode": "learned"}, "no trained cache policy"),
    ({"model_path": "/x"}, "read-only parameters cannot change at run time: model_path"),
    ({"instruction": "  "}, "instruction must not be empty"),
    ({"workspace_min": [0.0, 0.0]}, "workspace_min must have 3 values"),
    ({"action_scale": [1.0, 2.0]}, "action scale needs 7 values"),
    ({"bogus": 1}, "unknown parameters: bogus"),
])
def test_refused_changes(changes: dict, fragment: str) -> None:
    reason = check_change(defaults(), changes, MODES)
    assert reason is not None and fragment in reason


def test_accepted_changes() -> None:
    assert check_change(defaults(), {"cache_mode": "vla_cache", "cache_ratio": 0.7}, MODES) is None
    assert check_change(defaults(), {"workspace_min": [0.0, 0.0, 0.0],
                                     "workspace_max": [1.0, 1.0, 1.0]}, MODES) is None


def apply_one_by_one(current: dict, name: str, value: object) -> str | None:
    """What rqt_reconfigure does: one parameter per request; apply it when accepted."""
    reason = check_change(current, {name: value}, MODES)
    if reason is None:
        current[name] = value
    return reason


def test_workspace_sides_set_one_request_at_a_time_like_rqt() -> None:
    """Issue 10 item 4: workspace_min alone used to be refused ("must be set together")."""
    current = defaults()
    assert apply_one_by_one(current, "workspace_min", [0.0, -0.5, 0.0]) is None
    assert controller_config(current).required_inputs == ("camera", "ee_pose")
    assert controller_config(current).limits.workspace_max is None
    assert apply_one_by_one(current, "workspace_max", [0.6, 0.5, 0.4]) is None
    limits = controller_config(current).limits
    assert limits.workspace_min == (0.0, -0.5, 0.0) and limits.workspace_max == (0.6, 0.5, 0.4)
    # A maximum below the current minimum: refused, naming both values and the way out.
    reason = apply_one_by_one(current, "workspace_max", [0.6, -0.6, 0.4])
    assert reason == ("workspace_min [0, -0.5, 0] must be below workspace_max [0.6, -0.6, 0.4] "
                      "on every axis (not on y) (change workspace_min first, or both in one "
                      "request)")
    assert current["workspace_max"] == [0.6, 0.5, 0.4]  # unchanged
    # Moving the box up by 1 m one side at a time works in the right order.
    assert apply_one_by_one(current, "workspace_min", [0.0, -0.5, 1.0]) is not None
    assert apply_one_by_one(current, "workspace_max", [0.6, 0.5, 1.4]) is None
    assert apply_one_by_one(current, "workspace_min", [0.0, -0.5, 1.0]) is None
    # Clearing one side leaves a one-sided box; clearing both switches the box off.
    assert apply_one_by_one(current, "workspace_min", []) is None
    assert controller_config(current).required_inputs == ("camera", "ee_pose")
    assert apply_one_by_one(current, "workspace_max", []) is None
    assert controller_config(current).required_inputs == ("camera",)
    # A side that is wrong on its own gets no partner advice.
    reason = apply_one_by_one(current, "workspace_max", [0.6, 0.5])
    assert reason == "workspace_max must have 3 values, got 2"


def test_joint_limits_set_one_request_at_a_time_like_rqt() -> None:
    current = {**defaults(), "command_interface": "joint_trajectory",
               "action_semantics": "joint_delta", "joint_names": JOINTS}
    assert apply_one_by_one(current, "joint_lower_limits", [-1.0] * 6) is None
    assert controller_config(current).limits.joint_upper == ()
    assert apply_one_by_one(current, "joint_upper_limits", [1.0] * 6) is None
    reason = apply_one_by_one(current, "joint_upper_limits", [1.0] * 5 + [-2.0])
    assert reason == ("joint_lower [-1, -1, -1, -1, -1, -1] must not exceed joint_upper "
                      "[1, 1, 1, 1, 1, -2] (joint indices [5]) (change joint_lower_limits first, "
                      "or both in one request)")
    reason = apply_one_by_one(current, "joint_lower_limits", [-1.0] * 5)
    assert reason is not None and "joint_lower_limits has 5 values but joint_names has 6" in reason
    assert "change joint_upper_limits first" not in reason
    assert current["joint_lower_limits"] == [-1.0] * 6 and current["joint_upper_limits"] == [1.0] * 6
