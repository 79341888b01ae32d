"""The mode registry, mode specs and the prepacking choice as typed on command lines and in configs."""
from __future__ import annotations

import subprocess
import sys

import pytest

from vla_cache_ros.cache import modes
from vla_cache_ros.cache.modes import (
    DEFAULT_SWEEP,
    MODE_NAMES,
    CacheMode,
    CacheModeError,
    build_selector,
    check_available,
    default_sweep,
    parse_mode,
    parse_mode_list,
    parse_mode_spec,
    parse_prepack,
    register_mode,
    runnable_modes,
    unregister_mode,
)
from vla_cache_ros.cache.selectors import FixedRatioSelector, OffSelector, VLACacheSelector
from vla_cache_ros.errors import ConfigurationError


@pytest.mark.parametrize("spec, expected", [
    ("off", ("off", 0.0)), ("fixed:0.5", ("fixed", 0.5)), (" vla_cache ", ("vla_cache", 1.0)),
    ("vla_cache:0.8", ("vla_cache", 0.8)), ("learned", ("learned", 1.0)), ("learned:0.7", ("learned", 0.7)),
    ("fixed:0.25", ("fixed", 0.25)), ("off:0", ("off", 0.0)),
])
def test_mode_specs(spec, expected):
    assert parse_mode_spec(spec) == expected


def test_parsed_spec_keeps_its_text_and_whether_a_ratio_was_given():
    assert parse_mode(" fixed:0.5 ") == ("fixed:0.5", "fixed", 0.5)
    assert parse_mode("fixed:0.5").ratio_given and not parse_mode("vla_cache").ratio_given


@pytest.mark.parametrize("spec,message", [("fixed:half", "ratio must be a number"),
                                          ("fixed:1.5", r"must lie in \[0, 1\]"),
                                          ("fixed:nan", r"must lie in \[0, 1\]"),
                                          (":0.5", "no mode name")])
def test_bad_mode_specs(spec, message):
    with pytest.raises(ConfigurationError, match=message):
        parse_mode_spec(spec)


def test_unknown_names_answer_with_the_available_ones():
    with pytest.raises(CacheModeError) as error:
        parse_mode("turbo:0.5")
    assert str(error.value) == ("unknown cache mode 'turbo'; available: off, fixed, vla_cache, "
                                "learned (no trained cache policy is loaded; give one made by vla-cache "
                                "train-cache (node: cache_policy_path; commands: --cache-policy) or put it in the "
                                "model directory's cache_policy/)")
    with pytest.raises(CacheModeError, match="unknown cache mode 'turbo'; available: off, fixed$"):
        check_available("turbo", ["off", "fixed"])


def test_learned_is_known_but_unavailable_until_a_cache_policy_is_loaded():
    assert "learned" in MODE_NAMES and "learned" not in runnable_modes()
    for attempt in (lambda: build_selector("learned"), lambda: check_available("learned", runnable_modes())):
        with pytest.raises(CacheModeError) as error:
            attempt()
        assert str(error.value) == ("cache mode 'learned' is not available: no trained cache policy is loaded; "
                                    "give one made by vla-cache train-cache (node: cache_policy_path; commands: "
                                    "--cache-policy) or put it in the model directory's cache_policy/; "
                                    "available: off, fixed, vla_cache")
    assert check_available("learned", ["off", "learned"]) == "learned"  # once a selector is supplied


def test_names_selectors_and_default_sweeps():
    assert MODE_NAMES == ("off", "fixed", "vla_cache", "learned")
    assert runnable_modes() == ("off", "fixed", "vla_cache")
    assert isinstance(build_selector("off"), OffSelector) and isinstance(build_selector("fixed"), FixedRatioSelector)
    selector = build_selector("vla_cache", threshold=0.9)
    assert isinstance(selector, VLACacheSelector) and selector.threshold == 0.9
    assert DEFAULT_SWEEP == default_sweep() == ("off", "fixed:0.5", "fixed:0.75", "vla_cache")
    assert default_sweep(representative_only=True) == ("off", "fixed:0.5", "vla_cache")


def test_mode_lists():
    assert parse_mode_list(" off, fixed:0.5 ,,vla_cache") == [
        ("off", "off", 0.0), ("fixed:0.5", "fixed", 0.5), ("vla_cache", "vla_cache", 1.0)]
    with pytest.raises(CacheModeError, match="--modes repeats a mode: off"):
        parse_mode_list("off,fixed,off")
    with pytest.raises(CacheModeError, match="--modes lists no mode"):
        parse_mode_list(" , ")


def test_registering_a_mode():
    mode = CacheMode("every_token", "reuses every eligible token", selector=lambda: FixedRatioSelector(),
                     sweep=("every_token:1",))
    register_mode(mode)
    try:
        assert modes.mode_names()[-1] == "every_token" and "every_token" in runnable_modes()
        assert default_sweep()[-1] == "every_token:1" and MODE_NAMES[-1] == "learned"
        assert isinstance(build_selector("every_token"), FixedRatioSelector)
        with pytest.raises(ValueError, match="already registered"):
            register_mode(mode)
    finally:
        unregister_mode("every_token")
    assert "every_token" not in modes.mode_names()
    with pytest.raises(ValueError, match="built-in"):
        unregister_mode("off")


@pytest.mark.parametrize("fields", [
    dict(name="a:b", summary=""), dict(name="x", summary="", bare_ratio=2.0),
    dict(name="x", summary=""),  # no selector and no reason why not
    dict(name="x", summary="", selector="m:C", sweep=("y:0.5",)),
])
def test_bad_declarations_are_bugs(fields):
    with pytest.raises(ValueError):
        CacheMode(**fields)


def test_the_registry_imports_neither_torch_nor_numpy():
    code = ("import sys, vla_cache_ros.cache.modes as m; m.parse_mode_list('off,fixed:0.5'); "
            "print(sorted({'torch', 'numpy'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr


@pytest.mark.parametrize("text,expected", [("auto", None), ("on", True), ("OFF", False), (" on ", True)])
def test_parse_prepack(text, expected):
    assert parse_prepack(text) is expected


def test_parse_prepack_rejects_other_words():
    with pytest.raises(ConfigurationError, match="must be one of auto, on, off, got 'yes'"):
        parse_prepack("yes")
