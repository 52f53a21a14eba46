#!/usr/bin/env bash
# Runs every mmbeam test on a fresh machine: virtualenv, install with test extras, ruff, pytest.
# Extra arguments go to pytest (e.g. ci/test.sh tests/ops -x).
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/setup-venv.sh test
"$PY" -m ruff check .
"$PY" -m pytest "$@"
