"""Statement propagation for hindsight replay: copy today's `flor.log` statements into old code.

`propagate(old, new, names)` is pure: it returns the old script with one standalone
`flor.log("name", ...)` statement inserted per name, as text (the old file's comments and
formatting survive), or a `Refusal` that says why not. It never guesses: a block that cannot be
aligned, a tie between two places, or a name the old code does not define at that place is
refused. Matching helpers live in `propagate_match.py`.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from .propagate_match import (
    Level,
    bound_at,
    describe,
    elsewhere,
    flor_loop_name,
    kind,
    place_score,
    reachable,
    rename_map,
    similarity,
    sub_blocks,
)
from .propagate_text import after_line, indent_of, renamed_text

MIN_SCORE = 0.3  # below this, no place in the old block resembles the new neighbours
TIE = 0.01  # two scores closer than this are a tie
_WRAPPERS = (ast.With, ast.AsyncWith)
_DEEP_WRAPPERS = (*_WRAPPERS, ast.If, ast.Try, ast.TryStar, ast.ExceptHandler)


@dataclass(frozen=True)
class Insertion:
    name: str
    line: int  # 1-based, in the patched source
    text: str  # the statement, without its indentation


@dataclass(frozen=True)
class Patched:
    source: str
    inserted: list[Insertion]


@dataclass(frozen=True)
class Refusal:
    name: str
    reason: str  # one line: why, and what the user can do


@dataclass(frozen=True)
class LogStatement:
    """Where a script logs `name`; `text` is the standalone `flor.log(...)` statement."""

    name: str
    text: str
    lineno: int
    stmt: ast.stmt = field(compare=False, repr=False)
    block: list[ast.stmt] = field(compare=False, repr=False)
    chain: tuple[Level, ...] = field(compare=False, repr=False)

    @property
    def nested(self) -> bool:
        """True when the call sits inside a bigger statement (`print(..., flor.log(...))`)."""
        return not (isinstance(self.stmt, ast.Expr)
                    and (_log_parts(self.stmt.value) or _guarded_log(self.stmt)))


@dataclass(frozen=True)
class _Plan:
    name: str
    after: int  # insert after this 1-based line of the old source (0: at the top)
    indent: str
    text: str
    order: int


@dataclass(frozen=True)
class _Old:
    tree: ast.Module
    lines: list[str]
    rename: dict[str, str]
    logged: frozenset[str]


def find_log_statements(source: str, names: Iterable[str]) -> dict[str, LogStatement]:
    """The statement that logs each name in `source` (the first one, if logged more than once)."""
    sites = _sites(ast.parse(source), source)
    return {name: sites[name][0] for name in names if name in sites}


def log_sites(source: str) -> dict[str, list[LogStatement]]:
    """Every `flor.log("name", ...)` statement of `source`, by name (a SyntaxError propagates)."""
    return _sites(ast.parse(source), source)


def propagate(old_source: str, new_source: str, names: Iterable[str]) -> Patched | Refusal:
    """Insert into `old_source` today's statement that logs each of `names`."""
    names = list(dict.fromkeys(names))
    first = names[0] if names else ""
    try:
        new_tree, old_tree = ast.parse(new_source), ast.parse(old_source)
    except SyntaxError as err:
        return Refusal(first, f"a script does not parse ({err}); fix it and try again")
    new_sites, old_sites = _sites(new_tree, new_source), _sites(old_tree, old_source)
    old = _Old(old_tree, old_source.splitlines(keepends=True), rename_map(new_tree, old_tree),
               frozenset(old_sites))
    plans = []
    for name in names:
        plan = None if name in old_sites else _plan_name(name, new_sites.get(name, []), old)
        if isinstance(plan, Refusal):
            return plan
        plans += [plan] if plan else []
    return _apply(old_source, plans)


def _plan_name(name: str, sites: list[LogStatement], old: _Old) -> _Plan | Refusal:
    if not sites:
        return Refusal(name, f"today's script never calls flor.log({name!r}, ...); "
                             "check the name, or log it in today's script first")
    if len(sites) > 1:
        lines = ", ".join(str(s.lineno) for s in sites)
        return Refusal(name, f"today's script logs {name!r} in {len(sites)} places (lines "
                             f"{lines}); log each place under its own name to replay it")
    try:
        return _plan(sites[0], old)
    except _Refused as refused:
        return Refusal(name, refused.reason)


def _sites(tree: ast.Module, source: str) -> dict[str, list[LogStatement]]:
    out: dict[str, list[LogStatement]] = defaultdict(list)

    def visit(block: list[ast.stmt], chain: tuple[Level, ...]) -> None:
        for stmt in block:
            for call in _log_calls(stmt):
                name, value = _log_parts(call) or (None, None)
                text = _standalone(source, stmt, call, name, value)
                out[name.value].append(LogStatement(name.value, text, stmt.lineno, stmt,
                                                    block, chain))
            for level in sub_blocks(stmt):
                visit(getattr(level.owner, level.field), (*chain, level))

    visit(tree.body, ())
    return dict(out)


def _log_calls(stmt: ast.stmt) -> list[ast.Call]:
    """`flor.log("name", value)` calls in a statement, not in the blocks nested in it."""
    parts = [c for c in ast.iter_child_nodes(stmt)
             if not isinstance(c, ast.stmt | ast.excepthandler | ast.match_case)]
    return [n for part in parts for n in ast.walk(part)
            if isinstance(n, ast.Call) and _log_parts(n)]


def _log_parts(node: ast.AST) -> tuple[ast.Constant, ast.expr] | None:
    func = getattr(node, "func", None)
    if not (isinstance(func, ast.Attribute) and func.attr == "log"
            and isinstance(func.value, ast.Name) and func.value.id == "flor"):
        return None
    kw = {k.arg: k.value for k in node.keywords}
    name = node.args[0] if node.args else kw.get("name")
    value = node.args[1] if len(node.args) > 1 else kw.get("value")
    ok = isinstance(name, ast.Constant) and isinstance(name.value, str) and value is not None
    return (name, value) if ok else None


def _standalone(source: str, stmt: ast.stmt, call: ast.Call, name: ast.expr,
                value: ast.expr) -> str:
    """One-line `flor.log(name, value)` text, taken from the source where possible.

    A call under a condition inside the statement (`flor.log(...) if k % 5 == 0 else None`,
    `ok and flor.log(...)`) keeps that condition, so the replay logs exactly where a run does.
    """
    guarded = _condition_around(stmt, call)
    if guarded is not None:
        text = ast.get_source_segment(source, guarded)
        return ast.unparse(guarded) if text is None or "\n" in text else text
    if isinstance(stmt, ast.Expr) and stmt.value is call:
        text = ast.get_source_segment(source, call)
    else:
        segs = [ast.get_source_segment(source, n) for n in (call.func, name, value)]
        text = None if None in segs else f"{segs[0]}({segs[1]}, {segs[2]})"
    if text is None or "\n" in text:
        text = ast.unparse(ast.Call(func=call.func, args=[name, value], keywords=[]))
    return text


def _condition_around(stmt: ast.stmt, call: ast.Call) -> ast.expr | None:
    """The outermost conditional expression of `stmt` that holds `call`, if any."""
    parents = {child: node for node in ast.walk(stmt) for child in ast.iter_child_nodes(node)}
    node, outer = call, None
    while node in parents and node is not stmt:
        node = parents[node]
        if isinstance(node, ast.IfExp | ast.BoolOp):
            outer = node
    return outer


class _Refused(Exception):
    """Why a statement cannot be placed in the old version (raised inside planning only)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _plan(site: LogStatement, old: _Old) -> _Plan:
    """Where the statement goes in the old version; _Refused with the reason if nowhere."""
    level, scopes, skipped = _align(site.chain, old)
    block = getattr(level.owner, level.field) if level else old.tree.body
    where = describe(level) if level else "the module level"
    indent = indent_of(old.lines, block)
    if indent is None:
        raise _Refused(f"{where} of yesterday's script is a one-line block; split it over "
                       "lines first")
    text, free = renamed_text(site.text, old.rename)
    if skipped is None:
        prev, nxt = _neighbours(site, old.logged)
    elif skipped == 0:
        raise _Refused(f"today's script logs it inside {describe(site.chain[0])}, which "
                       "yesterday's script lacks; add the statement to the old version by hand")
    else:  # a wrapper only today's script has (`with torch.no_grad():`): place the wrapper
        wrapper, parent = site.chain[skipped], site.chain[skipped - 1]
        prev, nxt = _neighbours_of(wrapper.owner, getattr(parent.owner, parent.field),
                                   old.logged, nested=False)
    options, missing = [], []
    for p in range(len(block) + 1):
        after = after_line(old.lines, block, p)
        bound = None if after is None else bound_at(old.tree, scopes, after)
        gaps = [] if after is None or bound is None else [n for n in free if n not in bound]
        if after is not None and not gaps:
            options.append((place_score(prev, nxt, block, p, old.rename), after))
        missing = gaps or missing
    why_not = _choose(site, options, missing, where)
    if why_not:
        raise _Refused(why_not)
    return _Plan(site.name, max(options)[1], indent, text, site.lineno)


def _choose(site: LogStatement, options: list[tuple[float, int]], missing: list[str],
            where: str) -> str | None:
    """Why no place can be chosen, or None when the best one is clear."""
    if not options:
        names = ", ".join(f"`{n}`" for n in dict.fromkeys(missing))
        return (f"`{site.text}` needs {names}, which yesterday's script does not define "
                f"before it in {where}; add {names} to the old version by hand")
    ranked = sorted(options, reverse=True)
    if ranked[0][0] < MIN_SCORE:
        return (f"nothing in {where} of yesterday's script resembles the code around line "
                f"{site.lineno} of today's script; add the statement by hand")
    if len(ranked) > 1 and ranked[0][0] - ranked[1][0] < TIE:
        lines = " and ".join(str(after) for _, after in sorted(ranked[:2], key=lambda o: o[1]))
        return (f"two places in {where} of yesterday's script fit equally well (after lines "
                f"{lines}); add the statement by hand where it belongs")
    return None


def _align(chain: tuple[Level, ...], old: _Old
           ) -> tuple[Level | None, list[ast.AST], int | None]:
    """The old block matching the innermost block of `chain`, the old scopes around it, and the
    index in `chain` of the first of the innermost wrappers yesterday's script lacks; _Refused
    when a block of `chain` has no single match."""
    level, block, scopes, depths, skipped = None, old.tree.body, [], [0, 0], None
    for j, new in enumerate(chain):
        loop = flor_loop_name(new.owner, depths[0])
        depths[0] += loop is not None
        found = _match(new, loop, block, depths[1], old.rename)
        if found is None and isinstance(new.owner, _WRAPPERS):
            skipped = j if skipped is None else skipped
            continue
        skipped = None
        if found is None:
            where = elsewhere(new.owner, old.tree, old.rename)
            raise _Refused(f"today's script logs it inside {describe(new)}, which yesterday's "
                           f"script lacks at that place{where}; add the statement to the old "
                           "version by hand")
        depths[1] += flor_loop_name(found.owner, depths[1]) is not None
        if isinstance(found.owner, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            scopes.append(found.owner)
        level, block = found, getattr(found.owner, found.field)
    return level, scopes, skipped


def _match(new: Level, loop: str | None, block: list[ast.stmt], depth: int,
           rename: dict[str, str]) -> Level | None:
    named = loop is not None or kind(new).startswith(("def:", "class:"))
    found = []
    for cand in reachable(block, _DEEP_WRAPPERS if named else _WRAPPERS):
        same = kind(cand) == kind(new) and (
            flor_loop_name(cand.owner, depth) == loop if loop else True)
        score = similarity(new.owner, cand.owner, rename) if same else 0.0
        if same and (named or score >= 0.5):
            found.append((score, cand))
    found.sort(key=lambda pair: -pair[0])
    if len(found) > 1 and found[0][0] - found[1][0] < TIE:
        raise _Refused(f"{describe(found[0][1])} and {describe(found[1][1])} of yesterday's "
                       f"script both match {describe(new)} of today's; add the statement by hand")
    return found[0][1] if found else None


def _neighbours(site: LogStatement, logged: frozenset[str]) -> tuple[list, list]:
    """Today's statements before (nearest first) and after the log call, in its block; a call
    nested in a bigger statement goes right after that statement's counterpart."""
    return _neighbours_of(site.stmt, site.block, logged, site.nested)


def _neighbours_of(stmt: ast.stmt, block: list[ast.stmt], logged: frozenset[str],
                   nested: bool) -> tuple[list, list]:
    i = next(k for k, other in enumerate(block) if other is stmt)
    prev = [s for s in block[:i][::-1] if not _new_log(s, logged)]
    nxt = [s for s in block[i + 1:] if not _new_log(s, logged)]
    return ([stmt, *prev] if nested else prev), nxt


def _new_log(stmt: ast.stmt, logged: frozenset[str]) -> bool:
    """A bare `flor.log` statement of a name the old script does not log (it has no match)."""
    if not isinstance(stmt, ast.Expr):
        return False
    calls = [stmt.value] if _log_parts(stmt.value) else _guarded_log(stmt)
    return any(_log_parts(c)[0].value not in logged for c in calls)


def _guarded_log(stmt: ast.Expr) -> list[ast.Call]:
    """The `flor.log` calls of `cond and flor.log(...)` / `flor.log(...) if c else None`."""
    if not isinstance(stmt.value, ast.IfExp | ast.BoolOp):
        return []
    return [n for n in ast.walk(stmt.value) if isinstance(n, ast.Call) and _log_parts(n)]


def _apply(source: str, plans: list[_Plan]) -> Patched | Refusal:
    lines = source.splitlines(keepends=True)
    nl = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    out: list[str] = []
    inserted, done = [], 0
    for plan in sorted(plans, key=lambda p: (p.after, p.order)):
        out += lines[done:plan.after]
        done = max(done, plan.after)
        if out and not out[-1].endswith(("\n", "\r")):
            out[-1] += nl
        out.append(plan.indent + plan.text + nl)
        inserted.append(Insertion(plan.name, len(out), plan.text))
    patched = "".join(out + lines[done:])
    try:
        compile(patched, "<patched>", "exec")
    except SyntaxError as err:
        return Refusal(plans[0].name, f"the patched script does not compile (line {err.lineno}: "
                                      f"{err.msg}); add the statement by hand")
    return Patched(patched, inserted)
