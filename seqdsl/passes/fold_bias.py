"""Bias folding: ``W @ x + b`` becomes one ``linear(x, W, b)``, as nn.Linear computes it.

One fused kernel (``F.linear`` with a bias, ONNX ``MatMul`` + ``Add`` that runtimes fuse into ``Gemm``) instead of
a product and a separate add over the whole output. Rewrite rules, in every graph and loop body:
  1. ``add(linear(x, W), b)`` or ``add(b, linear(x, W))``, where the linear is read only by that add and ``b`` is
     a parameter vector as long as W has rows, becomes ``linear(x, W, b)`` under the add's name;
  2. nothing else changes: ``W x + U h + b`` (grouped ``(W x + U h) + b``) keeps its add.
Fusion then concatenates the biases of sibling linears along with their weights.
"""

from __future__ import annotations

import copy

from ..ir import Graph, Model, Node, loop_of


def fold_bias(model: Model) -> tuple[Model, bool]:
    """``model`` with ``W @ x + b`` folded into one linear map; and whether anything was folded."""
    model = copy.deepcopy(model)
    changed = _fold_graph(model.graph)
    model.verify()
    return model, changed


def _fold_graph(graph: Graph) -> bool:
    changed = False
    for node in graph:
        if node.op == "loop":
            changed |= _fold_graph(loop_of(node).body)
    users = graph.users()
    for out in graph.outputs.values():
        users.setdefault(out, []).append("<output>")
    for node in list(graph):
        if node.op != "add" or node.name not in graph.nodes:
            continue
        for lin_name, bias_name in (node.inputs, node.inputs[::-1]):
            lin, bias = graph[lin_name], graph[bias_name]
            if (lin.op == "linear" and len(lin.inputs) == 2 and users.get(lin_name) == [node.name]
                    and bias.op == "param" and bias.shape == (graph[lin.inputs[1]].shape[0],)
                    and node.shape == lin.shape):
                folded = Node(node.name, "linear", [*lin.inputs, bias_name],
                              {k: v for k, v in node.attrs.items() if k == "eq_root"}, node.shape, node.dtype, node.loc)
                graph.nodes = {k: (folded if k == node.name else v) for k, v in graph.nodes.items() if k != lin_name}
                changed = True
                break
    return changed
