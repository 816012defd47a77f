"""Code matching for statement propagation: blocks, tokens, renamings and bound names.

Helpers of `propagate.py`, pure functions over `ast` trees; nothing here edits source text.
"""

from __future__ import annotations

import ast
import builtins
import io
import tokenize
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import lru_cache
from keyword import iskeyword

Token = tuple[bool, str]  # (is a variable name, text)
BODY_FIELDS = ("body", "orelse", "finalbody")
ALWAYS_BOUND = frozenset(dir(builtins)) | {"flor", "__name__", "__file__", "__doc__"}
_DEPTH_NAMES = ("epoch", "step")


@dataclass(frozen=True)
class Level:
    """One enclosing block: the statement list `owner.<field>` (a loop body, an `else:`...)."""

    owner: ast.AST
    field: str


def sub_blocks(stmt: ast.stmt) -> Iterator[Level]:
    """The statement lists directly inside a compound statement."""
    for field in BODY_FIELDS:
        if isinstance(getattr(stmt, field, None), list) and getattr(stmt, field):
            yield Level(stmt, field)
    for part in [*getattr(stmt, "handlers", []), *getattr(stmt, "cases", [])]:
        yield Level(part, "body")


def walk_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Every statement, outer before inner, in source order."""
    for stmt in body:
        yield stmt
        for level in sub_blocks(stmt):
            yield from walk_statements(getattr(level.owner, level.field))


def flor_loop_name(node: ast.AST, depth: int) -> str | None:
    """`epoch` for `for e in flor.loop("epoch", ...)`; unnamed loops are named by depth."""
    if not isinstance(node, ast.For | ast.AsyncFor):
        return None
    for call in ast.walk(node.iter):
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and call.func.attr == "loop" and isinstance(call.func.value, ast.Name)
                and call.func.value.id in ("flor", "Flor")):
            first = call.args[0] if call.args else None
            if len(call.args) == 2 and isinstance(first, ast.Constant):
                return str(first.value)
            return _DEPTH_NAMES[depth] if depth < len(_DEPTH_NAMES) else f"loop{depth}"
    return None


def kind(level: Level) -> str:
    """What kind of block: `def:NAME`, `class:NAME`, `for.body`, `if.orelse`, ..."""
    owner = level.owner
    if isinstance(owner, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        prefix = "class" if isinstance(owner, ast.ClassDef) else "def"
        return f"{prefix}:{owner.name}"
    return f"{type(owner).__name__.removeprefix('Async').lower()}.{level.field}"


def header(node: ast.AST) -> str:
    """Normalised code of a statement, or of just the header of a compound statement."""
    u = ast.unparse
    match node:
        case ast.For() | ast.AsyncFor():
            target = node.target
            names = target.elts if isinstance(target, ast.Tuple) and target.elts else [target]
            return f"for {', '.join(map(u, names))} in {u(node.iter)}:"
        case ast.While() | ast.If():
            return f"{type(node).__name__.lower()} {u(node.test)}:"
        case ast.With() | ast.AsyncWith():
            return "with " + ", ".join(u(item) for item in node.items) + ":"
        case ast.FunctionDef() | ast.AsyncFunctionDef():
            return f"def {node.name}({u(node.args)}):"
        case ast.ClassDef():
            return f"class {node.name}:"
        case ast.ExceptHandler():
            return f"except {u(node.type) if node.type else ''}:"
        case ast.match_case():
            return f"case {u(node.pattern)}:"
        case ast.Try() | ast.TryStar() | ast.Match():
            return type(node).__name__.lower()
    return u(node)


def describe(level: Level) -> str:
    """A block for a message: "`for epoch in flor.loop('epoch', range(5)):` (line 7)"."""
    text = header(level.owner)
    suffix = "" if level.field == "body" else f" ({level.field})"
    return f"`{text}`{suffix} at line {level.owner.lineno}"


@lru_cache(maxsize=4096)
def tokens(text: str) -> tuple[Token, ...]:
    """Code tokens; names that are variables (not keywords, not attributes) are flagged."""
    out: list[Token] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type in (tokenize.NAME, tokenize.OP, tokenize.NUMBER, tokenize.STRING):
                is_var = (tok.type == tokenize.NAME and not iskeyword(tok.string)
                          and not (out and out[-1][1] == "."))
                out.append((is_var, tok.string))
    except (tokenize.TokenError, SyntaxError):
        pass
    return tuple(out)


def shape(toks: tuple[Token, ...]) -> tuple[str, ...]:
    return tuple("ID" if is_var else text for is_var, text in toks)


def renamed(toks: tuple[Token, ...], rename: dict[str, str]) -> list[str]:
    return [rename.get(text, text) if is_var else text for is_var, text in toks]


def similarity(new: ast.AST, old: ast.AST, rename: dict[str, str]) -> float:
    """How alike two statements are (0..1), after renaming today's names to the old ones."""
    a = renamed(tokens(header(new)), rename)
    b = [text for _, text in tokens(header(old))]
    return SequenceMatcher(None, a, b, autojunk=False).ratio()


def rename_map(new_tree: ast.Module, old_tree: ast.Module) -> dict[str, str]:
    """Today's variable name -> the old one, voted by aligned statements of the same shape."""
    new = [tokens(header(s)) for s in walk_statements(new_tree.body)]
    old = [tokens(header(s)) for s in walk_statements(old_tree.body)]
    matcher = SequenceMatcher(None, [shape(t) for t in new], [shape(t) for t in old],
                              autojunk=False)
    votes: Counter[tuple[str, str]] = Counter()
    for a, b, size in matcher.get_matching_blocks():
        for k in range(size):
            for (is_var, n), (_, o) in zip(new[a + k], old[b + k], strict=True):
                votes[(n, o)] += is_var
    mapping: dict[str, str] = {}
    for (n, o), count in votes.most_common():
        if n != o and n not in mapping and count > votes[(n, n)] and o not in mapping.values():
            mapping[n] = o
    return mapping


def free_names(expr: ast.AST) -> list[ast.Name]:
    """The names an expression reads from its scope (not lambda or comprehension variables)."""
    local: set[str] = set()
    for node in ast.walk(expr):
        if isinstance(node, ast.comprehension):
            local |= {n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.Lambda):
            local |= {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
    return [n for n in ast.walk(expr)
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id not in local]


def bindings(node: ast.AST) -> Iterator[tuple[str, int]]:
    """(name, line) for every name a scope binds, without entering nested scopes."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield child.name, child.lineno
            continue
        if isinstance(child, ast.Lambda | ast.ListComp | ast.SetComp | ast.DictComp
                      | ast.GeneratorExp):
            continue
        yield from _binds(child)
        yield from bindings(child)


def _binds(node: ast.AST) -> Iterator[tuple[str, int]]:
    line = getattr(node, "lineno", 0)
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
        yield node.id, line
    elif isinstance(node, ast.Import | ast.ImportFrom):
        for alias in node.names:
            yield alias.asname or alias.name.split(".")[0], line
    elif isinstance(node, ast.Global | ast.Nonlocal):
        yield from ((name, line) for name in node.names)
    elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name:
        yield node.name, line
    elif isinstance(node, ast.MatchMapping) and node.rest:
        yield node.rest, line


def bound_at(tree: ast.Module, scopes: list[ast.AST], line: int) -> set[str] | None:
    """Names bound after `line` runs, in the innermost of `scopes` (module first, then defs and
    classes); None when a star import could bind anything."""
    inner = scopes[-1] if scopes else tree
    names = set(ALWAYS_BOUND)
    for scope in [tree, *scopes]:
        if scope is not inner and isinstance(scope, ast.ClassDef):
            continue
        visible = [(n, ln) for n, ln in bindings(scope) if scope is not inner or ln <= line]
        names |= {n for n, _ in visible}
        if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
            names |= {a.arg for a in ast.walk(scope.args) if isinstance(a, ast.arg)}
    return None if "*" in names else names


def place_score(prev: list[ast.stmt], nxt: list[ast.stmt], block: list[ast.stmt], p: int,
                rename: dict[str, str]) -> float:
    """How well position `p` of an old block matches the statements around today's log call:
    the statements before it count twice as much as those after it."""
    before = block[:p][::-1]
    return (2 * _side(prev, before, rename) + _side(nxt, block[p:], rename)) / 3


def _side(new: list[ast.stmt], old: list[ast.stmt], rename: dict[str, str]) -> float:
    if not new:
        return 1.0 if not old else 0.0
    total = weights = 0.0
    for k, stmt in enumerate(new[:3]):
        weights += 0.5**k
        if k < len(old):
            total += 0.5**k * similarity(stmt, old[k], rename)
    return total / weights


def reachable(block: list[ast.stmt], through: tuple[type, ...]) -> Iterator[Level]:
    """The blocks one level down from `block`, looking inside wrappers of the `through` types."""
    for stmt in block:
        for level in sub_blocks(stmt):
            yield level
            if isinstance(level.owner, through):
                yield from reachable(getattr(level.owner, level.field), through)


def elsewhere(owner: ast.AST, tree: ast.Module, rename: dict[str, str]) -> str:
    """Where the old script has a block like `owner` inside a function instead, for a message."""
    for scope in ast.walk(tree):
        if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
            for stmt in walk_statements(scope.body):
                if similarity(owner, stmt, rename) >= 0.8:
                    return f" (it has one inside `def {scope.name}`: refactored?)"
    return " (refactored?)"
