"""PyTorch backend: the IR written out as a readable, standalone ``model.py`` (imports torch only).

One assignment per equation, named after the equation, so the source reads like the spec; sub-expressions used
once are written inline (``f = torch.sigmoid(F.linear(x_t, self.W_f) + F.linear(h_prev, self.U_f) + self.b_f)``).
A recurrent block becomes a method with a Python loop over time; parameters are created once in ``__init__`` and
shared by every step. `TORCH_EMIT` is the op table: one entry per IR op.

Spec text reaches the source only as identifiers from one allocator per scope (`_Names`: spec names, made
unique against Python's own names, model.py's module-level names and the compiler's temporaries) or through
`seqdsl.naming.escape` (file names in comments and docstrings, names in string literals).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from seqdsl.ir import Graph, Loop, Model, Node, Param, loop_of, used_params
from seqdsl.naming import MODULE_ATTRIBUTES, PYTHON_RESERVED, escape, normalize, string_literal

Emit = Callable[[Node, list[str]], tuple[str, int]]  # (source, precedence)
ATOM, UNARY, PRODUCT, SUM = 4, 3, 2, 1


def _call(fn: str) -> Emit:
    def emit(node: Node, args: list[str]) -> tuple[str, int]:
        return f"{fn}({', '.join(args)})", ATOM
    return emit


def _binary(symbol: str, prec: int) -> Emit:
    def emit(node: Node, args: list[str]) -> tuple[str, int]:
        return f"{args[0]} {symbol} {args[1]}", prec
    return emit


def _slice(node: Node, args: list[str]) -> tuple[str, int]:
    axis, start, stop = node.attrs["axis"], node.attrs["start"], node.attrs["stop"]
    lead = "..., " if axis < 0 else ":, " * axis
    trail = ", :" * (-axis - 1) if axis < 0 else ""
    return f"{args[0]}[{lead}{start}:{stop}{trail}]", ATOM


def _method(template: str) -> Emit:
    """``template`` calls a method on (or indexes) its first argument, e.g. ``{0}.sum({axis})``."""
    def emit(node: Node, args: list[str]) -> tuple[str, int]:
        return template.format(*args, **node.attrs, shape=node.shape), ATOM
    return emit


def _helper(name: str) -> Emit:
    """A call of a module-level helper function of model.py (see HELPERS)."""
    def emit(node: Node, args: list[str]) -> tuple[str, int]:
        return f"{name}({', '.join(args)})", ATOM
    return emit


HELPERS = {
    "causal_mask": '''def causal_mask(scores):
    """-inf where a query (axis -2) would look at a later key (axis -1)."""
    t, s = scores.shape[-2], scores.shape[-1]
    future = torch.ones(t, s, dtype=torch.bool, device=scores.device).triu(1)
    return scores.masked_fill(future, float("-inf"))''',
    "padding_mask": '''def padding_mask(scores, keep):
    """-inf where keep (B, S) is 0, for scores (B, ..., S)."""
    keep = keep.reshape(keep.shape[0], *[1] * (scores.dim() - 2), keep.shape[-1])
    return scores.masked_fill(keep == 0, float("-inf"))''',
    "masked_attention": '''def masked_attention(q, k, v, keep, scale, causal):
    """softmax(q kᵀ · scale) v over the keys where keep (B, S) is not 0 (and, if causal, j <= i): one fused
    kernel. A query that sees no key gives NaN, as the softmax over nothing but -inf does unfused."""
    seen = (keep != 0).reshape(keep.shape[0], *[1] * (q.dim() - 2), keep.shape[-1])
    if causal:
        seen = seen & torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=seen, scale=scale)
    return y.masked_fill(~seen.any(-1, keepdim=True), float("nan"))''',
    "sinusoidal_positions": '''def sinusoidal_positions(x):
    """Vaswani et al.'s positional encoding (T, d) for x (B, T, d): sin on even, cos on odd features."""
    t, d = x.shape[1], x.shape[2]
    inv_freq = torch.pow(10000.0, -torch.arange(0, d, 2, device=x.device, dtype=x.dtype) / d)
    angles = torch.arange(t, device=x.device, dtype=x.dtype)[:, None] * inv_freq[None, :]
    return torch.stack([torch.sin(angles), torch.cos(angles)], -1).flatten(-2)''',
}
# Always written: how the module stays one graph under torch.compile (no recompiling for a new B or T).
COMPILE_HELPERS = '''@torch.compiler.disable
def dynamic_axes(value, axes):
    """Mark the batch and time axes of value as varying for torch.compile (no new compilation for a new B or T);
    outside torch.compile it only tags the tensor. Returns value."""
    for axis in axes:
        torch._dynamo.maybe_mark_dynamic(value, axis)
    return value'''
HELPER_OF = {"causal": "causal_mask", "mask": "padding_mask", "positional_encoding": "sinusoidal_positions"}


def _attention(node: Node, args: list[str]) -> tuple[str, int]:
    """softmax(q kᵀ · scale (+ masks)) v as torch's fused kernel: F.scaled_dot_product_attention, or with a
    padding mask the `masked_attention` helper around it (added by the writer)."""
    scale, causal = number(node.attrs["scale"]), bool(node.attrs["causal"])
    if len(args) == 4:
        return f"masked_attention({', '.join(args)}, {scale}, {causal})", ATOM
    return (f"F.scaled_dot_product_attention({', '.join(args)}{', is_causal=True' if causal else ''}, "
            f"scale={scale})"), ATOM


_LITERAL = re.compile(r"-?[0-9]+(\.[0-9]*)?(e[-+]?[0-9]+)?")  # what `number` writes; no identifier matches


def _is_number(text: str) -> bool:
    """Whether an argument's source is a number literal (a constant of the spec, written inline by `number`).
    Judged by the literal's form, not by ``float()``, which would also take a value named ``inf`` or ``nan``."""
    return _LITERAL.fullmatch(text) is not None


def _as_float(text: str) -> str:
    """A number literal written as a float (`2` -> `2.0`), so that torch.where of two numbers gives float32."""
    return repr(float(text)) if _is_number(text) else text


def _extremum(fn: str, bound: str) -> Emit:
    """min/max of two values: ``torch.minimum(a, b)``; with a number (which torch.minimum does not take),
    ``torch.clamp(a, max=1)``."""
    def emit(node: Node, args: list[str]) -> tuple[str, int]:
        a, b = args
        if _is_number(b) or _is_number(a):
            value, literal = (a, b) if _is_number(b) else (b, a)
            return f"torch.clamp({value}, {bound}={literal})", ATOM
        return f"{fn}({a}, {b})", ATOM
    return emit


def _clamp(node: Node, args: list[str]) -> tuple[str, int]:
    bounds = "".join(f", {k}={number(node.attrs[k])}" for k in ("min", "max") if node.attrs.get(k) is not None)
    return f"torch.clamp({args[0]}{bounds})", ATOM


def _contract(node: Node, args: list[str]) -> tuple[str, int]:
    return f'torch.einsum("...d,mnd->...mn", {args[0]}, {args[1]})', ATOM


def _native_cell_helper(fn: str) -> str:
    return f'''@torch.compiler.disable
def native_{fn.split(".")[-1]}(*args):
    """{fn} (oneDNN on the CPU, cuDNN on the GPU) run as it is: torch.compile would trace it into one set of
    operations per step (it leaves torch.nn.LSTM to eager mode in the same way). Outputs vary in B and T."""
    y, *states = {fn}(*args)  # (B, T, h), then (layers, B, h) per state
    return (dynamic_axes(y, (0, 1)), *(dynamic_axes(s, (1,)) for s in states))'''


TORCH_EMIT: dict[str, Emit] = {
    "add": _binary("+", SUM),
    "sub": _binary("-", SUM),
    "mul": _binary("*", PRODUCT),
    "div": _binary("/", PRODUCT),
    "neg": lambda n, a: (f"-{a[0]}", UNARY),
    "linear": lambda n, a: (f"F.linear({', '.join(a)})", ATOM),
    "matmul": _binary("@", PRODUCT),
    "sigmoid": _call("torch.sigmoid"),
    "tanh": _call("torch.tanh"),
    "relu": _call("torch.relu"),
    "exp": _call("torch.exp"),
    "log": _call("torch.log"),
    "abs": _call("torch.abs"),
    "gelu": _call("F.gelu"),
    "silu": _call("F.silu"),
    "softplus": _call("F.softplus"),
    "elu": lambda n, a: (f"F.elu({a[0]}, {number(n.attrs['alpha'])})", ATOM),
    "leaky_relu": lambda n, a: (f"F.leaky_relu({a[0]}, {number(n.attrs['negative_slope'])})", ATOM),
    "min": _extremum("torch.minimum", "max"),
    "max": _extremum("torch.maximum", "min"),
    "clamp": _clamp,
    "where": lambda n, a: (f"torch.where({a[0]} != 0, {_as_float(a[1])}, {_as_float(a[2])})", ATOM),
    "softmax": lambda n, a: (f"torch.softmax({a[0]}, dim={n.attrs['axis']})", ATOM),
    "log_softmax": lambda n, a: (f"torch.log_softmax({a[0]}, dim={n.attrs['axis']})", ATOM),
    "concat": lambda n, a: (f"torch.cat([{', '.join(a)}], dim={n.attrs.get('axis', -1)})", ATOM),
    "embedding": lambda n, a: (f"F.embedding({a[1]}, {a[0]})", ATOM),
    "contract": _contract,
    # vᵀAᵀ rather than A v: a batched row-times-matrix is 3-6x faster, and fastest when A is a transposed view
    "matvec": lambda n, a: (f"({a[1]}.unsqueeze(-2) @ {a[0]}.transpose(-2, -1)).squeeze(-2)", ATOM),
    "sqrt": _call("torch.sqrt"),
    "transpose": _method("{0}.transpose(-2, -1)"),
    "unsqueeze": _method("{0}.unsqueeze({axis})"),
    "squeeze": _method("{0}.squeeze({axis})"),
    "sum": _method("{0}.sum({axis})"),
    "mean": _method("{0}.mean({axis})"),
    "argmax": _method("{0}.argmax({axis})"),
    "layer_norm": lambda n, a: (f"F.layer_norm({a[0]}, ({n.shape[-1]},), {a[1]}, {a[2]})", ATOM),
    "dropout": lambda n, a: (f"F.dropout({a[0]}, {number(n.attrs['p'])}, self.training)", ATOM),
    "split_heads": _method("{0}.unflatten(-1, ({heads}, {shape[3]})).transpose(1, 2)"),
    "merge_heads": _method("{0}.transpose(1, 2).flatten(2)"),
    "causal": _helper("causal_mask"),
    "mask": _helper("padding_mask"),
    "positional_encoding": _helper("sinusoidal_positions"),
    "last": _method("{0}[:, -1]"),
    "first": _method("{0}[:, 0]"),
    "slice": _slice,
    "zeros": lambda n, a: (f"{a[0]}.new_zeros(({a[0]}.shape[0], {', '.join(map(str, n.attrs['shape']))})"
                           + (f", dtype=torch.{n.attrs['dtype']})" if "dtype" in n.attrs else ")"), ATOM),
    "expand_batch": lambda n, a: (f"{a[0]}.expand({a[1]}.shape[0], {', '.join(map(str, n.shape[1:]))})", ATOM),
    "time_slice": _method("{0}[:, {index}]"),
    "sequence_mask": lambda n, a: (f"(torch.arange({a[1]}.shape[1], device={a[1]}.device)[None, :] "
                                   + (f"== {a[0]}[:, None] - 1" if n.attrs.get("only_last") else f"< {a[0]}[:, None]")
                                   + ").float()", ATOM),
    "select": lambda n, a: (f"torch.where({a[0]} > 0, {a[1]}, {a[2]})", ATOM),
    "stack": lambda n, a: (f"torch.stack([{', '.join(a)}], 1)", ATOM),
    "attention": _attention,
}
@dataclass(frozen=True)
class TorchCell:
    """How torch's kernel for a standard cell takes its weights: groups of spec parameters stacked in torch's
    gate order (w_ih, w_hh, b_ih, b_hh); None is a zero bias the spec does not have. A cell node runs on it when
    its family and activations are the kernel's and it has no peephole or coupled gate (with or without bias)."""

    fn: str
    title: str
    family: str
    activations: tuple[tuple[str, float | None], ...]
    states: tuple[str, ...]
    weights: tuple[tuple[str, ...] | None, ...]


_SIGMOID, _TANH, _RELU = ("sigmoid", None), ("tanh", None), ("relu", None)
_ELMAN = (("W",), ("U",), ("b",), None)
TORCH_CELLS: dict[str, TorchCell] = {
    "rnn_tanh": TorchCell("torch.rnn_tanh", "Elman RNN", "rnn", (_TANH,), ("h",), _ELMAN),
    "rnn_relu": TorchCell("torch.rnn_relu", "ReLU RNN", "rnn", (_RELU,), ("h",), _ELMAN),
    "lstm": TorchCell("torch.lstm", "LSTM", "lstm", (_SIGMOID, _TANH, _TANH), ("h", "c"),
                      (("W_i", "W_f", "W_c", "W_o"), ("U_i", "U_f", "U_c", "U_o"),
                       ("b_i", "b_f", "b_c", "b_o"), None)),
    "gru": TorchCell("torch.gru", "GRU (PyTorch's form)", "gru_torch", (_SIGMOID, _TANH), ("h",),
                     (("W_r", "W_z", "W_n"), ("U_r", "U_z", "U_n"),
                      ("b_ir", "b_iz", "b_in"), ("b_hr", "b_hz", "b_hn"))),
}


def torch_kernel(attrs: dict[str, Any]) -> TorchCell | None:
    """The torch kernel that runs the cell node with ``attrs``, or None (it stays a loop, on the generic path)."""
    if attrs.get("peephole") or attrs.get("input_forget"):
        return None
    return next((k for k in TORCH_CELLS.values()
                 if k.family == attrs["cell"] and k.activations == tuple(attrs["activations"])), None)


def torch_runs(attrs: dict[str, Any]) -> bool:
    """Whether a torch kernel runs the cell node with ``attrs``: the backend's choice for `passes.recognize`."""
    return torch_kernel(attrs) is not None


HELPERS.update({"native_" + c.fn.split(".")[-1]: _native_cell_helper(c.fn) for c in TORCH_CELLS.values()})

# Templates that call a method on, or index, an argument: such arguments must be atoms (parenthesised).
RECEIVER_OPS = {"sequence_mask", "transpose", "unsqueeze", "squeeze", "sum", "mean", "argmax", "split_heads", "merge_heads",
                "last", "first", "slice", "zeros", "expand_batch", "time_slice", "matvec"}
# Ops handled by the code generator itself rather than by an expression template.
STRUCTURAL = {"input", "param", "const", "step_input", "state", "capture", "loop", "item"}
#: What a local variable of model.py may never be called: Python's keywords and builtins, the module-level names
#: (imports, helpers, the class) and the loop machinery's own (self, T, t).
_RESERVED = PYTHON_RESERVED | {"math", "torch", "F", "nn", "Model", *HELPERS} | {"self", "T", "t", "dynamic_axes"}


def dims(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


class _Names:
    """The identifiers of one scope of model.py (a method's locals, or the class's methods), from one allocator.

    ``names(node)`` is the variable of IR node ``node`` (its spec name where it has one, made valid and unique);
    ``names.fresh(base)`` is a compiler temporary (``x_t``, ``h_steps``), which never takes a name already given.
    Spec-named nodes are given their names first (`claim`), so temporaries yield to them, not the other way.
    """

    def __init__(self, nodes: Graph | None = None, strip: str = "", reserved: frozenset[str] = frozenset()):
        self.used = set(_RESERVED) | set(reserved)
        self.map: dict[str, str] = {}
        self.nodes = nodes  # the IR nodes of this scope: the only names `__call__` maps
        self.strip = strip  # a called module's prefix (`enc.`), dropped inside its own loop method

    def __call__(self, name: str) -> str:
        if name not in self.map:
            if self.nodes is not None and name not in self.nodes.nodes:
                raise KeyError(f"internal: `{name}` is no IR node of this scope; a temporary takes names.fresh()")
            self.map[name] = self.fresh(name.removeprefix(self.strip))
        return self.map[name]

    def claim(self, nodes: list[Node]) -> None:
        """Give these nodes their names now, before any temporary is made."""
        for node in nodes:
            self(node.name)

    def fresh(self, base: str) -> str:
        # `enc.h` -> `enc_h`, `x@3` -> `x_3`: any character that is not an identifier's as it stands becomes `_`
        base = "".join(c if ("v" + c).isidentifier() and normalize(c) == c else "_" for c in normalize(base))
        base = base.strip("_") or "v"
        if base[0].isdigit():
            base = "v_" + base
        out, i = base, 1
        while out in self.used:
            out, i = f"{base}_{i}", i + 1
        assert out.isidentifier() and normalize(out) == out, out
        self.used.add(out)
        return out


class _GraphWriter:
    """Writes the statements of one graph (forward, or a loop's step), inlining single-use sub-expressions."""

    def __init__(self, gen: "_Generator", graph: Graph, names: _Names, indent: str):
        self.gen, self.graph, self.names, self.indent = gen, graph, names, indent
        self.users = graph.users()
        for out in graph.outputs.values():
            self.users.setdefault(out, []).append("<output>")
        self.inline: dict[str, tuple[str, int]] = {}
        self.lines: list[str] = []
        self.keep: set[str] = set()  # nodes that must be variables (read by the loop machinery)
        self.step = False  # a loop's step: sums of a product take one addmm (see `_addmm`)

    def var(self, name: str) -> str:
        return self.names(name)

    def operand(self, name: str, prec: int, right: bool = False) -> str:
        if name in self.inline:
            text, own = self.inline[name]
            if own < prec or (right and own == prec and prec < ATOM):
                return f"({text})"
            return text
        return self.var(name)

    def emit_node(self, node: Node) -> None:
        if node.op == "param":
            self.inline[node.name] = (self.gen.param_ref(node.attrs["name"]), ATOM)
            return
        if node.op == "const":
            v = node.attrs["value"]
            self.inline[node.name] = (number(v), ATOM if v >= 0 else UNARY)
            return
        if node.op in ("input", "state", "step_input", "capture", "item"):
            return  # bound by the enclosing signature or loop machinery
        if node.op == "loop":
            self.gen.write_loop_call(self, node)
            return
        if node.op == "cell":
            self.gen.write_cell(self, node)
            return
        fused = _addmm(self, node) if self.step else None
        if fused is not None:
            self.lines.append(f"{self.indent}{self.var(node.name)} = {fused}  # {dims(node.shape)}")
            return
        emit = TORCH_EMIT.get(node.op)
        if emit is None:
            raise KeyError(f"op `{node.op}` has no entry in seqdsl.compilers.torch_codegen.TORCH_EMIT")
        if node.op in HELPER_OF:
            self.gen.helpers.add(HELPER_OF[node.op])
        if node.op == "attention" and len(node.inputs) == 4:
            self.gen.helpers.add("masked_attention")
        own = emit(node, ["a"] * len(node.inputs))[1]
        if node.op in RECEIVER_OPS:  # `x.sum(1)`: the receiver must be an atom
            args = [self.operand(i, ATOM) for i in node.inputs]
        elif own < ATOM:  # an operator: parenthesise looser operands
            args = [self.operand(i, own, right=k > 0) for k, i in enumerate(node.inputs)]
        else:  # a function call: its arguments need no parentheses
            args = [self.operand(i, 0) for i in node.inputs]
        text, prec = emit(node, args)
        single_use = len(self.users.get(node.name, [])) == 1 and not node.attrs.get("eq_root")
        if single_use and node.name not in self.keep:
            self.inline[node.name] = (text, prec)
        else:
            self.lines.append(f"{self.indent}{self.var(node.name)} = {text}  # {dims(node.shape)}")

    def value(self, name: str) -> str:
        """Source for the value of node ``name`` (a variable, or its inline expression)."""
        return self.operand(name, 0)


def _addmm(writer: _GraphWriter, node: Node) -> str | None:
    """``a + h @ Uᵀ`` of a step as one ``torch.addmm(a, h, U.t())``: one kernel (the product accumulates onto a
    copy of ``a``, the hoisted input projection) instead of a product and an add, at every step. None where
    ``node`` is no such sum of (B, n) values: a product read by nothing else, and an addend of the sum's shape
    that the step reads whole (a step input or capture: what hoisting leaves; equations as written stay so)."""
    graph = writer.graph
    if node.op != "add" or len(node.shape) != 2 or node.dtype != "float32":
        return None
    for k in (0, 1):
        lin, addend = graph[node.inputs[k]], graph[node.inputs[1 - k]]
        if lin.op == "linear" and len(lin.inputs) == 2 and writer.users.get(lin.name) == [node.name] \
                and lin.name not in writer.keep and not lin.attrs.get("eq_root") \
                and len(graph[lin.inputs[0]].shape) == 2 and addend.shape == node.shape \
                and addend.op in ("step_input", "capture"):
            return (f"torch.addmm({writer.value(addend.name)}, {writer.value(lin.inputs[0])}, "
                    f"{writer.operand(lin.inputs[1], ATOM)}.t())")
    return None


class _Generator:
    def __init__(self, model: Model):
        self.model = model
        self.methods: list[list[str]] = []
        attributes = {p.split(".")[0] for p in model.params}  # parameters and the submodules of calls
        self.method_names = _Names(reserved=MODULE_ATTRIBUTES | attributes | {"_forward"})
        self.helpers: set[str] = set()

    def param_ref(self, name: str) -> str:
        return attribute_path(name)

    def write_cell(self, writer: _GraphWriter, node: Node) -> None:
        """A recognised standard cell: one call of torch's own kernel (oneDNN / cuDNN), weights stacked in
        torch's gate order from the spec's parameters."""
        layout = torch_kernel(node.attrs)
        assert layout is not None, f"internal: no torch kernel runs the cell {node.attrs}"
        x, *rest = [writer.value(i) for i in node.inputs]
        n_states = len(layout.states)
        states, weights = rest[:n_states], dict(zip(node.attrs["params"], rest[n_states:]))
        has_biases = node.attrs["bias"]
        stacked = []
        for k, group in enumerate(layout.weights if has_biases else layout.weights[:2]):
            if group is None:  # torch's second bias, which the spec does not have
                rows = len(layout.weights[k - 1] or ()) * node.attrs["hidden"]
                stacked.append(f"{x}.new_zeros({rows})")
            else:
                parts = [weights[p] for p in group]
                stacked.append(parts[0] if len(parts) == 1 else f"torch.cat([{', '.join(parts)}])")
        hx = f"{states[0]}[None]" if n_states == 1 else f"({', '.join(f'{s}[None]' for s in states)})"
        reverse = node.attrs["reverse"]
        seq = f"{x}.flip(1)" if reverse else x
        owner = node.name.rsplit(".", 1)[0] + "_" if "." in node.name else ""
        base = owner + layout.fn.split(".")[-1]
        outs = [writer.names.fresh(f"{base}_y"), *(writer.names.fresh(f"{base}_{s}_n") for s in layout.states)]
        where = self.where(node)
        helper = "native_" + layout.fn.split(".")[-1]
        self.helpers.add(helper)
        ind = writer.indent
        writer.lines += [
            f"{ind}# {where}: a standard {layout.title}, run by {layout.fn} (oneDNN on the CPU, cuDNN on the GPU)",
            f"{ind}{', '.join(outs)} = {helper}(",
            f"{ind}    {seq}, {hx},",
            f"{ind}    [{(',' + chr(10) + ind + '     ').join(stacked)}],",
            f"{ind}    {has_biases}, 1, 0.0, self.training, False, True)"
            "  # biases, layers, dropout, train, bidirectional, batch_first",
        ]
        y = f"{outs[0]}.flip(1)" if reverse else outs[0]
        value = {"y": y, "y_last": f"{y}[:, -1]", **{f"{s}_n": f"{o}[0]" for s, o in zip(layout.states, outs[1:])}}
        for item in (n for n in writer.graph if n.op == "item" and n.inputs == [node.name]):
            which = node.attrs["returns"][item.attrs["index"]]
            writer.lines.append(f"{writer.indent}{writer.var(item.name)} = {value[which]}  # {dims(item.shape)}")

    def write_loop_call(self, writer: _GraphWriter, node: Node) -> None:
        loop = loop_of(node)
        method = "_" + self.method_names(node.name)  # private: no clash with parameters or nn.Module
        self.methods.append(self.loop_method(method, node, loop))
        args = ", ".join(writer.value(i) for i in node.inputs)
        items = [n for n in writer.graph if n.op == "item" and n.inputs == [node.name]]
        items.sort(key=lambda n: n.attrs["index"])
        targets = ", ".join(writer.var(n.name) for n in items) or "_"
        if len(items) == 1:
            targets += ","
        writer.lines.append(f"{writer.indent}{targets} = self.{method}({args})")

    def loop_method(self, method: str, node: Node, loop: Loop) -> list[str]:
        body = loop.body
        prefix = node.name[: node.name.rfind(".") + 1]
        names = _Names(body, strip=prefix)
        # spec names first (the step's equations, states, whole inputs): the loop's temporaries yield to them
        names.claim([n for n in body if n.attrs.get("eq_root") or n.op in ("state", "capture")])
        ind = " " * 12
        states = [n for n in body if n.op == "state"]
        seqs = sorted((n for n in body if n.op == "step_input"), key=lambda n: n.attrs["index"])
        caps = sorted((n for n in body if n.op == "capture"), key=lambda n: n.attrs["index"])
        # the carried variable of a state is its update's name when the update is the equation `h: ...`
        carried = [names(u) if u.removeprefix(prefix) == s else names.fresh(s + "_state")
                   for u, s in zip(loop.updates, loop.state_names)]
        seq_args = [names.fresh(n.name.removeprefix(prefix)) for n in seqs]  # the whole sequence (B, T, ...)
        for n in seqs:
            names.map[n.name] = names.fresh(n.name.removeprefix(prefix) + "_t")  # its slice at step t
        writer = _GraphWriter(self, body, names, ind)
        writer.step = True
        writer.keep |= loop.read
        for n in body:
            writer.emit_node(n)
        sig = ", ".join(["self"] + carried + seq_args + [names(c.name) for c in caps])
        time_ref = seq_args[0] if seq_args else None
        out = ["    @torch.compiler.disable  # a Python loop over T: torch.compile would unroll it, again for each T",
               f"    def {method}({sig}):",
               f'        """The recurrence z(t) = G(h(t), z(t-1), w) of {self.where(node)}, one step per t.',
               "",
               "        Carries " + ", ".join(f"{c} {dims(s.shape)}" for c, s in zip(carried, states)) + ".",
               '        """']
        out.append(f"        T = {time_ref}.shape[1]" if time_ref else f"        T = {loop.steps}  # fixed: no sequence input")
        collect = {}
        for i, r in enumerate(loop.returns):
            if r.kind == "all":
                collect[i] = names.fresh(f"{writer.var(r.node)}_steps")  # one list per return, never shared
                out.append(f"        {collect[i]} = []")
        steps = "range(T - 1, -1, -1)" if loop.reverse else "range(T)"
        # time-major copies, unbound: a step's slice is contiguous (matrix products on strided slices are slow),
        # and autograd sees one UnbindBackward (one stack) rather than T SelectBackwards, each of which would fill
        # a zero tensor of the whole sequence: O(T^2) in the backward pass
        by_time = [names.fresh(f"{s}_by_t") for s in seq_args]
        for s, bt in zip(seq_args, by_time):
            out.append(f"        {bt} = {s}.transpose(0, 1).contiguous().unbind(0)  # T steps of (B, ...)")
        out.append(f"        for t in {steps}:")
        for s, c in zip(states, carried):
            out.append(f"            {writer.var(s.name)} = {c}")
        for bt, n in zip(by_time, seqs):
            out.append(f"            {writer.var(n.name)} = {bt}[t]")
        out += writer.lines
        for c, u in zip(carried, loop.updates):
            if writer.value(u) != c:
                out.append(f"            {c} = {writer.value(u)}")
        last: dict[int, str] = {}
        for i, r in enumerate(loop.returns):
            if r.kind == "all":
                out.append(f"            {collect[i]}.append({writer.value(r.node)})")
            elif r.kind == "last":
                last[i] = names.fresh(f"{writer.var(r.node)}_last")
                out.append("            if t == T - 1:")
                out.append(f"                {last[i]} = {writer.value(r.node)}")
        if loop.stop is not None:  # stop once every row has produced the stop token
            done = names.fresh("done")
            out.insert(out.index(f"        for t in {steps}:"), f"        {done} = None")
            token_var, token = writer.value(loop.stop[0]), loop.stop[1]
            out += [f"            {done} = ({token_var} == {token}) if {done} is None else {done} | ({token_var} == {token})",
                    f"            if bool({done}.all()):",
                    "                break"]
        if loop.reverse and collect:
            out += [f"        {c}.reverse()" for c in collect.values()]
        rets = []
        for i, r in enumerate(loop.returns):
            if r.kind == "all":
                value = f"torch.stack({collect[i]}, 1)"
            elif r.kind == "last":
                value = last[i]
            else:
                value = (writer.value(r.node) if r.node not in loop.updates
                         else carried[loop.updates.index(r.node)])
            shape = body[r.node].shape
            if r.kind == "all":
                shape = (shape[0], "T" if loop.steps is None else loop.steps, *shape[1:])
            rets.append(f"dynamic_axes({value}, {_symbolic_axes(shape)})")
        out.append(f"        return {', '.join(rets)}{',' if len(rets) == 1 else ''}")
        return out

    def where(self, node: Node) -> str:
        """``file.yaml:12`` for comments and docstrings: the file name is the user's, so it is escaped."""
        loc = node.loc
        return f"{escape(Path(loc.file).name)}:{loc.line}" if loc.line else escape(self.model.name)

    def generate(self) -> str:
        m = self.model
        g = m.graph
        names = _Names(g)
        for name in m.inputs:
            names(name)
        names.claim([n for n in g if n.attrs.get("eq_root") or n.op == "item"])
        writer = _GraphWriter(self, g, names, " " * 8)
        for node in g:
            writer.emit_node(node)
        outs = list(g.outputs)
        ret = ", ".join(writer.value(g.outputs[o]) for o in outs)
        inputs = m.input_nodes()
        sig = ", ".join(["self"] + [names(n.name) for n in inputs])
        in_doc = escape(", ".join(f"{n.name} {dims(n.shape)} {n.dtype}" for n in inputs))
        out_doc = escape(", ".join(f"{o} {dims(g[g.outputs[o]].shape)}" for o in outs))
        lines = [
            f'"""{escape(m.name)}: generated by seqdsl from {escape(Path(m.source).name)}. Rebuild rather than edit.',
            "",
            f"Sizes: {escape(', '.join(f'{k}={v}' for k, v in m.sizes.items()) or 'none')}. "
            f"Parameters: {m.param_count:,}.",
            '"""',
            "",
            "import math",
            "",
            "import torch",
            "import torch.nn.functional as F",
            "from torch import nn",
            "",
            "",
        ]
        lines += [COMPILE_HELPERS, "", ""]
        for helper in sorted(self.helpers):
            lines += [HELPERS[helper], "", ""]
        lines += [
            "class Model(nn.Module):",
            f'    """{in_doc} -> {out_doc}."""',
            "",
            f"    input_names = {_tuple_literal([n.name for n in inputs])}",
            f"    output_names = {_tuple_literal(outs)}",
            "",
            "    def __init__(self):",
            "        super().__init__()",
        ]
        lines += _containers(m.params)
        used = used_params(m.graph)
        for p in m.params.values():
            where = f"  # {escape(Path(p.loc.file).name)}:{p.loc.line}" if p.loc.line else ""
            empty = f"torch.empty({', '.join(map(str, p.shape))})"
            if p.name in used:
                lines.append(f"        {attribute_path(p.name)} = nn.Parameter({empty}){where}")
            else:  # W0402: nothing uses it, so it gets no gradient; DDP wants a gradient for every parameter
                owner, _, leaf = p.name.rpartition(".")
                ref = attribute_path(owner) if owner else "self"
                lines.append(f"        {ref}.register_buffer({string_literal(leaf)}, {empty}){where}, never used: not trained")
        lines += ["        self.reset_parameters()", "",
                  "    @torch.no_grad()",
                  "    def reset_parameters(self):",
                  '        """uniform: U(-1/sqrt(n), 1/sqrt(n)) with n the fan-in (last axis; a vector\'s length), as nn.Linear; normal: N(0, 1).',
                  "",
                  "        The others as torch.nn.init (fan_in = shape[1] * prod(shape[2:]), fan_out = shape[0] * prod(shape[2:])):",
                  "        orthogonal: gain * a (semi-)orthogonal matrix; identity: gain * I; xavier_uniform: U(-a, a),",
                  "        a = gain * sqrt(6 / (fan_in + fan_out)); kaiming_uniform: U(-a, a), a = gain * sqrt(3 / fan_in).",
                  '        """']
        for p in m.params.values():
            lines += [f"        {line}" for line in _init(p)]
        if not m.params:
            lines.append("        pass")
        args = ", ".join(names(n.name) for n in inputs)
        lines += ["", "    @torch.compiler.disable(recursive=False)  # only this frame: torch.compile compiles _forward",
                  f"    def forward({sig}):", f'        """{in_doc} -> {out_doc}."""']
        lines += [f"        dynamic_axes({names(n.name)}, {_symbolic_axes(n.shape)})" for n in inputs]
        lines += [f"        return self._forward({args})", "", f"    def _forward({sig}):"]
        lines += writer.lines
        lines.append(f"        return {ret}")
        for method in self.methods:
            lines += [""] + method
        return "\n".join(lines) + "\n"


def _symbolic_axes(shape: tuple[Any, ...]) -> str:
    """The positions of the symbolic axes (B, T, ...) of ``shape``, as a tuple literal."""
    axes = tuple(i for i, d in enumerate(shape) if isinstance(d, str))
    return repr(axes)


def number(value: float) -> str:
    """A constant as a Python literal; constants are finite (lowering refuses the others, with their place)."""
    if not math.isfinite(value):
        raise ValueError(f"internal: constant {value} reached the code generator")
    return repr(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


def _tuple_literal(texts: list[str]) -> str:
    items = ", ".join(string_literal(t) for t in texts)
    return f"({items},)" if len(texts) == 1 else f"({items})"


def attribute_path(name: str) -> str:
    """``deep.0.W`` -> ``self.deep[0].W``: dotted parameter names are submodules, numbered ones a ModuleList."""
    return "self" + "".join(f"[{part}]" if part.isdigit() else f".{part}" for part in name.split("."))


def _containers(params: dict[str, Param]) -> list[str]:
    """Statements creating the submodules that hold a called module's parameters (state_dict keys = spec names)."""
    owners: dict[str, set[str]] = {}
    for name in params:
        parts = name.split(".")
        for k in range(1, len(parts)):
            owners.setdefault(".".join(parts[:k]), set()).add(parts[k])
    lines = []
    for owner, children in owners.items():
        if owner.split(".")[-1].isdigit():
            continue  # made by its parent's ModuleList
        numbered = sorted(int(c) for c in children if c.isdigit())
        if numbered and len(numbered) == len(children) and numbered == list(range(len(numbered))):
            lines.append(f"        {attribute_path(owner)} = nn.ModuleList(nn.Module() for _ in range({len(numbered)}))")
        else:
            lines.append(f"        {attribute_path(owner)} = nn.Module()")
    return lines


def _init(p: Param) -> list[str]:
    """The statements initialising ``p`` (`seqdsl.init` gives the formulas); a parameter of several blocks is
    initialised block by block, each a view of its rows."""
    ref = attribute_path(p.name)
    if p.blocks == 1:
        return [_init_call(p, ref)]
    rows = p.shape[0] // p.blocks
    return [f"for block in {ref}.split({rows}):  # {p.blocks} blocks of {rows} rows, each initialised on its own",
            f"    {_init_call(p, 'block')}"]


def _init_call(p: Param, ref: str) -> str:
    gain = repr(float(p.gain)) if p.gain is not None else ""
    if p.init == "uniform":
        return f"nn.init.uniform_({ref}, -1 / math.sqrt({p.shape[-1]}), 1 / math.sqrt({p.shape[-1]}))"
    if p.init == "normal":
        return f"nn.init.normal_({ref})"
    if p.init == "constant":
        return f"nn.init.constant_({ref}, {float(p.value)!r})"  # type: ignore[arg-type]
    if p.init == "orthogonal":
        return f"nn.init.orthogonal_({ref}, gain={gain})"
    if p.init == "identity":
        return f"nn.init.eye_({ref})" + ("" if p.gain == 1.0 else f".mul_({gain})")
    if p.init == "xavier_uniform":
        return f"nn.init.xavier_uniform_({ref}, gain={gain})"
    if p.init == "kaiming_uniform":  # as nn.init.kaiming_uniform_, with the gain given rather than a nonlinearity
        fan_in = p.shape[1] * math.prod(p.shape[2:])
        return f"nn.init.uniform_({ref}, -math.sqrt(3.0) * ({gain} / math.sqrt({fan_in})), " \
               f"math.sqrt(3.0) * ({gain} / math.sqrt({fan_in})))"
    if p.init in ("zeros", "ones"):
        return f"nn.init.{p.init}_({ref})"
    raise KeyError(f"initialiser `{p.init}` has no entry in seqdsl.compilers.torch_codegen._init_call")


def generate(model: Model) -> str:
    """The source of a standalone ``model.py`` defining ``class Model(nn.Module)`` for ``model``."""
    return _Generator(model).generate()
