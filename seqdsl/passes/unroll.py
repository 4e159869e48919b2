"""Unrolling: every recurrent ``loop`` becomes T copies of its step graph (LeCun's Figure 2).

The result is a DAG — what backpropagation through time differentiates — for one fixed T. Rewrite rules, for a
loop over T steps (positions ``p = t`` forward, ``p = T-1-t`` reversed, for t = 0 .. T-1):
  1. ``step_input[i]`` at step t  ->  ``time_slice(sequence_i, index=p)``;
  2. ``state[i]`` at step 0  ->  the loop's initial value i; at step t > 0 -> the copy of ``updates[i]`` of step t-1;
  3. ``capture[i]``  ->  the loop's capture input i (the same node at every step);
  4. ``param``  ->  one shared ``param`` node per parameter in the parent graph (weights shared by construction);
  5. every other body node  ->  a copy named ``<name>@<p>``;
  6. an ``item`` returning every step  ->  ``stack`` of the copies in time order; ``final`` -> the copy of the last
     step processed; ``last`` -> the copy at position T-1.
Loops nested in a body are unrolled first. Nothing else changes.
"""

from __future__ import annotations

from dataclasses import replace

from ..ir import Graph, Model, Node, all_nodes, loop_of


class UnrollError(ValueError):
    """The model or the lengths asked for cannot be unrolled (a mistake in the request: the CLI exits 2)."""


def unroll(model: Model, steps: int | dict[str, int]) -> tuple[Model, bool]:
    """A copy of ``model`` with every loop unrolled, and whether anything changed.

    ``steps`` is the length of each time axis (``{"T": 4, "S": 6}``); a single number is accepted when the model
    has one time axis. Loops of a fixed number of steps (no sequence input) keep theirs.
    """
    if any(n.op == "loop" and loop_of(n).stop is not None for n in all_nodes(model.graph)):
        raise UnrollError("a block that stops at an end token runs a data-dependent number of steps: it cannot be "
                         "unrolled (export it looped: an ONNX Loop)")
    axes = sorted({loop_of(n).time for n in all_nodes(model.graph) if n.op == "loop" and loop_of(n).steps is None})
    lengths = steps if isinstance(steps, dict) else {}
    if isinstance(steps, int):
        if len(axes) > 1:
            raise UnrollError(f"the model has several time axes {axes}: give one length each, e.g. {{'T': 4, 'S': 6}}")
        lengths = {a: steps for a in axes}
    missing = [a for a in axes if a not in lengths]
    if missing or any(v < 1 for v in lengths.values()):
        raise UnrollError(f"unrolling needs a length of at least 1 for every time axis {axes}, got {lengths}")
    graph, changed = _unroll_graph(model.graph, lengths)
    out = replace(model, graph=graph)
    out.verify()
    return out, changed


def _unroll_graph(graph: Graph, lengths: dict[str, int]) -> tuple[Graph, bool]:
    out = Graph()
    out.reserved = set(graph.nodes)  # the names still to be copied: a step's copies must not take them
    changed = False
    alias: dict[str, str] = {}  # node of `graph` -> node of `out` holding its value
    shared_params: dict[str, str] = {}
    for node in graph:
        if node.op == "loop":
            changed = True
            items = [n for n in graph if n.op == "item" and n.inputs == [node.name]]
            _expand_loop(out, node, items, [alias[i] for i in node.inputs], lengths, alias, shared_params)
        elif node.op == "item":
            continue  # bound by _expand_loop
        elif node.op == "param" and node.attrs["name"] in shared_params:
            alias[node.name] = shared_params[node.attrs["name"]]  # one node per parameter, wherever it was read
        else:
            copy = Node(node.name, node.op, [alias[i] for i in node.inputs], dict(node.attrs), node.shape, node.dtype, node.loc)
            if node.op == "param":
                shared_params[node.attrs["name"]] = node.name
            alias[node.name] = out.add(copy).name
    out.outputs = {k: alias[v] for k, v in graph.outputs.items()}
    out.reserved = set()
    return out, changed


def _expand_loop(out: Graph, node: Node, items: list[Node], args: list[str], lengths: dict[str, int], alias: dict[str, str],
                 shared_params: dict[str, str]) -> None:
    loop = loop_of(node)
    body, _ = _unroll_graph(loop.body, lengths)  # nested loops first
    steps = loop.steps or lengths[loop.time]  # a loop over no sequence has its own fixed length
    n_s, n_q = loop.n_states, loop.n_sequences
    states = args[:n_s]
    sequences, captures = args[n_s:n_s + n_q], args[n_s + n_q:]
    per_step: list[dict[str, str]] = []
    for t in range(steps):
        pos = steps - 1 - t if loop.reverse else t
        env: dict[str, str] = {}
        for b in body:
            if b.op == "state":
                env[b.name] = states[b.attrs["index"]]
            elif b.op == "capture":
                env[b.name] = captures[b.attrs["index"]]
            elif b.op == "param":
                pname = b.attrs["name"]
                if pname not in shared_params:
                    shared_params[pname] = out.add(Node(out.fresh(pname), "param", [], dict(b.attrs), b.shape,
                                                        b.dtype, b.loc)).name
                env[b.name] = shared_params[pname]
            elif b.op == "step_input":
                env[b.name] = out.add(Node(out.fresh(f"{b.name}@{pos}"), "time_slice", [sequences[b.attrs["index"]]],
                                           {"index": pos}, b.shape, b.dtype, b.loc)).name
            else:
                attrs = dict(b.attrs)
                env[b.name] = out.add(Node(out.fresh(f"{b.name}@{pos}"), b.op, [env[i] for i in b.inputs], attrs,
                                           b.shape, b.dtype, b.loc)).name
        states = [env[u] for u in loop.updates]
        per_step.append(env)
    by_position = list(reversed(per_step)) if loop.reverse else per_step
    for item in items:
        r = loop.returns[item.attrs["index"]]
        if r.kind == "all":
            value = out.add(Node(out.fresh(item.name), "stack", [env[r.node] for env in by_position], {},
                                 (item.shape[0], steps, *item.shape[2:]), item.dtype, item.loc)).name
        elif r.kind == "final":
            value = per_step[-1][r.node]
        else:
            value = by_position[-1][r.node]
        alias[item.name] = value
