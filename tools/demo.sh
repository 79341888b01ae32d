#!/usr/bin/env bash
# The README's first command: set up .venv if needed, then run `vla-cache demo` (the shipped policy
# drives the simulated arm over ROS 2 for a few episodes; a GIF of the reused visual tokens in
# out/demo/; options pass through, e.g. --episodes 1, --mode fixed:0.5, --live --sweep, --offline).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/tools/bootstrap.sh"
exec "$ROOT/.venv/bin/vla-cache" demo "$@"
