"""What a run still lacks of a name: the one rule that `florsql replay` and retroactive SQL share.

A name logged once per run (outside any `flor.loop`) is there when any record of it is, or when
a finished replay of the whole run covered it. A name logged in a loop is there, per outer
iteration, when a record of it sits in that iteration or a finished replay's segment spanned
it; what is missing is replayed: the whole run when every iteration is, else only the missing
iterations, each from its nearest checkpoint. So a replay cut short (a task killed or timed
out while another segment of the run finished) is completed by the next replay, whichever
way it is asked for.

    facts = coverage_facts(session, ["val_acc"])
    needs = run_needs(facts, tstamp, None, ["val_acc"], script_names(...)[filename])
    # {"val_acc": None} - a whole replay; {"val_acc": frozenset({3, 4, 5})} - three epochs;
    # {} - nothing missing
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from ..code.script_names import ScriptName
from ..query.session import CatalogSession
from .model import RunRow

Todo = frozenset[int] | None  # the outer iterations to replay; None: the whole run


class ReplayedSpan(NamedTuple):
    """The outer iterations [start, stop) a finished replay ran, and its names."""

    names: frozenset[str] | None  # lower-cased; None: every name
    start: int
    stop: int | None  # None: to the end of the run


@dataclass(frozen=True)
class Coverage:
    """What the catalog holds of some names, kept by the session until the catalog changes."""

    runs: dict[datetime, RunRow]  # every run, by tstamp
    present: dict[tuple[datetime, str], set[int | None]]  # (tstamp, name) -> outer iterations
    covered: dict[datetime, list[ReplayedSpan]]  # tstamp -> what finished replays ran
    iterations: dict[datetime, list[int]]  # tstamp -> the outer iterations it recorded


def coverage_facts(session: CatalogSession, names: Iterable[str]) -> Coverage:
    """The facts about lower-cased `names` that run_needs reads."""
    names = sorted({n.lower() for n in names})
    return session.derived(("coverage", tuple(names)), lambda: Coverage(
        run_facts(session), _present(session, names), _covered(session),
        _recorded_iterations(session)))


def run_facts(session: CatalogSession) -> dict[datetime, RunRow]:
    """tstamp -> the `runs` row of every run."""
    def read() -> dict[datetime, RunRow]:
        rows = session.con.execute(
            "SELECT tstamp, runid, vid, filename, argv, run_dir, status FROM runs").fetchall()
        return {t: RunRow(t, runid, vid, filename, tuple(argv or ()), run_dir, status)
                for t, runid, vid, filename, argv, run_dir, status in rows}

    return session.derived(("retro-runs",), read)


def run_needs(facts: Coverage, tstamp: datetime, window: set[int] | None,
              names: Iterable[str], logged: dict[str, ScriptName]) -> dict[str, Todo]:
    """Name (as the script spells it) -> what run `tstamp` lacks of it, for the `names` that
    today's script logs (`logged`, by lower-cased name); `window` limits the outer iterations
    looked at (None: all)."""
    need: dict[str, Todo] = {}
    for name in (n.lower() for n in names):
        if name not in logged:
            continue
        todo = _todo(logged[name], window, facts.iterations.get(tstamp, []),
                     facts.present.get((tstamp, name)), facts.covered.get(tstamp, []))
        if todo is None or todo:  # an empty set: nothing missing
            need[logged[name].name] = todo
    return need


def merge_windows(todos: Iterable[Todo]) -> Todo:
    """One window for all of a run's names: a whole replay if any name needs one."""
    merged: set[int] = set()
    for todo in todos:
        if todo is None:
            return None
        merged |= todo
    return frozenset(merged)


def _todo(site: ScriptName, window: set[int] | None, iterations: list[int],
          present: set[int | None] | None, covered: list[ReplayedSpan]) -> Todo:
    """What a run needs of one name: None a whole replay, else the outer iterations (an empty
    set: nothing)."""
    name = site.name.lower()
    spans = [(s.start, s.stop) for s in covered if s.names is None or name in s.names]
    if not site.in_loop or not iterations:  # logged once per run: any record will do
        whole = any(a == 0 and b is None for a, b in spans)
        return frozenset() if present or whole else None
    wanted = set(iterations) if window is None else window & set(iterations)
    done = (present or set()) | {i for i in wanted for a, b in spans
                                 if a <= i and (b is None or i < b)}
    missing = wanted - done
    if missing and missing == set(iterations):
        return None
    return frozenset(missing)


def _present(session: CatalogSession,
             names: list[str]) -> dict[tuple[datetime, str], set[int | None]]:
    """(tstamp, name) -> the outer iterations holding a record of it (None: outside loops).
    A record carries its outermost loop's iteration (`iter_1`, NULL at run level)."""
    rows = session.con.execute(
        "SELECT tstamp, lower(value_name), list(DISTINCT iter_1) FROM _logs "
        "WHERE lower(value_name) IN (SELECT unnest(?::VARCHAR[])) GROUP BY ALL",
        [names]).fetchall()
    return {(t, n): set(iters) for t, n, iters in rows}


def _covered(session: CatalogSession) -> dict[datetime, list[ReplayedSpan]]:
    """tstamp -> what each finished replay of it ran."""
    rows = session.con.execute(
        "SELECT tstamp, names, start_iter, stop_iter FROM replays "
        "WHERE status = 'finished' AND start_iter IS NOT NULL").fetchall()
    out: dict[datetime, list[ReplayedSpan]] = {}
    for t, names, start, stop in rows:
        lowered = None if names is None else frozenset(n.lower() for n in names)
        out.setdefault(t, []).append(ReplayedSpan(lowered, start, stop))
    return out


def _recorded_iterations(session: CatalogSession) -> dict[datetime, list[int]]:
    rows = session.con.execute(
        "SELECT tstamp, list(DISTINCT iteration ORDER BY iteration) "
        "FROM iterations WHERE source = 'forward' GROUP BY 1").fetchall()
    return dict(rows)
