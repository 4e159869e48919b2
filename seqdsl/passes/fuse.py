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
Then the elementwise work on those slices fuses the same way (`fuse_slices`, the next pass), so that a step issues a few large
kernels instead of one small kernel per gate (on the CPU each kernel call costs about as much as the work of a
(32, 256) gate):
  3. sibling binary ops (add, sub, mul, div) whose operands are the same slice ``[s:e]`` of the same values, or
     parameter vectors, over adjacent ranges become one op over the whole range and a slice each:
     ``W x[0:h] + U h[0:h]``, ``W x[h:2h] + U h[h:2h]`` -> ``(W x + U h)[0:2h]`` (vectors are concatenated);
  4. the same unary op (sigmoid, tanh, ...) over adjacent slices of one value becomes one call over their union:
     the LSTM's three sigmoids become one when its gates are adjacent (in the order the spec writes them).
"""

from __future__ import annotations

import copy
from dataclasses import replace

from ..ir import Graph, Model, Node, loop_of

# Elementwise ops that may run once over the union of adjacent slices (same attributes for every sibling).
UNARY = {"sigmoid", "tanh", "relu", "exp", "log", "abs", "neg", "sqrt", "gelu", "silu", "softplus", "elu",
         "leaky_relu", "clamp"}
BINARY = {"add", "sub", "mul", "div"}


def fuse_linears(model: Model) -> tuple[Model, bool]:
    """``model`` with sibling linear maps fused; and whether anything was fused."""
    model = copy.deepcopy(model)
    changed = _fuse_graph(model.graph)
    model.verify()
    return model, changed


def fuse_slices(model: Model) -> tuple[Model, bool]:
    """``model`` with sibling elementwise ops on adjacent slices fused (rules 3 and 4); and whether any were."""
    model = copy.deepcopy(model)
    changed = _fuse_slices_in(model.graph, frozenset())
    model.verify()
    return model, changed


def _fuse_slices_in(graph: Graph, kept: frozenset[str]) -> bool:
    """Rules 3 and 4 in ``graph``; ``kept`` are the nodes read from outside it (a loop body's updates, returns)."""
    changed = False
    for node in graph:
        if node.op == "loop":
            loop = loop_of(node)
            changed |= _fuse_slices_in(loop.body, frozenset(loop.read))
    while _fuse_slices(graph, kept | set(graph.outputs.values())):
        changed = True
    return changed


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


def _fuse_slices(graph: Graph, kept: frozenset[str] | set[str]) -> bool:
    """One round of rules 3 and 4: the first group of sibling elementwise ops found is fused; True if one was."""
    groups: dict[tuple[object, ...], list[tuple[int, int, Node]]] = {}
    for node in graph:
        key = _slice_key(graph, node)
        if key is not None:
            groups.setdefault(key[0], []).append((key[1], key[2], node))
    for members in groups.values():
        members.sort(key=lambda m: m[0])
        run = [members[0]]
        for member in members[1:] + [(-1, -1, members[0][2])]:  # a sentinel closes the last run
            if member[0] == run[-1][1] and member[2] is not run[-1][2]:
                run.append(member)
                continue
            if len(run) >= 2:
                _fuse_run(graph, [m[2] for m in run], run[0][0], run[-1][1], kept)
                return True
            run = [member]
    return False


def _slice_key(graph: Graph, node: Node) -> tuple[tuple[object, ...], int, int] | None:
    """(what siblings share, start, stop) when ``node`` is an elementwise op on one range [start:stop] of the last
    axis of its value operands (their `slice` nodes) and on parameter vectors of that width; else None."""
    if node.op not in UNARY | BINARY or len(node.shape) < 1:
        return None
    sources: list[object] = []
    span = None
    for i in node.inputs:
        arg = graph[i]
        if arg.op == "slice" and arg.attrs["axis"] in (-1, len(arg.shape) - 1) and arg.shape == node.shape:
            if span not in (None, (arg.attrs["start"], arg.attrs["stop"])):
                return None
            span = (arg.attrs["start"], arg.attrs["stop"])
            sources.append(("slice", arg.inputs[0], graph[arg.inputs[0]].shape))
        elif arg.op == "param" and arg.shape == node.shape[-1:] and node.op in BINARY:
            sources.append(("vector",))
        else:
            return None
    if span is None or span[1] - span[0] != node.shape[-1]:
        return None
    attrs = tuple(sorted((k, repr(v)) for k, v in node.attrs.items() if k != "eq_root"))
    return (node.op, attrs, node.dtype, tuple(sources)), span[0], span[1]


def _fuse_run(graph: Graph, run: list[Node], start: int, stop: int, kept: frozenset[str] | set[str]) -> None:
    """Replace the ops in ``run`` (ranges adjacent, in order) by one op over [start:stop] and a slice each."""
    first_at = min(list(graph.nodes).index(n.name) for n in run)
    first = graph[list(graph.nodes)[first_at]]
    head = run[0]
    new: list[Node] = []
    operands = []
    for k, i in enumerate(head.inputs):
        arg = graph[i]
        if arg.op == "param":  # a vector per sibling: their concatenation
            parts = [graph[n.inputs[k]] for n in run]
            cat = Node(graph.fresh(f"{'_'.join(p.attrs['name'].rsplit('.', 1)[-1] for p in parts)}"), "concat",
                       [p.name for p in parts], {"axis": 0}, (stop - start,), arg.dtype, head.loc)
            new.append(cat)
            operands.append(cat.name)
            continue
        value = graph[arg.inputs[0]]
        if start == 0 and stop == value.shape[-1]:
            operands.append(value.name)  # the whole value
        else:
            part = Node(graph.fresh(f"{value.name}_{start}_{stop}"), "slice", [value.name],
                        {"axis": -1, "start": start, "stop": stop}, (*value.shape[:-1], stop - start), value.dtype,
                        head.loc)
            new.append(part)
            operands.append(part.name)
    fused = Node(graph.fresh(_joined([n.name for n in run])), head.op, operands,
                 {k: v for k, v in head.attrs.items() if k != "eq_root"}, (*head.shape[:-1], stop - start),
                 head.dtype, head.loc)
    new.append(fused)
    read = [i for n in run for i in n.inputs]
    items: list[tuple[str, Node]] = []
    offsets = {n.name: s - start for s, n in zip(_starts(graph, run), run)}
    for name, node in graph.nodes.items():
        if name == first.name:
            items += [(n.name, n) for n in new]
        if name in offsets:  # each sibling becomes its slice of the fused op, under its own name
            offset = offsets[name]
            node = replace(node, op="slice", inputs=[fused.name],
                           attrs={**{k: v for k, v in node.attrs.items() if k == "eq_root"},
                                  "axis": -1, "start": offset, "stop": offset + node.shape[-1]})
        items.append((name, node))
    graph.nodes = dict(items)
    _move_weights_first(graph, [i for i in read if graph[i].op == "param"], new[0].name)
    users = graph.users()
    for name in dict.fromkeys(read):  # the siblings' old operand slices, unless something else reads them
        node = graph[name]
        if node.op == "slice" and not users.get(name) and name not in kept and not node.attrs.get("eq_root"):
            del graph.nodes[name]


def _starts(graph: Graph, run: list[Node]) -> list[int]:
    """The start of the range each sibling of ``run`` works on (read from its first slice operand)."""
    return [next(graph[i].attrs["start"] for i in n.inputs if graph[i].op == "slice") for n in run]


def _joined(names: list[str]) -> str:
    """``f_i_o_c_add`` for siblings ``f_add``, ``i_add``, ``o_add``, ``c_add`` (a called module's prefix kept)."""
    prefix = names[0][: names[0].rfind(".") + 1]
    short = [n.removeprefix(prefix) for n in names]
    parts = [n.split("_") for n in short]
    common = 0  # how many trailing `_`-separated parts every name shares
    while common < min(map(len, parts)) - 1 and len({tuple(p[len(p) - common - 1:]) for p in parts}) == 1:
        common += 1
    heads = ["_".join(p[: len(p) - common]) for p in parts]
    return prefix + "_".join(heads + parts[0][len(parts[0]) - common:])
