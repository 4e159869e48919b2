"""Horizontal fusion: sibling linear maps that read the same value become one matrix product and a split.

The four gate projections of an LSTM (``W_f @ x``, ``W_i @ x``, ``W_o @ x``, ``W_c @ x``) become
``concat(W_f, W_i, W_o, W_c) @ x`` followed by four slices — one large matrix product instead of four small
ones, which is where cuDNN's speed comes from. Rewrite rules, in every graph and loop body:
  1. ``linear(x, W_1) .. linear(x, W_k)`` with the same ``x``, k >= 2, every W_i a parameter with the same input
     size, become ``W = concat(W_1 .. W_k, axis=0)``, ``y = linear(x, W)`` and ``slice(y)`` per original node
     (each slice takes the original node's name, so everything downstream reads as before); siblings that all
     carry a bias (see fold_bias) fuse with ``concat(b_1 .. b_k)`` as the bias of the fused map;
  2. parameters keep their spec names: the concatenation is computed from them (users, interop and
     ``state_dict`` see W_f, W_i, ... as written). Hoisting then moves the concatenation, and for input
     projections the whole product, out of the loop.
"""

from __future__ import annotations

import copy
from dataclasses import replace

from ..ir import Graph, Model, Node, loop_of


def fuse_linears(model: Model) -> tuple[Model, bool]:
    """``model`` with sibling linear maps fused; and whether anything was fused."""
    model = copy.deepcopy(model)
    changed = _fuse_graph(model.graph)
    model.verify()
    return model, changed


def _fuse_graph(graph: Graph) -> bool:
    changed = False
    for node in graph:
        if node.op == "loop":
            changed |= _fuse_graph(loop_of(node).body)
    groups: dict[str, list[Node]] = {}
    for node in graph:
        if node.op == "linear" and graph[node.inputs[1]].op == "param":
            groups.setdefault(node.inputs[0], []).append(node)
    for x, linears in groups.items():
        by_width: dict[object, list[Node]] = {}
        for n in linears:  # siblings share the input width and either all have a bias or none does
            by_width.setdefault((graph[n.inputs[1]].shape[1], len(n.inputs)), []).append(n)
        for siblings in by_width.values():
            if len(siblings) >= 2:
                _fuse(graph, x, siblings)
                changed = True
    return changed


def _fuse(graph: Graph, x: str, siblings: list[Node]) -> None:
    weights = [graph[n.inputs[1]] for n in siblings]
    rows = sum(w.shape[0] for w in weights)
    first = siblings[0]
    base = first.name.rsplit(".", 1)[0] + "." if "." in first.name else ""
    w_name = graph.fresh(f"{base}{'_'.join(_short(w.attrs['name']) for w in weights)}")
    w_cat = Node(w_name, "concat", [w.name for w in weights], {"axis": 0}, (rows, weights[0].shape[1]),
                 "float32", first.loc)
    biases = [graph[n.inputs[2]] for n in siblings if len(n.inputs) == 3]
    b_cat = Node(graph.fresh(f"{w_name}_bias"), "concat", [b.name for b in biases], {"axis": 0}, (rows,),
                 "float32", first.loc) if biases else None
    fused = Node(graph.fresh(f"{w_name}_{_short(x)}"), "linear", [x, w_name] + ([b_cat.name] if b_cat else []), {},
                 (*first.shape[:-1], rows), "float32", first.loc)
    # the new nodes go where the first sibling was (after every weight and x); each sibling becomes a slice
    new_nodes: dict[str, Node] = {}
    start = 0
    position = {n.name: i for i, n in enumerate(siblings)}
    for name, node in graph.nodes.items():
        if name == first.name:
            new_nodes[w_cat.name] = w_cat
            if b_cat is not None:
                new_nodes[b_cat.name] = b_cat
            new_nodes[fused.name] = fused
        if name in position:
            width = node.shape[-1]
            offset = sum(graph[s.inputs[1]].shape[0] for s in siblings[: position[name]])
            node = replace(node, op="slice", inputs=[fused.name],
                           attrs={**{k: v for k, v in node.attrs.items() if k == "eq_root"},
                                  "axis": -1, "start": offset, "stop": offset + width})
            start += width
        new_nodes[name] = node
    graph.nodes = new_nodes
    _move_weights_first(graph, [w.name for w in weights + biases], w_cat.name)


def _move_weights_first(graph: Graph, weights: list[str], user: str) -> None:
    """Parameter nodes created lazily after the first sibling must come before their concatenation."""
    order = list(graph.nodes)
    at = order.index(user)
    late = [w for w in weights if order.index(w) > at]
    if not late:
        return
    items = [(k, v) for k, v in graph.nodes.items() if k not in late]
    at = [k for k, _ in items].index(user)
    items[at:at] = [(w, graph[w]) for w in late]
    graph.nodes = dict(items)


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]
