"""Device, dtype and thread options are checked before anything is loaded."""
from __future__ import annotations

import pytest

from vla_cache_ros.compute import resolve_device, resolve_dtype, set_cpu_threads
from vla_cache_ros.errors import ConfigurationError


def test_cpu_is_accepted() -> None:
    assert resolve_device("cpu").type == "cpu" and str(resolve_dtype("bfloat16")) == "torch.bfloat16"


@pytest.mark.parametrize("name, fragment", [
    ("mps", "not supported; expected cpu, cuda or cuda:N"),
    ("xpu", "not supported"),
    ("meta", "not supported"),
    ("gpu0", "is not a torch device name"),
    ("cuda:63", "requested but"),
])
def test_unusable_devices_are_one_clear_error(name: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment.replace("(", r"\(")):
        resolve_device(name)


def test_bad_dtype_and_threads() -> None:
    with pytest.raises(ConfigurationError, match="float64"):
        resolve_dtype("float64")
    with pytest.raises(ConfigurationError, match="threads"):
        set_cpu_threads(-1)
