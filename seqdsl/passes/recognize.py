"""Recognition: a recurrent block that *is* a standard cell runs on the runtime's own kernel.

A loop whose step graph is isomorphic to one of the standard specs — `specs/rnn.yaml` (Elman), `specs/lstm.yaml`,
`specs/gru.yaml` (Cho's form), `specs/gru_torch.yaml` (PyTorch's form) — lowered with the same sizes, becomes one
``cell`` node: torch.lstm / torch.gru / torch.rnn_tanh in PyTorch (oneDNN on the CPU, cuDNN on the GPU), the
LSTM / GRU / RNN op in ONNX. Rewrite rules:
  1. the loop has one sequence input (B, T, d), no other outside input, one state (two for the LSTM) and no fixed
     step count;
  2. its body matches the template's node for node: same ops, same constants, parameters of the same shapes,
     operands in the same places except for ``+`` and ``*``, which commute (``U h + W x`` matches ``W x + U h``);
     both step graphs are compared in canonical form (see `canonical`), so a sum grouped or ordered otherwise
     (``W x + (U h + b)``, ``b + U h + W x``, ``W x - (-U h) + b``) is the same sum;
  3. it returns only what the kernel gives: the hidden state at every step, its final value, its value at
     position T-1, and the LSTM's final cell state;
  4. the cell node reads the sequence, the initial states and the parameters in the template's order (so each
     backend can stack them in its own gate order); every returned value keeps its ``item`` node.
A cell that differs in any way — a peephole, another activation, a layer norm inside — is left as it is.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import networkx as nx
from networkx.algorithms.isomorphism import DiGraphMatcher

from ..ir import Graph, Loop, Model, Node, loop_of
from .canonical import canonical_body

STD_ROOT = Path(__file__).resolve().parents[2] / "specs"
COMMUTATIVE = {"add", "mul"}


@dataclass(frozen=True)
class CellKind:
    """A standard cell: its template spec, its state names (template order) and its parameters."""

    name: str
    template: str
    states: tuple[str, ...]


CELLS: dict[str, CellKind] = {
    "rnn": CellKind("rnn", "rnn.yaml", ("h",)),
    "lstm": CellKind("lstm", "lstm.yaml", ("h", "c")),
    "gru": CellKind("gru", "gru.yaml", ("h",)),
    "gru_torch": CellKind("gru_torch", "gru_torch.yaml", ("h",)),
}


def recognize(model: Model, kinds: frozenset[str] = frozenset(CELLS)) -> tuple[Model, bool]:
    """``model`` with every top-level loop that is one of the standard cells in ``kinds`` turned into a cell."""
    model = copy.deepcopy(model)
    changed = False
    for node in list(model.graph):
        if node.op == "loop":
            for kind in kinds:
                if _rewrite(model.graph, node, CELLS[kind]):
                    changed = True
                    break
    model.verify()
    return model, changed


@cache
def _template(kind: str, d: int, h: int) -> Loop | None:
    from ..api import load  # late: the passes are imported by the language's front door

    model = load(STD_ROOT / CELLS[kind].template, {"d": d, "h": h})
    loops = [n for n in model.graph if n.op == "loop"]
    return loop_of(loops[0]) if len(loops) == 1 else None


def _rewrite(graph: Graph, node: Node, kind: CellKind) -> bool:
    loop = loop_of(node)
    if loop.n_sequences != 1 or loop.n_captures or loop.steps is not None or loop.n_states != len(kind.states):
        return False
    seq = graph[node.inputs[loop.n_states]]
    states = sorted((n for n in loop.body if n.op == "state"), key=lambda n: n.attrs["index"])
    if len(seq.shape) != 3 or not isinstance(seq.shape[2], int) or seq.dtype != "float32":
        return False
    h = states[0].shape[-1]
    if any(s.shape != ("B", h) for s in states):
        return False
    template = _template(kind.name, seq.shape[2], h)
    if template is None:
        return False
    mapping = _match(canonical_body(loop), canonical_body(template))
    if mapping is None:
        return False
    # which of our states is the template's h (and c): through the updates the isomorphism pairs
    ours_by_template = {t: o for o, t in mapping.items()}
    state_of = []  # template state i -> our state index
    for i, upd in enumerate(template.updates):
        ours = ours_by_template[upd]
        if ours not in loop.updates:
            return False
        state_of.append(loop.updates.index(ours))
    # what the loop returns must be what the kernel gives
    h_update, c_update = template.updates[0], (template.updates[1] if len(template.updates) > 1 else None)
    which = []
    for r in loop.returns:
        t = mapping.get(r.node)
        if t == h_update and r.kind in ("all", "final", "last"):
            which.append({"all": "y", "final": "h_n", "last": "y_last"}[r.kind])
        elif c_update is not None and t == c_update and r.kind == "final":
            which.append("c_n")
        else:
            return False
    params = {t_node.attrs["name"]: ours.attrs["name"]
              for ours, t_node in ((loop.body[o], template.body[t]) for o, t in mapping.items())
              if ours.op == "param"}
    order = sorted(params)  # template parameter names, in a fixed order each backend looks up by name
    inits = [node.inputs[state_of[i]] for i in range(len(kind.states))]
    param_nodes = [_param_node(graph, params[p], node) for p in order]
    cell = Node(node.name, "cell", [seq.name, *inits, *param_nodes],
                {"cell": kind.name, "params": order, "reverse": loop.reverse, "hidden": h, "returns": which},
                (), "float32", node.loc)
    graph.nodes = {k: (cell if k == node.name else v) for k, v in graph.nodes.items()}
    _order_params_first(graph, param_nodes, cell.name)
    return True


def _param_node(graph: Graph, name: str, before: Node) -> str:
    """A ``param`` node of the parent graph for parameter ``name`` (one is made if the graph has none)."""
    for n in graph:
        if n.op == "param" and n.attrs["name"] == name:
            return n.name
    body_param = next(n for n in loop_of(before).body if n.op == "param" and n.attrs["name"] == name)
    node = Node(graph.fresh(name), "param", [], dict(body_param.attrs), body_param.shape, "float32", body_param.loc)
    return graph.add(node).name


def _order_params_first(graph: Graph, params: list[str], user: str) -> None:
    order = list(graph.nodes)
    at = order.index(user)
    late = [p for p in params if order.index(p) > at]
    if late:
        items = [(k, v) for k, v in graph.nodes.items() if k not in late]
        at = [k for k, _ in items].index(user)
        items[at:at] = [(p, graph[p]) for p in late]
        graph.nodes = dict(items)


def _labelled(body: Graph) -> nx.DiGraph:
    g = nx.DiGraph()
    for n in body:
        label: tuple[object, ...] = (n.op,)
        if n.op == "const":
            label += (n.attrs["value"],)
        elif n.op == "param":
            label += (n.shape,)
        elif n.op in ("slice", "softmax", "log_softmax", "concat"):
            label += tuple(sorted((k, v) for k, v in n.attrs.items() if k != "eq_root"))
        g.add_node(n.name, label=label)
    for n in body:
        for port, i in enumerate(n.inputs):
            if g.has_edge(i, n.name):  # the same value twice (x * x): keep both ports
                g.edges[i, n.name]["ports"] = tuple(sorted(g.edges[i, n.name]["ports"] + (port,)))
            else:
                g.add_edge(i, n.name, ports=(-1,) if n.op in COMMUTATIVE else (port,))
    return g


def _match(body: Graph, template: Graph) -> dict[str, str] | None:
    """Our body node -> template node, if the two step graphs are the same computation."""
    ours, theirs = _labelled(body), _labelled(template)
    if ours.number_of_nodes() != theirs.number_of_nodes() or ours.number_of_edges() != theirs.number_of_edges():
        return None
    matcher = DiGraphMatcher(ours, theirs, node_match=lambda a, b: a["label"] == b["label"],
                             edge_match=lambda a, b: a["ports"] == b["ports"])
    return dict(matcher.mapping) if matcher.is_isomorphic() else None
