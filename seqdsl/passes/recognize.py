"""Recognition: a recurrent block that is a member of a cell family runs on the runtime's own kernel.

The families (`cell_families`) are what ONNX's LSTM, GRU (both forms) and RNN ops compute, with their
attributes: peepholes, a coupled input-forget gate, the activation slots, bias or none. A loop whose step graph is
isomorphic to a variant's template, lowered with the same sizes, becomes one ``cell`` node; each backend says which
cells its kernels run (PyTorch: torch.lstm / torch.gru / torch.rnn_tanh / torch.rnn_relu for the standard
activations and no peephole or coupled gate; ONNX: all of them), and the rest stay loops. Rewrite rules:
  1. the loop has one sequence input (B, T, d), no other outside input, one state (two for the LSTM) and no fixed
     step count;
  2. its body matches the template's node for node: same ops, same constants, parameters of the same shapes,
     operands in the same places except for ``+`` and ``*``, which commute (``U h + W x`` matches ``W x + U h``);
     an activation (sigmoid, tanh, relu, leaky_relu, elu, softplus) matches any slot, and every node of one slot
     must then apply the same function with the same number (ONNX has one f for the LSTM's three gates); both
     step graphs are compared in canonical form (see `canonical`), so a sum grouped or ordered otherwise
     (``W x + (U h + b)``, ``b + U h + W x``, ``W x - (-U h) + b``) is the same sum;
  3. it returns only what the kernel gives: the hidden state at every step, its final value, its value at
     position T-1, and the LSTM's final cell state;
  4. the cell node reads the sequence, the initial states and the parameters in the template's order (so each
     backend can stack them in its own gate order); every returned value keeps its ``item`` node.

The cell node's attributes, which the backends read:
  ``cell``         the family: "rnn", "lstm", "gru" (Cho's form) or "gru_torch" (PyTorch's form);
  ``params``       the template's parameter names (sorted), one per parameter input, after the sequence and states;
  ``activations``  one (op, number or None) per slot: LSTM (f, g, h), GRU (f, g), RNN (f), e.g. ("sigmoid", None);
  ``bias``         whether the cell has its biases (all of them; without, the template has none);
  ``peephole``, ``input_forget``  (LSTM only) whether it looks at the cell state, whether f = 1 - i;
  ``reverse``, ``hidden``, ``returns``  direction, hidden size, and per returned item "y", "h_n", "y_last", "c_n".
A cell that differs in any way — a peephole on another state, a layer norm inside, a term more — is left alone.
"""

from __future__ import annotations

import copy
from collections import Counter
from functools import cache
from itertools import islice
from typing import Any, Callable, Union

import networkx as nx
from networkx.algorithms.isomorphism import DiGraphMatcher

from ..ir import Graph, Loop, Model, Node, loop_of
from .canonical import canonical_body
from .cell_families import ACTIVATIONS, FAMILIES, Activation, Variant, activation_of, template_text

COMMUTATIVE = {"add", "mul"}
CELLS = tuple(FAMILIES)  # the family names
#: a backend's choice of cells: the families it runs in every form, or a test of a cell node's attributes
Kinds = Union[frozenset[str], Callable[[dict[str, Any]], bool]]
MAX_MAPPINGS = 64  # matches of one template tried (symmetric parts, like i and g in c = f c + i g, give several)


def recognize(model: Model, kinds: Kinds = frozenset(CELLS),
              blocks: frozenset[str] | None = None) -> tuple[Model, bool]:
    """``model`` with every top-level loop that is a cell the backend runs (see `Kinds`) turned into a cell;
    with ``blocks``, only the loops of those names (a backend choosing its form per block)."""
    accepts = kinds if callable(kinds) else (lambda attrs: attrs["cell"] in kinds)
    model = copy.deepcopy(model)
    changed = False
    for node in list(model.graph):
        if node.op == "loop" and (blocks is None or node.name in blocks) and _rewrite(model.graph, node, accepts):
            changed = True
    model.verify()
    return model, changed


@cache
def _template(variant: Variant, d: int, h: int) -> Loop | None:
    from ..api import loads  # late: the passes are imported by the language's front door

    model = loads(template_text(variant), {"d": d, "h": h}, file=f"<{variant.family} template>")
    loops = [n for n in model.graph if n.op == "loop"]
    if len(loops) != 1:
        return None
    loop = loop_of(loops[0])
    for equation in (e for slot in FAMILIES[variant.family].slots_of(variant) for e in slot):
        assert loop.body[equation].op in ACTIVATIONS, f"internal: slot `{equation}` of {variant} is no activation"
    return loop


@cache
def _canonical_template(variant: Variant, d: int, h: int) -> Graph:
    template = _template(variant, d, h)
    assert template is not None
    return canonical_body(template)


def _activations(variant: Variant, body: Graph, mapping: dict[str, str]) -> tuple[Activation, ...] | None:
    """The function at each of the variant's slots (named by the template's equations, whose root node is the
    activation), or None if a slot's nodes disagree."""
    ours_of = {t: o for o, t in mapping.items()}
    slots: list[Activation] = []
    for equations in FAMILIES[variant.family].slots_of(variant):
        found = {activation_of(body[ours_of[e]].op, body[ours_of[e]].attrs) for e in equations}
        if len(found) != 1 or None in found:
            return None
        slots.append(found.pop())  # type: ignore[arg-type]
    return tuple(slots)


def _rewrite(graph: Graph, node: Node, accepts: Callable[[dict[str, Any]], bool]) -> bool:
    loop = loop_of(node)
    if loop.n_sequences != 1 or loop.n_captures or loop.steps is not None:
        return False
    seq = graph[node.inputs[loop.n_states]]
    states = sorted((n for n in loop.body if n.op == "state"), key=lambda n: n.attrs["index"])
    if len(seq.shape) != 3 or not isinstance(seq.shape[2], int) or seq.dtype != "float32":
        return False
    h = states[0].shape[-1]
    if any(s.shape != ("B", h) for s in states):
        return False
    body = canonical_body(loop)  # once per loop; a template's is cached with it
    for family in FAMILIES.values():
        if len(family.states) != loop.n_states:
            continue
        for variant in family.variants:
            template = _template(variant, seq.shape[2], h)
            if template is None:
                continue
            for mapping in _matches(body, _canonical_template(variant, seq.shape[2], h)):
                found = _cell(node, variant, template, mapping)
                if found is not None and accepts(found[0]):
                    attrs, inits, params = found
                    param_nodes = [_param_node(graph, p, node) for p in params]
                    cell = Node(node.name, "cell", [seq.name, *inits, *param_nodes], attrs, (), "float32", node.loc)
                    graph.nodes = {k: (cell if k == node.name else v) for k, v in graph.nodes.items()}
                    _order_params_first(graph, param_nodes, cell.name)
                    return True
    return False


def _cell(node: Node, variant: Variant, template: Loop,
          mapping: dict[str, str]) -> tuple[dict[str, Any], list[str], list[str]] | None:
    """What the cell that ``node`` is under ``mapping`` (our body node -> template node) reads and is: its
    attributes, its initial states (parent graph nodes) and its parameters (spec names, in ``params`` order)."""
    loop = loop_of(node)
    activations = _activations(variant, loop.body, mapping)
    if activations is None:
        return None
    # which of our states is the template's h (and c): through the updates the isomorphism pairs
    ours_by_template = {t: o for o, t in mapping.items()}
    state_of = []  # template state i -> our state index
    for upd in template.updates:
        ours = ours_by_template[upd]
        if ours not in loop.updates:
            return None
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
            return None
    params = {t_node.attrs["name"]: ours.attrs["name"]
              for ours, t_node in ((loop.body[o], template.body[t]) for o, t in mapping.items())
              if ours.op == "param"}
    order = sorted(params)  # template parameter names, in a fixed order each backend looks up by name
    attrs = {"cell": variant.family, "params": order, "activations": activations, **variant.attrs(),
             "reverse": loop.reverse, "hidden": template.body[template.updates[0]].shape[-1], "returns": which}
    return attrs, [node.inputs[i] for i in state_of], [params[p] for p in order]


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
        label: tuple[object, ...] = ("activation",) if n.op in ACTIVATIONS else (n.op,)
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


def _matches(body: Graph, template: Graph) -> list[dict[str, str]]:
    """Our body node -> template node, for each way (up to `MAX_MAPPINGS`) in which the two step graphs are the
    same computation but for the functions at the activation slots."""
    ours, theirs = _labelled(body), _labelled(template)
    if ours.number_of_nodes() != theirs.number_of_nodes() or ours.number_of_edges() != theirs.number_of_edges():
        return []
    if Counter(label for _, label in ours.nodes(data="label")) != Counter(l for _, l in theirs.nodes(data="label")):
        return []
    matcher = DiGraphMatcher(ours, theirs, node_match=lambda a, b: a["label"] == b["label"],
                             edge_match=lambda a, b: a["ports"] == b["ports"])
    return [dict(m) for m in islice(matcher.isomorphisms_iter(), MAX_MAPPINGS)]
