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
