"""The PEP 249 exception hierarchy (as in CPython's sqlite3 and PyMySQL)."""

from __future__ import annotations

from typing import NamedTuple


class Warning(Exception):  # noqa: A001  (the name PEP 249 requires)
    """Important warnings, e.g. a record part that could not be ingested."""


class Error(Exception):
    """Base class of every florsql DB-API error."""


class InterfaceError(Error):
    """Misuse of the interface itself: a closed cursor or connection, fetch before execute."""


class DatabaseError(Error):
    """An error related to the catalog database."""


class DataError(DatabaseError):
    """A value could not be processed: a failed cast, division by zero, out of range."""


class OperationalError(DatabaseError):
    """The catalog could not be used: an ingest lock held too long, disk error, missing project."""


class IntegrityError(DatabaseError):
    """The relational integrity of the catalog would be violated."""


class InternalError(DatabaseError):
    """The engine hit an internal inconsistency."""


class ProgrammingError(DatabaseError):
    """Bad SQL: a syntax error, an unknown table or column, a wrong number of parameters."""


class NotSupportedError(DatabaseError):
    """A statement the catalog does not allow: florsql answers queries, it does not take writes."""


class Position(NamedTuple):
    """Where a name appears in the statement: 1-based line and column, 0-based offset."""

    line: int
    column: int
    offset: int


class UnknownNameError(ProgrammingError):
    """A statement names a column or table that does not exist. It keeps the structure the
    message was made from, so a surface can show it without reading the message: `name`, its
    `closest` known names, `kind` ("column" or "table") and its `position` in the statement
    (None when it could not be found there)."""

    def __init__(self, message: str, name: str, closest: list[str], kind: str = "column",
                 position: Position | None = None) -> None:
        super().__init__(message)
        self.name = name
        self.closest = list(closest)
        self.kind = kind
        self.position = position
