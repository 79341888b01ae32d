"""The node's configuration as plain data: the parameter table is complete, defaults build a
valid config, changes are validated into a new config (one request at a time, as rqt sends them)."""
from __future__ import annotations

import re
from typing import Any

import pytest

from vla_cache_ros.control.actions import CommandInterface
from vla_cache_ros.errors import ConfigurationError
from vla_cache_ros.runtime.config import NodeConfig
from vla_cache_ros.runtime.parameters import NODE_PARAMETERS, SPECS, coerce_parameter, defaults

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
    config = NodeConfig.from_values({})
    assert config.enable_actuation is False and config.autostart is True
    assert config.controller.action.interface is CommandInterface.EE_TWIST
    assert config.interface.command_interface is CommandInterface.EE_TWIST
    assert config.controller.min_duration_s == pytest.approx(1.0 / config.interface.control_rate_hz)
    assert config.controller.required_inputs == ("camera",)
    assert config.cache.mode == defaults()["cache_mode"] and config.model.unnorm_key is None


def test_joint_config_requires_matching_names_and_limits() -> None:
    values = {"command_interface": "joint_trajectory", "action_semantics": "joint_delta"}
    with pytest.raises(ConfigurationError, match="needs joint_names with 6 joints"):
        NodeConfig.from_values(values)
    values["joint_names"] = JOINTS
    assert NodeConfig.from_values(values).controller.required_inputs == ("camera", "joint_states")
    values.update(joint_lower_limits=[-1.0] * 5, joint_upper_limits=[1.0] * 5)
    with pytest.raises(ConfigurationError, match="upper_limits have 5 values but joint_names has 6"):
        NodeConfig.from_values(values)
    values.update(joint_lower_limits=[], joint_upper_limits=[1.0] * 5)
    with pytest.raises(ConfigurationError, match="joint_upper_limits has 5 values but joint_names"):
        NodeConfig.from_values(values)


@pytest.mark.parametrize("name, value, expected", [
    ("cache_ratio", 1, 1.0), ("joint_lower_limits", [-3, 0, 3], [-3.0, 0.0, 3.0]),
    ("max_token_age", 5, 5), ("instruction", "go", "go"), ("enable_actuation", True, True),
])
def test_whole_numbers_are_accepted_for_doubles(name: str, value: Any, expected: Any) -> None:
    coerced = coerce_parameter(SPECS[name], value)
    assert coerced == expected and type(coerced) is type(expected)


@pytest.mark.parametrize("name, value, fragment", [
    ("cache_ratio", "0.5", "got '0.5' (str), expected a number"),
    ("cache_ratio", float("nan"), "expected a finite number"),
    ("cache_ratio", True, "got True (bool), expected a number"),
    ("control_rate_hz", 2000.0, "expected a value in [1, 1000]"),
    ("max_token_age", 2.0, "expected an integer"),
    ("joint_names", ["a", 1], "expected a list of strings"),
    ("cache_mode", "turbo", "expected one of"),
    ("instruction", 5, "expected a string"),
    ("joint_names", ["x" * 5000, 1], "... (5007 characters)"),  # user text is clipped
])
def test_bad_values_are_refused_naming_the_parameter(name: str, value: Any, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        coerce_parameter(SPECS[name], value)
    assert str(info.value).startswith(f"parameter {name}: ") and fragment in str(info.value)
    assert len(str(info.value)) < 400


def test_config_is_frozen_and_changes_make_a_new_one() -> None:
    config = NodeConfig.from_values({})
    changed = config.with_changes({"cache_ratio": 0.25, "max_obs_age_s": 2}, MODES)
    assert changed.cache.ratio == 0.25 and changed.controller.watchdog.max_obs_age_s == 2.0
    assert config.cache.ratio == defaults()["cache_ratio"]  # the old one is untouched
    with pytest.raises(AttributeError):
        config.cache = changed.cache  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.values["cache_ratio"] = 0.1  # type: ignore[index]


@pytest.mark.parametrize("changes, fragment", [
    ({"cache_mode": "turbo"}, "unknown cache mode 'turbo'; available: off"),
    ({"cache_mode": "learned"}, "'learned' is not available: no trained cache policy"),
    ({"model_path": "/x"}, "read-only parameters cannot change at run time: model_path"),
    ({"instruction": "  "}, "instruction must not be empty"),
    ({"workspace_min": [0.0, 0.0]}, "workspace_min must have 3 values"),
    ({"action_scale": [1.0, 2.0]}, "action scale needs 7 values"),
    ({"bogus": 1}, "unknown parameters: bogus"),
    ({"decode": "beam"}, "parameter decode: got 'beam', expected one of greedy, speculative"),
])
def test_refused_changes(changes: dict, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        NodeConfig.from_values({}).with_changes(changes, MODES)
    assert fragment in str(info.value)


def test_accepted_changes() -> None:
    config = NodeConfig.from_values({})
    assert config.with_changes({"cache_mode": "vla_cache", "cache_ratio": 0.7}, MODES).cache.mode \
        == "vla_cache"
    box = config.with_changes({"workspace_min": [0.0, 0.0, 0.0],
                               "workspace_max": [1.0, 1.0, 1.0]}, MODES)
    assert box.controller.limits.workspace_max == (1.0, 1.0, 1.0)
    assert config.with_changes({"cache_mode": "learned"}).cache.mode == "learned"  # not loaded yet
    assert config.cache.decode == "greedy"
    assert config.with_changes({"decode": "speculative"}, MODES).cache.decode == "speculative"  # live


class Current:
    """What the node holds: the config in force; rqt sends one parameter per request."""

    def __init__(self, **values: Any) -> None:
        self.config = NodeConfig.from_values(values)

    def __getitem__(self, name: str) -> Any:
        return self.config.values[name]


def apply_one_by_one(current: Current, name: str, value: object) -> str | None:
    """What rqt_reconfigure does: one parameter per request; apply it when accepted."""
    try:
        current.config = current.config.with_changes({name: value}, MODES)
    except ConfigurationError as error:
        return str(error)
    return None


def controller_config(current: Current) -> Any:
    return current.config.controller


def test_workspace_sides_set_one_request_at_a_time_like_rqt() -> None:
    """Issue 10 item 4: workspace_min alone used to be refused ("must be set together")."""
    current = Current()
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
    current = Current(command_interface="joint_trajectory", action_semantics="joint_delta",
                      joint_names=JOINTS)
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


def test_optional_interfaces_default_to_what_needs_no_system_ros() -> None:
    interface = NodeConfig.from_values({}).interface
    assert (interface.gripper_interface, interface.ee_pose_source, interface.servo_start_service) == (
        "topic", "topic", "")
    assert interface.reads_ee_pose and interface.ee_pose_description == "topic ee_pose"
    tf = NodeConfig.from_values({"ee_pose_source": "tf", "twist_frame_id": "world"}).interface
    assert (tf.tf_base_frame, tf.tf_tool_frame) == ("world", "tool0")  # base: twist_frame_id
    assert tf.ee_pose_description == "tf world -> tool0"
    joints = NodeConfig.from_values({"command_interface": "joint_positions",
                                     "action_semantics": "joint_delta", "joint_names": JOINTS})
    assert not joints.interface.reads_ee_pose


@pytest.mark.parametrize("values, fragment", [
    ({"ee_pose_source": "tf", "tf_tool_frame": " "}, "ee_pose_source tf needs tf_tool_frame"),
    ({"servo_start_service": "/servo_node/start_servo", "command_interface": "joint_positions",
      "action_semantics": "joint_delta", "joint_names": JOINTS},
     "servo_start_service is for MoveIt Servo (command_interface ee_twist), not joint_positions"),
    ({"gripper_interface": "gripper_command", "gripper_action_name": ""},
     "gripper_interface gripper_command needs gripper_action_name"),
    ({"gripper_interface": "robotiq"}, "expected one of topic, gripper_command, "
     "parallel_gripper_command"),
    ({"servo_start_type": "start"}, "expected one of switch_command_type, trigger"),
])
def test_optional_interface_settings_are_cross_checked(values: dict, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(fragment)):
        NodeConfig.from_values(values)
