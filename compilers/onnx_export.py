"""ONNX backend: the IR emitted straight to an ONNX graph (no tracing), so it runs at any B and T.

A recurrent block becomes one ``Scan`` whose body is the step graph: the graph's size does not depend on T.
Parameters are initializers named as in the spec (``W_f``, ``enc.W_f``) and are read from the loop body through
ONNX's outer scope, so the weights are stored once. `ONNX_EMIT` is the op table: one entry per IR op.
Graph inputs and outputs carry the spec's names; ``B`` and ``T`` are symbolic dimensions. Every other value name
is the compiler's and contains ``#`` or ``/``, which no spec name does (`seqdsl.naming`); doc strings and metadata
carry spec text only through `seqdsl.text.plain_text`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection, Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from seqdsl.ir import Graph, LoopOutput, Model, Node, loop_of
from seqdsl.version import __version__

OPSET = 17  # LayerNormalization, Scan v16 and everything the op table uses; loads in old and new runtimes
DTYPES = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64}


class _Builder:
    """Collects the nodes of one ONNX graph; ``root`` owns initializers, shared by every nested body."""

    def __init__(self, root: "_Builder | None" = None, scope: str = ""):
        self.root = root or self
        self.scope = scope
        self.nodes: list[onnx.NodeProto] = []
        self.values: dict[str, str] = {}  # IR node -> ONNX value name
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.cache: dict[tuple[object, ...], str] = {}
        self.counter = 0
        self.allocated: set[str] = set()  # every internal name `name` gave out, on the root
        self.graph: Graph | None = None  # the IR graph being emitted (for shapes of inputs)
        self.params: set[str] = set()  # parameter names (their initializers are written last), on the root

    def shape_of(self, ir_node: str) -> tuple[object, ...]:
        assert self.graph is not None
        return self.graph[ir_node].shape

    def name(self, base: str) -> str:
        self.root.counter += 1
        out = f"{self.scope}{base}#{self.root.counter}"  # `#` never occurs in spec names
        self.root.allocated.add(out)
        return out

    def _owned(self, name: str) -> str:
        """``name``, checked: an internal name (with `#`) must come from `name`, the one allocator, or two values
        could be given the same name (a hand-made ``zeros#3`` against the allocator's ``zeros#3``)."""
        assert "#" not in name or name in self.root.allocated, f"internal: {name} not from the name allocator"
        return name

    def op(self, op_type: str, inputs: list[str], base: str, out: str | None = None, **attrs: object) -> str:
        out = self._owned(out) if out else self.name(base)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{out}:{op_type}", **attrs))
        return out

    def initializer(self, name: str, array: np.ndarray) -> str:
        root = self.root
        self._owned(name)
        if name not in root.initializers:
            root.initializers[name] = numpy_helper.from_array(array, name)
        return name

    def const(self, value: float | list[int], dtype: type = np.float32) -> str:
        """A constant as a shared initializer (top level, so every loop body reads the same one)."""
        key = ("const", repr(value), dtype)
        if key not in self.root.cache:
            arr = np.array(value, dtype=dtype)
            # named by the one allocator of `#` names, like every node's output: no value can take its name
            self.root.cache[key] = self.initializer(self.root.name("const"), arr)
        return self.root.cache[key]

    def transposed(self, weight: str) -> str:
        """Wᵀ for ``x @ Wᵀ``: computed once at the top level when W lives there (a parameter, or a fused
        concatenation of parameters), outside every loop; else where W is."""
        root = self.root
        at_root = weight in root.initializers or weight in root.params or weight in root.values.values()
        owner = self.root if at_root else self
        key = ("T", weight)
        if key not in owner.cache:
            owner.cache[key] = owner.op("Transpose", [weight], f"{weight}.T", out=owner.name(f"{weight}.T"), perm=[1, 0])
        return owner.cache[key]

    def batch_shape(self, ref: str, tail: tuple[int, ...]) -> str:
        """The 1-d shape (B, *tail), with B read from the first axis of ``ref``."""
        b = self.op("Shape", [ref], "batch", start=0, end=1)
        return self.op("Concat", [b, self.const(list(tail), np.int64)], "shape", axis=0)


Emit = Callable[[_Builder, Node, list[str]], str]


def _simple(op_type: str, **fixed: object) -> Emit:
    def emit(b: _Builder, node: Node, args: list[str]) -> str:
        attrs = {k: node.attrs.get(k, v) for k, v in fixed.items()}
        return b.op(op_type, args, node.name, **attrs)
    return emit


def _linear(b: _Builder, node: Node, args: list[str]) -> str:
    product = b.op("MatMul", [args[0], b.transposed(args[1])], node.name)
    return b.op("Add", [product, args[2]], node.name) if len(args) == 3 else product


def _slice(b: _Builder, node: Node, args: list[str]) -> str:
    a = node.attrs
    return b.op("Slice", [args[0], b.const([a["start"]], np.int64), b.const([a["stop"]], np.int64),
                          b.const([a["axis"]], np.int64)], node.name)


def _time_index(index: int) -> Emit:
    def emit(b: _Builder, node: Node, args: list[str]) -> str:
        at = node.attrs.get("index", index)
        return b.op("Gather", [args[0], b.const(at, np.int64)], node.name, axis=1)
    return emit


def _zeros(b: _Builder, node: Node, args: list[str]) -> str:
    shape = b.batch_shape(args[0], tuple(node.attrs["shape"]))
    dtype = DTYPES[node.attrs.get("dtype", "float32")]
    zero = helper.make_tensor("zero", dtype, [1], [0])
    return b.op("ConstantOfShape", [shape], node.name, value=zero)


def _expand_batch(b: _Builder, node: Node, args: list[str]) -> str:
    return b.op("Expand", [args[0], b.batch_shape(args[1], tuple(node.shape[1:]))], node.name)


def _stack(b: _Builder, node: Node, args: list[str]) -> str:
    axis1 = b.const([1], np.int64)
    parts = [b.op("Unsqueeze", [a, axis1], node.name) for a in args]
    return b.op("Concat", parts, node.name, axis=1)


def _axes_op(op_type: str, **fixed: object) -> Emit:
    """Ops that take their axes as a second input (Unsqueeze, Squeeze, ReduceSum since opset 13)."""
    def emit(b: _Builder, node: Node, args: list[str]) -> str:
        return b.op(op_type, [args[0], b.const([node.attrs["axis"]], np.int64)], node.name, **fixed)
    return emit


def _contract(b: _Builder, node: Node, args: list[str]) -> str:
    rank = len(b.shape_of(node.inputs[0]))
    lead = "abcdefgh"[: rank - 1]
    return b.op("Einsum", args, node.name, equation=f"{lead}z,mnz->{lead}mn")


def _matvec(b: _Builder, node: Node, args: list[str]) -> str:
    column = b.op("Unsqueeze", [args[1], b.const([-1], np.int64)], node.name)
    product = b.op("MatMul", [args[0], column], node.name)
    return b.op("Squeeze", [product, b.const([-1], np.int64)], node.name)


def _transpose(b: _Builder, node: Node, args: list[str]) -> str:
    rank = len(node.shape)
    return b.op("Transpose", args, node.name, perm=[*range(rank - 2), rank - 1, rank - 2])


def _split_heads(b: _Builder, node: Node, args: list[str]) -> str:
    heads, k = node.shape[1], node.shape[3]
    split = b.op("Reshape", [args[0], b.const([0, 0, heads, k], np.int64)], node.name)
    return b.op("Transpose", [split], node.name, perm=[0, 2, 1, 3])


def _merge_heads(b: _Builder, node: Node, args: list[str]) -> str:
    swapped = b.op("Transpose", args, node.name, perm=[0, 2, 1, 3])
    return b.op("Reshape", [swapped, b.const([0, 0, node.shape[2]], np.int64)], node.name)


def _minus_inf_where(b: _Builder, node: Node, condition: str, scores: str) -> str:
    return b.op("Where", [condition, b.const(float("-inf")), scores], node.name)


def _causal(b: _Builder, node: Node, args: list[str]) -> str:
    last_two = b.op("Shape", [args[0]], node.name, start=-2)
    ones = b.op("ConstantOfShape", [last_two], node.name, value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]))
    future = b.op("Trilu", [ones, b.const(1, np.int64)], node.name, upper=1)
    return _minus_inf_where(b, node, b.op("Cast", [future], node.name, to=TensorProto.BOOL), args[0])


def _mask(b: _Builder, node: Node, args: list[str]) -> str:
    rank = len(node.shape)
    keep = b.op("Cast", [args[1]], node.name, to=TensorProto.FLOAT)
    keep = b.op("Unsqueeze", [keep, b.const(list(range(1, rank - 1)), np.int64)], node.name)
    padding = b.op("Equal", [keep, b.const(0.0)], node.name)
    return _minus_inf_where(b, node, padding, args[0])


def _attention(b: _Builder, node: Node, args: list[str]) -> str:
    """softmax(q kᵀ · scale (+ masks)) v as MatMul, Mul, Where, Softmax, MatMul. onnxruntime 1.31 runs this as
    fast as opset 23's fused Attention without a mask (5.6 against 5.7 ms, B=32 h=4 T=128), which would need opset
    23 for the whole model; a padding mask needs Attention's mask expanded to [B, 1, T, S]."""
    q, k, v = args[:3]
    rank = len(node.shape)
    k_t = b.op("Transpose", [k], node.name, perm=[*range(rank - 2), rank - 1, rank - 2])
    scores = b.op("MatMul", [q, k_t], node.name)
    if node.attrs["scale"] != 1.0:
        scores = b.op("Mul", [scores, b.const(float(node.attrs["scale"]))], node.name)
    if node.attrs["causal"]:
        scores = _causal(b, node, [scores])
    if len(args) == 4:
        scores = _mask(b, node, [scores, args[3]])
    weights = b.op("Softmax", [scores], node.name, axis=-1)
    return b.op("MatMul", [weights, v], node.name)


def _positions(b: _Builder, node: Node, args: list[str]) -> str:
    d = node.shape[1]
    steps = b.op("Squeeze", [b.op("Shape", [args[0]], node.name, start=1, end=2), b.const([0], np.int64)], node.name)
    pos = b.op("Range", [b.const(0, np.int64), steps, b.const(1, np.int64)], node.name)
    pos = b.op("Unsqueeze", [b.op("Cast", [pos], node.name, to=TensorProto.FLOAT), b.const([1], np.int64)], node.name)
    inv_freq = np.power(10000.0, -np.arange(0, d, 2, dtype=np.float32) / d).astype(np.float32)
    angles = b.op("Mul", [pos, b.const(inv_freq.tolist())], node.name)
    last = b.const([-1], np.int64)
    pair = [b.op("Unsqueeze", [b.op(f, [angles], node.name), last], node.name) for f in ("Sin", "Cos")]
    return b.op("Reshape", [b.op("Concat", pair, node.name, axis=-1), b.const([-1, d], np.int64)], node.name)


def _sequence_mask(b: _Builder, node: Node, args: list[str]) -> str:
    steps = b.op("Squeeze", [b.op("Shape", [args[1]], node.name, start=1, end=2), b.const([0], np.int64)], node.name)
    positions = b.op("Range", [b.const(0, np.int64), steps, b.const(1, np.int64)], node.name)
    row = b.op("Unsqueeze", [positions, b.const([0], np.int64)], node.name)
    lengths = b.op("Unsqueeze", [args[0], b.const([1], np.int64)], node.name)
    if node.attrs.get("only_last"):  # 1.0 at position n-1 only
        at = b.op("Sub", [lengths, b.const([1], np.int64)], node.name)
        return b.op("Cast", [b.op("Equal", [row, at], node.name)], node.name, to=TensorProto.FLOAT)
    return b.op("Cast", [b.op("Less", [row, lengths], node.name)], node.name, to=TensorProto.FLOAT)


def _gelu(b: _Builder, node: Node, args: list[str]) -> str:
    """x Φ(x) = x (1 + erf(x / √2)) / 2: ONNX's Gelu op needs opset 20, Erf is in every opset we write."""
    erf = b.op("Erf", [b.op("Mul", [args[0], b.const(float(np.sqrt(0.5)))], node.name)], node.name)
    half_x = b.op("Mul", [args[0], b.const(0.5)], node.name)
    return b.op("Mul", [half_x, b.op("Add", [erf, b.const(1.0)], node.name)], node.name)


def _silu(b: _Builder, node: Node, args: list[str]) -> str:
    return b.op("Mul", [args[0], b.op("Sigmoid", args, node.name)], node.name)


def _clip(b: _Builder, node: Node, args: list[str]) -> str:
    bounds = [b.const(node.attrs[k]) if node.attrs.get(k) is not None else "" for k in ("min", "max")]
    return b.op("Clip", [args[0], *bounds], node.name)


def _where(b: _Builder, node: Node, args: list[str]) -> str:
    cond = b.op("Cast", [args[0]], node.name, to=TensorProto.BOOL)  # not 0 (NaN included) is true, as torch's != 0
    return b.op("Where", [cond, args[1], args[2]], node.name)


def _select(b: _Builder, node: Node, args: list[str]) -> str:
    keep = b.op("Greater", [args[0], b.const(0.0)], node.name)
    return b.op("Where", [keep, args[1], args[2]], node.name)


ONNX_EMIT: dict[str, Emit] = {
    "add": _simple("Add"),
    "sub": _simple("Sub"),
    "mul": _simple("Mul"),
    "div": _simple("Div"),
    "neg": _simple("Neg"),
    "linear": _linear,
    "matmul": _simple("MatMul"),
    "sigmoid": _simple("Sigmoid"),
    "tanh": _simple("Tanh"),
    "relu": _simple("Relu"),
    "exp": _simple("Exp"),
    "log": _simple("Log"),
    "abs": _simple("Abs"),
    "gelu": _gelu,
    "silu": _silu,
    "softplus": _simple("Softplus"),
    "elu": lambda b, n, a: b.op("Elu", a, n.name, alpha=n.attrs["alpha"]),
    "leaky_relu": lambda b, n, a: b.op("LeakyRelu", a, n.name, alpha=n.attrs["negative_slope"]),
    "min": _simple("Min"),
    "max": _simple("Max"),
    "clamp": _clip,
    "where": _where,
    "softmax": _simple("Softmax", axis=-1),
    "log_softmax": _simple("LogSoftmax", axis=-1),
    "concat": _simple("Concat", axis=-1),
    "embedding": lambda b, n, a: b.op("Gather", [a[0], a[1]], n.name, axis=0),
    "contract": _contract,
    "matvec": _matvec,
    "sqrt": _simple("Sqrt"),
    "transpose": _transpose,
    "unsqueeze": _axes_op("Unsqueeze"),
    "squeeze": _axes_op("Squeeze"),
    "sum": _axes_op("ReduceSum", keepdims=0),
    "mean": lambda b, n, a: b.op("ReduceMean", a, n.name, axes=[n.attrs["axis"]], keepdims=0),  # axes: attribute < 18
    "argmax": _simple("ArgMax", axis=-1, keepdims=0),
    "layer_norm": lambda b, n, a: b.op("LayerNormalization", a, n.name, axis=-1, epsilon=1e-5),
    "dropout": _simple("Identity"),  # inference graph: dropout is the identity
    "split_heads": _split_heads,
    "merge_heads": _merge_heads,
    "causal": _causal,
    "mask": _mask,
    "positional_encoding": _positions,
    "last": _time_index(-1),
    "first": _time_index(0),
    "slice": _slice,
    "zeros": _zeros,
    "expand_batch": _expand_batch,
    "time_slice": _time_index(0),
    "sequence_mask": _sequence_mask,
    "select": _select,
    "stack": _stack,
    "attention": _attention,
}


@dataclass(frozen=True)
class OnnxCell:
    """How ONNX's op for a cell family takes its weights: spec parameters stacked in ONNX's gate order (W, R, the
    bias B = [Wb ; Rb], the LSTM's peepholes P = [p_i ; p_o ; p_f]). A name the cell node does not have (rb None,
    the forget gate of a coupled LSTM, ...) is zeros; a cell without bias has no B."""

    op: str
    states: tuple[str, ...]
    w: tuple[str, ...]
    r: tuple[str, ...]
    wb: tuple[str, ...]
    rb: tuple[str, ...] | None
    attrs: tuple[tuple[str, int], ...] = ()
    p: tuple[str, ...] = ()


ONNX_CELLS: dict[str, OnnxCell] = {
    "rnn": OnnxCell("RNN", ("h",), ("W",), ("U",), ("b",), None),
    "lstm": OnnxCell("LSTM", ("h", "c"), ("W_i", "W_o", "W_f", "W_c"), ("U_i", "U_o", "U_f", "U_c"),
                     ("b_i", "b_o", "b_f", "b_c"), None, p=("p_i", "p_o", "p_f")),
    "gru": OnnxCell("GRU", ("h",), ("W_z", "W_r", "W_h"), ("U_z", "U_r", "U_h"), ("b_z", "b_r", "b_h"), None,
                    (("linear_before_reset", 0),)),
    "gru_torch": OnnxCell("GRU", ("h",), ("W_z", "W_r", "W_n"), ("U_z", "U_r", "U_n"), ("b_iz", "b_ir", "b_in"),
                          ("b_hz", "b_hr", "b_hn"), (("linear_before_reset", 1),)),
}

#: a slot's function (seqdsl op) as the ONNX recurrent ops name it; the op's number, where it has one, is alpha
ONNX_ACTIVATIONS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "softplus": "Softplus",
                    "leaky_relu": "LeakyRelu", "elu": "Elu"}
DEFAULT_ACTIVATIONS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}


def _activation_attrs(op: str, activations: list[tuple[str, float | None]]) -> dict[str, list]:
    """The ``activations`` (and ``activation_alpha``) attributes, left out where they are the op's defaults.
    The alphas are consumed in slot order by the functions that take one (as onnxruntime reads them)."""
    names = [ONNX_ACTIVATIONS[a] for a, _ in activations]
    if names == DEFAULT_ACTIVATIONS[op]:
        return {}
    alphas = [float(alpha) for _, alpha in activations if alpha is not None]
    return {"activations": names, **({"activation_alpha": alphas} if alphas else {})}


def _emit_cell(b: _Builder, node: Node, graph: Graph) -> None:
    """A recognised cell as ONNX's own RNN/LSTM/GRU op (time-major inside, batch-first outside)."""
    layout = ONNX_CELLS[node.attrs["cell"]]
    x, *rest = [b.values[i] for i in node.inputs]
    n_states = len(layout.states)
    states, weights = rest[:n_states], dict(zip(node.attrs["params"], rest[n_states:]))
    hidden, d = node.attrs["hidden"], graph[node.inputs[0]].shape[-1]
    first = b.const([0], np.int64)

    def part(name: str | None, shape: tuple[int, ...]) -> str:
        if name in weights:
            return weights[name]
        key = ("zeros", shape)  # a gate the cell does not have (a coupled forget gate, a bias it has one of)
        if key not in b.root.cache:
            b.root.cache[key] = b.initializer(b.root.name("zeros"), np.zeros(shape, np.float32))
        return b.root.cache[key]

    def stacked(names: tuple[str | None, ...], shape: tuple[int, ...]) -> str:
        parts = [part(n, shape) for n in names]
        joined = b.op("Concat", parts, node.name, axis=0) if len(parts) > 1 else parts[0]
        return b.op("Unsqueeze", [joined, first], node.name)

    bias = ""
    if node.attrs["bias"]:
        bias = stacked(layout.wb + (layout.rb or (None,) * len(layout.wb)), (hidden,))
    peepholes = [stacked(layout.p, (hidden,))] if node.attrs.get("peephole") else []
    time_major = b.op("Transpose", [x], node.name, perm=[1, 0, 2])
    inits = [b.op("Unsqueeze", [s, first], node.name) for s in states]
    outs = [b.name(f"{node.name}_Y"), *(b.name(f"{node.name}_{s}_n") for s in layout.states)]
    extra = dict(layout.attrs)
    if node.attrs.get("input_forget"):
        extra["input_forget"] = 1
    b.nodes.append(helper.make_node(
        layout.op, [time_major, stacked(layout.w, (hidden, d)), stacked(layout.r, (hidden, hidden)), bias, "",
                    *inits, *peepholes], outs,
        name=f"{node.name}:{layout.op}", hidden_size=hidden,
        direction="reverse" if node.attrs["reverse"] else "forward",
        **_activation_attrs(layout.op, node.attrs["activations"]), **extra))
    y = b.op("Transpose", [b.op("Squeeze", [outs[0], b.const([1], np.int64)], node.name)], node.name, perm=[1, 0, 2])
    value = {"y": lambda: y, "y_last": lambda: b.op("Gather", [y, b.const(-1, np.int64)], node.name, axis=1),
             **{f"{s}_n": (lambda o=o: b.op("Squeeze", [o, first], node.name)) for s, o in zip(layout.states, outs[1:])}}
    for item in (n for n in graph if n.op == "item" and n.inputs == [node.name]):
        b.values[item.name] = value[node.attrs["returns"][item.attrs["index"]]]()


def _value_info(name: str, node: Node) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, DTYPES[node.dtype], list(node.shape))


def _emit_graph(b: _Builder, graph: Graph, outer: dict[str, str] | None = None, read: set[str] | None = None) -> None:
    """Emit every node of ``graph``; ``outer`` maps capture indices to outer-scope value names; ``read`` names the
    nodes the enclosing loop reads (its updates and returns)."""
    b.graph = graph
    read = {i for n in graph for i in n.inputs} | set(graph.outputs.values()) | (read or set())
    for node in graph:
        if node.op == "param":
            b.values[node.name] = node.attrs["name"]
            b.root.params.add(node.attrs["name"])  # a top-level value: Wᵀ of it is computed once, outside loops
        elif node.op == "const":
            if node.name in read:  # constants the lowering folded into others are no initializers
                b.values[node.name] = b.const(node.attrs["value"])
        elif node.op == "input":
            b.values[node.name] = node.name
        elif node.op in ("state", "step_input"):
            b.values[node.name] = f"{b.scope}{node.name}"
        elif node.op == "capture":
            assert outer is not None
            b.values[node.name] = outer[node.attrs["index"]]
        elif node.op == "loop":
            _emit_scan(b, node, graph)
        elif node.op == "cell":
            _emit_cell(b, node, graph)
        elif node.op == "item":
            pass  # bound by _emit_scan
        else:
            emit = ONNX_EMIT.get(node.op)
            if emit is None:
                raise KeyError(f"op `{node.op}` has no entry in seqdsl.compilers.onnx_export.ONNX_EMIT")
            b.values[node.name] = emit(b, node, [b.values[i] for i in node.inputs])


def _emit_scan(b: _Builder, node: Node, graph: Graph) -> None:
    loop = loop_of(node)
    body = loop.body
    scope = f"{b.scope}{node.name}/"
    inner = _Builder(b.root, scope)
    args = [b.values[i] for i in node.inputs]
    n_s, n_q = loop.n_states, loop.n_sequences
    captures = {i: args[n_s + n_q + i] for i in range(loop.n_captures)}
    _emit_graph(inner, body, captures, set(loop.updates) | {r.node for r in loop.returns})
    _slices_to_split(inner, body)
    states = sorted((n for n in body if n.op == "state"), key=lambda n: n.attrs["index"])
    seqs = sorted((n for n in body if n.op == "step_input"), key=lambda n: n.attrs["index"])
    body_inputs = [_value_info(inner.values[n.name], n) for n in states + seqs]
    # ONNX wants distinct output names, each made in the body: an Identity only where a value is output twice
    # (h: the new state and the step's output) or is not made by a body node (a state passed on unchanged)
    made = {o for n in inner.nodes for o in n.output}
    used: set[str] = set()

    def output_of(value: str, base: str) -> str:
        if value in made and value not in used:
            used.add(value)
            return value
        return inner.op("Identity", [value], base)

    body_outputs, scanned = [], []
    for i, upd in enumerate(loop.updates):
        body_outputs.append(_value_info(output_of(inner.values[upd], f"state_out{i}"), body[upd]))
    def from_final_state(r: LoopOutput) -> bool:
        return r.kind != "all" and r.node in loop.updates and (r.kind == "final" or not loop.reverse)

    for r in loop.returns:
        if not from_final_state(r):
            out = output_of(inner.values[r.node], f"step_out{len(scanned)}")
            body_outputs.append(_value_info(out, body[r.node]))
            scanned.append(r)
    finals = [b.name(f"{node.name}_final{i}") for i in range(n_s)]
    stacked = [b.name(f"{node.name}_steps{i}") for i in range(len(scanned))]
    if loop.steps is None:
        g = helper.make_graph(inner.nodes, f"{node.name}_step", body_inputs, body_outputs)
        direction = [1 if loop.reverse else 0]
        sequences = [_time_major(b, graph, name) for name in node.inputs[n_s:n_s + n_q]]
        args[n_s:n_s + n_q] = [value for value, _ in sequences]
        scan_attrs: dict[str, object] = {"scan_input_axes": [axis for _, axis in sequences],
                                         "scan_input_directions": direction * n_q}
        if scanned:  # onnx.helper cannot type an empty list attribute
            scan_attrs.update(scan_output_axes=[1] * len(scanned), scan_output_directions=direction * len(scanned))
        b.nodes.append(helper.make_node("Scan", args[: n_s + n_q], finals + stacked, name=f"{scope}Scan", body=g,
                                        num_scan_inputs=n_q, **scan_attrs))
    else:  # no sequence to scan: a Loop of fixed trip count; its per-step outputs stack on axis 0
        step_name, cond_name = inner.name("step"), inner.name("cond")
        step_no = helper.make_tensor_value_info(step_name, TensorProto.INT64, [])
        cond_in = helper.make_tensor_value_info(cond_name, TensorProto.BOOL, [])
        carried_in, carried_out, init = [], [], []
        if loop.stop is None:
            cond_out = inner.op("Identity", [cond_name], "cond_out")
        else:  # `done` rides along as one more carried value; the loop goes on while some row is not done
            done_in = inner.name("done")
            hit = inner.op("Equal", [inner.values[loop.stop[0]], b.const(loop.stop[1], np.int64)], "hit")
            done = inner.op("Or", [done_in, hit], "done_out")
            all_done = inner.op("ReduceMin", [inner.op("Cast", [done], "done_int", to=TensorProto.INT64)], "all_done",
                                keepdims=0)
            cond_out = inner.op("Not", [inner.op("Cast", [all_done], "all_done_bool", to=TensorProto.BOOL)], "cond_out")
            carried_in = [helper.make_tensor_value_info(done_in, TensorProto.BOOL, ["B"])]
            carried_out = [helper.make_tensor_value_info(done, TensorProto.BOOL, ["B"])]
            batch = b.op("Shape", [args[0]], f"{node.name}_batch", start=0, end=1)
            init = [b.op("ConstantOfShape", [batch], f"{node.name}_not_done",
                         value=helper.make_tensor("false", TensorProto.BOOL, [1], [False]))]
        g = helper.make_graph(inner.nodes, f"{node.name}_step", [step_no, cond_in, *body_inputs, *carried_in],
                              [helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []),
                               *body_outputs[:n_s], *carried_out, *body_outputs[n_s:]])
        time_first = [b.name(f"{node.name}_steps_time_first{i}") for i in range(len(scanned))]
        done_final = [b.name(f"{node.name}_done")] if loop.stop is not None else []
        b.nodes.append(helper.make_node("Loop", [b.const(loop.steps, np.int64), b.const(True, np.bool_),
                                                 *args[:n_s], *init],
                                        finals + done_final + time_first, name=f"{scope}Loop", body=g))
        for out, tf, r in zip(stacked, time_first, scanned):
            rank = len(body[r.node].shape) + 1
            b.op("Transpose", [tf], out, out=out, perm=[1, 0, *range(2, rank)])
    for item in (n for n in graph if n.op == "item" and n.inputs == [node.name]):
        r = loop.returns[item.attrs["index"]]
        if from_final_state(r):
            value = finals[loop.updates.index(r.node)]
        elif r.kind == "all":
            value = stacked[scanned.index(r)]
        else:  # read one position off the stacked steps (kept in time order, also when reversed)
            at = 0 if (r.kind == "final" and loop.reverse) else -1
            value = b.op("Gather", [stacked[scanned.index(r)], b.const(at, np.int64)], item.name, axis=1)
        b.values[item.name] = value


def _slices_to_split(inner: _Builder, body: Graph) -> None:
    """Slices of one body value along its last axis that cover all of it (an LSTM's four gates) become one
    ``Split``: one node per step instead of one per slice."""
    consts = {name: numpy_helper.to_array(t) for name, t in inner.root.initializers.items() if "#" in name}
    shape_of = {value: body[ir].shape for ir, value in inner.values.items() if ir in body.nodes}
    groups: dict[str, list[tuple[int, int, onnx.NodeProto]]] = {}
    for n in inner.nodes:
        if n.op_type == "Slice" and len(n.input) == 4 and all(i in consts for i in n.input[1:]):
            start, stop, axis = (int(consts[i].reshape(-1)[0]) for i in n.input[1:])
            shape = shape_of.get(n.input[0])
            if shape and axis in (-1, len(shape) - 1) and isinstance(shape[-1], int):
                groups.setdefault(n.input[0], []).append((start, stop, n))
    for value, parts in groups.items():
        parts.sort(key=lambda p: p[:2])
        width = shape_of[value][-1]
        if len(parts) < 2 or parts[0][0] != 0 or parts[-1][1] != width or any(
                a[1] != c[0] for a, c in zip(parts, parts[1:])):
            continue
        sizes = inner.const([stop - start for start, stop, _ in parts], np.int64)
        first = min(inner.nodes.index(p[2]) for p in parts)
        split = helper.make_node("Split", [value, sizes], [p[2].output[0] for p in parts],
                                 name=f"{parts[0][2].output[0]}:Split", axis=-1)
        drop = {id(p[2]) for p in parts}
        kept = [n for n in inner.nodes if id(n) not in drop]
        kept.insert(sum(1 for n in inner.nodes[:first] if id(n) not in drop), split)
        inner.nodes = kept


#: ONNX ops that act on the trailing axes only: a chain of them computes the same on a time-major input.
_TRAILING = {"MatMul", "Add", "Sub", "Mul", "Sigmoid", "Tanh", "Relu"}


def _time_major(b: _Builder, graph: Graph, name: str) -> tuple[str, int]:
    """A sequence for a Scan, and the axis it scans: a sequence (B, T, k) computed from a smaller (B, T, d) one by
    a chain of trailing-axis ops read by nothing else (an input projection ``x Wᵀ + b``) is computed again on the
    transposed (T, B, d) input, so that onnxruntime scans axis 0 and never transposes the wide (B, T, k)."""
    value = b.values[name]
    producers = {o: n for n in b.nodes for o in n.output}
    readers: dict[str, int] = {}
    for n in b.nodes:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    ir_users = graph.users().get(name, [])
    fixed = {b.values[n.name] for n in graph if n.op in ("param", "const") and n.name in b.values}

    def batchless(v: str) -> bool:  # a weight, a constant, or computed from those only (Wᵀ, a concatenation)
        return v in fixed or v in b.root.initializers or v in producers and all(map(batchless, producers[v].input))

    chain, at = [], value
    while at in producers and producers[at].op_type in _TRAILING and readers.get(at, 0) == (1 if chain else 0):
        n = producers[at]
        dynamic = [i for i in n.input if not batchless(i)]
        if len(dynamic) != 1:
            break
        chain.append(n)
        at = dynamic[0]
    ir_of = {v: k for k, v in b.values.items()}
    root = graph.nodes.get(ir_of.get(at, ""))
    node = graph[name]
    if (not chain or len(ir_users) != 1 or root is None or len(root.shape) != 3 or len(node.shape) != 3
            or not isinstance(root.shape[2], int) or not isinstance(node.shape[2], int)
            or root.shape[2] > node.shape[2] or not any(n.op_type == "MatMul" for n in chain)):
        return value, 1
    new = b.op("Transpose", [at], f"{name}_time_major", perm=[1, 0, 2])
    for n in reversed(chain):  # the chain again, from the transposed root; the old one is left unread (pruned)
        inputs = [new if i == at else i for i in n.input]
        at = n.output[0]
        new = b.op(n.op_type, inputs, f"{name}_time_major", **{a.name: helper.get_attribute_value(a)
                                                                for a in n.attribute})
    return new, 0


def _prune(nodes: list[onnx.NodeProto], keep: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` without those whose outputs nothing reads (what `_time_major` left behind)."""
    while True:
        read = _names_read(nodes) | keep
        alive = [n for n in nodes if any(o in read for o in n.output)]
        if len(alive) == len(nodes):
            return nodes
        nodes = alive


def export(model: Model, opset: int | None = None, ir_version: int | None = None,
           optimize: bool = True, native_cells: bool | Collection[str] = True) -> onnx.ModelProto:
    """An ONNX model computing ``model``; inputs and outputs carry the spec's names, B and T are symbolic.

    ``optimize`` runs seqdsl's default passes first (fusion, hoisting); ``native_cells`` turns blocks that are a
    standard cell into ONNX's own LSTM / GRU / RNN op, the rest into Scan / Loop; given as loop names
    (``{"enc.loop"}``, see `seqdsl.compilers.onnx_form`), only those blocks."""
    from seqdsl.passes import optimize as run_passes
    from seqdsl.passes import recognize

    from . import sequence_lengths
    from .onnx_runtime import target_versions
    from .onnx_scan import fuse_steps

    bounds = sequence_lengths.bounded_by(model)  # read before the passes rewrite the masks
    if optimize:
        if native_cells:
            blocks = None if native_cells is True else frozenset(native_cells)
            model, _ = recognize(model, frozenset(ONNX_CELLS), blocks)
        model = fuse_steps(run_passes(model))
    max_ir, max_opset = target_versions()
    opset = min(opset or OPSET, max_opset)
    b = _Builder()
    _emit_graph(b, model.graph)
    for p in model.params.values():  # placeholders, filled by set_weights; one that no node reads is dropped below
        b.initializer(p.name, np.zeros(p.shape, dtype=np.float32))
    g = model.graph
    outputs = []
    for out, ref in g.outputs.items():
        value = b.values[ref]
        if value != out:
            b.op("Identity", [value], out, out=out)
        outputs.append(_value_info(out, g[ref]))
    inputs = [_value_info(n.name, n) for n in model.input_nodes()]
    b.nodes = _prune(b.nodes, {o.name for o in outputs})
    read = _names_read(b.nodes) | {o.name for o in outputs}
    unread_params = sorted(p.name for p in model.params.values() if p.name not in read)
    initializers = [t for name, t in b.initializers.items() if name in read]
    graph = helper.make_graph(b.nodes, model.name, inputs, outputs, initializer=initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="seqdsl", producer_version=__version__)
    proto.ir_version = min(ir_version or max_ir, max_ir, onnx.IR_VERSION)
    _describe(proto, model, unread_params)
    if bounds:  # what `seqdsl run` checks a `lengths:` input against
        onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                            sequence_lengths.METADATA_KEY: sequence_lengths.to_metadata(bounds)})
    return proto


def _names_read(nodes: Iterable[onnx.NodeProto]) -> set[str]:
    """Every value name that ``nodes`` or the subgraphs inside them (Scan and Loop bodies) read."""
    read: set[str] = set()
    for node in nodes:
        read.update(i for i in node.input if i)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                read |= _names_read(sub.node) | {o.name for o in sub.output}
    return read


#: metadata key listing parameters that no node reads (a spec may declare one it does not use): they are not
#: written as initializers (onnxruntime would warn on every load), and `set_weights` accepts weights for them.
UNREAD_PARAMETERS = "seqdsl.unread_parameters"


def _describe(proto: onnx.ModelProto, model: Model, unread_params: list[str]) -> None:
    """What a reader of the file (Netron, onnx's printer, a model registry) should know: the spec's name, file
    and `doc:`, each through `seqdsl.text.plain_text` (spec text is untrusted)."""
    from pathlib import Path

    from seqdsl.text import plain_text

    source = Path(model.source).name if model.source and not model.source.startswith("<") else ""
    summary = f"{model.name}: generated by seqdsl {__version__}" + (f" from {source}" if source else "")
    doc = plain_text(model.doc) if model.doc else ""
    proto.doc_string = plain_text(summary)
    proto.graph.doc_string = doc or proto.doc_string
    meta = {"seqdsl.spec": model.name, "seqdsl.sizes": ", ".join(f"{k}={v}" for k, v in model.sizes.items())}
    if source:
        meta["seqdsl.spec_file"] = plain_text(source, 255)
        digest = model.sources.get(model.source)
        if digest:
            meta["seqdsl.spec_sha256"] = digest
    if unread_params:
        meta[UNREAD_PARAMETERS] = ",".join(unread_params)
    onnx.helper.set_model_props(proto, meta)


def set_weights(proto: onnx.ModelProto, weights: dict[str, np.ndarray]) -> None:
    """Fill the parameter initializers with trained values; every parameter, by its spec name, exactly once
    (a parameter that no node reads has no initializer: its weight is accepted and not stored)."""
    params = {i.name: i for i in proto.graph.initializer if "#" not in i.name}
    unread = next((p.value.split(",") for p in proto.metadata_props if p.key == UNREAD_PARAMETERS), [])
    unknown = sorted(set(weights) - set(params) - set(unread))
    missing = sorted(set(params) - set(weights))
    if unknown or missing:
        raise KeyError(f"weights do not match the model's parameters: unknown {unknown}, missing {missing}")
    for name, init in params.items():
        array = np.ascontiguousarray(weights[name], dtype=np.float32)
        if tuple(array.shape) != tuple(init.dims):
            raise ValueError(f"weight `{name}` has shape {tuple(array.shape)}, the model expects {tuple(init.dims)}")
        init.CopyFrom(numpy_helper.from_array(array, name))
