#!/usr/bin/env bash
# The README's second command: set up .venv if needed, then run the whole test suite.
# Each run gets its own ROS_DOMAIN_ID and localhost-only discovery, so two runs cannot cross-talk.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/tools/bootstrap.sh"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( ($$ % 100) + 1 ))}"
export FASTDDS_BUILTIN_TRANSPORTS="${FASTDDS_BUILTIN_TRANSPORTS:-LARGE_DATA}"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest test "$@"
