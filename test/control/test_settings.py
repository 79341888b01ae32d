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
    with pytest.raises(InvalidInputError, match="have 5 values but joint_names has 6"):
        controller_config(values)


@pytest.mark.parametrize("changes, fragment", [
    ({"cache_mode": "turbo"}, "cache_mode 'turbo' is not available; available: off"),
    ({"cache_mode": "learned"}, "no trained cache policy"),
    ({"model_path": "/x"}, "read-only parameters cannot change at run time: model_path"),
    ({"instruction": "  "}, "instruction must not be empty"),
    ({"workspace_min": [0.0, 0.0, 0.0]}, "must be set together"),
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
