#!/usr/bin/env bash
# The README's first command: set up .venv if needed, then run the embedded demo.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/tools/bootstrap.sh"
exec "$ROOT/.venv/bin/vla-cache" demo "$@"
