#!/usr/bin/env bash
# Creates (once) the project virtualenv and installs mmbeam into it with the given extras.
# Usage: source ci/setup-venv.sh [extras]   -> sets $PY to the virtualenv's python
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${MMBEAM_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PY="$VENV/bin/python"
EXTRAS="${1:-}"
if ! "$PY" -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}" > "$VENV/install.log" 2>&1; then
  cat "$VENV/install.log"
  exit 1
fi
