"""florsql's engine: the catalog of recorded runs, ingest, query analysis and replay."""

from __future__ import annotations

from .catalog import USER_TABLES, open_catalog
from .catalog_session import CatalogSession
from .errors import (
    CatalogLockedError,
    EngineError,
    IngestWarning,
    ProjectNotFoundError,
    ReplayBudgetError,
    ReplayWarning,
    UnknownColumnError,
)
from .ingest import IngestReport, ingest_project
from .project import Project, locate_project

__all__ = [
    "USER_TABLES",
    "CatalogSession",
    "UnknownColumnError",
    "CatalogLockedError",
    "EngineError",
    "IngestReport",
    "IngestWarning",
    "Project",
    "ProjectNotFoundError",
    "ReplayBudgetError",
    "ReplayWarning",
    "ingest_project",
    "locate_project",
    "open_catalog",
]
