"""Analyse a query over `history`: the columns it reads, which of them today's scripts log
(the ones a replay can fill in), and the runs and loop iterations its WHERE clauses allow.

analyze_statement(statement, schema, tables, script_names, params) -> Analysis. Pure: the
catalog facts come in as arguments. The query is qualified with sqlglot against the catalog
schema plus the names today's scripts log, so aliases, CTEs, subqueries, joins, `USING` and
window functions resolve to the `history` columns behind them. Only names the query spells out
can trigger a replay: `SELECT *` expands to the columns that have data. `* EXCLUDE (x)` and
`COLUMNS('regex')` reference what DuckDB would select: the regex, lambda or list is evaluated
by a sandboxed in-memory DuckDB over an empty relation with `history`'s columns.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import duckdb
from sqlglot import exp
from sqlglot.errors import OptimizeError, SqlglotError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, traverse_scope
from sqlglot.schema import MappingSchema

from ..catalog.names import IDENTITY_COLUMNS, HistorySchema
from ..catalog.sandbox import lock_down, run_interruptible
from ..errors import UnknownColumnError

log = logging.getLogger(__name__)
HISTORY = "history"
_UNRESOLVED = re.compile(r"Column '([^']+)' could not be resolved")
_POSITIONAL = re.compile(r"\$__p(\d+)")
# Conjuncts holding these are never pushed down: their value is not a property of the run.
_NOT_PUSHABLE = (exp.Subquery, exp.Select, exp.AggFunc, exp.Window, exp.Rand, exp.Anonymous)
_PROBE_MEMORY = "256MB"  # the COLUMNS(...) probe selects from an empty relation
_probe: duckdb.DuckDBPyConnection | None = None
_probe_guard = threading.Lock()


@dataclass
class Analysis:
    """What one query needs from `history`.

    `condition` is the pushed-down filter over run-level columns and loop dimensions, with
    its parameters in `params` (named `$__pN`); None means every run may be needed.
    """

    referenced: set[str] = field(default_factory=set)  # lower-cased history columns
    replayable: set[str] = field(default_factory=set)  # referenced names today's scripts log
    condition: exp.Expression | None = None
    params: dict[str, Any] = field(default_factory=dict)
    widened: bool = False  # some scope that needs a replayable name has no usable filter
    # Rows of `history` no read of it can see outside these runs: a filter over identity
    # columns (runid, tstamp, ...) that rejects NULL, so history.py can apply it to the
    # tables before its joins. None: every run (some read has no such filter).
    run_filter: exp.Expression | None = None

    def merge(self, other: Analysis) -> None:
        self.referenced |= other.referenced
        self.replayable |= other.replayable
        self.params.update(other.params)
        self.widened = self.widened or other.widened
        if other.replayable:
            self.condition = _or(self.condition, other.condition)

    @property
    def pushed(self) -> exp.Expression | None:
        """The filter to choose runs with, or None when every run may be needed."""
        return None if self.widened else self.condition


def analyze_statement(statement: exp.Expression, schema: HistorySchema,
                      tables: dict[str, dict[str, str]], script_names: Mapping[str, str],
                      params: Any = None) -> Analysis:
    """Analyse one parsed statement that reads `history`.

    `script_names` maps lower-cased names logged by today's scripts to their spelling.
    Raises UnknownColumnError for a name no table, no record and no script knows.
    """
    spelled = _spelled_names(statement)
    known = schema.columns_lower
    pending = {k: v for k, v in script_names.items() if k in spelled and k not in known}
    history_cols = {**schema.columns(), **{v: "DOUBLE" for v in pending.values()}}
    work = statement.copy()
    bound = _name_placeholders(work, params)
    qualified = qualify_history(work, history_cols, tables, script_names.values())
    selected = selected_columns(statement, history_cols)
    if qualified is None:  # sqlglot could not qualify it: name matching, every run
        found = _column_names(statement, history_cols) | selected
        return Analysis(referenced=found, replayable=found & spelled & set(script_names),
                        widened=bool(found & set(script_names)))
    run_level = _run_level_columns(schema)
    out = Analysis(referenced=selected)
    storage: list[exp.Expression | None] = []
    for scope in traverse_scope(qualified):
        for alias in _history_aliases(scope):  # each alias of history chooses its own rows
            storage.append(_identity_filter(scope, alias))
            cols = {c.name.lower() for c in scope.columns if c.table == alias}
            out.referenced |= cols
            wanted = cols & spelled & set(script_names)
            if wanted:
                out.replayable |= wanted
                condition = _scope_condition(scope, alias, run_level, bound)
                out.widened = out.widened or condition is None
                out.condition = _or(out.condition, condition)
    out.params = bound or {}
    if storage and all(c is not None for c in storage):
        for condition in storage:
            out.run_filter = _or(out.run_filter, condition)
    return out


_IDENTITY = frozenset(c.lower() for c in IDENTITY_COLUMNS)
_NULL_REJECTING = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.In, exp.Between,
                   exp.Like, exp.ILike)
_CONSTANT = (exp.Literal, exp.Cast, exp.Neg, exp.Paren, exp.Tuple)


def _identity_filter(scope: Scope, alias: str) -> exp.Expression | None:
    """The AND of the scope's WHERE conjuncts over identity columns of `alias` that compare
    them with constants (no parameters), each false for a NULL row, so that applying them
    inside `history` changes no result, outer joins included."""
    where = scope.expression.args.get("where")
    if where is None:
        return None
    kept = [_unqualified(c) for c in _conjuncts(where.this) if _null_rejecting(c, alias)]
    return exp.and_(*kept) if kept else None


def _null_rejecting(cond: exp.Expression, alias: str) -> bool:
    cond = cond.unnest()
    if isinstance(cond, exp.And | exp.Or):
        return _null_rejecting(cond.this, alias) and _null_rejecting(cond.expression, alias)
    if not isinstance(cond, _NULL_REJECTING) or cond.find(exp.Placeholder, exp.Parameter):
        return False
    cols = list(cond.find_all(exp.Column))
    operands = [cond.this, cond.args.get("expression"), *cond.args.get("expressions", []),
                cond.args.get("low"), cond.args.get("high")]
    return (len(cols) == 1 and cols[0].table == alias and cols[0].name.lower() in _IDENTITY
            and all(isinstance(o, exp.Column)
                    or (isinstance(o, _CONSTANT) and not o.find(exp.Column))
                    for o in operands if o is not None))


def qualify_history(statement: exp.Expression, history_cols: dict[str, str],
                    tables: dict[str, dict[str, str]],
                    also_known: Iterable[str] = ()) -> exp.Expression | None:
    """`statement` qualified against the catalog plus `history`; None if sqlglot cannot.

    An unknown column raises UnknownColumnError naming the closest of every known name
    (`also_known`: names today's scripts log).
    """
    # Quoted, so that sqlglot reads a logged name like `$1` or `:lr` as a name, not a parameter.
    quoted = {_quoted(name): kind for name, kind in history_cols.items()}
    mapping = MappingSchema({**tables, HISTORY: quoted}, dialect="duckdb")
    try:
        return qualify(statement, schema=mapping, dialect="duckdb",
                       validate_qualify_columns=True, quote_identifiers=False)
    except OptimizeError as e:
        unresolved = _UNRESOLVED.search(str(e))
        if unresolved:
            known = [*history_cols, *also_known, *{c for cols in tables.values() for c in cols}]
            if unresolved.group(1).lower() not in {k.lower() for k in known}:
                raise UnknownColumnError(unresolved.group(1), known) from None
            # a known name sqlglot cannot place is in two of the statement's tables (`projid`
            # of history JOIN runs): DuckDB's own error says so and names both
            log.debug("ambiguous column %s", unresolved.group(1))
        log.debug("qualify failed, falling back to column names: %s", e)
    except SqlglotError as e:
        log.debug("qualify failed, falling back to column names: %s", e)
    return None


def selected_columns(statement: exp.Expression, history_cols: Mapping[str, str]) -> set[str]:
    """Lower-cased `history` columns that `* EXCLUDE/RENAME (...)` name (DuckDB needs them in
    the relation to leave them out) and that `COLUMNS(...)` selectors select."""
    known = {c.lower() for c in history_cols}
    found: set[str] = set()
    for star in statement.find_all(exp.Star):
        for key in ("except_", "except", "rename"):
            for item in star.args.get(key) or []:
                found |= {c.name.lower() for c in item.find_all(exp.Column)}
    selectors = list(statement.find_all(exp.Columns))
    if selectors:
        found |= _probe_selectors(selectors, history_cols)
    return found & known


def _probe_selectors(selectors: list[exp.Columns], history_cols: Mapping[str, str]) -> set[str]:
    """The columns DuckDB's COLUMNS(...) selects among `history_cols` (all of them if the probe
    cannot tell: the query itself will then fail with DuckDB's own message)."""
    empty = ", ".join(f"CAST(NULL AS {kind}) AS {_quoted(name)}"
                      for name, kind in history_cols.items())
    picked = ", ".join(s.sql(dialect="duckdb") for s in selectors)
    sql = f"SELECT {picked} FROM (SELECT {empty}) AS {HISTORY} LIMIT 0"
    cursor = _probe_connection().cursor()
    try:
        run_interruptible(cursor, lambda: cursor.execute(sql))
        return {d[0].lower() for d in cursor.description or ()}
    except duckdb.Error as e:
        log.debug("COLUMNS probe failed, taking every column: %s", e)
        return {c.lower() for c in history_cols}
    finally:
        cursor.close()


def _probe_connection() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB as locked down as the catalog's: a selector is user SQL too."""
    global _probe
    with _probe_guard:
        if _probe is None:
            con = duckdb.connect(":memory:")
            lock_down(con, _PROBE_MEMORY)
            _probe = con
        return _probe


def _quoted(name: str) -> str:
    return exp.to_identifier(name, quoted=True).sql(dialect="duckdb")


def _spelled_names(statement: exp.Expression) -> set[str]:
    """Column names the query text spells out (not those a `*` stands for)."""
    names = {c.name.lower() for c in statement.find_all(exp.Column)}
    for join in statement.find_all(exp.Join):
        names |= {i.name.lower() for i in join.args.get("using") or []}
    return names


def _history_aliases(scope: Scope) -> list[str]:
    return [alias for alias, (_, source) in scope.selected_sources.items()
            if isinstance(source, exp.Table) and source.name.lower() == HISTORY
            and not source.db]


def _run_level_columns(schema: HistorySchema) -> set[str]:
    """Columns every row of a run holds the same value of, which a replay never changes."""
    cols = {c.lower() for c in IDENTITY_COLUMNS} | {d.lower() for d in schema.dims}
    cols |= {k for k, info in schema.values.items()
             if info.is_arg and set(info.depths) <= {0}}
    return cols


def _scope_condition(scope: Scope, alias: str, run_level: set[str],
                     bound: dict[str, Any] | None) -> exp.Expression | None:
    """The AND of the scope's WHERE conjuncts that only read run-level columns of `alias`
    (None: there are none, so every run may be needed)."""
    where = scope.expression.args.get("where")
    if where is None:
        return None
    kept = [_unqualified(c) for c in _conjuncts(where.this)
            if _pushable(c, alias, run_level, bound)]
    return exp.and_(*kept) if kept else None


def _conjuncts(cond: exp.Expression) -> list[exp.Expression]:
    cond = cond.unnest()
    if isinstance(cond, exp.And):
        return [*_conjuncts(cond.this), *_conjuncts(cond.expression)]
    return [cond]


def _pushable(cond: exp.Expression, alias: str, run_level: set[str],
              bound: dict[str, Any] | None) -> bool:
    if cond.find(*_NOT_PUSHABLE):
        return False
    if cond.find(exp.Placeholder) and bound is None:
        return False
    cols = list(cond.find_all(exp.Column))
    return bool(cols) and all(c.table == alias and c.name.lower() in run_level for c in cols)


def _unqualified(cond: exp.Expression) -> exp.Expression:
    out = cond.copy()
    for col in out.find_all(exp.Column):
        col.set("table", None)
    return out


def _name_placeholders(statement: exp.Expression, params: Any) -> dict[str, Any] | None:
    """Rename the placeholders of `statement` to `$__pN` / `$name` and map them to `params`.

    None when the parameters cannot be matched to the placeholders with certainty; the
    conjuncts that hold placeholders are then not pushed down (every run stays a candidate).
    """
    holders = list(statement.find_all(exp.Placeholder, bfs=False))
    if not holders:
        return {}
    bound: dict[str, Any] = {}
    try:
        for index, holder in enumerate(h for h in holders if not h.this):
            bound[f"__p{index}"] = params[index]
            holder.set("this", f"__p{index}")
        for holder in holders:
            name = str(holder.this)
            if name.isdigit():
                bound[f"__n{name}"] = params[int(name) - 1]
                holder.set("this", f"__n{name}")
            elif not name.startswith("__"):
                bound[name] = params[name]
    except (KeyError, IndexError, TypeError):
        return None
    order = [int(n) for n in _POSITIONAL.findall(statement.sql(dialect="duckdb"))]
    return bound if order == sorted(order) else None


def _column_names(statement: exp.Expression, history_cols: dict[str, str]) -> set[str]:
    if any(isinstance(s, exp.Star) for s in statement.find_all(exp.Star)):
        return {c.lower() for c in history_cols}
    names = {c.name.lower() for c in statement.find_all(exp.Column)}
    return names & {c.lower() for c in history_cols}


def _or(a: exp.Expression | None, b: exp.Expression | None) -> exp.Expression | None:
    if a is None or b is None:
        return a or b
    return exp.or_(a, b)
