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
