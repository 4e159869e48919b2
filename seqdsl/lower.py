"""Lowering: a validated spec module becomes IR nodes, with every name resolved and every shape inferred.

The work, in order, for one module:
  1. sizes: defaults, then per-build overrides, then size expressions folded to positive integers;
  2. inputs and parameters: shapes resolved (``B`` and ``T`` stay symbolic);
  3. equations: ordered by what they read (networkx); a cycle that does not pass through a delay is an error
     naming the equations on it; each equation's expression becomes nodes, shape-checked as it goes;
  4. a recurrent module becomes one ``loop`` node whose body is the step graph (see `seqdsl.ir`);
  5. a call of another module (``enc: LSTM(x, h=64)``) inlines the callee with its parameters under ``enc.``.
Every mistake becomes a `SpecError` at the file:line:col of the offending (sub-)expression.
"""

from __future__ import annotations

import dataclasses
import heapq
import keyword
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from . import expr as E
from .budget import Budget
from .errors import Location, SpecError, did_you_mean
from .init import resolve as resolve_init
from .ir import Graph, Node, Param, Scope, Shape
from .loader import Document
from .naming import MODULE_ATTRIBUTES, normalize
from .ops import OPS, REQUIRED, USER_FUNCTIONS, ShapeError, fmt, infer
from .schema import GraphModule, RecurrentModule

Module = RecurrentModule | GraphModule
Path = tuple[str | int, ...]
RESERVED = {"B", "T", "t"}
OUTPUT_SELECTORS = {"final", "last"}  # in a recurrent module's outputs
FLOAT32_MAX = 3.4028234663852886e38  # a constant that meets a tensor is a float32 in both backends


@dataclass
class Unit:
    """One spec module in its file, with the path of its definition inside that file's document."""

    module: Module
    doc: Document
    path: Path = ()
    modules: dict[str, "Unit"] = field(default_factory=dict)  # modules this one may call
    # equations parsed (and ordered) once per module, not once per inlined copy: {section or output: ...}
    parsed: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)


def spec_sources(unit: Unit) -> dict[str, str]:
    """The sha256 of every file ``unit`` was read from: its own file first, then each imported one once."""
    found: dict[str, str] = {}
    pending, seen = deque([unit]), {id(unit)}
    while pending:  # each unit once: modules see their earlier siblings, so paths to a unit can be exponential
        u = pending.popleft()
        found.setdefault(u.doc.file, u.doc.sha256)
        for sub in u.modules.values():
            if id(sub) not in seen:
                seen.add(id(sub))
                pending.append(sub)
    return found


def check_overrides(unit: Unit, overrides: Any) -> dict[str, int]:
    """The per-build size overrides (``--set h=128``, ``sizes={"h": 128}``) as checked integers: each names a size
    of the spec and is an integer a size may be (1 to `expr.MAX_SIZE_VALUE`, not a bool, str or float). A mistake
    is a SpecError at the size's declaration, so that the API and the command line refuse alike."""
    if overrides is None:
        return {}
    sizes_loc = unit.doc.loc(unit.path + ("sizes",))
    if not isinstance(overrides, Mapping):
        raise SpecError("E0309", "size overrides must be a mapping of size names to integers", sizes_loc,
                        expected='for example {"h": 128}', found=type(overrides).__name__)
    checked: dict[str, int] = {}
    for key, value in overrides.items():
        if not isinstance(key, str) or key not in unit.module.sizes:
            raise SpecError("E0309", f"`--set {key}=...` names no size of this spec", sizes_loc,
                            expected="one of " + ", ".join(unit.module.sizes) if unit.module.sizes else "no sizes",
                            hint=did_you_mean(key, unit.module.sizes) if isinstance(key, str) else None)
        loc = unit.doc.loc(unit.path + ("sizes", key))
        if type(value) is not int:  # not bool (an int subclass), not 4.0, not "4"
            raise SpecError("E0306", f"size `{key}` must be an integer", loc, expected=f"an integer from 1 to "
                            f"{E.MAX_SIZE_VALUE}", found=f"{value!r} ({type(value).__name__})",
                            hint=f"--set {key}=128, or sizes={{{key!r}: 128}} in Python")
        checked[key] = E.eval_size(value, {}, loc, what=f"size `{key}`")
    return checked


def check_output(node: Node, name: str, loc: Location) -> None:
    """An output is a tensor the model computes or reads: not a number or a size, which has no batch axis and
    which no backend can return as a tensor (E0408)."""
    if node.op == "const":
        raise SpecError("E0408", f"output `{name}` is a constant, not a tensor", loc,
                        expected="a value computed from the inputs and parameters, e.g. `y: h`",
                        found=f"the number {node.attrs['value']:g}",
                        hint="a constant needs no output: whoever reads the model knows it")


class ModuleLowering:
    """Lowers one module instance into ``graph`` (the model's graph, or a loop body for calls inside a step)."""

    def __init__(self, unit: Unit, graph: Graph, params: dict[str, Param], prefix: str,
                 sizes_in: dict[str, int], bound: dict[str, str], budget: Budget, call_loc: Location | None = None,
                 direction: str | None = None, scopes: dict[str, Scope] | None = None, *,
                 recurrent: Callable[[ModuleLowering, dict[str, str]], Any]):
        self.unit, self.mod, self.doc = unit, unit.module, unit.doc
        # what lowers a recurrent module (`seqdsl.recurrence.RecurrentLowering`, which builds on this module)
        self.recurrent = recurrent
        self.budget = budget
        self.scopes = scopes if scopes is not None else {}  # the model's call scopes, shared by every instance
        self.direction = direction  # a caller's override of a recurrent block's direction
        self.graph, self.params, self.prefix = graph, params, prefix
        self.sizes_in, self.bound, self.call_loc = sizes_in, bound, call_loc
        self.sizes: dict[str, int] = {}
        self.input_nodes: list[str] = []
        self.outputs: dict[str, str] = {}

    def loc(self, *path: str | int) -> Location:
        return self.doc.loc(self.unit.path + path)

    def key_loc(self, *path: str | int) -> Location:
        return self.doc.key_loc(self.unit.path + path)

    # --------------------------------------------------------------------------------------- declarations

    def run(self) -> dict[str, str]:
        # the nodes this copy makes for its declarations (inputs, parameters, states, outputs, a loop)
        states = self.mod.recurrent.state if isinstance(self.mod, RecurrentModule) else {}
        self.budget.charge(1 + len(self.mod.inputs) + len(self.mod.params) + len(states) + len(self.mod.outputs),
                           self.call_loc or self.loc())
        self.resolve_sizes()
        inputs = self.declare_inputs()
        self.declare_params()
        for key in self.mod.outputs:
            self.check_name(key, self.key_loc("outputs", key), "output")
        if isinstance(self.mod, RecurrentModule):
            self.outputs = self.recurrent(self, inputs).run()
        else:
            env = Env(self, self.graph)
            env.values.update({k: Value(v) for k, v in inputs.items()})
            equations = {k: (v, ("graph", k)) for k, v in self.mod.graph.items()}
            env.lower_equations(equations)
            self.outputs = {name: env.output(name, text) for name, text in self.mod.outputs.items()}
        if not self.prefix:
            self.graph.outputs = dict(self.outputs)
        return self.outputs

    def resolve_sizes(self) -> None:
        for key, value in self.mod.sizes.items():
            self.check_name(key, self.key_loc("sizes", key), "size")
            if key in self.sizes_in:
                self.sizes[key] = self.sizes_in[key]
                continue
            self.sizes[key] = E.eval_size(value, self.sizes, self.loc("sizes", key), what=f"size `{key}`")

    def resolve_shape(self, dims: list[Any], *path: str | int) -> Shape:
        """Sizes become integers; ``B`` (batch, first) and other upper-case names (time axes such as ``T``
        or ``S``, not declared as sizes) stay symbolic."""
        out: list[int | str] = []
        for i, dim in enumerate(dims):
            if isinstance(dim, str) and normalize(dim).isidentifier():
                dim = normalize(dim)  # a name, read as Python reads identifiers
            symbolic = isinstance(dim, str) and dim.isidentifier() and dim.isupper() and dim not in self.sizes
            if symbolic:
                if (dim == "B") != (i == 0):
                    raise SpecError("E0404", f"axis `{dim}` is in the wrong place", self.loc(*path, i),
                                    expected="the batch axis B first: [B, T, ...]", found=fmt(tuple(dims)))
                out.append(dim)
            else:
                out.append(E.eval_size(dim, self.sizes, self.loc(*path, i), what="a dimension"))
        return tuple(out)

    def declare_inputs(self) -> dict[str, str]:
        nodes: dict[str, str] = {}
        axes: dict[str, Any] = {}  # a callee's symbolic axis -> the caller's axis bound to it (T -> S, say)
        for key, decl in self.mod.inputs.items():
            self.check_name(key, self.key_loc("inputs", key), "input")
            shape = self.resolve_shape(decl.shape, "inputs", key, "shape")
            if self.prefix:  # a call: the caller bound a node to this input
                node = self.graph[self.bound[key]]
                clash = next((a for a, b in zip(shape, node.shape) if isinstance(a, str) and axes.setdefault(a, b) != b),
                             None)
                if node.dtype != decl.dtype or len(node.shape) != len(shape) or clash or any(
                        isinstance(a, int) and a != b for a, b in zip(shape, node.shape)):
                    why = f" (axis {clash} is {axes[clash]} in an earlier argument)" if clash else ""
                    raise SpecError("E0401", f"argument for input `{key}` has the wrong shape{why}",
                                    self.call_loc or self.loc("inputs", key),
                                    expected=f"{decl.dtype}{fmt(shape)}", found=f"{node.dtype}{fmt(node.shape)}",
                                    notes=[(self.loc("inputs", key), f"input `{key}` is declared here")])
                nodes[key] = node.name
            else:
                node = self.graph.add(Node(key, "input", attrs={"shape": shape, "dtype": decl.dtype},
                                           shape=shape, dtype=decl.dtype, loc=self.key_loc("inputs", key)))
                self.input_nodes.append(node.name)
                nodes[key] = node.name
        return nodes

    def declare_params(self) -> None:
        self.param_names: dict[str, str] = {}
        for key, decl in self.mod.params.items():
            names = [n.strip() for n in key.split(",")]
            for name in names:
                self.check_name(name, self.key_loc("params", key), "parameter")
                self.check_attribute(name, self.key_loc("params", key), "parameter")
                if name in self.param_names or name in self.mod.inputs:
                    raise SpecError("E0308", f"`{name}` is declared twice", self.key_loc("params", key))
                shape = self.resolve_shape(decl.shape, "params", key, "shape")
                if any(isinstance(d, str) for d in shape):
                    raise SpecError("E0404", f"parameter `{name}` cannot have a B or T axis", self.loc("params", key),
                                    found=fmt(shape), hint="parameters are shared over the batch and over time")
                full = self.prefix + name
                loc = self.key_loc("params", key)
                blocks = None if decl.blocks is None else E.eval_size(decl.blocks, self.sizes, self.loc("params", key, "blocks"),
                                                                       what="a number of blocks")
                how = resolve_init(decl.init, decl.gain, blocks, shape, name, loc)  # type: ignore[arg-type]
                self.params[full] = Param(full, shape, how.kind, loc,  # type: ignore[arg-type]
                                          gain=how.gain, blocks=how.blocks, value=how.value)
                self.param_names[name] = full

    def check_attribute(self, name: str, loc: Location, what: str) -> None:
        """Parameters, and calls (whose parameters live under the call's name), are attributes of the generated
        nn.Module: they may not replace one of its own."""
        if name in MODULE_ATTRIBUTES:
            raise SpecError("E0310", f"`{name}` cannot name a {what}: it is an attribute of torch.nn.Module and of "
                            "the generated Model", loc, expected="a name that is not one of nn.Module's attributes "
                            "(forward, parameters, state_dict, training, ...) nor reset_parameters",
                            hint=f"rename it, e.g. `{name}_{'w' if what == 'parameter' else 'block'}`")

    def check_name(self, name: str, loc: Location, what: str) -> None:
        if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_") or name in RESERVED \
                or name in USER_FUNCTIONS or name in OUTPUT_SELECTORS or name == "chunk":
            raise SpecError("E0310", f"`{name}` cannot name a {what}", loc,
                            expected="an identifier: letters, digits and `_`, not starting with `_` or a digit, "
                                     "not a Python keyword, a function name, B, T or t",
                            hint="rename it, e.g. `h2` or `hidden`")


_FOLD = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b, "div": lambda a, b: a / b,
    "neg": lambda a: -a, "sqrt": math.sqrt, "exp": math.exp,
    # the functions on numbers alone (`log(2)`, `max(1, 2)`), as their shape rules' docs define them
    "log": math.log, "abs": abs, "min": min, "max": max,
    "gelu": lambda a: a * 0.5 * (1 + math.erf(a / math.sqrt(2))),
    "silu": lambda a: a / (1 + math.exp(-a)),
    "softplus": lambda a: max(a, 0.0) + math.log1p(math.exp(-abs(a))),
    "elu": lambda a, alpha: a if a > 0 else alpha * math.expm1(a),
    "leaky_relu": lambda a, negative_slope: a if a > 0 else negative_slope * a,
    "clamp": lambda a, min=None, max=None: _clamped(a, min, max),
    "where": lambda c, a, b: a if c != 0 else b,
}


def _clamped(value: float, low: float | None, high: float | None) -> float:
    if low is None and high is None:
        raise ValueError("clamp needs a bound: min=, max= or both")
    if low is not None and high is not None and low > high:
        raise ValueError(f"min ({low:g}) is above max ({high:g})")
    return min(max(value, low if low is not None else value), high if high is not None else value)


@dataclass
class Value:
    """What a name in an equation stands for: a node, or a called module's several outputs."""

    node: str | None = None
    members: dict[str, str] | None = None


class Env:
    """Name resolution and expression lowering for one graph (a module's graph or a loop body)."""

    def __init__(self, owner: ModuleLowering, graph: Graph, delays: dict[str, str] | None = None):
        self.owner, self.graph = owner, graph
        self.values: dict[str, Value] = {}
        self.param_nodes: dict[str, str] = {}
        self.delays = delays  # state name -> `state` node, inside a recurrent step
        self.locs: dict[str, Location] = {}
        self.key_locs: dict[str, Location] = {}  # where each equation's name is written

    # ----------------------------------------------------------------------------------------- equations

    def lower_equations(self, equations: dict[str, tuple[str, Path]]) -> None:
        """Lower a set of equations in dependency order; ``equations`` maps target -> (text, spec path)."""
        section = next(iter(equations.values()))[1][0] if equations else ""
        cached = self.owner.unit.parsed.get(section)
        if cached is None:
            cached = self.owner.unit.parsed[section] = self.parse_equations(equations)
        parsed, order = cached
        for key in order:
            expr, base, names = parsed[key]
            self.lower_equation(names, expr, base)

    def parse_equations(self, equations: dict[str, tuple[str, Path]]
                        ) -> tuple[dict[str, tuple[E.Expr, Location, list[str]]], list[str]]:
        """The equations parsed, their names checked, and the order to lower them in (the same for every copy
        of the module, so done once per module)."""
        parsed: dict[str, tuple[E.Expr, Location, list[str]]] = {}
        targets: dict[str, str] = {}
        for key, (text, path) in equations.items():
            names = [n.strip() for n in key.split(",")]
            loc = self.owner.doc.loc(self.owner.unit.path + path)
            offset = self.owner.doc.value_col_offset(self.owner.unit.path + path)
            base = loc.shifted(max(offset, 0)) if offset >= 0 else loc
            for n in names:
                if n == "_" and len(names) > 1:
                    continue  # `_, b: chunk(x, 2)` discards a piece
                self.key_locs[n] = self.owner.doc.key_loc(self.owner.unit.path + path)
                self.owner.check_name(n, self.key_locs[n], "value")
                if n in targets or n in self.values or n in self.owner.param_names:
                    raise SpecError("E0308", f"`{n}` is defined twice", self.owner.doc.key_loc(self.owner.unit.path + path),
                                    hint="each name is defined once per module; rename one of them")
                targets[n] = key
            parsed[key] = (E.parse_equation(text, base), base, names)
        return parsed, self.order(parsed, targets)

    def order(self, parsed: dict[str, tuple[E.Expr, Location, list[str]]], targets: dict[str, str]) -> list[str]:
        """The equations in an order where each comes after what it reads, else as written (Kahn's algorithm with
        a heap: O(n log n) in plain Python; networkx only to name a cycle, on the error path)."""
        index = {key: i for i, key in enumerate(parsed)}
        readers: dict[str, set[str]] = {key: set() for key in parsed}
        for key, (expr, _, _) in parsed.items():
            for ref in self.value_refs(expr):
                name = ref.id if isinstance(ref, E.Name) else ref.base
                if name in targets:
                    readers[targets[name]].add(key)
        waiting = {key: 0 for key in parsed}
        for key in parsed:
            for reader in readers[key]:
                waiting[reader] += 1
        ready = [index[key] for key, n in waiting.items() if n == 0]
        heapq.heapify(ready)
        keys, order = list(parsed), []
        while ready:
            key = keys[heapq.heappop(ready)]
            order.append(key)
            for reader in readers[key]:
                waiting[reader] -= 1
                if not waiting[reader]:
                    heapq.heappush(ready, index[reader])
        if len(order) == len(parsed):
            return order
        raise self.cycle_error(parsed, targets, index, nx.DiGraph([(a, b) for a, bs in readers.items() for b in bs]))

    def cycle_error(self, parsed: dict[str, tuple[E.Expr, Location, list[str]]], targets: dict[str, str],
                    index: dict[str, int], deps: "nx.DiGraph") -> SpecError:
        """E0402 at the read that closes a loop: of the reads inside a cycle, the first (in written order) of a
        value written at or below its reader. Equations are written in the order they compute, so that read is
        the one that wants the previous step's value (`U_c @ h` for `U_c @ h[t-1]`)."""
        def reads(reader: str, key: str) -> list[E.Name | E.Member]:
            return [r for r in self.value_refs(parsed[reader][0])
                    if targets.get(r.id if isinstance(r, E.Name) else r.base) == key]

        looped = [c for c in nx.strongly_connected_components(deps) if len(c) > 1 or deps.has_edge(*[*c] * 2)]
        edges = [(key, reader) for c in looped for key, reader in deps.subgraph(c).edges if reads(reader, key)]
        key, reader = min(edges, key=lambda e: (index[e[0]] < index[e[1]], index[e[1]], index[e[0]]))
        chain = [key, *nx.shortest_path(deps, reader, key)]  # how values flow: the one read, the reader, back
        ref = reads(reader, key)[0]
        name = ref.id if isinstance(ref, E.Name) else ref.base
        found = None
        if self.delays is None:
            hint = "equations outside a recurrent block cannot depend on themselves; use a `recurrent:` module"
        else:
            found = f"`{name}` read without `[t-1]`"
            whose = "this equation's own value" if key == reader else "computed from this equation"
            hint = (f"`{name}` is {whose}: write `{name}[t-1]` for the previous step's value" if name in self.delays
                    else f"`{name}` is {whose}: to read its previous step's value, declare `{name}` under `state:` "
                         f"and write `{name}[t-1]`")
        return SpecError("E0402", "cycle that does not pass through a delay: " + " -> ".join(chain),
                         self.at(parsed[reader][1], ref), found=found, hint=hint,
                         notes=[(parsed[k][1], f"`{k}` is defined here")
                                for k in dict.fromkeys(chain[:-1]) if k != reader])

    def value_refs(self, expr: E.Expr) -> list[E.Name | E.Member]:
        """The names ``expr`` reads as values: keyword arguments that are sizes (`repeat=n`, `h=h`, `axis=k`) are
        not references to equations, even when an equation has the same name."""
        if isinstance(expr, E.Call):
            callee = self.owner.unit.modules.get(expr.func)
            inputs = callee.module.inputs if callee else {}
            kwargs = [v for k, v in expr.kwargs if k in inputs]
            return [r for a in [*expr.args, *kwargs] for r in self.value_refs(a)]
        if isinstance(expr, E.BinOp):
            return self.value_refs(expr.left) + self.value_refs(expr.right)
        if isinstance(expr, E.Neg):
            return self.value_refs(expr.operand)
        return [expr] if isinstance(expr, (E.Name, E.Member)) else []

    def lower_equation(self, names: list[str], expr: E.Expr, base: Location) -> None:
        if len(names) > 1:
            if not (isinstance(expr, E.Call) and expr.func == "chunk"):
                raise SpecError("E0311", "several names on the left need `chunk(x, n)` on the right", base,
                                hint=f"write `{', '.join(names)}: chunk(value, {len(names)})`")
            for name, node in zip(names, self.chunk(expr, base, len(names))):
                if name == "_":
                    del self.graph.nodes[node]  # nothing reads a discarded piece
                    continue
                self.values[name] = Value(self.rename(node, name))
                self.locs[name] = base
            return
        name = names[0]
        if isinstance(expr, E.Call) and expr.func in self.owner.unit.modules:
            self.values[name] = self.call_module(name, expr, base)
            return
        node = self.lower_named(expr, base, name)
        self.values[name] = Value(node)
        self.locs[name] = base

    def lower_named(self, e: E.Expr, base: Location, name: str) -> str:
        """Lower ``e`` and give the node computing it ``name``, if that node is new (not an alias `y: x`)."""
        before = len(self.graph)
        node = self.lower(e, base, eq=name)
        # a node `lower` made is the last one added (its operands come first): O(1), not a scan of the graph
        made = len(self.graph) > before and next(reversed(self.graph.nodes)) == node
        return self.rename(node, name) if made else node

    def rename(self, node: str, name: str) -> str:
        """Give a node just made for an equation the equation's name."""
        full = self.owner.prefix + name
        n = self.graph.nodes.get(node)
        if n is None or node == full or n.op in ("input", "param", "state", "step_input", "capture", "const", "item") \
                or full in self.graph.nodes or n.attrs.get("eq_root"):
            return node  # an alias of an existing value: `y: x` names the same node
        # nothing reads a node just made yet, so it may move to the end under its new name (O(1)); the nodes
        # renamed after one equation (chunk's pieces) are renamed in order and so keep theirs
        del self.graph.nodes[node]
        n.name = full
        self.graph.nodes[full] = n
        n.attrs["eq_root"] = True
        return full

    def output(self, name: str, text: str) -> str:
        loc = self.owner.loc("outputs", name)
        expr = self.owner.unit.parsed.get(("outputs", name))
        if expr is None:  # parsed once per module, as the equations are
            offset = max(self.owner.doc.value_col_offset(self.owner.unit.path + ("outputs", name)), 0)
            expr = self.owner.unit.parsed[("outputs", name)] = E.parse_equation(text, loc.shifted(offset))
        node = self.lower(expr, loc, eq=name)
        check_output(self.graph[node], name, loc)
        return node

    # ----------------------------------------------------------------------------------------- expressions

    def at(self, base: Location, e: Any) -> Location:
        return base.shifted(e.col, e.length)

    def add(self, op: str, inputs: list[str], base: Location, e: Any, eq: str | None = None,
            **attrs: Any) -> str:
        loc = self.at(base, e)
        if op in _FOLD and inputs and all(self.graph[i].op == "const" for i in inputs):
            return self.fold(op, inputs, loc, attrs)
        for i in inputs:  # folding is exact (float64); a constant that meets a tensor is a float32
            if self.graph[i].op == "const" and abs(self.graph[i].attrs["value"]) > FLOAT32_MAX:
                value = self.graph[i].attrs["value"]
                raise SpecError("E0403", f"this constant overflows float32: it is {value:.6g}", self.graph[i].loc,
                                expected=f"at most {FLOAT32_MAX:.4g} in magnitude (the tensors are float32)",
                                hint="check the number or the arithmetic on it")
        shapes = [self.graph[i].shape for i in inputs]
        dtypes = [self.graph[i].dtype for i in inputs]
        try:
            shape, dtype = infer(op, shapes, dtypes, attrs)
        except ShapeError as err:
            notes = [(self.graph[i].loc, f"`{self.pretty(i)}` has shape {fmt(self.graph[i].shape)}")
                     for i in inputs if self.graph[i].loc.line]
            raise SpecError("E0403", err.message, loc, expected=err.expected, found=err.found, hint=err.hint,
                            notes=notes[:3]) from None
        self.owner.budget.charge(1, loc)
        name = self.graph.fresh(self.owner.prefix + (f"{eq}_{op}" if eq else op))
        self.graph.add(Node(name, op, inputs, attrs, shape, dtype, loc))
        return name

    def fold(self, op: str, inputs: list[str], loc: Location, attrs: dict[str, Any] | None = None) -> str:
        """Arithmetic on numbers and sizes (``1 / sqrt(d_k)``) is done here, once, not at every step."""
        values = [self.graph[i].attrs["value"] for i in inputs]
        try:
            value = _FOLD[op](*values, **(attrs or {}))
        except (ZeroDivisionError, ValueError, OverflowError) as exc:
            raise SpecError("E0403", f"cannot compute `{op}` of {values}: {exc}", loc) from None
        return self.const(value, loc)

    def pretty(self, node: str) -> str:
        return node.removeprefix(self.owner.prefix)

    def const(self, value: float, loc: Location) -> str:
        if not math.isfinite(value):
            raise SpecError("E0403", f"this constant is not a finite number: it computes to {value}", loc,
                            expected="a finite number", hint="check the number or the arithmetic on it")
        self.owner.budget.charge(1, loc)
        name = self.graph.fresh(self.owner.prefix + "const")
        self.graph.add(Node(name, "const", attrs={"value": float(value)}, shape=(), loc=loc))
        return name

    def lower(self, e: E.Expr, base: Location, eq: str | None = None) -> str:
        if isinstance(e, E.Number):
            return self.const(e.value, self.at(base, e))
        if isinstance(e, E.Name):
            return self.resolve(e, base)
        if isinstance(e, E.Delay):
            if self.delays is None:
                raise SpecError("E0305", f"`{e.id}[t-1]` is only meaningful inside a recurrent step", self.at(base, e),
                                hint="put this equation under `recurrent: step:`")
            if e.id not in self.delays:
                raise SpecError("E0312", f"`{e.id}` is not a state, so it has no previous value", self.at(base, e),
                                expected="one of the states: " + ", ".join(self.delays),
                                hint=did_you_mean(e.id, self.delays) or f"declare `{e.id}` under `state:`")
            return self.delays[e.id]
        if isinstance(e, E.Member):
            value = self.values.get(e.base)
            if value is None or value.members is None:
                raise SpecError("E0301", f"`{e.base}` is not a module call, so `.{e.attr}` means nothing",
                                self.at(base, e), hint=did_you_mean(e.base, self.values))
            if e.attr not in value.members:
                raise SpecError("E0301", f"`{e.base}` has no output `{e.attr}`", self.at(base, e),
                                expected="one of " + ", ".join(value.members),
                                hint=did_you_mean(e.attr, value.members))
            return value.members[e.attr]
        if isinstance(e, E.Neg):
            return self.add("neg", [self.lower(e.operand, base, eq)], base, e, eq)
        if isinstance(e, E.BinOp):
            left, right = self.lower(e.left, base, eq), self.lower(e.right, base, eq)
            if e.op == "@":
                return self.add(*self.product(left, right), base, e, eq)
            op = {"+": "add", "-": "sub", "*": "mul", "/": "div"}[e.op]
            return self.add(op, [left, right], base, e, eq)
        assert isinstance(e, E.Call)
        return self.call(e, base, eq)

    def product(self, left: str, right: str) -> tuple[str, list[str]]:
        """Which op `left @ right` is: the paper's W x for a weight W, else a batched product of values."""
        a, b = self.graph[left], self.graph[right]
        if a.op == "param" and len(a.shape) == 2:
            return "linear", [right, left]  # W (m, n) @ x (..., n)
        if a.op == "param" and len(a.shape) == 3:
            return "contract", [right, left]  # U (m, n, d) @ z (..., d): a hypernetwork's W(z)
        if len(a.shape) == len(b.shape) + 1 or (len(b.shape) == 1 and len(a.shape) > 1):
            return "matvec", [left, right]  # A (..., m, n) @ v (..., n), or a vector v (n): vᵀ applied to each row
        return "matmul", [left, right]

    def resolve(self, e: E.Name, base: Location) -> str:
        value = self.values.get(e.id)
        if value is not None:
            if value.node is None:
                raise SpecError("E0301", f"`{e.id}` is a module call with several outputs", self.at(base, e),
                                hint="pick one: " + ", ".join(f"`{e.id}.{m}`" for m in value.members or {}))
            return value.node
        if e.id in self.owner.param_names:
            full = self.owner.param_names[e.id]
            if full not in self.param_nodes:
                self.owner.budget.charge(1, self.at(base, e))
                p = self.owner.params[full]
                node = Node(self.graph.fresh(full), "param", attrs={"name": full, "shape": p.shape},
                            shape=p.shape, loc=p.loc)
                self.param_nodes[full] = self.graph.add(node).name
            return self.param_nodes[full]
        if e.id in self.owner.sizes:
            return self.const(self.owner.sizes[e.id], self.at(base, e))
        if self.delays is not None and e.id in self.delays:
            raise SpecError("E0301", f"`{e.id}` is a state but no equation in the step computes it", self.at(base, e),
                            hint=f"use `{e.id}[t-1]` for its previous value, and add an equation `{e.id}: ...`")
        known = list(self.values) + list(self.owner.param_names) + list(self.owner.sizes)
        raise SpecError("E0301", f"unknown name `{e.id}`", self.at(base, e),
                        expected="an input, parameter, size or equation of this module",
                        hint=did_you_mean(e.id, known) or "declare it under `inputs:`, `params:` or `sizes:`, "
                                                           "or define it with an equation")

    def call(self, e: E.Call, base: Location, eq: str | None) -> str:
        if e.func == "chunk":
            raise SpecError("E0311", "`chunk` returns several values; name them on the left", self.at(base, e),
                            hint="write `a, b: chunk(x, 2)`")
        if e.func in self.owner.unit.modules:
            raise SpecError("E0313", f"a module call must be a whole equation: `name: {e.func}(...)`", self.at(base, e))
        if e.func not in USER_FUNCTIONS:
            known = sorted(USER_FUNCTIONS | set(self.owner.unit.modules) | {"chunk"})
            raise SpecError("E0314", f"unknown function `{e.func}`", self.at(base, e),
                            expected="one of " + ", ".join(known), hint=did_you_mean(e.func, known))
        opdef = OPS[e.func]
        n_tensors = opdef.arity[1] if opdef.arity[1] >= 0 else len(e.args)
        given = dict(zip((a.name for a in opdef.attrs), e.args[n_tensors:]))
        if len(e.args) > n_tensors + len(opdef.attrs):
            raise SpecError("E0315", f"`{e.func}` takes at most {n_tensors + len(opdef.attrs)} arguments",
                            self.at(base, e), hint=opdef.doc)
        for key, value in e.kwargs:
            if key not in {a.name for a in opdef.attrs} or key in given:
                raise SpecError("E0315", f"`{e.func}` takes no argument `{key}`" if key not in given
                                else f"`{key}` is given twice", self.at(base, value), hint=opdef.doc)
            given[key] = value
        attrs: dict[str, Any] = {}
        for attr in opdef.attrs:
            if attr.name in given:
                value = self.number_arg(given[attr.name], base, attr.kind)
                problem = attr.problem(value)
                if problem:
                    raise SpecError("E0315", f"{problem} in `{e.func}`", self.at(base, given[attr.name]),
                                    expected=f"{attr.kind.__name__} in {attr.range()}", found=repr(value),
                                    hint=opdef.doc)
                attrs[attr.name] = value
            elif attr.default is REQUIRED:
                raise SpecError("E0315", f"`{e.func}` needs the argument `{attr.name}`", self.at(base, e),
                                hint=opdef.doc)
            else:
                attrs[attr.name] = attr.default
        args = [self.lower(a, base, eq) for a in e.args[:n_tensors]]
        return self.add(e.func, args, base, e, eq, **attrs)

    def number_arg(self, value: E.Expr, base: Location, kind: type) -> Any:
        if kind is int:
            return self.int_arg(value, base)
        number = -value.operand.value if isinstance(value, E.Neg) and isinstance(value.operand, E.Number) else (
            value.value if isinstance(value, E.Number) else None)
        if number is None:
            raise SpecError("E0315", "expected a number here", self.at(base, value))
        return float(number)

    def int_arg(self, value: E.Expr, base: Location) -> int:
        if isinstance(value, E.Neg) and isinstance(value.operand, E.Number):
            number: Any = -value.operand.value
        elif isinstance(value, E.Number):
            number = value.value
        elif isinstance(value, E.Name) and value.id in self.owner.sizes:
            number = self.owner.sizes[value.id]
        else:
            number = None
        if not isinstance(number, int):
            raise SpecError("E0315", "expected an integer here", self.at(base, value))
        return number

    def chunk(self, e: E.Call, base: Location, n_targets: int) -> list[str]:
        if len(e.args) != 2:
            raise SpecError("E0311", "`chunk` takes a value and a count: `chunk(x, n)`", self.at(base, e))
        count = self.int_arg(e.args[1], base)
        if count != n_targets:
            raise SpecError("E0311", f"`chunk(x, {count})` gives {count} values but {n_targets} names are on the left",
                            self.at(base, e))
        x = self.lower(e.args[0], base)
        axis = -1
        width = self.graph[x].shape[axis] if self.graph[x].shape else None
        if not isinstance(width, int) or width % count:
            raise SpecError("E0403", f"cannot cut the last axis of {fmt(self.graph[x].shape)} into {count} equal parts",
                            self.at(base, e))
        step = width // count
        return [self.add("slice", [x], base, e, None, axis=axis, start=i * step, stop=(i + 1) * step)
                for i in range(count)]

    # ----------------------------------------------------------------------------------------- module calls

    def call_module(self, name: str, e: E.Call, base: Location) -> Value:
        """``name: Callee(args, size=..., repeat=N, direction=both)``: the callee inlined under ``name.``.

        ``repeat=N`` stacks N copies (parameters under ``name.0.``, ``name.1.``, ...), each reading the previous
        one's first output; ``direction=both`` runs a recurrent callee forwards (``name.fw.``) and backwards
        (``name.bw.``) and joins every output on its last axis.
        """
        callee = self.owner.unit.modules[e.func]
        cmod = callee.module
        loc = self.at(base, e)
        self.owner.check_attribute(name, self.key_locs.get(name, loc), "module call")  # its parameters: `name.W`
        inputs = list(cmod.inputs)
        if len(e.args) > len(inputs):
            raise SpecError("E0316", f"`{e.func}` takes {len(inputs)} input(s), got {len(e.args)}", loc,
                            expected=", ".join(inputs))
        bound = {inputs[i]: self.lower_named(a, base, f"{name}.{inputs[i]}") for i, a in enumerate(e.args)}
        sizes: dict[str, int] = {}
        repeat, direction, numbered = 1, None, False
        for key, value in e.kwargs:
            if key in cmod.inputs:
                bound[key] = self.lower_named(value, base, f"{name}.{key}")
            elif key in cmod.sizes:
                sizes[key] = self.size_arg(value, base)
            elif key == "repeat":
                repeat, numbered = self.size_arg(value, base), True
                self.owner.budget.repeat(repeat, self.at(base, value))
            elif key == "direction":
                direction = self.direction_arg(value, base, cmod)
            else:
                raise SpecError("E0316", f"`{e.func}` has no input or size `{key}`", self.at(base, value),
                                hint=did_you_mean(key, list(cmod.inputs) + list(cmod.sizes) + ["repeat", "direction"]))
        missing = [k for k in inputs if k not in bound]
        if missing:
            raise SpecError("E0316", f"`{e.func}(...)` is missing input(s) " + ", ".join(f"`{m}`" for m in missing), loc)
        outputs: dict[str, str] = {}
        scopes = self.owner.scopes
        scopes[self.owner.prefix + name] = Scope(e.func, repeat if numbered else None, direction, loc)
        given: list[str] = []  # every layer's outputs: the caller may read only the last layer's, or none
        for layer in range(repeat):
            prefix = self.owner.prefix + name + (f".{layer}." if numbered else ".")
            if numbered:
                scopes[prefix[:-1]] = Scope(e.func, None, direction, loc, part=f"layer {layer}")
            if direction == "both":
                scopes[prefix + "fw"] = Scope(e.func, None, "forward", loc, part="forward")
                scopes[prefix + "bw"] = Scope(e.func, None, "reverse", loc, part="backward")
            if layer:
                bound = {**bound, inputs[0]: next(iter(outputs.values()))}
            if direction == "both":
                fw = self.instance(callee, prefix + "fw.", bound, sizes, loc, "forward", e.func)
                bw = self.instance(callee, prefix + "bw.", bound, sizes, loc, "reverse", e.func)
                outputs = {k: self.rename(self.add("concat", [fw[k], bw[k]], base, e, None, axis=-1),
                                          f"{name}.{layer}.{k}" if numbered else f"{name}.{k}") for k in fw}
            else:
                outputs = self.instance(callee, prefix, bound, sizes, loc, direction, e.func)
            given += outputs.values()
        call = scopes[self.owner.prefix + name]
        scopes[self.owner.prefix + name] = dataclasses.replace(call, outputs=tuple(dict.fromkeys(given)))
        if len(outputs) == 1:
            return Value(node=next(iter(outputs.values())), members=outputs)
        return Value(members=outputs)

    def instance(self, callee: Unit, prefix: str, bound: dict[str, str], explicit: dict[str, int], loc: Location,
                 direction: str | None, func: str) -> dict[str, str]:
        """One inlined copy of ``callee``; sizes not given explicitly are read off the arguments' shapes
        (x: [B, T, d] bound to a [B, T, 16] value gives d=16)."""
        sizes = dict(explicit)
        for key, decl in callee.module.inputs.items():
            for dim, got in zip(decl.shape, self.graph[bound[key]].shape):
                if isinstance(dim, str) and dim in callee.module.sizes and dim not in sizes and isinstance(got, int):
                    sizes[dim] = got
        lowering = ModuleLowering(callee, self.graph, self.owner.params, prefix, sizes, bound, self.owner.budget,
                                  call_loc=loc, direction=direction, scopes=self.owner.scopes,
                                  recurrent=self.owner.recurrent)
        self.owner.budget.enter(loc, func)
        try:
            return lowering.run()
        finally:
            self.owner.budget.leave()

    def direction_arg(self, value: E.Expr, base: Location, cmod: Module) -> str:
        if not isinstance(cmod, RecurrentModule):
            raise SpecError("E0316", "`direction` applies to a recurrent module", self.at(base, value))
        if not isinstance(value, E.Name) or value.id not in ("forward", "reverse", "both"):
            raise SpecError("E0316", "`direction` is forward, reverse or both", self.at(base, value),
                            found=repr(getattr(value, "id", "?")))
        return value.id

    def size_arg(self, value: E.Expr, base: Location) -> int:
        if isinstance(value, E.Number) and isinstance(value.value, int):
            result = value.value
        elif isinstance(value, E.Name) and value.id in self.owner.sizes:
            result = self.owner.sizes[value.id]
        elif isinstance(value, E.BinOp) and value.op in "+-*":
            a, b = self.size_arg(value.left, base), self.size_arg(value.right, base)
            result = {"+": a + b, "-": a - b, "*": a * b}[value.op]
        else:
            raise SpecError("E0306", "a size argument must be an integer or a size expression", self.at(base, value))
        if abs(result) > E.MAX_SIZE_VALUE:
            raise SpecError("E0302", f"size argument too large (above {E.MAX_SIZE_VALUE})", self.at(base, value),
                            found=str(result))
        if result <= 0:
            raise SpecError("E0306", "sizes must be positive integers", self.at(base, value), found=str(result))
        return result
