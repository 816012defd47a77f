"""Decide, from the patched source alone, whether a replay may skip the inner loop.

Safe only when every requested statement sits in the outer loop's body after its one inner
loop, and that code reads no variable the inner loop assigns and calls nothing that trains or
changes state in place. The replay process checks the rest at run time (the checkpointed state
and RNGs after that code must equal the restored end state). When in doubt: False, re-execute.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable

# Calls that train or change state: the code after the inner loop must not make them.
_MUTATING = frozenset({"step", "zero_grad", "backward", "train", "load_state_dict", "update",
                       "register_buffer", "apply", "fill", "set_state", "seed", "manual_seed"})


def is_memoizable(source: str, inserted_lines: Iterable[int]) -> bool:
    lines = list(inserted_lines)
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    outer = _first_flor_loop(tree.body)
    if outer is None or not lines:
        return False
    inner_at = [i for i, stmt in enumerate(outer.body) if _first_flor_loop([stmt]) is not None]
    if len(inner_at) != 1:
        return False
    inner, tail = outer.body[inner_at[0]], outer.body[inner_at[0] + 1:]
    if not all(any(s.lineno <= ln <= s.end_lineno for s in tail) for ln in lines):
        return False
    assigned = {n.id for n in ast.walk(inner) if isinstance(n, ast.Name)
                and isinstance(n.ctx, ast.Store)}
    read = {n.id for s in tail for n in ast.walk(s) if isinstance(n, ast.Name)
            and isinstance(n.ctx, ast.Load)}
    return not (assigned & read) and not any(_mutates(s) for s in tail)


def _mutates(stmt: ast.stmt) -> bool:
    for node in ast.walk(stmt):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            attr = node.func.attr
            if attr in _MUTATING or (attr.endswith("_") and not attr.startswith("_")):
                return True
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Attribute) for t in targets):
                return True
    return False


def _first_flor_loop(body: list[ast.stmt]) -> ast.For | None:
    """The first `for ... in flor.loop(...)` / `Flor.loop(...)` in `body`, searched in order."""
    for stmt in body:
        for node in ast.walk(stmt):
            if isinstance(node, ast.For) and _is_flor_loop(node.iter):
                return node
    return None


def _is_flor_loop(node: ast.expr) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "loop" and isinstance(node.func.value, ast.Name)
            and node.func.value.id in ("flor", "Flor", "MTK"))
