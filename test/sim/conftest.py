"""Fixtures for the simulator tests: one simulator per module (creating a GL context costs)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from vla_cache_ros.sim.env import TabletopSim


@pytest.fixture(scope="module")
def sim() -> Iterator[TabletopSim]:
    with TabletopSim() as simulator:
        yield simulator
