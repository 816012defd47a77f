#!/usr/bin/env bash
# Sets up .venv with the test extras and runs the test suite (benchmarks are separate).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check .
# One worker per core; a file's tests stay on one worker, so its recorded runs are made once.
exec .venv/bin/python -m pytest -q -n auto --dist loadfile "$@"
