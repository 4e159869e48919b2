"""Sinking: a decoder y(t) = Dec(z(t)) that nothing feeds back runs once, after the loop, over every step.

The mirror of hoisting. A body node is *sinkable* when no state update (nor a stop condition) needs it, every
reader of it is sinkable or a returned-at-every-step value, its op acts on trailing axes only, and its inputs are
per-step values (which the loop then returns at every step), step inputs (read whole outside), or parameters and
constants. Rewrite rules, per top-level loop:
  1. each sinkable node is computed in the parent graph on whole sequences (B, T, ...) — one large product for
     the output layer instead of T small ones;
  2. the per-step values it reads leave the loop as every-step returns (the one an output already reads, if any:
     a loop returns each value once);
  3. a returned-at-every-step value that was sunk is the parent's copy itself (its ``item`` node goes away).
The numbers do not change: tests/test_passes.py checks every spec with and without the passes.
"""

from __future__ import annotations

import copy
from dataclasses import replace

from ..ir import Graph, LoopOutput, Model, Node, loop_of
from .hoist import TIME_DISTRIBUTABLE, _axis_ok, _batchless


def sink(model: Model) -> tuple[Model, bool]:
    """``model`` with every loop's feed-forward decoder moved after the loop; and whether anything moved."""
    model = copy.deepcopy(model)
    changed = False
    for node in list(model.graph):
        if node.op == "loop":
            changed |= _sink_loop(model.graph, node)
    model.verify()
    return model, changed


def _ancestors(body: Graph, roots: list[str]) -> set[str]:
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack += body[n].inputs
    return seen


def _sink_loop(parent: Graph, node: Node) -> bool:
    loop = loop_of(node)
    body = loop.body
    needed = _ancestors(body, loop.updates + ([loop.stop[0]] if loop.stop else []))
    items = {n.attrs["index"]: n for n in parent if n.op == "item" and n.inputs == [node.name]}
    every_step = {r.node for i, r in enumerate(loop.returns) if r.kind == "all" and i in items}
    other_returns = {r.node for r in loop.returns if r.kind != "all"}
    users = body.users()
    sinkable = {n.name for n in body if n.op in TIME_DISTRIBUTABLE and _axis_ok(n) and n.name not in needed
                and n.name not in other_returns}

    def available(i: str) -> bool:  # can the value of body node i be had for every step outside the loop?
        b = body[i]
        if i in sinkable or b.op == "step_input":
            return True
        if b.op in ("param", "const"):
            return _batchless(b)
        return b.op not in ("state", "capture", "loop")  # a per-step value: the loop can return it

    changed = True
    while changed:  # drop candidates until every rule holds for all that remain
        changed = False
        for name in list(sinkable):
            readers = users.get(name, [])
            if not (readers or name in every_step) or any(u not in sinkable for u in readers) \
                    or not all(available(i) for i in body[name].inputs):
                sinkable.discard(name)
                changed = True
    if not sinkable:
        return False
    time_axis = parent[node.inputs[loop.n_states]].shape[1] if loop.n_sequences else (loop.steps or loop.time)
    returns = list(loop.returns)
    item_shape = {r.node: items[i].shape for i, r in enumerate(returns) if i in items}
    outer: dict[str, str] = {}
    new_items: list[Node] = []

    def whole(name: str) -> str:
        """The value of body node ``name`` at every step, in the parent graph."""
        if name in outer:
            return outer[name]
        b = body[name]
        if b.op == "step_input":
            outer[name] = node.inputs[loop.n_states + b.attrs["index"]]
        elif b.op in ("param", "const"):
            outer[name] = parent.add(Node(parent.fresh(name), b.op, [], dict(b.attrs), b.shape, b.dtype, b.loc)).name
        else:  # a per-step value the loop returns at every step: already (an output reads it), or from now on
            index = next((i for i, r in enumerate(returns) if r == LoopOutput(name, "all")), len(returns))
            if index in items:
                outer[name] = items[index].name
                return outer[name]
            if index == len(returns):
                returns.append(LoopOutput(name, "all"))
            shape = item_shape.get(name, (b.shape[0], time_axis, *b.shape[1:]))
            item = Node(parent.fresh(name + "_steps"), "item", [node.name], {"index": index, "shape": shape},
                        shape, b.dtype, b.loc)
            new_items.append(item)
            outer[name] = item.name
        return outer[name]

    copies: list[Node] = []
    for b in body:
        if b.name in sinkable:
            inputs = [outer[i] if i in sinkable else whole(i) for i in b.inputs]
            shape = (b.shape[0], time_axis, *b.shape[1:])
            copy_node = Node(parent.fresh(b.name), b.op, inputs, dict(b.attrs), shape, b.dtype, b.loc)
            outer[b.name] = copy_node.name
            copies.append(copy_node)
    # returns of sunk values: their item nodes become the copies (same name, so readers are untouched)
    renamed: dict[str, str] = {}
    kept: list[LoopOutput] = []
    index_map: dict[int, int] = {}
    for i, r in enumerate(returns):
        if r.node in sinkable:
            if i in items:
                renamed[outer[r.node]] = items[i].name
            continue
        index_map[i] = len(kept)
        kept.append(r)
    for c in copies:
        c.inputs = [renamed.get(x, x) for x in c.inputs]
        c.name = renamed.get(c.name, c.name)
    new_nodes: dict[str, Node] = {}
    sunk_items = set(renamed.values())
    for name, n in parent.nodes.items():
        if name in sunk_items:
            continue
        if n.op == "item" and n.inputs == [node.name]:
            n.attrs["index"] = index_map[n.attrs["index"]]
        new_nodes[name] = n
        if name == node.name:
            for item in new_items:
                item.attrs["index"] = index_map[item.attrs["index"]]
                new_nodes[item.name] = item
    parent.nodes = new_nodes
    for c in copies:  # after the loop and its items; then every input before its reader
        parent.nodes[c.name] = c
    parent.nodes = _topological(parent)
    for c in list(body):
        if c.name in sinkable:
            del body.nodes[c.name]
    node.attrs["loop"] = replace(loop, returns=kept)
    return True


def _topological(graph: Graph) -> dict[str, Node]:
    """The graph's nodes reordered so that every input comes first (stable otherwise)."""
    done: dict[str, Node] = {}
    pending = list(graph.nodes.values())
    while pending:
        rest = []
        for n in pending:
            if all(i in done for i in n.inputs):
                done[n.name] = n
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise AssertionError("sink: cycle while reordering")
        pending = rest
    return done
