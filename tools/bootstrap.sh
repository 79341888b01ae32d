#!/usr/bin/env bash
# Creates or refreshes .venv for vla_cache_ros; idempotent and fast on a second run.
#
# - Python packages are pinned in requirements/constraints.txt.
# - The ROS 2 Kilted wheels from PyPI are installed only when no ROS 2 is sourced
#   (ROS_DISTRO unset); with a sourced ROS 2 its rclpy is used instead.
# - System libraries for offscreen MuJoCo rendering (EGL / OSMesa) are installed with
#   apt when missing and we are root.
# - The package itself is installed editable, so `vla-cache` and the node entry points exist.
# Source this file (or run it) from anywhere; it prints nothing when everything is in place.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
STAMP="$VENV/.bootstrap-stamp"

want_ros_wheels=1
if [[ -n "${ROS_DISTRO:-}" ]]; then want_ros_wheels=0; fi

fingerprint() {
  { cat "$ROOT/requirements/constraints.txt" "$ROOT/requirements/base.in" "$ROOT/requirements/ros.in" \
        "$ROOT/setup.py" "$ROOT/tools/bootstrap.sh"; echo "ros_wheels=$want_ros_wheels"; } | sha256sum | cut -d' ' -f1
}

ensure_system_libs() {
  # Mesa EGL + OSMesa for MuJoCo offscreen rendering; only when missing.
  # (captured first: with pipefail, `ldconfig -p | grep -q` can fail on SIGPIPE when grep exits early)
  local libs
  libs="$(ldconfig -p 2>/dev/null || true)"
  if [[ "$libs" == *libEGL.so.1* && "$libs" == *libOSMesa.so* ]]; then
    return 0
  fi
  if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null; then
    echo "[bootstrap] installing EGL/OSMesa libraries for MuJoCo rendering (apt)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        libegl1 libgl1 libgles2 libegl-mesa0 libgl1-mesa-dri libosmesa6 >/dev/null) \
      || echo "[bootstrap] warning: apt install of rendering libraries failed; MuJoCo rendering may be unavailable" >&2
  else
    echo "[bootstrap] warning: libEGL/libOSMesa missing and not root; install libegl1 libosmesa6 for rendering" >&2
  fi
}

ensure_system_libs

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(fingerprint)" && -x "$VENV/bin/python" ]]; then
  exit 0
fi

echo "[bootstrap] setting up $VENV (first run takes a few minutes)" >&2
if [[ ! -x "$VENV/bin/python" ]]; then
  "$PY" -m venv "$VENV"
fi
LOG="$VENV/bootstrap.log"
run_logged() {
  if ! "$@" >>"$LOG" 2>&1; then
    echo "[bootstrap] failed: $* (see $LOG)" >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
}
: >"$LOG"
run_logged "$VENV/bin/python" -m pip install --upgrade pip
reqs=(-r "$ROOT/requirements/base.in")
if [[ "$want_ros_wheels" == "1" ]]; then reqs+=(-r "$ROOT/requirements/ros.in"); fi
run_logged "$VENV/bin/python" -m pip install "${reqs[@]}" -c "$ROOT/requirements/constraints.txt"
run_logged "$VENV/bin/python" -m pip install --no-deps --no-build-isolation -e "$ROOT"
fingerprint > "$STAMP"
echo "[bootstrap] done" >&2
