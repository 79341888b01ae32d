#!/usr/bin/env bash
# The README's first command: set up .venv if needed, then run `vla-cache demo` (the whole loop:
# simulated arm -> vla_cache_node, live status, a bag; options pass through, e.g. --sweep, --offline).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/tools/bootstrap.sh"
exec "$ROOT/.venv/bin/vla-cache" demo "$@"
