"""Fixtures for the cache tests: one loaded miniature model per session, single-threaded torch."""
from __future__ import annotations

import pytest
import torch

from vla_cache_ros.models import OpenVLA, load_vla


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint) -> OpenVLA:
    """The miniature checkpoint loaded in fp32."""
    torch.set_num_threads(1)
    return load_vla(tiny_checkpoint)
