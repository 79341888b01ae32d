"""Fixtures for the policy server tests: the miniature model, frame streams, a local reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from test.serving.stand_in import StandIn
from vla_cache_ros.models import OpenVLA, load_vla
from vla_cache_ros.synthetic import SyntheticScene

UNNORM_KEY = "tiny_sim"


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint) -> OpenVLA:
    """The miniature checkpoint loaded in fp32 (single-threaded torch)."""
    torch.set_num_threads(1)
    return load_vla(tiny_checkpoint)


def stream(seed: int, count: int = 6) -> list[np.ndarray]:
    """A camera stream: a moving block over a textured scene (consecutive frames share most
    patches, so a cached policy reuses tokens)."""
    return SyntheticScene(height=96, width=128, seed=seed).frames(count)


@pytest.fixture
def stand_in() -> StandIn:
    """A stand-in policy server on a free loopback port."""
    server = StandIn()
    yield server
    server.close()
