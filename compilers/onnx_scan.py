"""The step of a ``Scan``, made cheap for onnxruntime: fewer body nodes, one scanned input per fused product.

onnxruntime runs a Scan body node by node at every step, so what a step costs is mostly how many nodes it has,
not how much arithmetic they do. After seqdsl's passes (fusion, hoisting) an LSTM step still reads four sliced
input projections and adds each gate's slice of ``U h`` and its bias on its own: 25 nodes. This IR rewrite, run
only for the ONNX export, works on whole fused products instead. Per loop with sequences:
  1. step inputs that are slices, along the last axis, of one outer value and together cover all of it become
     one step input (the whole value), sliced inside the step;
  2. ``add(slice(X, r), slice(Y, r))`` for ranges r that cover X and Y becomes ``slice(add(X, Y), r)``, one add;
     ``add(slice(X, r), p_r)`` with a batchless invariant ``p_r`` (a bias) for every range becomes
     ``slice(add(X, concat(p_r...)), r)``;
  3. ``(A + M) + C`` with M reading the state and A, C not becomes ``(A + C) + M`` (`hoist.regroup_sums`, here
     for spec equations too), so that `hoist` moves ``A + C`` (input projection plus bias) out of the loop as
     one product over the whole sequence;
  4. then `seqdsl.passes.hoist`, and step inputs and captures the step no longer reads are dropped.
Rule 3 reassociates a float sum: the result may differ from the spec's order by one rounding (~1e-7).
What is left of an LSTM step is ``U h``, one add, the gate slices (one ``Split`` in ONNX), the activations and
the state update.
"""

from __future__ import annotations

import copy
from dataclasses import replace

from seqdsl.ir import Graph, Model, Node, loop_of
from seqdsl.passes import hoist
from seqdsl.passes.hoist import classify, regroup_sums

LEAVES = ("state", "step_input", "capture", "param", "const")


def fuse_steps(model: Model) -> Model:
    """``model`` with the step of every top-level loop over a sequence rewritten as above (numbers unchanged up to
    rounding)."""
    model = copy.deepcopy(model)
    changed = False
    for node in model.graph:
        if node.op == "loop" and loop_of(node).steps is None:
            changed |= _merge_sequences(model.graph, node)
            loop = loop_of(node)
            changed |= _fuse_body(loop.body, loop.read)
    if not changed:
        return model
    for _ in range(4):
        model, moved = hoist(model)
        if not moved:
            break
    for node in model.graph:
        if node.op == "loop":
            _drop_unread_inputs(node)
    _drop_dead(model.graph, set(model.graph.outputs.values()))  # the slices the merged step inputs replaced
    model.verify()
    return model


def _tiles(ranges: list[tuple[int, int]], length: object) -> bool:
    """The ranges, sorted, cover 0 .. length exactly once (two at least: one range is no fusion)."""
    spans = sorted(ranges)
    return len(spans) > 1 and spans[0][0] == 0 and spans[-1][1] == length and all(
        a[1] == b[0] for a, b in zip(spans, spans[1:]))


def _last_axis_slice(node: Node) -> tuple[int, int] | None:
    if node.op == "slice" and node.attrs["axis"] in (-1, len(node.shape) - 1):
        return node.attrs["start"], node.attrs["stop"]
    return None


def _merge_sequences(parent: Graph, node: Node) -> bool:
    """Rule 1: one step input per outer value that the loop reads as slices covering all of it."""
    loop = loop_of(node)
    n_s, n_q = loop.n_states, loop.n_sequences
    sequences = node.inputs[n_s:n_s + n_q]
    groups: dict[str, list[int]] = {}
    for i, seq in enumerate(sequences):
        if _last_axis_slice(parent[seq]) is not None:
            groups.setdefault(parent[seq].inputs[0], []).append(i)
    merged = {src: idx for src, idx in groups.items()
              if _tiles([_last_axis_slice(parent[sequences[i]]) for i in idx], parent[src].shape[-1])}  # type: ignore
    if not merged:
        return False
    body = loop.body
    kept = [i for i in range(n_q) if not any(i in idx for idx in merged.values())]
    new_sequences = [sequences[i] for i in kept] + list(merged)
    index_of = {old: new for new, old in enumerate(kept)}
    new_body = Graph()
    new_body.outputs = dict(body.outputs)
    whole: dict[str, str] = {}
    for k, src in enumerate(merged):  # the whole values first: the slices of them come later in the body
        name = body.fresh(f"{src}_t")
        step_shape = (parent[src].shape[0], *parent[src].shape[2:])
        new_body.add(Node(name, "step_input", [], {"index": len(kept) + k, "shape": step_shape}, step_shape,
                          parent[src].dtype, parent[src].loc))
        whole[src] = name
    for n in body:
        if n.op == "step_input" and n.attrs["index"] not in index_of:
            seq = parent[sequences[n.attrs["index"]]]
            new_body.add(Node(n.name, "slice", [whole[seq.inputs[0]]], dict(seq.attrs), n.shape, n.dtype, n.loc))
        elif n.op == "step_input":
            new_body.add(replace(n, attrs={**n.attrs, "index": index_of[n.attrs["index"]]}))
        else:
            new_body.add(n)
    node.inputs = [*node.inputs[:n_s], *new_sequences, *node.inputs[n_s + n_q:]]
    node.attrs["loop"] = replace(loop, body=new_body, n_sequences=len(new_sequences))
    return True


def _fuse_body(body: Graph, needed: set[str]) -> bool:
    changed = False
    while _sink_one_group(body, needed) or regroup_sums(body, needed, keep_equations=False):
        changed = True
    return changed


def _sink_one_group(body: Graph, needed: set[str]) -> bool:
    """Rule 2 for one group of adds (the first found); True if one was rewritten."""
    kind = classify(body)
    groups: dict[tuple[str, str], list[tuple[str, tuple[int, int], str | None]]] = {}
    for n in body:
        if n.op != "add":
            continue
        a, b = (body[i] for i in n.inputs)
        for x, y in ((a, b), (b, a)):
            rx = _last_axis_slice(x)
            if rx is None:
                continue
            ry = _last_axis_slice(y)
            if ry == rx and body[y.inputs[0]].shape == body[x.inputs[0]].shape:
                key = tuple(sorted((x.inputs[0], y.inputs[0])))
                groups.setdefault(("pair", *key), []).append((n.name, rx, None))  # type: ignore[arg-type]
                break
            if kind[y.name] == "invariant" and y.shape == (rx[1] - rx[0],) and x.shape[-1] == rx[1] - rx[0]:
                groups.setdefault(("bias", x.inputs[0]), []).append((n.name, rx, y.name))  # type: ignore[arg-type]
                break
    for key, members in groups.items():
        source = key[1]
        ranges = [r for _, r, _ in members]
        if not _tiles(ranges, body[source].shape[-1]) or len(set(ranges)) != len(ranges):
            continue
        first = min(list(body.nodes).index(m) for m, _, _ in members)
        new: list[Node] = []
        src = body[source]
        if key[0] == "pair":
            summed = Node(body.fresh(f"{source}_sum"), "add", [key[1], key[2]], {}, src.shape, src.dtype, src.loc)
        else:
            parts = [p for _, _, p in sorted(members, key=lambda m: m[1])]
            width = sum(body[p].shape[0] for p in parts)  # type: ignore[misc]
            joined = Node(body.fresh(f"{source}_bias"), "concat", parts, {"axis": -1}, (width,), "float32", src.loc)
            new.append(joined)
            summed = Node(body.fresh(f"{source}_biased"), "add", [source, joined.name], {}, src.shape, src.dtype,
                          src.loc)
        new.append(summed)
        at = {m: r for m, r, _ in members}
        rebuilt = Graph()
        rebuilt.outputs = dict(body.outputs)
        for i, n in enumerate(body):
            if i == first:
                for extra in new:
                    rebuilt.add(extra)
            if n.name in at:
                start, stop = at[n.name]
                n = Node(n.name, "slice", [summed.name], {"axis": -1, "start": start, "stop": stop}, n.shape,
                         n.dtype, n.loc)
            rebuilt.add(n)
        body.nodes = rebuilt.nodes
        _reorder(body)  # the bias concat reads parameters defined after the first add
        _drop_dead(body, needed)
        return True
    return False


def _reorder(body: Graph) -> None:
    """Definition order again after a rewrite moved an input: a stable topological sort."""
    done: dict[str, Node] = {}

    def visit(name: str) -> None:
        if name in done:
            return
        for i in body[name].inputs:
            visit(i)
        done[name] = body[name]

    for name in list(body.nodes):
        visit(name)
    body.nodes = done


def _drop_dead(body: Graph, needed: set[str]) -> None:
    """Remove op nodes nothing reads (leaves stay: their indices are the loop's)."""
    while True:
        users = body.users()
        read = set(body.outputs.values()) | needed
        dead = [n.name for n in body
                if n.op not in LEAVES and n.op != "input" and not users[n.name] and n.name not in read]
        if not dead:
            return
        for name in dead:
            del body.nodes[name]


def _drop_unread_inputs(node: Node) -> None:
    """Step inputs and captures the step does not read leave the loop's inputs (indices renumbered)."""
    loop = loop_of(node)
    body = loop.body
    needed = loop.read
    users = body.users()
    n_s, n_q = loop.n_states, loop.n_sequences
    new_inputs = list(node.inputs[:n_s])
    counts = {}
    for op, offset, count in (("step_input", n_s, n_q), ("capture", n_s + n_q, loop.n_captures)):
        leaves = {n.attrs["index"]: n for n in body if n.op == op}
        kept = [i for i in range(count) if i in leaves and (users[leaves[i].name] or leaves[i].name in needed)]
        if op == "step_input" and not kept and count:
            kept = [0]  # a Scan needs one scanned input to know its length
        for new, old in enumerate(kept):
            leaves[old].attrs["index"] = new
        for old, leaf in leaves.items():
            if old not in kept:
                del body.nodes[leaf.name]
        new_inputs += [node.inputs[offset + i] for i in kept]
        counts[op] = len(kept)
    node.inputs = new_inputs
    node.attrs["loop"] = replace(loop, n_sequences=counts["step_input"], n_captures=counts["capture"])
