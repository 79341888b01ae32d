"""Mode specs and the prepacking choice as typed on command lines and in configs."""
from __future__ import annotations

import pytest

from vla_cache_ros.cache.modes import parse_mode_spec, parse_prepack
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


@pytest.mark.parametrize("text,expected", [("auto", None), ("on", True), ("OFF", False), (" on ", True)])
def test_parse_prepack(text, expected):
    assert parse_prepack(text) is expected


def test_parse_prepack_rejects_other_words():
    with pytest.raises(ConfigurationError, match="must be one of auto, on, off, got 'yes'"):
        parse_prepack("yes")
