#!/usr/bin/env bash
# The README's second command: set up .venv if needed, then run the whole test suite (or, given
# test paths, only those).
# Each run gets its own ROS_DOMAIN_ID and localhost-only discovery, so two runs cannot cross-talk.
#
# `tools/test.sh --jazzy [pytest args]` runs the node tests (test/ros/test_node*.py) against the
# ROS 2 Jazzy wheels instead, in .venv-jazzy (tools/bootstrap.sh --jazzy; no ROS 2 sourced).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${1:-}" == "--jazzy" ]]; then
  shift
  "$ROOT/tools/bootstrap.sh" --jazzy
  PYTHON="$ROOT/.venv-jazzy/bin/python"
  TESTS=("$ROOT"/test/ros/test_node*.py)
  export VLA_CACHE_TEST_ROS_WHEELS=jazzy  # test_node_ros_wheels.py checks that Jazzy's rclpy runs
  # Kilted's libraries (.venv/lib) must not leak in from a parent process: the wheels' .pth
  # bootstrapper adds Jazzy's library path only when its guard variable is unset.
  unset _ROS_WHEELS_BOOTSTRAP_COMPLETE
  kept="$(tr ':' '\n' <<<"${LD_LIBRARY_PATH:-}" | grep -v -e "^$ROOT/.venv/" -e '^$' | paste -sd: -)" || true
  if [[ -n "$kept" ]]; then export LD_LIBRARY_PATH="$kept"; else unset LD_LIBRARY_PATH; fi
else
  "$ROOT/tools/bootstrap.sh"
  PYTHON="$ROOT/.venv/bin/python"
  TESTS=(test)
  for argument in "$@"; do  # tools/test.sh test/ros/test_node.py -q: only those tests
    path="${argument%%::*}"
    if [[ "$argument" != -* && ( -e "$path" || -e "$ROOT/$path" ) ]]; then TESTS=(); break; fi
  done
fi
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( ($$ % 100) + 1 ))}"
export FASTDDS_BUILTIN_TRANSPORTS="${FASTDDS_BUILTIN_TRANSPORTS:-LARGE_DATA}"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cd "$ROOT"
exec "$PYTHON" -m pytest "${TESTS[@]}" "$@"
