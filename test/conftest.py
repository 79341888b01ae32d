"""Test-wide settings: isolate ROS 2 discovery per run, keep torch small and deterministic."""
from __future__ import annotations

import os
import random

# Isolation between concurrent runs on one machine: discovery stays on this host and each run
# gets its own domain (tools/test.sh exports one; a plain `pytest` picks one here).
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))
os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """A seeded random miniature OpenVLA-format checkpoint, written once per test session."""
    from vla_cache_ros.models.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint"), seed=0)


TIERS = ("ros", "sim", "slow")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests under test/ros are ``ros`` and under test/sim ``sim``; a test with none of the
    tier markers is ``unit`` (``tools/test.sh -m unit`` runs only those)."""
    for item in items:
        parts = item.path.parts
        if "ros" in parts[parts.index("test"):]:
            item.add_marker(pytest.mark.ros)
        if "sim" in parts[parts.index("test"):]:
            item.add_marker(pytest.mark.sim)
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(pytest.mark.unit)
