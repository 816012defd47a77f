#!/usr/bin/env bash
# Creates .venv (once) and installs florsql with its extras. Usage: scripts/setup.sh [EXTRA]
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-torch}"
python3 -m venv .venv 2>/dev/null || test -x .venv/bin/python
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# torch==2.13.0 is pinned in the extras: a looser request would download a multi-GB CUDA build.
.venv/bin/python -m pip install -q -e ".[${extra}]"
