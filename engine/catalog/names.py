"""What has been logged: every value name with its depths, types and counts, and the loop dims.

Kept per run as records are ingested (name_stats.py); read by the `history` builder and
the shell.

Typing rule for a name's `history` column (nulls ignored): all ints -> BIGINT, or HUGEINT once
one does not fit 64 bits, or DOUBLE (approximate) once one does not fit 128 bits; ints and
floats -> DOUBLE; all bools -> BOOLEAN; anything else (strings, JSON, a mix with bools) ->
VARCHAR, holding the exact text (`repr` of numbers, `true`/`false`, JSON). No values yet ->
DOUBLE.

Naming rule (`history_columns`): a logged name is its own column unless it equals, ignoring
case, a run identity column or a loop dimension; then it is `<name>_value`, with `_value`
repeated while that is taken too. Names that differ only by case share a column.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import duckdb

IDENTITY_COLUMNS = ("projid", "runid", "tstamp", "vid", "filename")
RENAME_SUFFIX = "_value"


@dataclass
class NameInfo:
    """One `history` value column: a logged name (all its case variants) and where it lives."""

    column: str
    variants: set[str] = field(default_factory=set)
    types: set[str] = field(default_factory=set)
    depths: dict[int, tuple[int, int]] = field(default_factory=dict)  # depth -> records, contexts
    is_arg: bool = False
    runs: int = 0
    over_int64: int = 0  # int values that do not fit BIGINT
    over_int128: int = 0  # ... nor HUGEINT

    @property
    def max_depth(self) -> int:
        return max(self.depths, default=0)

    @property
    def sql_type(self) -> str:
        kinds = self.types - {"null"}
        if kinds == {"int"}:
            return "DOUBLE" if self.over_int128 else "HUGEINT" if self.over_int64 else "BIGINT"
        if not kinds or kinds <= {"int", "float"}:
            return "DOUBLE"
        return "BOOLEAN" if kinds == {"bool"} else "VARCHAR"


@dataclass
class HistorySchema:
    """The columns `history` can have right now."""

    dims: dict[str, int]  # loop name -> deepest context depth it names (1 = outermost loop)
    values: dict[str, NameInfo]  # lower-cased column name -> info
    dim_depths: dict[str, set[int]] = field(default_factory=dict)  # loop name -> all depths

    def with_pending(self, names: Iterable[str]) -> HistorySchema:
        """This schema plus `names`, logged by today's scripts but by no run yet (all NULL)."""
        extra = {n.lower(): NameInfo(column=n) for n in names
                 if n.lower() not in self.values and n.lower() not in self.columns_lower}
        if not extra:
            return self
        return HistorySchema(self.dims, {**self.values, **extra}, self.dim_depths)

    @property
    def columns_lower(self) -> set[str]:
        return {c.lower() for c in self.columns()}

    def column_of(self, name: str) -> str | None:
        """The `history` column holding the logged name `name` (see the naming rule)."""
        key = name.lower()
        for info in self.values.values():
            if any(v.lower() == key for v in info.variants):
                return info.column
        return None

    def columns(self) -> dict[str, str]:
        """Column name -> SQL type, in display order: identity, loop dims, args, logged names."""
        cols = {c: ("TIMESTAMP" if c == "tstamp" else "VARCHAR") for c in IDENTITY_COLUMNS}
        for dim in sorted(self.dims, key=lambda d: (self.dims[d], d)):
            cols[dim] = "BIGINT"
        ordered = sorted(self.values.values(), key=lambda i: (not i.is_arg, i.column.lower()))
        for info in ordered:
            cols[info.column] = info.sql_type
        return cols


def refresh_names(con: duckdb.DuckDBPyConnection, pending: int) -> bool:
    """Mark the name statistics new when an ingest changed any run (its new rows carry the
    segment id `pending`; `_dropped` lists the runs it removed or rebuilt); whether it did.
    The statistics themselves are kept as the rows arrive (name_stats.py)."""
    changed = con.execute(
        f"SELECT (SELECT count(*) FROM (SELECT 1 FROM _logs WHERE _seg = {int(pending)} LIMIT 1))"
        " + (SELECT count(*) FROM _dropped)").fetchone()[0]
    if changed:
        con.execute("INSERT OR REPLACE INTO _meta SELECT 'names_generation', CAST(coalesce(max("
                    "CAST(value AS BIGINT)), 0) + 1 AS VARCHAR) FROM _meta "
                    "WHERE key = 'names_generation'")
    return bool(changed)


def load_history_schema(con: duckdb.DuckDBPyConnection) -> HistorySchema:
    dim_depths: dict[str, set[int]] = {}
    # ordered, so `history`'s columns come in one order whichever process computed them
    rows = con.execute("SELECT loop_name, depth FROM _loop_dims ORDER BY depth, loop_name")
    for name, depth in rows.fetchall():
        dim_depths.setdefault(name, set()).add(depth)
    dims = {name: max(depths) for name, depths in dim_depths.items()}
    rows = con.execute(
        "SELECT name_key, value_name, depth, kind, records, contexts, runs, types, over_int64, "
        "over_int128 FROM _name_depths ORDER BY value_name").fetchall()
    column_of = history_columns((row[1] for row in rows), dims)
    values: dict[str, NameInfo] = {}
    for key, name, depth, kind, records, contexts, runs, types, over64, over128 in rows:
        column = column_of[key]
        info = values.setdefault(column.lower(), NameInfo(column=column))
        info.variants.add(name)
        info.types.update(types)
        old_records, old_contexts = info.depths.get(depth, (0, 0))
        info.depths[depth] = (old_records + records, old_contexts + contexts)
        info.is_arg = info.is_arg or kind == "arg"
        info.runs = max(info.runs, runs)
        info.over_int64 += over64
        info.over_int128 += over128
    return HistorySchema(dims=dims, values=values, dim_depths=dim_depths)


def history_columns(names: Iterable[str], dims: Iterable[str]) -> dict[str, str]:
    """Lower-cased logged name -> its `history` column, by the naming rule (module docstring).

    A name that collides keeps its spelling (the first, in sorted order, of its case variants)
    plus `_value`; names that do not collide are served first, so `epoch_value` logged as such
    keeps its name and a logged `epoch` becomes `epoch_value_value`.
    """
    spelling: dict[str, str] = {}
    for name in sorted(names):
        spelling.setdefault(name.lower(), name)
    reserved = {c.lower() for c in IDENTITY_COLUMNS} | {d.lower() for d in dims}
    columns = {key: name for key, name in spelling.items() if key not in reserved}
    taken = reserved | set(columns)
    for key in sorted(k for k in spelling if k in reserved):
        column = spelling[key] + RENAME_SUFFIX
        while column.lower() in taken:
            column += RENAME_SUFFIX
        columns[key] = column
        taken.add(column.lower())
    return columns
