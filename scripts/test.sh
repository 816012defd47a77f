#!/usr/bin/env bash
# Sets up .venv with the test extras and runs the test suite (benchmarks are separate).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
