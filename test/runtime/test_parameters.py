"""The parameter table as rqt_reconfigure presents it: ranges an operator can drive."""
from __future__ import annotations

import pytest

from vla_cache_ros.runtime.parameters import NODE_PARAMETERS, RQT_SLIDER_STEPS, SPECS, coerce_parameter

pytestmark = pytest.mark.unit
LIVE_DOUBLES = [spec for spec in NODE_PARAMETERS if spec.kind == "double" and not spec.read_only]
OFF_BY_DEFAULT = {"latency_budget_ms": 50.0}
"""Live doubles whose default 0 means off, with the smallest value an operator would set (a
budget of one 20 Hz control period)."""


@pytest.mark.parametrize("spec", LIVE_DOUBLES, ids=[spec.name for spec in LIVE_DOUBLES])
def test_live_double_has_a_usable_slider(spec) -> None:
    """One rqt slider step (range / 100) must be a fine adjustment of the default value (of the
    smallest useful value where the default is off); the old 0.001-600 s range of
    max_inference_s moved in 6 s steps around a 2 s default."""
    assert spec.minimum is not None and spec.maximum is not None, f"{spec.name}: no slider"
    assert spec.minimum <= spec.default <= spec.maximum
    reference = OFF_BY_DEFAULT[spec.name] if spec.default == 0 else spec.default
    step = (spec.maximum - spec.minimum) / RQT_SLIDER_STEPS
    assert step <= reference / 2, f"{spec.name}: slider step {step:g} vs {reference:g}"


@pytest.mark.parametrize("name, value", [("max_inference_s", 30.0), ("max_obs_age_s", 10.0),
                                         ("max_translation_m", 0.5)])
def test_values_beyond_the_range_are_refused_with_the_range(name: str, value: float) -> None:
    from vla_cache_ros.errors import ConfigurationError

    spec = SPECS[name]
    with pytest.raises(ConfigurationError, match=f"{name}: got {value:g}, expected a value in"):
        coerce_parameter(spec, value)
