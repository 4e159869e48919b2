"""Attention recognition: ``softmax(Q Kᵀ · scale (+ causal / padding mask)) V`` becomes one ``attention`` node.

PyTorch runs that node as ``F.scaled_dot_product_attention`` (a fused kernel on the CPU, flash attention on a
GPU: the (T, S) scores are never stored), ONNX as the same MatMul/Softmax/MatMul it was. Rewrite rule, in every
graph and loop body: a ``matmul(alpha, V)`` whose ``alpha`` is ``softmax(s, axis=-1)`` read by nothing else,
where ``s`` is ``matmul(Q, transpose(K))`` followed, in any order, by at most one scaling (``/ c`` or ``* c``
with a constant c > 0), at most one ``causal`` and at most one ``mask(·, keep)``, each step read by nothing
else, becomes ``attention(Q, K, V[, keep])`` with attrs ``scale`` (1 without a scaling) and ``causal``, under
the name of the ``matmul(alpha, V)``. Nodes of the pattern that something else still reads stay.

Additive attention's score ``sum(v * X, axis=-1)`` (Bahdanau's vᵀ tanh(W s + U h_j) at every j), with v a
vector (n) and X (..., n) read by nothing else, becomes the matrix-vector product ``matvec(X, v)``: one product
instead of a product over X and a reduction (the same sum of products, in the runtime's order).

Exact in meaning: the masks put -inf on the same scores as before (a positive scale keeps -inf where it is,
before or after the masks), and a row whose keys are all masked gives NaN, as the softmax over -inf did (the
backends restore that). Anything else — another softmax axis, an extra term in the scores, a weight read
elsewhere (returned attention weights), a scale of the keys or values — stays as written.
"""

from __future__ import annotations

import copy
import math
import struct
from typing import Any

from ..ir import Graph, Model, Node, loop_of


def fuse_attention(model: Model) -> tuple[Model, bool]:
    """``model`` with every exact scaled-dot-product attention as one ``attention`` node, and additive scores as
    matrix-vector products; whether anything changed."""
    model = copy.deepcopy(model)
    changed = _fuse_graph(model.graph, pinned=set(model.graph.outputs.values()))
    model.verify()
    return model, changed


def _fuse_graph(graph: Graph, pinned: set[str]) -> bool:
    changed = False
    for node in graph:
        if node.op == "loop":
            loop = loop_of(node)
            body_pinned = loop.read
            changed |= _fuse_graph(loop.body, pinned=body_pinned | set(loop.body.outputs.values()))
    for node in graph:
        if node.name not in graph.nodes or node.op not in ("matmul", "sum"):
            continue
        users = _users(graph, pinned)
        match = _match(graph, node, users) if node.op == "matmul" else _weighted_sum(graph, node, users)
        if match is None:
            continue
        fused, used = match
        graph.nodes = {k: (fused if k == node.name else v) for k, v in graph.nodes.items()}
        _drop_unused(graph, used, pinned)
        changed = True
    return changed


def _users(graph: Graph, pinned: set[str]) -> dict[str, int]:
    """How many readers each node has; values the graph or its loop returns count as read once more."""
    return {name: len(readers) + (name in pinned) for name, readers in graph.users().items()}


def _match(graph: Graph, out: Node, users: dict[str, int]) -> tuple[Node, list[str]] | None:
    """The ``attention`` node replacing ``out`` (``alpha @ V``) and the pattern's nodes, or None."""
    alpha = graph[out.inputs[0]]
    if alpha.op != "softmax" or users[alpha.name] != 1 or not _last_axis(alpha):
        return None
    scale: float | None = None
    causal = False
    keep: str | None = None
    used = [alpha.name]
    scores = graph[alpha.inputs[0]]
    while scores.op in ("div", "mul", "causal", "mask"):
        if users[scores.name] != 1:
            return None
        if scores.op == "causal" and not causal:
            causal = True
            nxt = scores.inputs[0]
        elif scores.op == "mask" and keep is None:
            keep, nxt = scores.inputs[1], scores.inputs[0]
        elif scores.op in ("div", "mul") and scale is None:
            found = _scaling(graph, scores)
            if found is None:
                return None
            scale, nxt = found
            used += [scores.name, next(i for i in scores.inputs if i != nxt)]  # the node, then its constant
            scores = graph[nxt]
            continue
        else:  # a second scaling or mask of the same kind: not one SDPA call
            return None
        used.append(scores.name)
        scores = graph[nxt]
    if scores.op != "matmul" or users[scores.name] != 1:
        return None
    q, kt = (graph[i] for i in scores.inputs)
    if kt.op != "transpose":
        return None
    k, v = graph[kt.inputs[0]], graph[out.inputs[1]]
    if not _shapes_fit(q, k, v, scores, out):
        return None
    used += [scores.name, kt.name]
    attrs: dict[str, Any] = {"scale": 1.0 if scale is None else scale, "causal": causal}
    if out.attrs.get("eq_root"):
        attrs["eq_root"] = True
    inputs = [q.name, k.name, v.name] + ([keep] if keep is not None else [])
    return Node(out.name, "attention", inputs, attrs, out.shape, out.dtype, out.loc), used


def _weighted_sum(graph: Graph, node: Node, users: dict[str, int]) -> tuple[Node, list[str]] | None:
    """``matvec(X, v)`` replacing ``sum(v * X, axis=-1)`` (either order of the product), and the product's node."""
    product = graph[node.inputs[0]]
    axis = node.attrs.get("axis", -1)
    if product.op != "mul" or users[product.name] != 1 or axis not in (-1, len(product.shape) - 1):
        return None
    for x, v in (product.inputs, product.inputs[::-1]):
        xs, vs = graph[x], graph[v]
        if len(xs.shape) >= 2 and xs.shape == product.shape and vs.shape == xs.shape[-1:] and \
                xs.dtype == vs.dtype == "float32":
            attrs = {"eq_root": True} if node.attrs.get("eq_root") else {}
            return Node(node.name, "matvec", [x, v], attrs, node.shape, node.dtype, node.loc), [product.name]
    return None


def _last_axis(node: Node) -> bool:
    axis = node.attrs.get("axis", -1)
    return axis in (-1, len(node.shape) - 1)


def _scaling(graph: Graph, node: Node) -> tuple[float, str] | None:
    """(scale, the scores' node) for ``scores / c``, ``scores * c`` or ``c * scores`` with a constant c > 0."""
    a, b = node.inputs
    sides = [(a, b)] if node.op == "div" else [(a, b), (b, a)]
    for scores, const in sides:
        c = graph[const]
        if c.op != "const" or c.shape != () or graph[scores].shape != node.shape:
            continue
        value = float(c.attrs["value"])
        if not math.isfinite(value) or value <= 0:
            return None
        scale = 1.0 / value if node.op == "div" else value
        # the graph computes in float32: a constant or a scale that is 0 or inf there stays as written
        if not all((_float32(v) or 0.0) > 0 for v in (value, scale)):
            return None
        return scale, scores
    return None


def _float32(value: float) -> float | None:
    """``value`` rounded to float32, or None where float32 holds no finite value for it."""
    try:
        rounded = struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        return None
    return rounded if math.isfinite(rounded) else None


def _shapes_fit(q: Node, k: Node, v: Node, scores: Node, out: Node) -> bool:
    """Q (..., T, E), K (..., S, E), V (..., S, Ev) with the same leading axes, all float32: no broadcasting."""
    if any(n.dtype != "float32" for n in (q, k, v)):
        return False
    if not (len(q.shape) == len(k.shape) == len(v.shape) >= 3):
        return False
    lead = q.shape[:-2]
    return (k.shape[:-2] == lead and v.shape[:-2] == lead and k.shape[-1] == q.shape[-1]
            and v.shape[-2] == k.shape[-2] and scores.shape == (*lead, q.shape[-2], k.shape[-2])
            and out.shape == (*lead, q.shape[-2], v.shape[-1]))


def _drop_unused(graph: Graph, candidates: list[str], pinned: set[str]) -> None:
    """Remove the pattern's nodes that nothing reads any more (a transpose or constant read elsewhere stays)."""
    for name in candidates:  # in reading order: each node's inputs come after it in the list
        if name in graph.nodes and _users(graph, pinned).get(name, 0) == 0:
            del graph.nodes[name]
