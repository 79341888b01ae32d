#!/usr/bin/env bash
# Creates or refreshes .venv for vla_cache_ros; idempotent and fast on a second run.
#
# The setup follows the sourced ROS 2 (ROS_DISTRO):
# - None sourced (this machine, CI): Python 3.11 ($PYTHON, else python3.11, else python3), the
#   pins in requirements/constraints.txt, the ROS 2 Kilted wheels from PyPI (requirements/ros.in)
#   and the workspace and lint tools (requirements/dev.in).
# - Humble, Jazzy or Kilted sourced: what the ROS 2 docs recommend for pip packages. A venv on
#   the distro's interpreter ($PYTHON, else python3) with --system-site-packages, so the distro's
#   rclpy, messages, colcon and apt Python modules stay visible, and a COLCON_IGNORE inside it;
#   requirements/base.in with the pins for that Python (constraints-py3.10.txt on Humble,
#   constraints-py3.12.txt on Jazzy and Kilted), which keep numpy at 1.x: the distro's compiled
#   Python modules were built against apt's numpy 1.x and fail under numpy 2.
# Both then install this package editable without dependencies (`vla-cache` and the node entry
# points in .venv/bin; tools/test.sh imports it from the source tree).
# As root, the Mesa EGL/OSMesa libraries for offscreen MuJoCo rendering are installed with apt
# when missing.
#
# Options:
#   --jazzy    also set up .venv-jazzy (no ROS 2 sourced only): the ROS 2 Jazzy wheels from PyPI
#              (requirements/ros-jazzy.in) in their own venv, which takes every other package from
#              .venv through a directory of links placed after its own site-packages, so CI can
#              run the node tests against Jazzy's rclpy without a second torch install.
#   --dry-run  print the commands a fresh setup runs (from the repository root) and stop; the
#              README's workspace recipe is this output.
# Run it from anywhere; it prints nothing when everything is in place.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV=.venv
STAMP="$VENV/.bootstrap-stamp"
JAZZY=0
DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --jazzy) JAZZY=1 ;;
    --dry-run) DRY_RUN=1 ;;
    *) echo "[bootstrap] unknown option: $arg (options: --jazzy, --dry-run)" >&2; exit 2 ;;
  esac
done

fail() { echo "[bootstrap] $*" >&2; exit 1; }

# Python minor version the distros' interpreters have (ROS 2 REP 2000); others are refused.
declare -A DISTRO_PYTHON=([humble]=3.10 [jazzy]=3.12 [kilted]=3.12)

python_version() {  # X.Y of interpreter $1
  "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'
}

venv_python_version() {  # X.Y of the existing .venv, read from pyvenv.cfg (no interpreter start)
  sed -n 's/^version[_info]* *= *\([0-9]*\.[0-9]*\).*/\1/p' "$VENV/pyvenv.cfg" | head -n 1
}

if [[ -n "${ROS_DISTRO:-}" ]]; then
  MODE="ros-$ROS_DISTRO"
  PY="${PYTHON:-python3}"
else
  MODE=pypi
  if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
  elif command -v python3.11 >/dev/null; then PY=python3.11
  else PY=python3
  fi
fi
if [[ "$DRY_RUN" == "0" && -f "$VENV/pyvenv.cfg" ]]; then
  system_site="$(sed -n 's/^include-system-site-packages *= *//p' "$VENV/pyvenv.cfg")"
  if [[ "$system_site" != "$([[ "$MODE" == pypi ]] && echo false || echo true)" ]]; then
    fail "$ROOT/$VENV was made for the other setup (with a sourced ROS 2 it needs \
--system-site-packages, without one it must not have them): remove it (rm -rf $ROOT/$VENV) and rerun"
  fi
  PY_VERSION="$(venv_python_version)"
else
  command -v "$PY" >/dev/null || fail "no Python interpreter '$PY' (set PYTHON)"
  PY_VERSION="$(python_version "$PY")"
fi

if [[ "$MODE" == pypi ]]; then
  CONSTRAINTS=requirements/constraints.txt
  REQUIREMENTS=(-r requirements/base.in -r requirements/dev.in -r requirements/ros.in -r requirements/serve.in)
  VENV_OPTIONS=()
  [[ "$PY_VERSION" == 3.11 ]] || fail "without a sourced ROS 2 the setup is Python 3.11 (the \
ROS 2 wheels and pins in requirements/constraints.txt); $PY is $PY_VERSION. Set PYTHON to a \
Python 3.11, or source ROS 2 Humble, Jazzy or Kilted first."
else
  CONSTRAINTS="requirements/constraints-py$PY_VERSION.txt"
  REQUIREMENTS=(-r requirements/base.in)
  VENV_OPTIONS=(--system-site-packages)
  [[ -f "$CONSTRAINTS" ]] || fail "no pins for Python $PY_VERSION with a sourced ROS 2 \
($ROS_DISTRO): requirements/ has constraints-py3.10.txt (Humble) and constraints-py3.12.txt \
(Jazzy, Kilted). Use the distro's interpreter (PYTHON=/usr/bin/python3)."
  expected="${DISTRO_PYTHON[$ROS_DISTRO]:-}"
  if [[ -z "$expected" ]]; then
    echo "[bootstrap] warning: ROS 2 '$ROS_DISTRO' is not one the pins were checked for (humble, \
jazzy, kilted); using the pins for Python $PY_VERSION" >&2
  elif [[ "$expected" != "$PY_VERSION" ]]; then  # its compiled rclpy would not import in that venv
    fail "ROS 2 $ROS_DISTRO runs Python $expected, but $PY is Python $PY_VERSION: its rclpy and \
messages would not import. Use the distro's interpreter (PYTHON=/usr/bin/python3)."
  fi
  if [[ "$JAZZY" == "1" ]]; then
    fail "--jazzy is for machines without a system ROS 2 (it installs the Jazzy wheels from PyPI)"
  fi
fi

# The commands of a fresh setup, run from the repository root ($ROOT).
SETUP_STEPS=(
  "$PY -m venv ${VENV_OPTIONS[*]:+${VENV_OPTIONS[*]} }$VENV"
)
if [[ "$MODE" != pypi ]]; then SETUP_STEPS+=("touch $VENV/COLCON_IGNORE"); fi
SETUP_STEPS+=(
  "$VENV/bin/python -m pip install --upgrade pip"
  "$VENV/bin/python -m pip install ${REQUIREMENTS[*]} -c $CONSTRAINTS"
  "$VENV/bin/python -m pip install --no-deps --no-build-isolation -e ."
)

if [[ "$DRY_RUN" == "1" ]]; then
  printf '%s\n' "${SETUP_STEPS[@]}"
  exit 0
fi

fingerprint() {
  { cat "$CONSTRAINTS" requirements/base.in requirements/dev.in requirements/ros.in requirements/serve.in setup.py \
        tools/bootstrap.sh
    echo "mode=$MODE python=$PY_VERSION"; } | sha256sum | cut -d' ' -f1
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

# Free space an install needs (GB): a full disk fails pip half-way with "[Errno 28] No space left
# on device" after minutes of downloads; this names the need first.
NEED_FREE_GB="${BOOTSTRAP_NEED_FREE_GB:-8}"
check_free_space() {  # check_free_space GB WHAT: fail unless the repository's disk has GB free
  local free_kb
  free_kb="$(df -Pk "$ROOT" | awk 'NR == 2 { print $4 }')"
  if [[ -n "$free_kb" && "$free_kb" -lt $(($1 * 1024 * 1024)) ]]; then
    fail "not enough free disk for $2: $(($free_kb / 1024)) MB free on $(df -P "$ROOT" | awk 'NR == 2 { print $6 }'), \
about $1 GB needed (BOOTSTRAP_NEED_FREE_GB overrides the check). Free space (old clones, build and \
pytest temporary directories) and rerun."
  fi
}

run_logged() {  # run "$@" with its output in $LOG; on failure show the log's tail and stop
  if ! "$@" >>"$LOG" 2>&1; then
    echo "[bootstrap] failed: $* (see $ROOT/$LOG)" >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
}

setup_main_venv() {
  if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(fingerprint)" && -x "$VENV/bin/python" ]]; then
    return 0
  fi
  echo "[bootstrap] setting up $ROOT/$VENV for $([[ "$MODE" == pypi ]] && echo "PyPI's ROS 2 Kilted wheels" \
|| echo "the sourced ROS 2 $ROS_DISTRO") on Python $PY_VERSION (first run takes a few minutes)" >&2
  check_free_space "$NEED_FREE_GB" "$VENV (torch's PyPI build for Linux brings its CUDA libraries: \
about 6.6 GB with the ROS 2 wheels and Ray)"
  if [[ ! -x "$VENV/bin/python" ]]; then
    "$PY" -m venv "${VENV_OPTIONS[@]}" "$VENV" \
      || fail "could not create $VENV with $PY (on Debian/Ubuntu: apt install python3-venv)"
    if [[ "$MODE" != pypi ]]; then
      "$VENV/bin/python" -c 'import rclpy' 2>/dev/null || fail "$PY cannot import the sourced \
ROS 2's rclpy: use the distro's interpreter (PYTHON=/usr/bin/python3) and remove $ROOT/$VENV"
    fi
  fi
  LOG="$VENV/bootstrap.log"
  : >"$LOG"
  local step
  for step in "${SETUP_STEPS[@]:1}"; do  # the venv exists: every step after its creation
    # shellcheck disable=SC2086  # the steps are plain words (no spaces inside an argument)
    run_logged $step
  done
  fingerprint > "$STAMP"
  echo "[bootstrap] done" >&2
}

# .venv-jazzy: Jazzy's rclpy and messages in the venv's own site-packages; everything else
# (torch, numpy, pytest, ...) from .venv through links in .venv-jazzy/shared, a directory named by
# a .pth file and so placed after the venv's own site-packages. Kilted's ROS modules in .venv
# (every top-level name a ros-* distribution installs) get no link, nor do .pth files and the
# editable vla_cache_ros (installed here on its own).
JAZZY_VENV=.venv-jazzy
setup_jazzy_venv() {
  local stamp="$JAZZY_VENV/.bootstrap-stamp" fp
  fp="$({ cat "$STAMP" requirements/ros-jazzy.in; } | sha256sum | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$fp" && -x "$JAZZY_VENV/bin/python" ]]; then
    return 0
  fi
  echo "[bootstrap] setting up $ROOT/$JAZZY_VENV (ROS 2 Jazzy wheels; the rest shared with $VENV)" >&2
  check_free_space 1 "$JAZZY_VENV"
  rm -rf "$JAZZY_VENV"
  local base_python
  base_python="$("$VENV/bin/python" -c 'import sys; print(sys._base_executable)')"
  "$base_python" -m venv "$JAZZY_VENV"
  LOG="$JAZZY_VENV/bootstrap.log"
  : >"$LOG"
  # Jazzy's pins: constraints.txt without Kilted's ros-* lines (ros-jazzy-* pin their own).
  grep -v -E '^ros-' requirements/constraints.txt > "$JAZZY_VENV/constraints.txt"
  grep -E '^ros-jazzy-' requirements/constraints.txt >> "$JAZZY_VENV/constraints.txt"
  # Installed before the shared directory exists, so pip never sees (nor removes) .venv's files.
  run_logged "$JAZZY_VENV/bin/python" -m pip install --upgrade pip
  run_logged "$JAZZY_VENV/bin/python" -m pip install -r requirements/ros-jazzy.in \
    -c "$JAZZY_VENV/constraints.txt"
  local site shared
  site="$("$JAZZY_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
  shared="$ROOT/$JAZZY_VENV/shared"
  "$VENV/bin/python" - "$site" "$shared" <<'PY'
import importlib.metadata as metadata
import sys
import sysconfig
from pathlib import Path

jazzy_site, shared = Path(sys.argv[1]), Path(sys.argv[2])
main_site = Path(sysconfig.get_path("purelib"))
kilted = set()  # top-level entries of Kilted's ros-* distributions
for dist in metadata.distributions(path=[str(main_site)]):
    if (dist.metadata["Name"] or "").lower().startswith("ros-"):
        kilted.update(f.parts[0] for f in dist.files or () if f.parts[0] != "..")
kilted.update(name.removesuffix(".py") for name in list(kilted) if name.endswith(".py"))
shared.mkdir()
for entry in main_site.iterdir():
    name = entry.name
    if (name in kilted or name.removesuffix(".py") in kilted or name.endswith(".pth")
            or name.startswith(("__editable__", "vla_cache_ros", "__pycache__", "_distutils_hack"))
            or (jazzy_site / name).exists()):
        continue
    (shared / name).symlink_to(entry)
(jazzy_site / "zz_vla_cache_shared.pth").write_text(f"{shared}\n")
PY
  run_logged "$JAZZY_VENV/bin/python" -m pip install --no-deps --no-build-isolation -e .
  echo "$fp" > "$stamp"
  echo "[bootstrap] done ($JAZZY_VENV)" >&2
}

ensure_system_libs
setup_main_venv
if [[ "$JAZZY" == "1" ]]; then setup_jazzy_venv; fi
