"""Mode specs as typed on command lines."""
from __future__ import annotations

import pytest

from vla_cache_ros.cache.modes import parse_mode_spec
from vla_cache_ros.errors import ConfigurationError


def test_mode_specs():
    assert parse_mode_spec("fixed:0.25") == ("fixed", 0.25)
    assert parse_mode_spec(" vla_cache ") == ("vla_cache", 1.0)
    assert parse_mode_spec("off") == ("off", 0.0)


@pytest.mark.parametrize("spec,message", [("fixed:half", "ratio must be a number"),
                                          ("fixed:1.5", r"must lie in \[0, 1\]"),
                                          (":0.5", "no mode name")])
def test_bad_mode_specs(spec, message):
    with pytest.raises(ConfigurationError, match=message):
        parse_mode_spec(spec)
