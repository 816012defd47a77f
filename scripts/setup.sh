#!/usr/bin/env bash
# Creates .venv (once) and installs florsql with an extra. Usage: scripts/setup.sh [EXTRA]
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-torch}"
python3 -m venv .venv 2>/dev/null || test -x .venv/bin/python
log=.venv/setup.log
# torch==2.13.0 is pinned in the extras: a looser request would download a multi-GB CUDA build.
if ! .venv/bin/python -m pip install -q -e ".[${extra}]" >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup failed: see the pip output above" >&2
    exit 1
fi
