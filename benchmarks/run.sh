#!/usr/bin/env bash
# Runs a benchmark script in .venv-bench: mmbeam as a user installs it, plus Daft (the "bench"
# extra) and nothing of the test tools. The test venv also holds pandas, boto3, google-cloud and
# moto, which apache_beam imports eagerly whenever they are installed (~0.4 s more start-up).
# Usage: bash benchmarks/run.sh images.py --corpus web --count 4096
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MMBEAM_VENV=.venv-bench source ci/setup-venv.sh bench
SCRIPT="$1"
shift
exec "$PY" "benchmarks/$SCRIPT" "$@"
