"""Equations and size expressions: parsed with Python's `ast` under an allow-list, never evaluated.

An equation such as ``sigmoid(W_f @ x + U_f @ h[t-1] + b_f)`` becomes a small tree of `Expr` nodes, each with
its column inside the equation text so errors can underline the exact sub-expression. Size expressions such as
``4 * h`` are folded to positive integers by `eval_size`, which only knows integer arithmetic on known sizes.

Allowed in equations: names, numbers, ``+ - * / @``, unary minus, calls of known functions, ``name[t-1]``
(the previous step's value of a state) and ``name.output`` (an output of a called module).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Union

from .errors import Location, SpecError, did_you_mean

MAX_EXPR_CHARS = 2000
MAX_EXPR_DEPTH = 50
MAX_SIZE_VALUE = 1 << 40


@dataclass(frozen=True)
class Name:
    id: str
    col: int
    length: int


@dataclass(frozen=True)
class Number:
    value: float | int
    col: int
    length: int


@dataclass(frozen=True)
class Delay:
    """``h[t-1]``: the value of state ``h`` at the previous step."""

    id: str
    col: int
    length: int


@dataclass(frozen=True)
class Member:
    """``enc.h_n``: output ``h_n`` of the module called as ``enc``."""

    base: str
    attr: str
    col: int
    length: int


@dataclass(frozen=True)
class BinOp:
    op: str  # one of + - * / @
    left: "Expr"
    right: "Expr"
    col: int
    length: int


@dataclass(frozen=True)
class Neg:
    operand: "Expr"
    col: int
    length: int


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple["Expr", ...]
    kwargs: tuple[tuple[str, "Expr"], ...] = field(default=())
    col: int = 0
    length: int = 1


Expr = Union[Name, Number, Delay, Member, BinOp, Neg, Call]

_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.MatMult: "@"}


def parse_equation(text: str, loc: Location) -> Expr:
    """Parse one equation. ``loc`` is where the equation's text starts in the file."""
    tree = _parse(text, loc, "an equation such as `tanh(W @ x + b)`")
    return _Converter(text, loc).convert(tree.body, 0)


def _parse(text: str, loc: Location, expected: str) -> ast.Expression:
    if not isinstance(text, str):
        raise SpecError("E0301", "expected an expression here", loc, expected=expected, found=repr(text))
    if len(text) > MAX_EXPR_CHARS:
        raise SpecError("E0302", f"expression too long ({len(text)} characters)", loc,
                        expected=f"at most {MAX_EXPR_CHARS} characters", hint="split it into several equations")
    if not text.strip():
        raise SpecError("E0301", "empty expression", loc, expected=expected)
    try:
        return ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        offset = (getattr(exc, "offset", None) or 1) - 1
        lead = len(text) - len(text.lstrip())
        msg = getattr(exc, "msg", None) or "cannot parse this expression"
        raise SpecError("E0303", f"syntax error in expression: {msg}", loc.shifted(lead + offset),
                        expected=expected, hint="check the brackets and operators; allowed: + - * / @, f(...), h[t-1]") from None


class _Converter:
    def __init__(self, text: str, loc: Location):
        self.text = text
        self.lead = len(text) - len(text.lstrip())
        self.loc = loc

    def where(self, node: ast.AST) -> tuple[int, int]:
        col = getattr(node, "col_offset", 0)
        end = getattr(node, "end_col_offset", None) or col + 1
        return self.lead + col, max(1, end - col)

    def error(self, node: ast.AST, message: str, hint: str | None = None, code: str = "E0304") -> SpecError:
        col, length = self.where(node)
        return SpecError(code, message, self.loc.shifted(col, length), hint=hint)

    def convert(self, node: ast.AST, depth: int) -> Expr:
        if depth > MAX_EXPR_DEPTH:
            raise self.error(node, f"expression nested deeper than {MAX_EXPR_DEPTH} levels", code="E0302",
                             hint="split it into several equations")
        col, length = self.where(node)
        if isinstance(node, ast.Name):
            return Name(node.id, col, length)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise self.error(node, f"only numbers may appear as constants, found {node.value!r}")
            if abs(node.value) > 1e30:
                raise self.error(node, "number too large", code="E0302")
            if 0 < abs(node.value) < 1e-30:  # float32 keeps it denormal or as 0: a division by it is inf
                raise self.error(node, "number too small (the model computes in float32)", code="E0302",
                                 hint="write 0 for zero; a number is at least 1e-30 in size")
            return Number(node.value, col, length)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return BinOp(_BINOPS[type(node.op)], self.convert(node.left, depth + 1),
                         self.convert(node.right, depth + 1), col, length)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = self.convert(node.operand, depth + 1)
            return inner if isinstance(node.op, ast.UAdd) else Neg(inner, col, length)
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):
                raise self.error(node.func, "only named functions can be called, like `tanh(x)`")
            args = tuple(self.convert(a, depth + 1) for a in node.args)
            kwargs = []
            for kw in node.keywords:
                if kw.arg is None:
                    raise self.error(kw, "`**` is not allowed in an equation")
                kwargs.append((kw.arg, self.convert(kw.value, depth + 1)))
            return Call(node.func.id, args, tuple(kwargs), col, length)
        if isinstance(node, ast.Subscript):
            return self.delay(node, col, length)
        if isinstance(node, ast.Attribute):
            if not isinstance(node.value, ast.Name):
                raise self.error(node, "only `module_call.output` is allowed after a dot")
            return Member(node.value.id, node.attr, col, length)
        raise self.error(node, f"`{ast.unparse(node)[:40]}` is not allowed in an equation",
                         hint="allowed: names, numbers, + - * / @, function calls, h[t-1], call.output")

    def delay(self, node: ast.Subscript, col: int, length: int) -> Delay:
        index = node.slice
        ok = (isinstance(node.value, ast.Name) and isinstance(index, ast.BinOp) and isinstance(index.op, ast.Sub)
              and isinstance(index.left, ast.Name) and index.left.id == "t"
              and isinstance(index.right, ast.Constant) and index.right.value == 1)
        if not ok:
            raise self.error(node, "only `name[t-1]` (the previous step's state) may be indexed",
                             hint="write the previous value of a state as `h[t-1]`", code="E0305")
        return Delay(node.value.id, col, length)  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------- sizes

def eval_size(text: int | str, sizes: dict[str, int], loc: Location, what: str = "size") -> int:
    """A positive integer from ``16`` or ``"4 * h"``: integer + - * // and exact /, known sizes only."""
    if isinstance(text, bool):
        raise SpecError("E0306", f"{what} must be a positive integer", loc, found=repr(text))
    if isinstance(text, str) and text in sizes:  # a size's name, the common case: no parse needed
        return sizes[text]
    if isinstance(text, int):
        if abs(text) > MAX_SIZE_VALUE:
            raise SpecError("E0302", f"{what} is too large: {text} (above {MAX_SIZE_VALUE})", loc,
                            expected=f"an integer from 1 to {MAX_SIZE_VALUE}", hint="check the number")
        value = text
    else:
        tree = _parse(str(text), loc, "a size expression such as `4 * h`")
        value = _SizeFolder(str(text), loc, sizes).fold(tree.body, 0)
    if value <= 0:
        raise SpecError("E0306", f"{what} must be a positive integer", loc, expected="an integer >= 1",
                        found=str(value), hint="sizes count units or steps, so they are at least 1")
    return value


class _SizeFolder(_Converter):
    def __init__(self, text: str, loc: Location, sizes: dict[str, int]):
        super().__init__(text, loc)
        self.sizes = sizes

    def fold(self, node: ast.AST, depth: int) -> int:
        if depth > MAX_EXPR_DEPTH:
            raise self.error(node, "size expression nested too deeply", code="E0302")
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return self.bounded(node, node.value)
        if isinstance(node, ast.Name):
            if node.id not in self.sizes:
                raise self.error(node, f"unknown size `{node.id}`", code="E0307",
                                 hint=did_you_mean(node.id, self.sizes) or "declare it under `sizes:`")
            return self.sizes[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -self.fold(node.operand, depth + 1)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Div)):
            a, b = self.fold(node.left, depth + 1), self.fold(node.right, depth + 1)
            if isinstance(node.op, ast.Add):
                return self.bounded(node, a + b)
            if isinstance(node.op, ast.Sub):
                return self.bounded(node, a - b)
            if isinstance(node.op, ast.Mult):
                return self.bounded(node, a * b)
            if b == 0:
                raise self.error(node, "division by zero in a size expression", code="E0306")
            if isinstance(node.op, ast.Div) and a % b:
                raise self.error(node, f"{a} / {b} is not a whole number", code="E0306",
                                 hint="use `//` to round down, or pick sizes that divide evenly")
            return a // b
        raise self.error(node, "size expressions may use integers, sizes, + - * / // and parentheses", code="E0306")

    def bounded(self, node: ast.AST, value: int) -> int:
        if abs(value) > MAX_SIZE_VALUE:
            raise self.error(node, f"size value too large (above {MAX_SIZE_VALUE})", code="E0302")
        return value
