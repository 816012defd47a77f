"""Turn a replay `where` clause into a sqlglot condition over `history`.

Accepts SQL (`lr > 0.01 AND runid = 'base'`) and FlorDB's pandas-style expressions where they
translate: `cf_matrix.isna() and hidden_size.astype("float") < 250`.
"""

from __future__ import annotations

import ast

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from ..errors import EngineError

_CASTS = {"float": "DOUBLE", "int": "BIGINT", "str": "VARCHAR", "bool": "BOOLEAN"}
_COMPARE = {ast.Eq: exp.EQ, ast.NotEq: exp.NEQ, ast.Lt: exp.LT, ast.LtE: exp.LTE,
            ast.Gt: exp.GT, ast.GtE: exp.GTE}


class WhereError(EngineError):
    """A where clause is neither SQL nor a pandas-style expression florsql can translate."""


def parse_where(text: str) -> exp.Expression:
    """The condition `text` as a sqlglot expression (pandas style first, then SQL)."""
    try:
        return _from_pandas(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, _Untranslatable):
        pass
    try:
        return sqlglot.condition(text, dialect="duckdb")
    except SqlglotError as e:
        first = str(e).splitlines()[0]
        raise WhereError(f"cannot read the where clause {text!r}: {first}; "
                         "write a SQL condition such as lr > 0.01") from None


class _Untranslatable(Exception):
    pass


def _from_pandas(node: ast.AST) -> exp.Expression:
    if isinstance(node, ast.BoolOp):
        kind = exp.And if isinstance(node.op, ast.And) else exp.Or
        out = _from_pandas(node.values[0])
        for value in node.values[1:]:
            out = kind(this=out, expression=_from_pandas(value))
        return exp.Paren(this=out)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.Invert)):
        return exp.Not(this=_from_pandas(node.operand))
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _COMPARE:
        return _COMPARE[type(node.ops[0])](this=_from_pandas(node.left),
                                           expression=_from_pandas(node.comparators[0]))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return _method(node)
    if isinstance(node, ast.Name) and node.id not in ("and", "or", "not"):
        return exp.column(node.id)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
        if isinstance(node.value, str):
            return exp.Literal.string(node.value)
        return exp.Literal.number(node.value) if not isinstance(node.value, bool) else (
            exp.true() if node.value else exp.false())
    raise _Untranslatable(ast.dump(node)[:60])


def _method(node: ast.Call) -> exp.Expression:
    target, method = _from_pandas(node.func.value), node.func.attr
    if method in ("isna", "isnull") and not node.args:
        return exp.Is(this=target, expression=exp.Null())
    if method in ("notna", "notnull") and not node.args:
        return exp.Not(this=exp.Is(this=target, expression=exp.Null()))
    if method == "astype" and len(node.args) == 1 and isinstance(node.args[0], ast.Constant):
        kind = _CASTS.get(str(node.args[0].value))
        if kind:
            return exp.cast(target, kind)
    raise _Untranslatable(method)
