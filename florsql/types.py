"""PEP 249 type objects and constructors. `type_code` in a description is DuckDB's type name."""

from __future__ import annotations

import datetime as dt
import time

Date = dt.date
Time = dt.time
Timestamp = dt.datetime
Binary = bytes


def DateFromTicks(ticks: float) -> dt.date:  # noqa: N802  (names fixed by PEP 249)
    return Date(*time.localtime(ticks)[:3])


def TimeFromTicks(ticks: float) -> dt.time:  # noqa: N802
    return Time(*time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks: float) -> dt.datetime:  # noqa: N802
    return Timestamp(*time.localtime(ticks)[:6])


class DBAPITypeObject:
    """Compares equal to every DuckDB type name of its group (`NUMBER == "DOUBLE"`)."""

    def __init__(self, *names: str) -> None:
        self.names = frozenset(names)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DBAPITypeObject):
            return self.names == other.names
        if isinstance(other, str):
            base = other.split("(")[0].strip().upper()
            return base in self.names
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.names)

    def __repr__(self) -> str:
        return f"DBAPITypeObject{tuple(sorted(self.names))}"


STRING = DBAPITypeObject("VARCHAR", "CHAR", "TEXT", "STRING", "UUID", "JSON", "ENUM")
BINARY = DBAPITypeObject("BLOB", "BYTEA", "BINARY", "VARBINARY", "BIT")
NUMBER = DBAPITypeObject("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT",
                         "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE",
                         "REAL", "DECIMAL", "BOOLEAN")
DATETIME = DBAPITypeObject("DATE", "TIME", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE",
                           "TIMESTAMPTZ", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS",
                           "INTERVAL", "TIME WITH TIME ZONE")
ROWID = DBAPITypeObject("ROWID")
