"""Errors raised by the engine. Every message names the problem and the fix in one line."""

from __future__ import annotations


class EngineError(Exception):
    """Root of every engine error."""


class ProjectNotFoundError(EngineError):
    """The path holds no flor history (no `.flor/` directory)."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"no flor history at {path}: run a training script that uses flor there first, "
            "or pass the project directory"
        )
        self.path = path


class CatalogLockedError(EngineError):
    """Another process has been ingesting longer than the wait for the ingest lock allows."""

    def __init__(self, path: str, waited: float) -> None:
        super().__init__(
            f"another process has held the ingest lock {path} for {waited:.0f}s; it may be "
            "ingesting a very large run: wait, or raise FLOR_CATALOG_TIMEOUT"
        )
        self.path = path
        self.waited = waited


class ProjectUnreadableError(EngineError):
    """The flor home or its `runs/` exists but cannot be listed (no permission)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read the flor history at {path} ({reason}); give your user "
                         "read access to it, or query a readable copy of the project")
        self.path = path


class IngestWarning(UserWarning):
    """A record file could not be ingested; the rest of the history stays usable."""


class UnknownColumnError(EngineError):
    """A query names a column that no table (and no logged name) has."""

    def __init__(self, name: str, known: list[str]) -> None:
        import difflib

        lowered = {k.lower(): k for k in known}
        close = [lowered[m] for m in difflib.get_close_matches(name.lower(), list(lowered), n=3)]
        hint = (f"; did you mean {', '.join(close)}?" if close
                else "; the names view lists every logged name")
        super().__init__(f"unknown column {name!r}{hint}")
        self.name = name
        self.closest = close


class ReplayWarning(UserWarning):
    """A query was answered with NULLs where a replay did not run, was refused or failed."""


class ReplayBudgetError(EngineError):
    """The replay a query needs is estimated to take longer than the caller allows."""

    def __init__(self, estimate: float, limit: float, tasks: int) -> None:
        super().__init__(
            f"this query needs a replay of {tasks} task(s), estimated {estimate:.0f} s, over "
            f"max_replay_seconds={limit:g}: narrow the query with WHERE, raise the limit, or "
            "answer without it (replay='off')")
        self.estimate = estimate
        self.limit = limit
        self.tasks = tasks
