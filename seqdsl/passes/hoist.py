"""Hoisting: work in a step that does not depend on the state is done once, outside the loop.

A body node is *dynamic* if it reads a state (directly or not), *time-varying* if it reads a step input but no
state, and *invariant* otherwise (it reads only parameters, constants and captures). Rewrite rules, per loop:
  1. an invariant op node (``U_a @ hs``, an attention's projection of the encoder outputs) is computed once in the
     parent graph and read in the body as a new ``capture``;
  2. a time-varying op node (``W @ x``: the input projections) whose op acts on trailing axes only, and whose
     other inputs carry no batch axis (parameters, constants), is computed for every step at once in the parent
     graph, on the whole sequence (B, T, ...), and read in the body as a new ``step_input``;
  3. chains move together (``W @ x + b`` leaves as a whole); dynamic nodes stay;
  4. `regroup`, a pass of its own that runs first (before bias folding): a sum of a state-free term and a sum
     with one state term is regrouped so that the state-free terms are added first: ``(W x + U h) + b`` ->
     ``(W x + b) + U h``, whose ``W x + b`` then folds into one linear map and leaves the loop (rounding may
     differ in the last bit, as for any reordered sum).
Loops inside bodies are treated first. The numbers do not change: tests/test_passes.py checks every spec.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Literal

from ..ir import Graph, Loop, Model, Node, loop_of
from ..ops import broadcast

Kind = Literal["dynamic", "time", "invariant"]

# Ops that act on trailing axes only, so applying them to (B, T, ...) equals applying them at every step.
TIME_DISTRIBUTABLE = {"add", "sub", "mul", "div", "neg", "sigmoid", "tanh", "relu", "exp", "sqrt", "linear",
                      "contract", "embedding", "layer_norm", "softmax", "log_softmax", "concat", "slice"}
LEAVES = {"state", "step_input", "capture", "param", "const"}
RANDOM = {"dropout"}  # a fresh draw at every step: moving it out would reuse one mask for all steps


def hoist(model: Model) -> tuple[Model, bool]:
    """``model`` with state-independent step work moved out of every loop; and whether anything moved."""
    model = copy.deepcopy(model)  # the rewrite renumbers body leaves in place
    graph, changed = _hoist_graph(model.graph)
    out = replace(model, graph=graph)
    out.verify()
    return out, changed


def _hoist_graph(graph: Graph) -> tuple[Graph, bool]:
    out = Graph()
    out.reserved = set(graph.nodes)  # names still to come: new nodes must not take them
    out.outputs = dict(graph.outputs)
    changed = False
    for node in graph:
        if node.op == "loop":
            loop = loop_of(node)
            body, inner_changed = _hoist_graph(loop.body)
            node = Node(node.name, node.op, list(node.inputs), {**node.attrs, "loop": replace(loop, body=body)},
                        node.shape, node.dtype, node.loc)
            changed |= inner_changed
            changed |= _hoist_loop(out, node)
        out.add(node)
    out.reserved = set()  # every name has come
    return out, changed


def _axis_ok(node: Node) -> bool:
    """A trailing axis (-1, -2, ... but not the batch axis), which stays the same axis once T is inserted."""
    return -len(node.shape) < node.attrs.get("axis", -1) < 0


def classify(body: Graph) -> dict[str, Kind]:
    """Each body node: ``dynamic`` (reads a state), ``time`` (reads a step input, no state) or ``invariant``."""
    kind: dict[str, Kind] = {}
    for n in body:
        if n.op == "state":
            kind[n.name] = "dynamic"
        elif n.op == "step_input":
            kind[n.name] = "time"
        elif n.op in ("capture", "param", "const"):
            kind[n.name] = "invariant"
        elif n.op == "loop":
            kind[n.name] = "dynamic"  # nested loops stay where they are
        else:
            kinds = {kind[i] for i in n.inputs}
            kind[n.name] = "dynamic" if "dynamic" in kinds else "time" if "time" in kinds else "invariant"
    return kind


def _hoist_loop(parent: Graph, node: Node) -> bool:
    """Move what can move out of the loop ``node`` (not yet added to ``parent``); True if anything moved."""
    loop = loop_of(node)
    body = loop.body
    kind = classify(body)
    keep = set(loop.updates)  # a state's new value stays a body node of its own
    n_s, n_q = loop.n_states, loop.n_sequences
    sequences, captures = node.inputs[n_s:n_s + n_q], node.inputs[n_s + n_q:]
    outer: dict[str, str] = {}  # body node -> parent node holding its value (whole sequence, or once)
    time_axis = _time_symbol(parent, sequences, loop)
    moved_time: list[str] = []
    moved_invariant: list[str] = []
    for n in body:
        if n.op in LEAVES:
            if n.op == "step_input":
                outer[n.name] = sequences[n.attrs["index"]]
            elif n.op == "capture":
                outer[n.name] = captures[n.attrs["index"]]
            continue
        if n.name in keep or n.op == "item" or n.op in RANDOM:
            continue
        if kind[n.name] == "invariant" and all(_available(body, i, outer) for i in n.inputs):
            outer[n.name] = _copy_out(parent, body, n, outer, time_axis=None)
            moved_invariant.append(n.name)
        elif kind[n.name] == "time" and n.op in TIME_DISTRIBUTABLE and _axis_ok(n) and all(
                kind[i] == "time" and i in outer or _batchless(body[i]) and _available(body, i, outer)
                for i in n.inputs):
            outer[n.name] = _copy_out(parent, body, n, outer, time_axis=time_axis)
            moved_time.append(n.name)
    # only nodes still read inside the loop (or returned by it) need to come back in
    users = body.users()
    needed = keep | {r.node for r in loop.returns}
    moved = set(moved_time) | set(moved_invariant)
    boundary_time = [m for m in moved_time if needed & {m} or any(u not in moved for u in users[m])]
    boundary_inv = [m for m in moved_invariant if needed & {m} or any(u not in moved for u in users[m])]
    if not boundary_time and not boundary_inv:
        for name in list(parent.nodes)[::-1]:  # nothing crosses: undo the copies
            if parent[name].attrs.get("_hoisted"):
                del parent.nodes[name]
        return False
    new_body = Graph()
    new_body.outputs = dict(body.outputs)
    for n in body:
        if n.name in moved and n.name not in boundary_time and n.name not in boundary_inv:
            continue
        if n.name in boundary_time:
            idx = n_q + boundary_time.index(n.name)
            new_body.add(Node(n.name, "step_input", [], {"index": idx, "shape": n.shape}, n.shape, n.dtype, n.loc))
        elif n.name in boundary_inv:
            idx = len(captures) + boundary_inv.index(n.name)
            new_body.add(Node(n.name, "capture", [], {"index": idx, "shape": n.shape, "dtype": n.dtype},
                              n.shape, n.dtype, n.loc))
        else:
            new_body.add(n)
    for m in boundary_time + boundary_inv:  # name what crossed after what it is: `W_f @ x` -> W_f_x
        nice = _paper_name(body, body[m])
        if nice and m not in needed and nice not in new_body.nodes and nice not in parent.nodes \
                and nice not in parent.reserved:
            _rename(new_body, m, nice)
            _rename(parent, outer[m], nice)
            outer[m] = nice
    _drop_unused_leaves(new_body, loop)
    for name in parent.nodes:
        parent[name].attrs.pop("_hoisted", None)
    node.inputs = (node.inputs[:n_s] + list(sequences) + [outer[m] for m in boundary_time]
                   + list(captures) + [outer[m] for m in boundary_inv])
    node.attrs["loop"] = replace(loop, body=new_body, n_sequences=n_q + len(boundary_time),
                                 n_captures=len(captures) + len(boundary_inv))
    _compact(node)
    return True


def regroup(model: Model) -> tuple[Model, bool]:
    """``model`` with every loop body's sums regrouped, state-free terms first (rule 4); and whether any was."""
    model = copy.deepcopy(model)
    changed = _regroup_graph(model.graph)
    model.verify()
    return model, changed


def _regroup_graph(graph: Graph) -> bool:
    changed = False
    for node in graph:
        if node.op == "loop":
            loop = loop_of(node)
            changed |= _regroup_graph(loop.body)
            changed |= regroup_sums(loop.body, loop.read)
    return changed


def regroup_sums(body: Graph, kept: set[str], keep_equations: bool = True) -> bool:
    """Rule 4, in place: ``add(add(a, d), c)`` with ``d`` the only term that reads a state becomes
    ``add(add(a, c), d)`` (the inner sum read by nothing else, not in ``kept``, and with ``keep_equations``
    not a spec equation's value), its new inner sum placed just before the outer."""
    kind = classify(body)
    users = body.users()
    changed = False
    for outer in list(body):
        if outer.op != "add":
            continue
        for k in (0, 1):
            inner, c = body[outer.inputs[k]], body[outer.inputs[1 - k]]
            if inner.op != "add" or users.get(inner.name) != [outer.name] or inner.name in kept \
                    or (keep_equations and inner.attrs.get("eq_root")) or kind[c.name] == "dynamic":
                continue
            dynamic = [i for i in inner.inputs if kind[i] == "dynamic"]
            if len(dynamic) != 1 or inner.inputs[0] == inner.inputs[1]:
                continue
            static = next(i for i in inner.inputs if i != dynamic[0])
            regrouped = replace(inner, inputs=[static, c.name], shape=broadcast(body[static].shape, c.shape))
            items = [(n, v) for n, v in body.nodes.items() if n != inner.name]
            at = [n for n, _ in items].index(outer.name)
            items[at:at] = [(inner.name, regrouped)]
            body.nodes = dict(items)
            body.nodes[outer.name] = replace(outer, inputs=[inner.name, dynamic[0]])
            kind[inner.name] = "time" if "time" in (kind[static], kind[c.name]) else "invariant"
            users = body.users()
            changed = True
            break
    return changed


def _paper_name(body: Graph, n: Node) -> str | None:
    """``W_f_x`` for ``W_f @ x`` (a weight times a step input or capture), as the paper writes W_f x_t."""
    if n.op != "linear":
        return None
    x, w = body[n.inputs[0]], body[n.inputs[1]]
    if w.op == "param" and x.op in ("step_input", "capture"):
        short = lambda name: name.rsplit(".", 1)[-1]  # noqa: E731
        prefix = n.name[: n.name.rfind(".") + 1]
        return f"{prefix}{short(w.attrs['name'])}_{short(x.name)}"
    return None


def _rename(graph: Graph, old: str, new: str) -> None:
    """Rename node ``old`` to ``new`` in ``graph``, keeping its place and every reference to it."""
    graph.nodes = {(new if k == old else k): v for k, v in graph.nodes.items()}
    graph[new].name = new
    for n in graph:
        n.inputs = [new if i == old else i for i in n.inputs]
    graph.outputs = {k: (new if v == old else v) for k, v in graph.outputs.items()}


def _available(body: Graph, name: str, outer: dict[str, str]) -> bool:
    n = body[name]
    return name in outer or n.op in ("param", "const")


def _batchless(n: Node) -> bool:
    return not n.shape or n.shape[0] != "B"


def _time_symbol(parent: Graph, sequences: list[str], loop: Loop) -> str | int:
    if sequences:
        return parent[sequences[0]].shape[1]
    return loop.steps or loop.time


def _copy_out(parent: Graph, body: Graph, n: Node, outer: dict[str, str], time_axis: str | int | None) -> str:
    """A copy of body node ``n`` in ``parent``; with ``time_axis`` it works on whole sequences (B, T, ...)."""
    inputs = []
    for i in n.inputs:
        if i not in outer:  # a parameter or constant: its own copy in the parent
            leaf = body[i]
            outer[i] = parent.add(Node(parent.fresh(i, parent.reserved), leaf.op, [], dict(leaf.attrs), leaf.shape, leaf.dtype,
                                       leaf.loc)).name
            parent[outer[i]].attrs["_hoisted"] = True
        inputs.append(outer[i])
    shape = n.shape if time_axis is None else (n.shape[0], time_axis, *n.shape[1:])
    copy = Node(parent.fresh(n.name, parent.reserved), n.op, inputs, {**n.attrs, "_hoisted": True}, shape, n.dtype, n.loc)
    return parent.add(copy).name


def _drop_unused_leaves(body: Graph, loop: Loop) -> None:
    """Parameters and constants only the moved work read are no longer needed in the body."""
    read = {i for n in body for i in n.inputs} | loop.read
    for n in list(body):
        if n.op in ("param", "const") and n.name not in read:
            del body.nodes[n.name]


def _compact(node: Node) -> None:
    """Drop the step inputs and captures the rewritten body no longer reads; renumber the rest to match the
    loop node's inputs (a sequence whose every use moved out is not sliced any more)."""
    loop = loop_of(node)
    read = {i for n in loop.body for i in n.inputs} | loop.read
    n_s, n_q = loop.n_states, loop.n_sequences
    groups = {"step_input": node.inputs[n_s:n_s + n_q], "capture": node.inputs[n_s + n_q:]}
    kept: dict[str, list[str]] = {"step_input": [], "capture": []}
    for op, args in groups.items():
        for leaf in sorted((n for n in loop.body if n.op == op), key=lambda n: n.attrs["index"]):
            original = leaf.attrs["index"]
            if leaf.name in read or (op == "step_input" and not kept[op] and loop.steps is None
                                     and not _any_read(loop.body, read, op)):
                leaf.attrs["index"] = len(kept[op])
                kept[op].append(args[original])
            else:
                del loop.body.nodes[leaf.name]
    node.inputs = node.inputs[:n_s] + kept["step_input"] + kept["capture"]
    node.attrs["loop"] = replace(loop, n_sequences=len(kept["step_input"]), n_captures=len(kept["capture"]))


def _any_read(body: Graph, read: set[str], op: str) -> bool:
    return any(n.op == op and n.name in read for n in body)
