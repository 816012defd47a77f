"""florsql's engine: the catalog of recorded runs, ingest, query analysis and replay.

Stages, each a subpackage, import only the ones before them (tests/test_engine_layers.py):

    errors, project -> catalog -> code -> query -> replay -> jobs

The surfaces (florsql's shell, CLI and DB-API, `flor.dataframe`, `flor.replay`) import what
they need from here. docs/architecture.md shows both data paths with the file for each step.
"""

from __future__ import annotations

from .catalog.ingest import IngestReport, ingest_project
from .catalog.mirror import new_catalog
from .catalog.sandbox import MEMORY_ENV, run_interruptible
from .catalog.schema import USER_TABLES
from .errors import (
    CatalogLockedError,
    EngineError,
    IngestWarning,
    ProjectNotFoundError,
    ReplayBudgetError,
    ReplayWarning,
    UnknownColumnError,
)
from .jobs.choose import EXECUTORS, choose_executor
from .project import Project, locate_project
from .query.rewrite import Rewrite, closest
from .query.session import CatalogSession
from .replay.executor import (
    Executor,
    LocalExecutor,
    Submission,
    SubprocessExecutor,
    WarmPoolExecutor,
    default_executor,
)
from .replay.model import (
    ReplayInterrupted,
    ReplayPlan,
    ReplayReport,
    ReplayTask,
    RunPlan,
    TaskResult,
)
from .replay.policy import (
    MODES,
    ReplayPolicy,
    SurfaceHints,
    budget_message,
    check_mode,
    declined_warnings,
)
from .replay.service import QueryAnswer, ReplayService
from .replay.worker import perform_task

__all__ = [
    "EXECUTORS",
    "MEMORY_ENV",
    "MODES",
    "USER_TABLES",
    "CatalogLockedError",
    "CatalogSession",
    "EngineError",
    "Executor",
    "IngestReport",
    "IngestWarning",
    "LocalExecutor",
    "Project",
    "ProjectNotFoundError",
    "QueryAnswer",
    "ReplayBudgetError",
    "ReplayInterrupted",
    "ReplayPlan",
    "ReplayPolicy",
    "ReplayReport",
    "ReplayService",
    "ReplayTask",
    "ReplayWarning",
    "Rewrite",
    "RunPlan",
    "Submission",
    "SubprocessExecutor",
    "SurfaceHints",
    "TaskResult",
    "UnknownColumnError",
    "WarmPoolExecutor",
    "budget_message",
    "check_mode",
    "choose_executor",
    "closest",
    "declined_warnings",
    "default_executor",
    "ingest_project",
    "locate_project",
    "new_catalog",
    "perform_task",
    "run_interruptible",
]
