"""`${...}` parameter expressions: a small, safe arithmetic language over spec params.

>>> evaluate("hidden * 4", {"hidden": 192})
768
>>> evaluate("dim // heads if heads else 0", {"dim": 768, "heads": 12})
64
>>> resolve(["${c}", 3, "${c * 2}"], {"c": 8})
[8, 3, 16]
"""

from __future__ import annotations

import ast
import operator
import re
from typing import Any

from nlc.errors import NlcError, SourceLoc, did_you_mean

_EXPR = re.compile(r"\$\{(.*)\}\Z", re.S)

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_FUNCS = {"min": min, "max": max, "int": int, "float": float, "round": round, "abs": abs}
_SYNTAX = (
    "expressions are Python-style arithmetic over params: numbers, names, + - * / // % **, "
    "comparisons, and/or/not, `a if cond else b`, min/max/int/float/round/abs; "
    "e.g. ${width * 2}, ${dim // heads}"
)


class ExprError(Exception):
    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message, self.hint = message, hint


def is_expr(value: Any) -> bool:
    return isinstance(value, str) and _EXPR.match(value) is not None


def evaluate(text: str, env: dict[str, Any]) -> Any:
    """Value of the expression `text` (no `${}`) over `env`; raises ExprError."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ExprError(f"bad expression: {e.msg}", _SYNTAX) from None
    try:
        return _eval(tree.body, env)
    except (TypeError, ValueError, OverflowError) as e:
        raise ExprError(
            f"cannot evaluate: {e}", "check the types and values of the params"
        ) from None
    except RecursionError:
        raise ExprError("the expression is nested too deeply", "simplify it") from None


def _eval(node: ast.AST, env: dict[str, Any]) -> Any:
    match node:
        case ast.Constant(value=v) if isinstance(v, (int, float, str, bool)):
            return v
        case ast.Name(id=name):
            if name in ("true", "false"):
                return name == "true"
            if name not in env:
                known = ", ".join(env) or "none"
                raise ExprError(
                    f"undefined name {name!r}",
                    did_you_mean(name, env) or f"the params defined here: {known}",
                )
            return env[name]
        case ast.BinOp(left=left, op=op, right=right) if type(op) in _BINARY:
            a, b = _eval(left, env), _eval(right, env)
            if isinstance(op, ast.Pow) and isinstance(b, (int, float)) and abs(b) > 64:
                raise ExprError(f"exponent {b} is too large", "exponents go up to 64")
            if not isinstance(op, ast.Add) and not all(isinstance(v, (int, float)) for v in (a, b)):
                # Also keeps `"x" * 10**9` from building a huge string.
                raise ExprError(
                    f"{ast.unparse(node)!r} needs numbers, got {a!r} and {b!r}",
                    "only + joins text or lists; check the params it uses",
                )
            try:
                return _BINARY[type(op)](a, b)
            except ZeroDivisionError:
                culprit = ast.unparse(right)
                hint = f"{culprit!r} is 0 here; check the params it uses"
                if isinstance(right, ast.Constant):
                    hint = "divide by a number other than 0"
                raise ExprError("division by zero", hint) from None
        case ast.UnaryOp(op=ast.USub(), operand=x):
            return -_eval(x, env)
        case ast.UnaryOp(op=ast.UAdd(), operand=x):
            return +_eval(x, env)
        case ast.UnaryOp(op=ast.Not(), operand=x):
            return not _eval(x, env)
        case ast.BoolOp(op=op, values=values):
            results = [_eval(v, env) for v in values]
            return all(results) if isinstance(op, ast.And) else any(results)
        case ast.Compare(left=left, ops=ops, comparators=rights) if all(
            type(o) in _COMPARE for o in ops
        ):
            a = _eval(left, env)
            for o, r in zip(ops, rights, strict=True):
                b = _eval(r, env)
                if not _COMPARE[type(o)](a, b):
                    return False
                a = b
            return True
        case ast.IfExp(test=test, body=body, orelse=orelse):
            return _eval(body, env) if _eval(test, env) else _eval(orelse, env)
        case ast.Call(func=ast.Name(id=fn), args=args, keywords=[]) if fn in _FUNCS:
            return _FUNCS[fn](*(_eval(a, env) for a in args))
        case ast.List(elts=elts) | ast.Tuple(elts=elts):
            return [_eval(e, env) for e in elts]
    raise ExprError(f"unsupported syntax {ast.unparse(node)!r}", _SYNTAX)


def resolve(value: Any, env: dict[str, Any], loc: SourceLoc | None = None) -> Any:
    """Evaluate every `${...}` string inside `value` (recursively through lists and dicts)."""
    if isinstance(value, str):
        m = _EXPR.match(value)
        if not m:
            return value
        try:
            return evaluate(m.group(1), env)
        except ExprError as e:
            raise NlcError(f"in {value.strip()}: {e.message}", loc, e.hint) from None
    if isinstance(value, list):
        return [resolve(v, env, loc) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, env, loc) for k, v in value.items()}
    return value
