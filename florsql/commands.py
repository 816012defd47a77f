"""The shell's dot commands: a registry filled by the `@command` decorator, which makes `.help`.

Each handler takes the shell and the command's arguments (split like a shell line). A bad
argument raises CommandError: the shell prints its one line and goes on.
"""

from __future__ import annotations

import difflib
import shlex
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .completion import CommandSpec
from .engine.catalog.schema import USER_TABLES
from .export import ExportError, Result, export_format, write_results
from .formatting import FORMATS
from .saved import SavedQueryError, find_query, list_queries, parse_assignments
from .statements import ScriptReadError, read_sql_file

RECENT_RUNS = 20


class CommandError(Exception):
    """A dot command was called wrongly; the message is one line that says how to call it."""


class ExitShell(Exception):  # noqa: N818  (a signal, not an error)
    """`.quit` / `.exit`."""


class Shell(Protocol):
    """What the commands use of the shell (florsql.shell.Shell)."""

    conn: Any
    mode: str
    timer: bool
    last_result: Result | None

    def message(self, text: str) -> None: ...
    def emit(self, text: str) -> None: ...
    def show(self, columns: list[str], rows: list[tuple]) -> None: ...
    def run_sql(self, sql: str, params: dict | None = None, *, locate: bool = True) -> bool: ...
    def run_text(self, text: str) -> None: ...
    def set_output(self, path: str | None, *, once: bool = False) -> None: ...


@dataclass
class DotCommand:
    name: str
    args: str
    help: str
    handler: Callable[[Shell, list[str]], None]
    nargs: tuple[int, int]  # fewest, most (-1: any number)
    arg_kind: str = ""  # what completion offers for the first argument
    raw: bool = False  # the handler gets the rest of the line unsplit (SQL keeps its quotes)

    def usage(self) -> str:
        return f"{self.name} {self.args}".rstrip()


COMMANDS: dict[str, DotCommand] = {}


def command(names: str, args: str = "", help: str = "", nargs: tuple[int, int] = (0, 0),
            arg_kind: str = "", raw: bool = False) -> Callable:
    """Register a handler under one or more space-separated names (`.quit .exit`)."""

    def register(fn: Callable[[Shell, list[str]], None]) -> Callable[[Shell, list[str]], None]:
        for name in names.split():
            COMMANDS[name] = DotCommand(name, args, help, fn, nargs, arg_kind, raw)
        return fn

    return register


def command_specs() -> list[CommandSpec]:
    return [CommandSpec(c.name, c.arg_kind) for c in COMMANDS.values()]


def dispatch(shell: Shell, line: str) -> None:
    """Run one dot-command line; raises CommandError on misuse, ExitShell to quit."""
    head, _, rest = line.strip().partition(" ")
    if head in COMMANDS and COMMANDS[head].raw:
        sql = rest.strip().rstrip(";").strip()
        args = [sql] if sql else []
        if len(args) < COMMANDS[head].nargs[0]:
            raise CommandError(f"usage: {COMMANDS[head].usage()}  ({COMMANDS[head].help})")
        COMMANDS[head].handler(shell, args)
        return
    try:
        name, *args = shlex.split(line.strip().rstrip(";"))
    except ValueError as e:
        raise CommandError(f"cannot read {line.strip()!r}: {e}") from None
    cmd = COMMANDS.get(name)
    if cmd is None:
        close = difflib.get_close_matches(name, list(COMMANDS), n=2)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise CommandError(f"unknown command {name}: {hint}(list them with .help)")
    low, high = cmd.nargs
    if len(args) < low or (high >= 0 and len(args) > high):
        raise CommandError(f"usage: {cmd.usage()}  ({cmd.help})")
    cmd.handler(shell, args)


def help_text() -> str:
    width = max(len(c.usage()) for c in COMMANDS.values())
    lines = [f"{c.usage().ljust(width)}  {c.help}" for c in COMMANDS.values()]
    return "\n".join([*lines, "", "SQL statements run when the input ends with ';'."])


@command(".help", help="show this list of commands")
def _help(shell: Shell, args: list[str]) -> None:
    shell.emit(help_text())


@command(".quit .exit", help="leave the shell (Ctrl-D also does)")
def _quit(shell: Shell, args: list[str]) -> None:
    raise ExitShell


@command(".tables", help="list the tables, history included")
def _tables(shell: Shell, args: list[str]) -> None:
    tables = _all_tables(shell)
    shell.show(["table", "columns"], [(t, len(cols)) for t, cols in tables.items()])


@command(".schema", "[TABLE]", "columns and types of one table, or of all", (0, 1), "table")
def _schema(shell: Shell, args: list[str]) -> None:
    tables = _all_tables(shell)
    if args and args[0].lower() not in tables:
        close = difflib.get_close_matches(args[0].lower(), list(tables), n=2)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise CommandError(f"unknown table {args[0]!r}: {hint}(list them with .tables)")
    picked = [args[0].lower()] if args else list(tables)
    shell.show(["table", "column", "type"],
               [(t, col, kind) for t in picked for col, kind in tables[t].items()])


@command(".runs", "[N]", f"the N most recent runs (default {RECENT_RUNS})", (0, 1))
def _runs(shell: Shell, args: list[str]) -> None:
    limit = _positive_int(args[0]) if args else RECENT_RUNS
    shell.run_sql("SELECT runid, tstamp, left(vid, 10) AS vid, status FROM runs "
                  f"ORDER BY tstamp DESC LIMIT {limit}")


@command(".names", help="logged names and args with their record and run counts")
def _names(shell: Shell, args: list[str]) -> None:
    shell.run_sql("SELECT name, kind, depth, records, runs, value_types FROM names "
                  "ORDER BY kind, lower(name)")


@command(".mode", "table|csv|json|markdown", "set the output format", (0, 1), "mode")
def _mode(shell: Shell, args: list[str]) -> None:
    if not args:
        shell.emit(f"mode: {shell.mode}")
    elif args[0] not in FORMATS:
        raise CommandError(f"unknown mode {args[0]!r}: use one of {', '.join(FORMATS)}")
    else:
        shell.mode = args[0]


@command(".output", "[FILE]", "write all output to FILE; no FILE: back to the screen", (0, 1),
         "file")
def _output(shell: Shell, args: list[str]) -> None:
    shell.set_output(args[0] if args and args[0] != "stdout" else None)


@command(".once", "FILE", "write only the next result to FILE", (1, 1), "file")
def _once(shell: Shell, args: list[str]) -> None:
    shell.set_output(args[0], once=True)


@command(".export", "FILE [FORMAT]", "write the last result to FILE (parquet, csv, tsv, json, "
         "md; from the extension or FORMAT) without running it again", (1, 2), "file")
def _export(shell: Shell, args: list[str]) -> None:
    if shell.last_result is None:
        raise CommandError("no result to export yet: run a query first, then .export FILE")
    try:
        fmt = export_format(args[0], args[1] if len(args) > 1 else None)
        write_results([shell.last_result], args[0], fmt)
    except ExportError as e:
        raise CommandError(str(e)) from None
    rows = shell.last_result.table.num_rows
    shell.message(f"wrote {rows} row(s) to {args[0]} ({fmt})")


@command(".read", "FILE.sql", "run the SQL statements in a file", (1, 1), "file")
def _read(shell: Shell, args: list[str]) -> None:
    try:
        text = read_sql_file(args[0])
    except ScriptReadError as e:
        raise CommandError(str(e)) from None
    shell.run_text(text)


@command(".queries", help="list the saved queries with their parameters")
def _queries(shell: Shell, args: list[str]) -> None:
    with warnings.catch_warnings(record=True) as skipped:  # files that could not be read
        warnings.simplefilter("always")
        queries = list_queries(shell.conn.project.root)
    for w in skipped:
        shell.message(f"warning: {w.message}")
    shell.show(["name", "params", "description"],
               [(q.name, " ".join(f"{p}=..." for p in q.params), q.description) for q in queries])


@command(".run", "NAME [K=V ...]", "run a saved query with its parameters", (1, -1), "query")
def _run(shell: Shell, args: list[str]) -> None:
    try:
        query = find_query(args[0], shell.conn.project.root)
        sql, values = query.bind(parse_assignments(args[1:]))
    except SavedQueryError as e:
        raise CommandError(str(e).replace("--param ", "")) from None
    shell.run_sql(sql, values or None, locate=False)


@command(".timer", "on|off", "show how long each statement takes", (1, 1), "onoff")
def _timer(shell: Shell, args: list[str]) -> None:
    if args[0].lower() not in ("on", "off"):
        raise CommandError(f"usage: .timer on|off (not {args[0]!r})")
    shell.timer = args[0].lower() == "on"


@command(".replay", "[auto|ask|off]", "what a query that names missing values does: "
         "replay them, ask first (the default), or answer with NULLs", (0, 1), "replay")
def _replay(shell: Shell, args: list[str]) -> None:
    if not args:
        shell.emit(f"replay: {shell.conn.replay}")
    elif args[0] not in ("auto", "ask", "off"):
        raise CommandError(f"unknown replay mode {args[0]!r}: use auto, ask or off")
    else:
        shell.conn.replay = args[0]


@command(".explain", "SELECT ...", "show the replay a query needs, with its estimated time, "
         "without running anything", (1, 1), raw=True)
def _explain(shell: Shell, args: list[str]) -> None:
    shell.run_sql("EXPLAIN REPLAY " + args[0])


@command(".jobs", "[BATCH]", "the job queue (flor.batch, florsql serve): each job's status, "
         "then a progress line", (0, 1))
def _jobs(shell: Shell, args: list[str]) -> None:
    from .engine.jobs.status import job_listing, progress_line
    from .engine.jobs.store import QUEUE_FILE, JobQueue

    home = shell.conn.project.home
    if not (home / QUEUE_FILE).exists():
        shell.message("no jobs: queue some with flor.batch(flor.cross_prod(...)) from Python")
        return
    queue = JobQueue(home / QUEUE_FILE)
    columns, rows = job_listing(queue, args[0] if args else None)
    if rows:
        shell.show(columns, rows)
    shell.message(progress_line(queue, args[0] if args else None))


def user_tables(session: Any) -> dict[str, dict[str, str]]:
    """`history` and the catalog's user tables (not DuckDB's own views) -> column -> type."""
    tables = {t: cols for t, cols in session.tables.items() if t in USER_TABLES}
    return {"history": dict(session.history_schema.columns()), **tables}


def _all_tables(shell: Shell) -> dict[str, dict[str, str]]:
    return user_tables(shell.conn.session)


def _positive_int(raw: str) -> int:
    if not raw.isdigit() or int(raw) == 0:
        raise CommandError(f"expected a positive number of runs, not {raw!r}")
    return int(raw)
