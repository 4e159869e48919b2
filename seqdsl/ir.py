"""The graph IR: an ordered list of nodes, each node *being* the value it defines (as in torch.fx).

Shapes are tuples of ints and the symbols ``"B"`` (batch) and ``"T"`` (time), which stay symbolic to the end.
Parameters live once in `Model.params`; graph nodes refer to them by name (op ``param``), so a step graph
copied T times by unrolling still shares one set of weights — LeCun's Figure 2, by construction.

A recurrent block is one ``loop`` node in its parent graph. Its ``body`` is the step graph, whose leaves are:
  ``step_input``  (attr ``index``)  the loop's sequence input number ``index``, sliced at step t: (B, ...)
  ``state``       (attr ``index``)  the previous step's value of state number ``index``: z(t-1)
  ``capture``     (attr ``index``)  a loop-invariant value from the parent graph (input ``index`` of the loop)
  ``param``       (attr ``name``)   a model parameter
The loop node's inputs are ``[initial states..., sequences..., captures...]``; its attrs say how many of each,
the body nodes that update each state, and what it returns. Each returned value is an ``item`` node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Union

import networkx as nx

from .errors import UNKNOWN, Location

Dim = Union[int, str]
Shape = tuple[Dim, ...]
SYMBOLIC = ("B", "T")


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    shape: Shape = ()
    dtype: str = "float32"
    loc: Location = UNKNOWN

    def __repr__(self) -> str:
        args = ", ".join(self.inputs)
        extra = {k: v for k, v in self.attrs.items() if k != "body"}
        return f"%{self.name}: {self.dtype}{list(self.shape)} = {self.op}({args}){extra or ''}"


@dataclass
class LoopOutput:
    """What a loop returns for one body value: every step, the value at position T-1, or the final one."""

    node: str
    kind: Literal["all", "last", "final"]


@dataclass
class Loop:
    """The attributes of a ``loop`` node (kept in ``node.attrs['loop']``)."""

    body: "Graph"
    n_states: int
    n_sequences: int
    n_captures: int
    state_names: list[str]
    updates: list[str]  # body node computing each state's new value
    returns: list[LoopOutput]
    reverse: bool = False
    steps: int | None = None  # fixed number of steps of a loop over no sequence (n_sequences == 0)
    time: str = "T"  # the symbolic time axis of its sequences
    stop: tuple[str, int] | None = None  # (body node, id): a `steps` loop ends once every row produced the id

    @property
    def read(self) -> set[str]:
        """The body values the loop itself reads: each state's update, what it returns, its stop condition.
        A pass may rewrite any other body value, never these."""
        return {*self.updates, *(r.node for r in self.returns), *(self.stop[:1] if self.stop else ())}


@dataclass
class Param:
    name: str
    shape: tuple[int, ...]
    init: str = "uniform"  # a kind of seqdsl.init.INITIALISERS
    loc: Location = UNKNOWN
    gain: float | None = None  # for the initialisers that take one (resolved to its default)
    blocks: int = 1  # axis 0 holds this many blocks (stacked gates), each initialised on its own
    value: float | None = None  # the value of `init: constant`

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class Graph:
    """Nodes in definition order, plus the named outputs of the graph."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.outputs: dict[str, str] = {}
        self.reserved: set[str] = set()  # names a pass rebuilding this graph will still add: `fresh` avoids them
        self._suffix: dict[str, int] = {}  # see `fresh`

    def add(self, node: Node) -> Node:
        if node.name in self.nodes:  # a broken invariant of a pass, never the user's mistake (exit 1, not 2)
            raise AssertionError(f"internal: node `{node.name}` defined twice")
        self.nodes[node.name] = node
        return node

    def __iter__(self) -> Iterator[Node]:
        return iter(list(self.nodes.values()))

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def __len__(self) -> int:
        return len(self.nodes)

    def fresh(self, base: str, avoid: set[str] | frozenset[str] = frozenset()) -> str:
        """A node name not yet used (nor reserved, nor in ``avoid``), derived from ``base``."""
        taken = lambda name: name in self.nodes or name in self.reserved or name in avoid  # noqa: E731
        if not taken(base):
            return base
        i = self._suffix.get(base, 1)  # where the last search for ``base`` ended: n fresh names cost O(n), not O(n²)
        while taken(f"{base}_{i}"):
            i += 1
        self._suffix[base] = i
        return f"{base}_{i}"

    def users(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {n: [] for n in self.nodes}
        for node in self.nodes.values():
            for i in node.inputs:
                out.setdefault(i, []).append(node.name)
        return out

    def to_networkx(self) -> nx.DiGraph:
        g = nx.DiGraph()
        for node in self.nodes.values():
            g.add_node(node.name)
            for i in node.inputs:
                g.add_edge(i, node.name)
        return g

    def count(self, recursive: bool = True) -> int:
        n = len(self.nodes)
        if recursive:
            n += sum(loop_of(node).body.count() for node in self.nodes.values() if node.op == "loop")
        return n

    def verify(self) -> None:
        """Invariants every pass must keep: inputs defined before use, a DAG, outputs exist; loops well-formed."""
        seen: set[str] = set()
        for node in self.nodes.values():
            for i in node.inputs:
                if i not in seen:
                    raise AssertionError(f"node `{node.name}` uses `{i}` before it is defined")
            seen.add(node.name)
            if node.op == "loop":
                _verify_loop(node)
        for out, ref in self.outputs.items():
            if ref not in self.nodes:
                raise AssertionError(f"output `{out}` refers to missing node `{ref}`")
        # no cycle check needed: every input is defined before its user, so the order above is a topological one

    def __repr__(self) -> str:
        lines = [repr(n) for n in self.nodes.values()]
        lines += [f"return {k} = %{v}" for k, v in self.outputs.items()]
        return "\n".join(lines)


def loop_of(node: Node) -> Loop:
    loop = node.attrs["loop"]
    assert isinstance(loop, Loop)
    return loop


def _verify_loop(node: Node) -> None:
    loop = loop_of(node)
    assert len(node.inputs) == loop.n_states + loop.n_sequences + loop.n_captures, f"loop `{node.name}` arity"
    assert len(loop.updates) == loop.n_states == len(loop.state_names)
    assert (loop.steps is None) == (loop.n_sequences > 0), f"loop `{node.name}`: steps xor sequences"
    loop.body.verify()
    for name in loop.updates + [r.node for r in loop.returns]:
        assert name in loop.body.nodes, f"loop `{node.name}` refers to missing body node `{name}`"
    # one return per (value, kind): outputs naming the same value share it (their item, or the graph output)
    returned = [(r.node, r.kind) for r in loop.returns]
    assert len(set(returned)) == len(returned), f"loop `{node.name}` returns a value twice: {returned}"
    for b in loop.body:
        if b.op in ("state", "step_input", "capture"):
            limit = {"state": loop.n_states, "step_input": loop.n_sequences, "capture": loop.n_captures}[b.op]
            assert 0 <= b.attrs["index"] < limit, f"body node `{b.name}` index out of range"


@dataclass(frozen=True)
class Scope:
    """One module call (``enc: GRU(x, direction=both)``), or a part of one (a layer of ``repeat=``, a direction).

    Keyed in `Model.scopes` by its path, such as ``enc``, ``enc.fw`` or ``layers.0``: the nodes and parameters it
    made are those whose names start with the path and a dot. For people (figures, summaries), not for passes.
    """

    module: str  # the called module's name
    repeat: int | None = None  # N of ``repeat=N``
    direction: str | None = None  # a recurrent callee's direction override
    loc: Location = UNKNOWN
    part: str = ""  # "" for the call itself, else "layer 0", "forward", "backward"
    outputs: tuple[str, ...] = ()  # the nodes the call gives its caller (every layer's): read or not, as it likes


def scope_of(name: str, scopes: dict[str, Scope]) -> str:
    """The innermost scope path that made the node or parameter ``name`` ("" for the top level)."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        path = ".".join(parts[:i])
        if path in scopes:
            return path
    return ""


@dataclass
class TrainDefaults:
    """The spec's ``train:`` section (`seqdsl train`'s defaults): the values written, each with its location."""

    values: dict[str, Any] = field(default_factory=dict)
    locs: dict[str, Location] = field(default_factory=dict)


@dataclass
class Model:
    """A compiled spec: the graph, its parameters, and the sizes it was built with."""

    name: str
    graph: Graph
    params: dict[str, Param]
    inputs: list[str]  # graph nodes with op `input`, in signature order
    sizes: dict[str, int]
    source: str = "<spec>"
    warnings: list[Any] = field(default_factory=list)  # SpecErrors with W codes: builds, but probably not as meant
    train: TrainDefaults = field(default_factory=TrainDefaults)
    scopes: dict[str, Scope] = field(default_factory=dict)  # module calls by path ("enc", "enc.fw", "layers.0")
    doc: str | None = None  # the spec's `doc:` (untrusted text: copy it only through seqdsl.text.plain_text)
    sources: dict[str, str] = field(default_factory=dict)  # every spec file read (the spec, then its imports): sha256

    def verify(self) -> None:
        self.graph.verify()
        for node in _all_nodes(self.graph):
            if node.op == "param":
                assert node.attrs["name"] in self.params, f"unknown parameter `{node.attrs['name']}`"

    @property
    def param_count(self) -> int:
        return sum(p.size for p in self.params.values())

    def input_nodes(self) -> list[Node]:
        return [self.graph[n] for n in self.inputs]


def _all_nodes(graph: Graph) -> Iterator[Node]:
    for node in graph:
        yield node
        if node.op == "loop":
            yield from _all_nodes(loop_of(node).body)


def all_nodes(graph: Graph) -> Iterator[Node]:
    """Every node of ``graph`` and of the loop bodies inside it."""
    return _all_nodes(graph)


def used_params(graph: Graph) -> set[str]:
    """The parameters that some output of ``graph`` depends on. A loop that an output depends on contributes what
    its state updates, returned values and stop condition read. A parameter outside this set gets no gradient."""
    used: set[str] = set()

    def walk(g: Graph, roots: Iterator[str] | list[str]) -> None:
        seen: set[str] = set()
        stack = list(roots)
        while stack:
            name = stack.pop()
            if name in seen or name not in g.nodes:
                continue
            seen.add(name)
            node = g[name]
            if node.op == "param":
                used.add(node.attrs["name"])
            elif node.op == "loop":
                loop = loop_of(node)
                walk(loop.body, sorted(loop.read))
            stack.extend(node.inputs)

    walk(graph, list(graph.outputs.values()))
    return used
