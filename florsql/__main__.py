"""`python -m florsql`: the same as the `florsql` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
