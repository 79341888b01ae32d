"""Declare a node's parameters from the ROS-free parameter table, with descriptors for rqt.

:func:`declare_from_table` checks the values given on the command line and in params files
against :data:`~vla_cache_ros.runtime.parameters.NODE_PARAMETERS` *before* rclpy declares them
(rclpy would stop with a traceback on an integer written for a double), then declares each
parameter with a descriptor: description, read-only flag, range (a slider in rqt_reconfigure;
step 0.0 since its double slider ignores steps) and the listed choices.
"""
from __future__ import annotations

import difflib
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter

from vla_cache_ros.errors import ConfigurationError
from vla_cache_ros.ros import qos
from vla_cache_ros.runtime.parameters import NODE_PARAMETERS, SPECS, ParameterSpec, coerce_parameter

ROS_OWN_PARAMETERS = frozenset({"use_sim_time", "start_type_description_service"})
"""Parameters rclpy itself declares on every node."""
ROS_OWN_PREFIXES = ("qos_overrides.",)

PARAMETER_TYPES = {
    "bool": Parameter.Type.BOOL, "int": Parameter.Type.INTEGER, "double": Parameter.Type.DOUBLE,
    "string": Parameter.Type.STRING, "double_array": Parameter.Type.DOUBLE_ARRAY,
    "string_array": Parameter.Type.STRING_ARRAY,
}


def descriptor_for(spec: ParameterSpec) -> ParameterDescriptor:
    """A ParameterDescriptor with description, read-only flag, range and listed choices."""
    descriptor = ParameterDescriptor(
        name=spec.name, type=PARAMETER_TYPES[spec.kind].value, description=spec.description,
        read_only=spec.read_only)
    if spec.choices:
        descriptor.additional_constraints = "one of: " + ", ".join(spec.choices)
    if spec.minimum is not None and spec.maximum is not None:
        if spec.kind == "int":
            descriptor.integer_range = [IntegerRange(from_value=int(spec.minimum),
                                                     to_value=int(spec.maximum), step=1)]
        else:
            descriptor.floating_point_range = [FloatingPointRange(
                from_value=float(spec.minimum), to_value=float(spec.maximum), step=0.0)]
    return descriptor


def declare_from_table(node: Node) -> None:
    """Declare every parameter of the table on ``node``, after checking the given values.

    Raises:
        ConfigurationError: an unknown parameter name (with the closest known one), a given
            value of the wrong type, out of range, or not finite, or a bad QoS override of the
            node's subscriptions (see :func:`~vla_cache_ros.ros.qos.check_overrides`).
    """
    overrides = getattr(node, "_parameter_overrides", {})  # rclpy's parsed --ros-args values
    unknown = sorted(name for name in overrides
                     if name not in SPECS and name not in ROS_OWN_PARAMETERS
                     and not name.startswith(ROS_OWN_PREFIXES))
    if unknown:  # a misspelt enable_actuation or clamp must not pass silently
        hints = [f"{name} (did you mean {close[0]}?)" if close else name for name, close in
                 ((name, difflib.get_close_matches(name, SPECS, n=1)) for name in unknown)]
        raise ConfigurationError(
            f"unknown parameters: {', '.join(hints)} (a params file shared with other nodes must "
            f"put this node's parameters under its own name, not /**)")
    qos.check_overrides({name: given.value for name, given in overrides.items()},
                        [node.resolve_topic_name(topic) for topic in qos.OVERRIDABLE_TOPICS],
                        [node.resolve_topic_name(topic) for topic in qos.FIXED_TOPICS])
    for spec in NODE_PARAMETERS:
        given = overrides.get(spec.name)
        if given is not None and given.type_ is not Parameter.Type.NOT_SET:
            overrides[spec.name] = Parameter(spec.name, PARAMETER_TYPES[spec.kind],
                                             coerce_parameter(spec, given.value))
    for spec in NODE_PARAMETERS:
        descriptor = descriptor_for(spec)
        if spec.kind.endswith("_array"):
            # An empty list has no type in rclpy: declare typed and writable, fill in the
            # default if nothing overrode it, then apply the real (maybe read-only) descriptor.
            writable = descriptor_for(spec)
            writable.read_only = False
            parameter = node.declare_parameter(spec.name, PARAMETER_TYPES[spec.kind], writable)
            if parameter.value is None:
                node.set_parameters([Parameter(spec.name, PARAMETER_TYPES[spec.kind],
                                               list(spec.default))])
            node.set_descriptor(spec.name, descriptor)
        else:
            node.declare_parameter(spec.name, spec.default, descriptor)


def parameter_values(node: Node) -> dict[str, Any]:
    """The current value of every table parameter (arrays as lists)."""
    values = {}
    for spec in NODE_PARAMETERS:
        value = node.get_parameter(spec.name).value
        values[spec.name] = list(value) if spec.kind.endswith("_array") else value
    return values
