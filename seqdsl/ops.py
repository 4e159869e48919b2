"""The op table: for every IR op, its arity and its shape-and-dtype rule. One entry per op.

Backends keep their own tables keyed by the same names (`compilers/torch_codegen.py`, `compilers/onnx_export.py`);
`tests/test_op_tables.py` checks the three tables name the same ops. Functions that users may call in equations
(``sigmoid(x)``, ``concat(a, b)``, ...) are the entries with ``user=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .ir import Shape


class ShapeError(Exception):
    """A shape rule's complaint; the lowering adds the location and turns it into a SpecError."""

    def __init__(self, message: str, expected: str | None = None, found: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message, self.expected, self.found, self.hint = message, expected, found, hint


Rule = Callable[[list[Shape], list[str], dict[str, Any]], tuple[Shape, str]]


REQUIRED = object()
INT64_MAX = 2**63 - 1  # what an ONNX attribute (and a torch int) can hold


@dataclass(frozen=True)
class Attr:
    """A non-tensor argument of an op (``axis``, ``heads``, ``p``) and the values every backend accepts for it.

    This is the one place an argument's range lives: the lowering refuses a value outside it at the argument's
    file:line:col, so that `validate` refuses exactly what a backend would (``dropout(x, p=2)``, ``split_heads(x,
    0)``). Whether the value fits the operand (an axis of the operand's rank) is the shape rule's job.
    """

    name: str
    kind: type  # int or float
    default: Any = REQUIRED
    low: float = -INT64_MAX
    high: float = INT64_MAX
    high_open: bool = False  # the range is [low, high) rather than [low, high]

    def problem(self, value: int | float) -> str | None:
        """Why ``value`` is refused, or None when it is accepted."""
        if value != value or not self.low <= value <= self.high or (self.high_open and value == self.high):
            return f"`{self.name}` must be in {self.range()}"
        return None

    def range(self) -> str:
        def show(v: float) -> str:
            return "-(2**63 - 1)" if v == -INT64_MAX else "2**63 - 1" if v == INT64_MAX else f"{v:g}"
        return f"[{show(self.low)}, {show(self.high)}{')' if self.high_open else ']'}"


@dataclass(frozen=True)
class OpDef:
    name: str
    rule: Rule
    arity: tuple[int, int]  # min, max number of tensor inputs (max -1: any)
    user: bool = False  # callable by name in equations
    doc: str = ""
    attrs: tuple[Attr, ...] = ()  # non-tensor arguments, in positional order after the tensors


def fmt(shape: Shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _float(dtypes: list[str], op: str) -> str:
    for d in dtypes:
        if d != "float32":
            raise ShapeError(f"`{op}` needs floating-point values, but one input holds {d} (token ids?)",
                             expected="float32", found=d,
                             hint="turn token ids into vectors first, e.g. `embedding(E, tokens)`")
    return "float32"


def broadcast(a: Shape, b: Shape) -> Shape:
    """numpy broadcasting, with symbolic dims matching only themselves (or 1)."""
    out: list[Any] = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            raise ShapeError(f"shapes {fmt(a)} and {fmt(b)} do not match on axis -{i}",
                             expected=f"{fmt(a)} (axis -{i} = {x})", found=f"{fmt(b)} (axis -{i} = {y})",
                             hint="elementwise operations need equal sizes (or 1) on every axis")
    return tuple(reversed(out))


def _elementwise(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    dtype = _float(dtypes, attrs.get("_op", "op"))
    out = shapes[0]
    for s in shapes[1:]:
        out = broadcast(out, s)
    return out, dtype


def _linear(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    x, w = shapes[0], shapes[1]
    if len(shapes) == 3 and shapes[2] != w[:1]:
        raise ShapeError("the bias of a linear map has one entry per row of W", expected=fmt(w[:1]), found=fmt(shapes[2]))
    _float(dtypes, "@")
    if len(w) != 2:
        raise ShapeError("the weight of `W @ x` must be a matrix", expected="a 2-d parameter [out, in]", found=fmt(w))
    if not x or x[-1] != w[1]:
        raise ShapeError(f"cannot multiply {fmt(w)} by {fmt(x)}: inner sizes differ",
                         expected=f"a value whose last axis is {w[1]}", found=fmt(x),
                         hint="for W of shape [out, in], `W @ x` needs x's last axis to be `in`")
    return (*x[:-1], w[0]), "float32"


def _matmul(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    a, b = shapes
    _float(dtypes, "@")
    if a[:1] == ("B",) and b[:1] == ("B",) and len(a) != len(b):
        raise ShapeError(f"cannot multiply {fmt(a)} by {fmt(b)}: both are batches, of different ranks",
                         hint="a [B, n] value is a batch of vectors, not a matrix; use unsqueeze(x, 1) to make "
                              "[B, 1, n], or sum(unsqueeze(a, -1) * b, axis=1) for a weighted sum")
    if len(a) < 2 or len(b) < 2:
        raise ShapeError("`a @ b` between values needs both to have at least 2 axes", found=f"{fmt(a)} @ {fmt(b)}")
    if a[-1] != b[-2]:
        raise ShapeError(f"cannot multiply {fmt(a)} by {fmt(b)}: inner sizes differ",
                         expected=f"b's axis -2 = {a[-1]}", found=str(b[-2]))
    batch = broadcast(a[:-2], b[:-2])
    return (*batch, a[-2], b[-1]), "float32"


def _axis(shape: Shape, axis: int) -> int:
    if not -len(shape) <= axis < len(shape):
        raise ShapeError(f"axis {axis} is out of range for a value of shape {fmt(shape)}")
    return axis % len(shape)


def _softmax(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    _axis(shapes[0], attrs.get("axis", -1))
    return shapes[0], _float(dtypes, "softmax")


def _concat(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    dtype = _float(dtypes, "concat")
    first = shapes[0]
    axis = _axis(first, attrs.get("axis", -1))
    total: Any = 0
    for s in shapes:
        if len(s) != len(first) or any(s[i] != first[i] for i in range(len(s)) if i != axis):
            raise ShapeError("concat needs equal shapes except on the joined axis",
                             expected=fmt(first), found=fmt(s))
        if isinstance(s[axis], str) or isinstance(total, str):
            raise ShapeError("concat cannot join along a symbolic axis (B or T)")
        total += s[axis]
    return (*first[:axis], total, *first[axis + 1:]), dtype


def _slice(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    shape = shapes[0]
    axis = _axis(shape, attrs["axis"])
    if isinstance(shape[axis], str):
        raise ShapeError("cannot split a symbolic axis (B or T)")
    return (*shape[:axis], attrs["stop"] - attrs["start"], *shape[axis + 1:]), dtypes[0]


def _embedding(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    table, ids = shapes
    if len(table) != 2:
        raise ShapeError("an embedding table must be a matrix [vocab, dim]", found=fmt(table))
    if dtypes[1] != "int64":
        raise ShapeError("embedding looks up integer token ids", expected="int64 ids", found=dtypes[1],
                         hint="declare the input as `{shape: [B, T], dtype: int64}`")
    return (*ids, table[1]), "float32"


def _leaf(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    return tuple(attrs["shape"]), attrs.get("dtype", "float32")


def _zeros(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    return ("B", *attrs["shape"]), attrs.get("dtype", "float32")


def _expand_batch(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    return ("B", *shapes[0]), dtypes[0]


def _time_slice(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    shape = shapes[0]
    if len(shape) < 2 or shape[0] != "B":
        raise ShapeError("this needs a sequence: a value of shape [B, T, ...]", found=fmt(shape))
    return (shape[0], *shape[2:]), dtypes[0]


def _stack(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    return (shapes[0][0], len(shapes), *shapes[0][1:]), dtypes[0]


def _unary_axis(shape: Shape, attrs: dict[str, Any], default: int = -1) -> int:
    return _axis(shape, attrs.get("axis", default))


def _transpose(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    s = shapes[0]
    if len(s) < 2:
        raise ShapeError("transpose swaps the last two axes and needs at least 2", found=fmt(s))
    return (*s[:-2], s[-1], s[-2]), dtypes[0]


def _unsqueeze(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    s = shapes[0]
    axis = attrs.get("axis", -1)
    if not -len(s) - 1 <= axis <= len(s):
        raise ShapeError(f"axis {axis} is out of range for unsqueeze of {fmt(s)}")
    axis = axis % (len(s) + 1)
    return (*s[:axis], 1, *s[axis:]), dtypes[0]


def _squeeze(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    s = shapes[0]
    axis = _unary_axis(s, attrs)
    if s[axis] != 1:
        raise ShapeError(f"squeeze removes an axis of size 1, but axis {attrs.get('axis', -1)} has size {s[axis]}",
                         found=fmt(s))
    return (*s[:axis], *s[axis + 1:]), dtypes[0]


def _reduce(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    s = shapes[0]
    axis = _unary_axis(s, attrs)
    return (*s[:axis], *s[axis + 1:]), _float(dtypes, attrs["_op"])


def _argmax(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    s = shapes[0]
    axis = _unary_axis(s, attrs)
    _float(dtypes, "argmax")
    return (*s[:axis], *s[axis + 1:]), "int64"


def _layer_norm(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    x, gamma, beta = shapes
    _float(dtypes, "layer_norm")
    if gamma != (x[-1],) or beta != (x[-1],):
        raise ShapeError("layer_norm(x, gamma, beta) needs gamma and beta of the size of x's last axis",
                         expected=f"[{x[-1]}] and [{x[-1]}]", found=f"{fmt(gamma)} and {fmt(beta)}")
    return x, "float32"


def _split_heads(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    s, n = shapes[0], attrs["heads"]
    if len(s) != 3 or not isinstance(s[2], int) or s[2] % n:
        raise ShapeError(f"split_heads(x, {n}) needs x of shape [B, T, d] with d divisible by {n}", found=fmt(s))
    return (s[0], n, s[1], s[2] // n), _float(dtypes, "split_heads")


def _merge_heads(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    s = shapes[0]
    if len(s) != 4 or not isinstance(s[1], int) or not isinstance(s[3], int):
        raise ShapeError("merge_heads(x) needs x of shape [B, heads, T, k]", found=fmt(s))
    return (s[0], s[2], s[1] * s[3]), dtypes[0]


def _causal(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    s = shapes[0]
    if len(s) < 2:
        raise ShapeError("causal(scores) needs scores [..., T, S]", found=fmt(s))
    return s, _float(dtypes, "causal")


def _mask(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    scores, keep = shapes
    if len(keep) != 2 or len(scores) < 3 or keep[0] != scores[0] or keep[1] != scores[-1]:
        raise ShapeError("mask(scores, keep) needs scores [B, ..., S] and keep [B, S] (1 = attend, 0 = padding)",
                         expected=f"keep of shape [{scores[0]}, {scores[-1]}]" if scores else None, found=fmt(keep))
    return scores, _float(dtypes[:1], "mask")


def _attention(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    q, k, v = shapes[:3]
    if not (len(q) == len(k) == len(v) >= 3 and q[:-2] == k[:-2] == v[:-2] and q[-1] == k[-1] and k[-2] == v[-2]):
        raise ShapeError("attention(q, k, v) needs q [..., T, E], k [..., S, E] and v [..., S, E_v]",
                         found=f"{fmt(q)}, {fmt(k)}, {fmt(v)}")
    if len(shapes) == 4 and (len(shapes[3]) != 2 or shapes[3] != (q[0], k[-2])):
        raise ShapeError("attention's keep mask is [B, S]", expected=f"[{q[0]}, {k[-2]}]", found=fmt(shapes[3]))
    return (*q[:-1], v[-1]), _float(dtypes[:3], "attention")


def _positions(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    s = shapes[0]
    if len(s) != 3 or not isinstance(s[2], int) or s[2] % 2:
        raise ShapeError("positional_encoding(x) needs x of shape [B, T, d] with d even", found=fmt(s))
    return (s[1], s[2]), "float32"


def _contract(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    x, u = shapes
    _float(dtypes, "@")
    if not x or x[-1] != u[-1]:
        raise ShapeError(f"cannot contract {fmt(u)} with {fmt(x)}: last axes differ",
                         expected=f"a value whose last axis is {u[-1]}", found=fmt(x),
                         hint="for U of shape [m, n, d], `U @ z` needs z's last axis to be d: W(z)_ij = u_ijᵀ z")
    return (*x[:-1], *u[:-1]), "float32"


def _matvec(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    a, v = shapes
    _float(dtypes, "@")
    if a[-1] != v[-1]:
        raise ShapeError(f"cannot multiply {fmt(a)} by {fmt(v)}: inner sizes differ",
                         expected=f"a vector of size {a[-1]}", found=fmt(v))
    return (*broadcast(a[:-2], v[:-1]), a[-2]), "float32"


def _sequence_mask(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    lengths, seq = shapes
    if lengths != ("B",) or dtypes[0] != "int64":
        raise ShapeError("sequence lengths are one int64 number per sequence", expected="int64 [B]",
                         found=f"{dtypes[0]} {fmt(lengths)}")
    return (seq[0], seq[1]), "float32"


def _select(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    return broadcast(broadcast(shapes[0], shapes[1]), shapes[2]), dtypes[1]


def _clamp(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    low, high = attrs.get("min"), attrs.get("max")
    if low is None and high is None:
        raise ShapeError("clamp(x, min=..., max=...) needs a bound", expected="min=, max= or both",
                         hint="for example clamp(x, min=-1, max=1), or clamp(x, min=0) (which is relu)")
    if low is not None and high is not None and low > high:
        raise ShapeError(f"clamp's min ({low:g}) is above its max ({high:g})", expected="min <= max")
    return shapes[0], _float(dtypes, "clamp")


def _where(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    if shapes[0] == ():
        raise ShapeError("the condition of `where(cond, a, b)` is a number, so it always picks the same side",
                         hint="write that side itself, or give a tensor condition such as a mask")
    out = broadcast(broadcast(shapes[0], shapes[1]), shapes[2])
    return out, _float(dtypes[1:], "where")


def _const(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    return (), "float32"


def _op(name: str, rule: Rule, arity: tuple[int, int], user: bool = False, doc: str = "",
        attrs: tuple[Attr, ...] = ()) -> OpDef:
    def tagged(shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
        return rule(shapes, dtypes, {**attrs, "_op": name})

    return OpDef(name, tagged, arity, user, doc, attrs)


AXIS = (Attr("axis", int, -1),)


OPS: dict[str, OpDef] = {op.name: op for op in [
    # leaves
    _op("input", _leaf, (0, 0)),
    _op("param", _leaf, (0, 0)),
    _op("const", _const, (0, 0)),
    _op("step_input", _leaf, (0, 0)),
    _op("state", _leaf, (0, 0)),
    _op("capture", _leaf, (0, 0)),
    # arithmetic
    _op("add", _elementwise, (2, 2), doc="a + b"),
    _op("sub", _elementwise, (2, 2), doc="a - b"),
    _op("mul", _elementwise, (2, 2), doc="a * b (elementwise, the multiplicative module)"),
    _op("div", _elementwise, (2, 2), doc="a / b"),
    _op("neg", _elementwise, (1, 1), doc="-a"),
    _op("linear", _linear, (2, 3), doc="W @ x (+ b): x (..., n), W (m, n), b (m) -> (..., m)"),
    _op("matmul", _matmul, (2, 2), doc="a @ b between values, batched"),
    _op("contract", _contract, (2, 2), doc="U @ z for a parameter U (m, n, d): W(z) with w_ij = u_ijᵀz, (..., m, n)"),
    _op("matvec", _matvec, (2, 2), doc="A @ v for values A (..., m, n), v (..., n) -> (..., m)"),
    # user functions
    _op("sigmoid", _elementwise, (1, 1), user=True, doc="logistic sigmoid, a gate in [0, 1]"),
    _op("tanh", _elementwise, (1, 1), user=True, doc="hyperbolic tangent"),
    _op("relu", _elementwise, (1, 1), user=True, doc="max(x, 0)"),
    _op("exp", _elementwise, (1, 1), user=True, doc="e ** x"),
    _op("sqrt", _elementwise, (1, 1), user=True, doc="square root (of a size too: sqrt(d_k))"),
    _op("log", _elementwise, (1, 1), user=True, doc="natural logarithm, ln x (-inf at 0)"),
    _op("abs", _elementwise, (1, 1), user=True, doc="|x|"),
    _op("gelu", _elementwise, (1, 1), user=True, doc="x Φ(x), Φ the standard normal CDF (the exact form, as "
        "torch.nn.GELU); the transformer's feed-forward activation"),
    _op("silu", _elementwise, (1, 1), user=True, doc="x σ(x), also called swish"),
    _op("softplus", _elementwise, (1, 1), user=True, doc="ln(1 + e^x), a smooth relu, always > 0"),
    _op("elu", _elementwise, (1, 1), user=True, doc="elu(x, alpha=1.0): x if x > 0, else alpha (e^x - 1)",
        attrs=(Attr("alpha", float, 1.0),)),
    _op("leaky_relu", _elementwise, (1, 1), user=True,
        doc="leaky_relu(x, negative_slope=0.01): x if x > 0, else negative_slope x",
        attrs=(Attr("negative_slope", float, 0.01),)),
    _op("min", _elementwise, (2, 2), user=True, doc="min(a, b): the elementwise smaller value (broadcasting); "
        "min(x, 1) caps at 1"),
    _op("max", _elementwise, (2, 2), user=True, doc="max(a, b): the elementwise larger value (broadcasting); "
        "max(x, 0) is relu"),
    _op("clamp", _clamp, (1, 1), user=True, doc="clamp(x, min=lo, max=hi): x limited to [lo, hi]; either bound "
        "may be left out", attrs=(Attr("min", float, None), Attr("max", float, None))),
    _op("where", _where, (3, 3), user=True, doc="where(cond, a, b): a where cond is not 0, else b (broadcasting); "
        "cond is a mask such as a float 0/1 or int64 input"),
    _op("transpose", _transpose, (1, 1), user=True, doc="swap the last two axes: transpose(K) is Kᵀ"),
    _op("unsqueeze", _unsqueeze, (1, 1), user=True, doc="unsqueeze(x, axis): a new axis of size 1", attrs=AXIS),
    _op("squeeze", _squeeze, (1, 1), user=True, doc="squeeze(x, axis): drop an axis of size 1", attrs=AXIS),
    _op("sum", _reduce, (1, 1), user=True, doc="sum(x, axis=-1)", attrs=AXIS),
    _op("mean", _reduce, (1, 1), user=True, doc="mean(x, axis=-1)", attrs=AXIS),
    _op("argmax", _argmax, (1, 1), user=True, doc="argmax(x, axis=-1): int64 ids (greedy decoding)", attrs=AXIS),
    _op("layer_norm", _layer_norm, (3, 3), user=True, doc="layer_norm(x, gamma, beta) over the last axis, eps 1e-5"),
    _op("dropout", _elementwise, (1, 1), user=True, doc="dropout(x, p=0.1): only while training, 0 <= p < 1",
        attrs=(Attr("p", float, 0.1, low=0.0, high=1.0, high_open=True),)),
    _op("split_heads", _split_heads, (1, 1), user=True, doc="split_heads(x, heads): (B, T, d) -> (B, heads, T, d/heads)",
        attrs=(Attr("heads", int, low=1),)),
    _op("merge_heads", _merge_heads, (1, 1), user=True, doc="merge_heads(x): (B, heads, T, k) -> (B, T, heads*k)"),
    _op("causal", _causal, (1, 1), user=True, doc="causal(scores): -inf where key position > query position"),
    _op("mask", _mask, (2, 2), user=True, doc="mask(scores, keep): -inf where keep (B, S) is 0"),
    _op("attention", _attention, (3, 4), doc="softmax(q kᵀ · scale, masked) v, one fused op (passes.attention): q "
        "(..., T, E), k (..., S, E), v (..., S, E_v), keep (B, S) optional; attrs scale, causal"),
    _op("positional_encoding", _positions, (1, 1), user=True, doc="sinusoidal positions (T, d) for x (B, T, d)"),
    _op("softmax", _softmax, (1, 1), user=True, doc="softmax(x, axis=-1)", attrs=AXIS),
    _op("log_softmax", _softmax, (1, 1), user=True, doc="log_softmax(x, axis=-1)", attrs=AXIS),
    _op("concat", _concat, (1, -1), user=True, doc="concat(a, b, ..., axis=-1)", attrs=AXIS),
    _op("embedding", _embedding, (2, 2), user=True, doc="embedding(E, ids): rows of E (V, d) for int64 ids"),
    _op("last", _time_slice, (1, 1), user=True, doc="last(x): x[:, T-1] for a sequence (B, T, ...)"),
    _op("first", _time_slice, (1, 1), user=True, doc="first(x): x[:, 0] for a sequence (B, T, ...)"),
    # structural
    _op("slice", _slice, (1, 1), doc="x[..., start:stop] along attrs axis (from chunk/split)"),
    _op("zeros", _zeros, (1, 1), doc="zeros (B, *shape) of attr dtype (float32 by default); input gives B"),
    _op("expand_batch", _expand_batch, (2, 2), doc="a (...) value repeated over B; second input gives B"),
    _op("time_slice", _time_slice, (1, 1), doc="x[:, index] (unrolling)"),
    _op("sequence_mask", _sequence_mask, (2, 2), doc="(B, T) 1.0 where t < lengths[b] (attr only_last: where t == "
                                                        "lengths[b] - 1), read off a sequence"),
    _op("select", _select, (3, 3), doc="where(mask > 0, a, b): keep a state through padding"),
    _op("stack", _stack, (1, -1), doc="stack over a new time axis 1 (unrolling)"),
    _op("loop", _leaf, (0, -1), doc="a recurrent block; see ir.Loop"),
    _op("cell", _leaf, (0, -1), doc="a recognised standard cell run by the runtime's kernel; see passes.recognize"),
    _op("item", _leaf, (1, 1), doc="one returned value of a loop"),
]}

USER_FUNCTIONS = {name for name, op in OPS.items() if op.user}


def infer(op: str, shapes: list[Shape], dtypes: list[str], attrs: dict[str, Any]) -> tuple[Shape, str]:
    """The output shape and dtype of ``op``; raises ShapeError with expected/found on a mismatch."""
    opdef = OPS.get(op)
    if opdef is None:
        raise KeyError(f"op `{op}` has no entry in seqdsl.ops.OPS")
    lo, hi = opdef.arity
    if len(shapes) < lo or (hi >= 0 and len(shapes) > hi):
        want = f"{lo}" if lo == hi else f"{lo} to {'any' if hi < 0 else hi}"
        raise ShapeError(f"`{op}` takes {want} argument(s), got {len(shapes)}")
    return opdef.rule(shapes, dtypes, attrs)
