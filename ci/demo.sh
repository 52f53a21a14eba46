#!/usr/bin/env bash
# Runs the main job on a fresh machine: virtualenv, install, then thumbnails of embedded sample
# images served from a loopback HTTP server (download, decode, resize, encode, upload).
# Extra arguments go to examples/thumbnails.py (e.g. ci/demo.sh --count 200 --size 128).
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/setup-venv.sh
"$PY" examples/thumbnails.py "$@"
