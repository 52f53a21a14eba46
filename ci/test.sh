#!/usr/bin/env bash
# Runs every mmbeam test on a fresh machine: virtualenv, torch (CPU build) first, then mmbeam with
# the test, dask, ray and model extras, ruff, pytest. Extra arguments go to pytest
# (e.g. ci/test.sh tests/ops -x).
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/setup-venv.sh ""
"$PY" -m pip install -q "torch==2.13.0" >> "${MMBEAM_VENV:-.venv}/install.log" 2>&1
source ci/setup-venv.sh test,dask,ray,model
"$PY" -m ruff check .
"$PY" -m pytest -n 2 --dist loadgroup --max-worker-restart=0 --durations=15 "$@"
