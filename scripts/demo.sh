#!/usr/bin/env bash
# Sets up .venv and runs the demo: three training runs and a code change, then a SQL query.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh torch
exec .venv/bin/python -m florsql.demo "$@"
