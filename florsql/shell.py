"""The interactive shell: `florsql [PROJECT]` on a terminal.

A prompt_toolkit REPL over florsql.dbapi: SQL runs when the input ends with `;`, dot commands
(see commands.py) when it starts with `.`. Context-aware completion, SQL highlighting, a
persistent history with Ctrl-R search and suggestions, tables that turn vertical when too
wide for the screen and a pager when too tall.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO

import duckdb
from prompt_toolkit import PromptSession
from prompt_toolkit.application import get_app
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.completion import CompleteEvent, Completer
from prompt_toolkit.filters import Condition, completion_is_selected, has_completions
from prompt_toolkit.history import FileHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.lexers import PygmentsLexer
from prompt_toolkit.output import Output
from pygments.lexers.sql import SqlLexer

from . import __version__, exceptions
from .commands import CommandError, ExitShell, command_specs, dispatch, user_tables
from .completion import Catalog, SqlCompleter
from .dbapi import Connection
from .engine import ReplayPlan
from .export import Result
from .formatting import display_width, format_rows, format_vertical, underline
from .progress import replay_progress
from .retroactive import describe_plan, plan_summary
from .saved import SavedQueryError, list_queries
from .statements import split_statements

DEFAULT_HISTORY = "~/.local/state/florsql/history"
DEFAULT_PAGER = "less -SRFX"
_DUCKDB_CARET = re.compile(r"^LINE (\d+): (.*)\n( *)(\^+)", re.MULTILINE)


def run_shell(project: str, *, input: Input | None = None, output: Output | None = None,
              history_file: str | None = None, stdout: IO[str] | None = None) -> int:
    """Run the REPL until `.quit` or Ctrl-D; 0 on a normal exit, 1 if the project cannot open.

    `input`/`output` drive the prompt (prompt_toolkit objects, e.g. a pipe input in tests);
    results, messages and errors go to `stdout` (default sys.stdout).
    """
    out = stdout or sys.stdout
    try:
        conn = Connection(project, replay="ask", surface="shell")
    except exceptions.Error as e:
        print(f"florsql: error: {e}", file=out)
        return 1
    with conn:
        shell = Shell(conn, input=input, output=output, history_file=history_file, stdout=out)
        return shell.loop()


def history_path(history_file: str | None = None) -> Path:
    """The parameter, else $FLORSQL_HISTORY, else ~/.local/state/florsql/history."""
    raw = history_file or os.environ.get("FLORSQL_HISTORY") or DEFAULT_HISTORY
    path = Path(raw).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def ready_to_run(text: str) -> bool:
    """Enter runs the input when it ends with `;`, is a dot command, or is empty."""
    stripped = text.strip()
    return not stripped or stripped.startswith(".") or stripped.endswith(";")


class Shell:
    """One interactive session over an open connection."""

    def __init__(self, conn: Connection, *, input: Input | None = None,
                 output: Output | None = None, history_file: str | None = None,
                 stdout: IO[str] | None = None) -> None:
        self.conn = conn
        self.stdout = stdout or sys.stdout
        self.mode = "table"
        self.timer = False
        self._redirect: IO[str] | None = None
        self._once: str | None = None
        self.last_result: Result | None = None
        self._parser = duckdb.connect(":memory:")  # only to point at a syntax error
        self._catalog: Catalog = ({}, [], [])
        self.completer = SqlCompleter(lambda: self._catalog, command_specs())
        self.session: PromptSession[str] = PromptSession(
            message="florsql> ", prompt_continuation=lambda width, *_: "...> ".rjust(width),
            multiline=True, key_bindings=_key_bindings(self.completer), completer=self.completer,
            lexer=PygmentsLexer(SqlLexer), history=FileHistory(str(history_path(history_file))),
            auto_suggest=AutoSuggestFromHistory(), enable_history_search=False,
            complete_while_typing=True, input=input, output=output)
        conn.replay_policy.confirm = self.confirm_replay
        conn.replay_policy.progress = replay_progress(self.stdout)
        self.run_quietly(conn.refresh)
        self.refresh_catalog()

    def loop(self) -> int:
        self.message(f"florsql {__version__}: project {self.conn.project.root}\n"
                     "Type .help for commands; end SQL with ';'. Ctrl-D quits.")
        while True:
            try:
                text = self.session.prompt()
            except KeyboardInterrupt:
                continue  # Ctrl-C drops the current input
            except EOFError:
                break
            if not self.handle(text):
                break
        self.set_output(None)
        return 0

    def handle(self, text: str) -> bool:
        """Run one accepted input; False when the shell should exit."""
        try:
            if text.strip().startswith("."):
                dispatch(self, text)
            elif text.strip():
                self.run_text(text)
        except ExitShell:
            return False
        except (CommandError, OSError) as e:
            self.error(str(e))
        except KeyboardInterrupt:  # Ctrl-C during a statement: DuckDB was told to stop
            self.error("interrupted")
        return True

    def run_text(self, text: str) -> None:
        """Run each SQL statement of `text` in turn, stopping at the first error."""
        statements = split_statements(text)
        for statement in statements:
            if not self.run_sql(statement.sql):
                if len(statements) > 1:
                    self.message(f"(statement {statement.number} of {len(statements)}, line "
                                 f"{statement.line}; the statements after it did not run)")
                return

    def run_sql(self, sql: str, params: dict | None = None, *, locate: bool = True) -> bool:
        """Execute via the DB-API (it ingests first), show the result; `locate`: underline."""
        started = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                cur = self.conn.execute(sql, params)
                result = Result.from_cursor(cur) if cur.description else None
        except exceptions.Error as e:
            self.error(str(e), self._position(sql, e) if locate else None)
            return False
        for w in caught:
            self.message(f"warning: {w.message}")
        if result is not None:
            self.last_result = result  # for .export: kept, never run again
            self.show(result.columns, result.rows())
        if cur.replay_plan is not None:
            self.message(plan_summary(cur.replay_plan))
        if self.timer:
            self.message(f"Time: {time.perf_counter() - started:.3f}s")
        self.refresh_catalog()
        return True

    def confirm_replay(self, plan: ReplayPlan) -> bool:
        """`ask` mode: show the plan and its estimated cost, replay only on a yes."""
        self.message(describe_plan(plan))
        ask = PromptSession(input=self.session.input, output=self.session.output)
        try:
            answer = ask.prompt(f"Replay {len(plan.tasks)} task(s), estimated "
                                f"{plan.estimated_seconds:.0f} s? [y/N] ")
        except (EOFError, KeyboardInterrupt):
            return False
        return answer.strip().lower() in ("y", "yes")

    def show(self, columns: list[str], rows: list[tuple]) -> None:
        text = format_rows(columns, rows, self.mode)
        if self._redirect is None and self._once is None and self.mode == "table":
            if display_width(text) > self._screen_size()[1]:
                text = format_vertical(columns, rows)
        self.emit(text)

    def emit(self, text: str) -> None:
        """A result: to the `.once` file, else the `.output` file, else the screen."""
        if self._once is not None:
            path, self._once = self._once, None
            Path(path).expanduser().write_text(text + "\n")
        elif self._redirect is not None:
            self._redirect.write(text + "\n")
            self._redirect.flush()
        else:
            self._page(text)

    def message(self, text: str) -> None:
        """Not a result (banner, timing, warnings): always to the screen."""
        print(text, file=self.stdout, flush=True)

    def error(self, text: str, position: str | None = None) -> None:
        self.message(f"error: {text}" + (f"\n{position}" if position else ""))

    def set_output(self, path: str | None, *, once: bool = False) -> None:
        if once:
            self._once = path
            return
        if self._redirect is not None:
            self._redirect.close()
            self._redirect = None
        if path is not None:
            self._redirect = Path(path).expanduser().open("w")

    def refresh_catalog(self) -> None:
        """Snapshot the names completion offers: after each statement, not on each key."""
        session = self.conn.session
        try:
            queries = [q.name for q in list_queries(self.conn.project.root, warn=False)]
        except SavedQueryError:
            queries = self._catalog[2]
        tables = {t: list(cols) for t, cols in user_tables(session).items() if t != "history"}
        columns = list(session.history_schema.columns())
        known = {c.lower() for c in columns}
        columns += sorted(n for k, n in session.script_names().items() if k not in known)
        self._catalog = (tables, columns, queries)

    def run_quietly(self, step: Callable[[], object]) -> None:
        """Run `step`, printing its warnings as one line each."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
        for w in caught:
            self.message(f"warning: {w.message}")

    def _position(self, sql: str, error: exceptions.Error) -> str | None:
        """The unknown name underlined where the error says it is, or DuckDB's caret under a
        syntax error."""
        if isinstance(error, exceptions.UnknownNameError):
            if error.position is None:
                return None
            line = sql.splitlines()[error.position.line - 1]
            return underline(line, error.position.column - 1, len(error.name))
        if "syntax error" in str(error).lower():
            try:
                self._parser.extract_statements(sql)
            except duckdb.Error as e:
                return _duckdb_caret(str(e))
        return None

    def _screen_size(self) -> tuple[int, int]:
        size = self.session.output.get_size()
        return size.rows, size.columns

    def _page(self, text: str) -> None:
        rows = self._screen_size()[0]
        if not self.stdout.isatty() or text.count("\n") + 2 < rows:
            print(text, file=self.stdout, flush=True)
            return
        pager = os.environ.get("PAGER") or DEFAULT_PAGER
        if not shutil.which(pager.split()[0]):
            print(text, file=self.stdout, flush=True)
            return
        try:
            subprocess.run(pager, shell=True, input=text + "\n", text=True, check=False)
        except (OSError, KeyboardInterrupt):
            print(text, file=self.stdout, flush=True)


def _key_bindings(completer: Completer) -> KeyBindings:
    kb = KeyBindings()

    @kb.add("tab", filter=~has_completions)
    def _complete(event: KeyPressEvent) -> None:
        # A single candidate goes in at once: no race with keys typed or pasted after Tab.
        buffer = event.current_buffer
        requested = CompleteEvent(completion_requested=True)
        found = list(completer.get_completions(buffer.document, requested))
        if len(found) == 1:
            buffer.apply_completion(found[0])
        else:
            buffer.start_completion(insert_common_part=True)

    @kb.add("enter", filter=completion_is_selected)
    def _take_completion(event: KeyPressEvent) -> None:  # keep the chosen one, close the menu
        event.current_buffer.complete_state = None

    @kb.add("enter", filter=Condition(lambda: ready_to_run(get_app().current_buffer.text))
            & ~completion_is_selected)
    def _submit(event: KeyPressEvent) -> None:
        event.current_buffer.validate_and_handle()

    return kb


def _duckdb_caret(raw: str) -> str | None:
    """DuckDB's own `LINE n: ...` and `^^^` lines, re-indented."""
    found = _DUCKDB_CARET.search(raw)
    if not found:
        return None
    prefix = len(f"LINE {found.group(1)}: ")
    return underline(found.group(2), len(found.group(3)) - prefix, len(found.group(4)))
