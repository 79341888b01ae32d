"""The top-level ``vla-cache`` command: every area registered, a missing optional dependency
drops only its own subcommands."""
from __future__ import annotations

import subprocess
import sys

from vla_cache_ros.apps.cli import build_parser

SCRIPT = """
import sys
sys.modules["mujoco"] = None  # as if MuJoCo were not installed
from vla_cache_ros.apps.cli import build_parser
parser = build_parser()
commands = parser._subparsers._group_actions[0].choices
print("bench" in commands, "replay" in commands, "sim-collect" in commands)
print(parser.epilog)
"""


def test_all_subcommands_registered():
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    assert {"make-tiny", "predict", "demo", "bench", "bag-info", "synthetic-bag", "play", "record", "replay",
            "sim-collect", "sim-eval"} <= commands


def test_missing_optional_dependency_drops_only_its_area():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "True True False"
    assert "sim (needs mujoco)" in lines[1]
