"""Rendering the sim and then loading a model in the same process must not crash.

Mesa's EGL plus a later ``import triton`` (pulled in by timm / transformers) segfaults unless
triton is imported before the first GL context; ``TabletopSim.render`` takes care of the order.
"""
from __future__ import annotations

import subprocess
import sys

SCRIPT = """
from vla_cache_ros.sim.env import TabletopSim
sim = TabletopSim()
image = sim.render()
assert image.shape == (224, 224, 3) and image.std() > 0
from vla_cache_ros.models.tiny import random_model
model = random_model("tiny")
print("ok", model.num_visual_tokens)
"""


def test_render_then_load_model_in_one_process():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert "ok 256" in result.stdout
