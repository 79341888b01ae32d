"""``vla_cache_node`` with an inference fault that a test can switch on and off.

While the file named by ``VLA_TEST_FAULT_FILE`` exists, every policy step raises
``RuntimeError`` with the file's text; when the file is removed the real step runs again. Only
the policy's ``step`` is wrapped: parameters, subscriptions, watchdog, publishing and the
process entry point (``run_node``) are the node's own, so what the test sees is what a user's
node does when its model fails and then recovers (a GPU error that clears, a driver restart).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from vla_cache_ros.ros.node import NODE_NAME, VlaCacheNode
from vla_cache_ros.ros.process import run_node


def faulty_node() -> VlaCacheNode:
    """The real node, its policy step raising while the fault file exists (wrapped once the
    policy is loaded by the configure transition, after its warm-up)."""
    node = VlaCacheNode()
    fault_file = Path(os.environ["VLA_TEST_FAULT_FILE"])
    runtime = node._runtime
    real_load = runtime.load

    def load(policy: Any = None) -> None:
        time.sleep(float(os.environ.get("VLA_TEST_SLOW_LOAD_S", "0")))  # a large model's load
        real_load(policy)
        real_step = runtime.policy.step

        def step(image: Any, instruction: str) -> Any:
            if fault_file.exists():
                raise RuntimeError(fault_file.read_text() or "injected fault")
            return real_step(image, instruction)

        runtime.policy.step = step

    runtime.load = load
    return node


if __name__ == "__main__":
    sys.exit(run_node(faulty_node, NODE_NAME))
