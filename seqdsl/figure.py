"""Block diagrams of a model as Graphviz DOT: LeCun's Figure 1 (rolled) and Figure 2 (unrolled in time).

Rolled: every op of the IR is a node, parameters and constants written into the node that uses them, edges
labelled with the shape that flows along them (``[B, T, 32]``). Module calls are clusters (``enc: GRU``); below
``depth`` levels of calls a module is one box, with a loop marked z(t−1) if it is recurrent. A recurrent block
is a cluster split as h(t) = Enc(x(t)), z(t) = G(h(t), z(t−1), w), y(t) = Dec(z(t)) — Enc reads no state, Dec
feeds no state — and each state's update returns to its z(t−1) node along a red delay edge.

Unrolled (``unroll=N``): each recurrent block becomes N copies of Enc → G → Dec side by side, x(1..N) in,
y(1..N) out, the states passed from copy to copy, and its weights w drawn once with an edge to every copy.

Text from the spec (names, file names) reaches DOT only through `label`, the one escaping function (labels are
Graphviz HTML-like labels, so escaping is XML escaping); node ids are IR names, which are checked identifiers,
and `_node_id` refuses anything else.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

import graphviz

from .errors import Location, SpecError
from .ir import Graph, Loop, Model, Node, Scope, loop_of, scope_of
from .ops import fmt

_ID = re.compile(r"[\w.~@/]+")  # spec names are (Unicode) identifiers; no `:`, which DOT reads as a port

# How an op reads in a node (one entry per op of seqdsl.ops.OPS); attributes are written after it.
SYMBOLS: dict[str, str] = {
    "input": "input", "param": "param", "const": "const", "step_input": "x(t)", "state": "z(t−1)",
    "capture": "capture",
    "add": "+", "sub": "−", "mul": "×", "div": "÷", "neg": "−", "linear": "@", "matmul": "@", "contract": "@",
    "matvec": "@",
    "sigmoid": "σ", "tanh": "tanh", "relu": "relu", "exp": "exp", "sqrt": "√", "transpose": "transpose",
    "unsqueeze": "unsqueeze", "squeeze": "squeeze", "sum": "sum", "mean": "mean", "argmax": "argmax",
    "layer_norm": "layer_norm", "dropout": "dropout", "split_heads": "split_heads", "merge_heads": "merge_heads",
    "causal": "causal", "mask": "mask", "positional_encoding": "positions", "softmax": "softmax",
    "log_softmax": "log_softmax", "concat": "concat", "embedding": "embedding", "last": "last", "first": "first",
    "slice": "slice", "zeros": "0", "expand_batch": "learned", "time_slice": "x[:, t]",
    "sequence_mask": "t < lengths", "select": "keep if t < length", "stack": "stack", "loop": "loop",
    "cell": "cell", "item": "item", "attention": "attention",
    "gelu": "gelu", "silu": "silu", "softplus": "softplus", "elu": "elu", "leaky_relu": "leaky_relu", "log": "log",
    "abs": "abs", "min": "min", "max": "max", "clamp": "clamp", "where": "where",
}
INFIX = {"add", "sub", "mul", "div", "matmul", "matvec"}  # ops written between their operands: 1 − ·, · + b
_FEED = {"color": "#9e9e9e", "arrowsize": "0.5"}  # a sequence fanned out to its steps, or the steps back in
_HIDDEN_ATTRS = {"shape", "dtype", "index", "eq_root", "loop", "name", "value", "_op"}

COLORS = {"module": "#eef3fb", "part": "#f7f9fd", "loop": "#fff8e6", "enc": "#ffffff", "G": "#ffffff",
          "dec": "#ffffff", "state": "#fde2e2", "io": "#e8f5e9", "weights": "#f3e5f5", "box": "#e3ecfa"}
SECTIONS = {"enc": "Enc: h(t) = Enc(x(t))", "G": "G: z(t) = G(h(t), z(t−1), w)", "dec": "Dec: y(t) = Dec(z(t))"}


def label(*lines: str | tuple[str, str]) -> str:
    """The one escaping function: plain text lines (or (text, style) pairs) as a Graphviz HTML-like label.

    Styles: "b" bold, "small" a smaller grey line. Everything is XML-escaped and unprintable characters are
    replaced, so no text can close the label, start an element or reach a DOT attribute."""
    parts = []
    for line in lines:
        text, style = (line, "") if isinstance(line, str) else line
        text = "".join(c if c.isprintable() else "\ufffd" for c in text)  # no control characters reach Graphviz
        escaped = html.escape(text, quote=True)
        if style == "b":
            escaped = f"<b>{escaped}</b>"
        elif style == "small":
            escaped = f'<font point-size="9" color="#555555">{escaped}</font>'
        parts.append(escaped)
    return "<" + "<br/>".join(parts) + ">"


def _node_id(text: str) -> str:
    if not _ID.fullmatch(text):
        raise ValueError(f"internal: {text!r} cannot be a Graphviz node id")
    return text


def shape_text(node: Node) -> str:
    return fmt(node.shape) + ("" if node.dtype == "float32" else f" {node.dtype}")


def op_symbol(node: Node) -> str:
    """The op of ``node`` as it reads in a figure, with its attributes (``softmax axis=-1``)."""
    if node.op not in SYMBOLS:
        raise KeyError(f"op `{node.op}` has no entry in seqdsl.figure.SYMBOLS")
    extra = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in node.attrs.items()
             if k not in _HIDDEN_ATTRS and v is not None]
    return " ".join([SYMBOLS[node.op], *extra])


def sections(loop: Loop) -> dict[str, str]:
    """Each body node's part of LeCun's z(t) = G(Enc(x(t)), z(t−1), w), y(t) = Dec(z(t)): ``enc`` if it reads no
    state (and is no update), ``dec`` if it reads a state but no update depends on it, else ``G``; the leaves
    (inputs, captures, parameters, constants) are "leaf"."""
    body = loop.body
    reads_state: dict[str, bool] = {}
    for node in body:
        reads_state[node.name] = node.op == "state" or any(reads_state.get(i, False) for i in node.inputs)
    feeds = set(loop.updates)
    for node in reversed(list(body)):
        if node.name in feeds:
            feeds.update(node.inputs)
    out = {}
    for node in body:
        if node.op in ("step_input", "capture", "param", "const"):
            out[node.name] = "leaf"
        elif not reads_state[node.name] and node.name not in loop.updates:  # an update is G's output, always
            out[node.name] = "enc"
        else:
            out[node.name] = "G" if node.name in feeds else "dec"
    return out


@dataclass
class _Cluster:
    label: str  # HTML-like markup made by `label`, without its outer <>
    color: str
    style: str = "rounded,filled"
    nodes: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    children: dict[str, "_Cluster"] = field(default_factory=dict)
    same_rank: list[list[str]] = field(default_factory=list)


class _Figure:
    """One figure under construction: nodes placed in a tree of clusters, edges kept apart, DOT at the end."""

    def __init__(self, model: Model, depth: int | None, unroll: int | None):
        self.model, self.depth, self.unroll = model, depth, unroll
        self.root = _Cluster("", "white")
        self.edges: list[tuple[str, str, dict[str, str]]] = []
        self.edge_keys: set[tuple[str, str, tuple[tuple[str, str], ...]]] = set()
        self.drawn: dict[str, str] = {}  # IR value (qualified) -> the drawn node standing for it
        self.collapsed: dict[str, str] = {}  # scope path -> its box

    # ---------------------------------------------------------------------------------------------- layout

    def cluster(self, path: tuple[str, ...], labels: dict[str, tuple[str, str, str]]) -> _Cluster:
        here = self.root
        for key in path:
            if key not in here.children:
                text, color, style = labels[key]
                here.children[key] = _Cluster(text, color, style)
            here = here.children[key]
        return here

    def scope_chain(self, scope: str) -> list[str]:
        """The scopes enclosing ``scope`` (outermost first), itself last."""
        parts, chain = scope.split("."), []
        for i in range(1, len(parts) + 1):
            path = ".".join(parts[:i])
            if path in self.model.scopes:
                chain.append(path)
        return chain if scope else []

    def box_of(self, scope: str) -> str | None:
        """The box that stands for ``scope`` if it lies below ``depth`` levels of calls."""
        if self.depth is None:
            return None
        level = 0
        for path in self.scope_chain(scope):
            if not self.model.scopes[path].part:
                level += 1
            if level > self.depth:
                return path
        return None

    def scope_labels(self, chain: list[str]) -> dict[str, tuple[str, str, str]]:
        out = {}
        for path in chain:
            s = self.model.scopes[path]
            out["scope:" + path] = (self.scope_title(path, s), COLORS["part" if s.part else "module"], "rounded,filled")
        return out

    def scope_title(self, path: str, s: Scope) -> str:
        local = path.rsplit(".", 1)[-1]
        if s.part:
            return label(s.part)[1:-1]
        extra = f" ×{s.repeat}" if s.repeat else ""
        extra += " (both directions)" if s.direction == "both" else f" ({s.direction})" if s.direction else ""
        count = sum(p.size for name, p in self.model.params.items() if name.startswith(path + "."))
        return label((f"{local}: {s.module}{extra}", "b"), (f"{count:,} parameters", "small"))[1:-1]

    def place(self, scope_path: tuple[str, ...], labels: dict[str, tuple[str, str, str]], node_id: str,
              **attrs: str) -> str:
        self.cluster(scope_path, labels).nodes.append((_node_id(node_id), attrs))
        return node_id

    def same_rank(self, path: tuple[str, ...], labels: dict[str, Any], ids: list[str], chain: bool = True) -> None:
        """``ids`` side by side, in this order: one rank, held in order by invisible flat edges."""
        self.cluster(path, labels).same_rank.append([_node_id(i) for i in ids])
        if chain:
            for a, b in zip(ids, ids[1:]):
                self.edge(a, b, style="invis")

    def edge(self, a: str, b: str, **attrs: str) -> None:
        key = (a, b, tuple(sorted(attrs.items())))
        if key not in self.edge_keys:  # several values flowing into one collapsed box draw one edge
            self.edge_keys.add(key)
            self.edges.append((_node_id(a), _node_id(b), attrs))

    # ---------------------------------------------------------------------------------------------- graphs

    def draw_graph(self, graph: Graph, ctx: str, outer: tuple[str, ...], outer_labels: dict[str, Any],
                   leaves: dict[str, str] | None = None, section_of: dict[str, str] | None = None,
                   loop_key: str | None = None) -> None:
        """Draw the nodes of ``graph``; ``ctx`` qualifies ids of a loop body; ``leaves`` maps the body's leaves to
        drawn nodes already made; inside a body ``section_of`` puts nodes in Enc, G or Dec."""
        for node in graph:
            qual = ctx + node.name
            if leaves and node.name in leaves:
                self.drawn[qual] = leaves[node.name]
                continue
            if node.op in ("param", "const") or qual in self.drawn:
                continue  # parameters and constants are written into the nodes that use them; items are drawn
            scope = scope_of(node.name, self.model.scopes)
            box = self.box_of(scope)
            path, labels = self.path_for(scope, outer, outer_labels,
                                         section_of.get(node.name) if section_of else None, loop_key, box)
            if box is not None:
                self.drawn[qual] = self.collapsed_box(box, path, labels)
                self.connect(graph, node, ctx, self.drawn[qual])
                continue
            if node.op == "loop":
                self.draw_loop(node, ctx, path, labels)
                continue
            self.drawn[qual] = self.place(path, labels, qual, **self.op_attrs(graph, node))
            self.connect(graph, node, ctx, qual)
        if not ctx:
            for name, ref in graph.outputs.items():
                out_id = "out~" + name
                self.place((), {}, out_id, label=label((name, "b"), (shape_text(graph[ref]), "small")),
                           shape="ellipse", style="filled", fillcolor=COLORS["io"])
                self.edge(self.drawn[ref], out_id)

    def path_for(self, scope: str, outer: tuple[str, ...], outer_labels: dict[str, Any], section: str | None,
                 loop_key: str | None, box: str | None) -> tuple[tuple[str, ...], dict[str, Any]]:
        """The cluster path of a node in ``scope``: the scopes not already open in ``outer``, then its section."""
        chain = self.scope_chain(scope)
        if box is not None:
            chain = chain[:chain.index(box)]
        open_scopes = {k for k in outer}
        path = list(outer)
        if section is not None and loop_key is not None:
            path.append(loop_key + ":" + section)
        labels = dict(outer_labels)
        if section is not None and loop_key is not None:
            labels[loop_key + ":" + section] = (label((SECTIONS[section], "b"))[1:-1], COLORS[section], "dashed")
        for s in chain:
            key = "scope:" + s
            if key not in open_scopes:
                path.append(key)
        labels.update(self.scope_labels(chain))
        return tuple(path), labels

    def collapsed_box(self, box: str, path: tuple[str, ...], labels: dict[str, Any]) -> str:
        if box not in self.collapsed:
            s = self.model.scopes[box]
            node_id = "box~" + box
            self.place(path, labels, node_id, label="<" + self.scope_title(box, s) + ">", shape="box",
                       style="rounded,filled,bold", fillcolor=COLORS["box"])
            self.collapsed[box] = node_id
            if self.has_loop(box):
                self.edge(node_id, node_id, label=label(("z(t−1)", "b")), color="#c62828", fontcolor="#c62828",
                          penwidth="1.6")
        return self.collapsed[box]

    def has_loop(self, scope: str) -> bool:
        def walk(graph: Graph) -> bool:
            for n in graph:
                if n.op == "loop":
                    if n.name.startswith(scope + ".") or walk(loop_of(n).body):
                        return True
            return False
        return walk(self.model.graph)

    def connect(self, graph: Graph, node: Node, ctx: str, target: str) -> None:
        for i in dict.fromkeys(node.inputs):
            src = graph[i]
            if src.op in ("param", "const"):
                continue
            drawn = self.drawn[ctx + i]
            if drawn != target:
                self.edge(drawn, target, label=label((shape_text(src), "small")))

    def op_attrs(self, graph: Graph, node: Node) -> dict[str, str]:
        """A node's label: its equation's name (if it ends one), the op, and the parameters and constants it reads."""
        lines: list[str | tuple[str, str]] = []
        local = node.name.rsplit(".", 1)[-1]
        attached = [graph[i] for i in node.inputs if graph[i].op in ("param", "const")]
        head = op_symbol(node)
        operands = [a.attrs["name"].rsplit(".", 1)[-1] if a.op == "param" else f"{a.attrs['value']:g}"
                    if a.op == "const" else "·" for a in (graph[i] for i in node.inputs)]
        if attached and node.op in ("linear", "contract"):
            head = f"{operands[1]} {head}"  # W @ ·
        elif attached and node.op in INFIX:
            head = " ".join(o for pair in zip(operands, [head] * len(operands)) for o in pair)[:-len(head) - 1]
        elif attached:
            head = f"{head}({', '.join(operands)})"  # embedding(E, ·)
        if node.op == "input":
            lines = [(local, "b"), (shape_text(node), "small")]
            return dict(label=label(*lines), shape="ellipse", style="filled", fillcolor=COLORS["io"])
        if node.attrs.get("eq_root") or node.op in ("zeros", "expand_batch"):
            head = f"{local} = {head}"
        lines.append((head, "b") if node.attrs.get("eq_root") else head)
        lines += [(" ".join(fmt(a.shape) for a in attached if a.op == "param"), "small")] if any(
            a.op == "param" for a in attached) else []
        return dict(label=label(*lines), shape="box", style="rounded")

    # ---------------------------------------------------------------------------------------------- loops

    def draw_loop(self, node: Node, ctx: str, path: tuple[str, ...], labels: dict[str, Any]) -> None:
        loop = loop_of(node)
        key = "loop:" + ctx + node.name
        over = f"{loop.steps} steps" if loop.steps else f"over {loop.time}"
        title = f"recurrent block, {over}" + (", backwards in time" if loop.reverse else "")
        states = ", ".join(loop.state_names)
        labels = {**labels, key: (label((title, "b"), (f"state z = ({states})", "small"))[1:-1], COLORS["loop"],
                                  "rounded,filled")}
        path = (*path, key)
        if self.unroll:
            self.draw_unrolled(node, ctx, path, labels, key)
            return
        body_ctx = ctx + node.name + "/"
        leaves: dict[str, str] = {}
        sec = sections(loop)
        g_path = (*path, key + ":G")
        g_labels = {**labels, key + ":G": (label((SECTIONS["G"], "b"))[1:-1], COLORS["G"], "dashed")}
        for b in loop.body:
            outer_value = self.loop_input(node, b)
            if b.op == "state":
                sid = self.place(g_path, g_labels, body_ctx + b.name, shape="box", style="filled", peripheries="2",
                                 fillcolor=COLORS["state"],
                                 label=label((f"{loop.state_names[b.attrs['index']]}(t−1)", "b"),
                                             ("delay", "small")))
                leaves[b.name] = sid
                self.edge(self.drawn[ctx + outer_value], sid, label=label(("initial", "small")), style="dashed")
            elif b.op in ("step_input", "capture"):
                text = b.name.rsplit(".", 1)[-1] + ("(t)" if b.op == "step_input" else "")
                sid = self.place(path, labels, body_ctx + b.name, label=label((text, "b"), (shape_text(b), "small")),
                                 shape="ellipse", style="filled", fillcolor=COLORS["io"])
                leaves[b.name] = sid
                self.edge(self.drawn[ctx + outer_value], sid, label=label((shape_text(self.outer(node, b)), "small")))
        self.draw_graph(loop.body, body_ctx, path, labels, leaves, sec, key)
        by_index = {b.attrs["index"]: b for b in loop.body if b.op == "state"}
        for i, update in enumerate(loop.updates):
            if i in by_index:
                self.edge(self.drawn[body_ctx + update], self.drawn[body_ctx + by_index[i].name],
                          label=label((f"{loop.state_names[i]}(t) → {loop.state_names[i]}(t−1)", "b")),
                          color="#c62828", fontcolor="#c62828", penwidth="1.8", constraint="false")
        self.draw_items(node, ctx, path, labels, lambda ret: self.drawn[body_ctx + ret.node])

    def loop_input(self, node: Node, b: Node) -> str:
        loop = loop_of(node)
        offset = {"state": 0, "step_input": loop.n_states, "capture": loop.n_states + loop.n_sequences}
        return node.inputs[offset.get(b.op, 0) + b.attrs.get("index", 0)]

    def outer(self, node: Node, b: Node) -> Node:
        graph = self.graph_holding(node)
        return graph[self.loop_input(node, b)]

    def graph_holding(self, node: Node) -> Graph:
        def walk(graph: Graph) -> Graph | None:
            if graph.nodes.get(node.name) is node:
                return graph
            for n in graph:
                if n.op == "loop":
                    found = walk(loop_of(n).body)
                    if found is not None:
                        return found
            return None
        found = walk(self.model.graph)
        assert found is not None
        return found

    def draw_items(self, node: Node, ctx: str, path: tuple[str, ...], labels: dict[str, Any], source: Any) -> None:
        """The loop's returned values, as the items of the parent graph that hold them."""
        graph = self.graph_holding(node)
        loop = loop_of(node)
        for item in graph:
            if item.op == "item" and item.inputs == [node.name]:
                ret = loop.returns[item.attrs["index"]]
                kind = {"all": "every step", "final": "after the last step", "last": "at t = T"}[ret.kind]
                item_id = self.place(path, labels, ctx + item.name, shape="box", style="rounded,filled",
                                     fillcolor="white", label=label((item.name.rsplit(".", 1)[-1], "b"),
                                                                    (kind, "small")))
                self.drawn[ctx + item.name] = item_id
                self.edge(source(ret), item_id, label=label((shape_text(loop.body[ret.node]), "small")))

    def draw_unrolled(self, node: Node, ctx: str, path: tuple[str, ...], labels: dict[str, Any], key: str) -> None:
        """Figure 2: ``unroll`` copies of Enc → G → Dec, the state handed on, one shared weights node."""
        loop = loop_of(node)
        steps = min(self.unroll or 1, loop.steps or self.unroll or 1)
        sec = sections(loop)
        base = ctx + node.name + "@"
        body = loop.body
        used: dict[str, set[str]] = {"enc": set(), "G": set(), "dec": set()}  # params read by each part
        reads: dict[str, set[str]] = {"enc": set(), "G": set(), "dec": set()}  # body leaves / parts read
        for b in body:
            part = sec[b.name]
            if part == "leaf":
                continue
            for i in b.inputs:
                src = body[i]
                if src.op == "param":
                    used[part].add(src.attrs["name"])
                elif src.op in ("step_input", "capture", "state"):
                    reads[part].add(src.name)
                elif sec[i] != part and sec[i] != "leaf":
                    reads[part].add("part:" + sec[i])
        # G stands for the state update even when it is a plain copy (`h: x`) and no node of its own
        parts = [p for p in ("enc", "G", "dec") if p == "G" or any(sec[b.name] == p for b in body)]
        order = list(range(1, steps + 1))
        for t in order:
            for part in parts:
                title = {"enc": "Enc", "G": "G", "dec": "Dec"}[part]
                self.place(path, labels, f"{base}{t}~{part}", shape="box", style="rounded,filled,bold",
                           fillcolor=COLORS["box"] if part != "G" else COLORS["state"],
                           label=label((title, "b"), (f"t = {t}", "small")))
            for part in parts:
                for src in sorted(reads[part]):
                    if src.startswith("part:") and src[5:] in parts:
                        self.edge(f"{base}{t}~{src[5:]}", f"{base}{t}~{part}")
        for b in body:
            if b.op not in ("step_input", "capture"):
                continue
            outer_id = self.drawn[ctx + self.loop_input(node, b)]
            local = b.name.rsplit(".", 1)[-1]
            if b.op == "step_input":
                self.same_rank(path, labels, [f"{base}{t}~in~{b.name}" for t in order])
            for t in order:
                readers = [p for p in parts if b.name in reads[p]]
                if b.op == "step_input":
                    xid = self.place(path, labels, f"{base}{t}~in~{b.name}", shape="ellipse", style="filled",
                                     fillcolor=COLORS["io"], label=label((f"{local}({t})", "b")))
                    self.edge(outer_id, xid, **_FEED)
                    for p in readers:
                        self.edge(xid, f"{base}{t}~{p}", label=label((shape_text(b), "small")))
                else:
                    for p in readers:
                        self.edge(outer_id, f"{base}{t}~{p}", **_FEED,
                                  label=label((shape_text(b), "small")) if t == order[0] else "")
        states = [b for b in body if b.op == "state"]
        state_text = ", ".join(f"{loop.state_names[s.attrs['index']]} {fmt(s.shape)}" for s in states)
        state_parts = {p for p in parts if any(s.name in reads[p] for s in states)} or {"G"}
        flow = order if not loop.reverse else order[::-1]
        first = flow[0]
        for s in states:
            init = self.drawn[ctx + node.inputs[s.attrs["index"]]]
            for p in sorted(state_parts):
                self.edge(init, f"{base}{first}~{p}", style="dashed", label=label(("initial", "small")))
        for a, b_ in zip(order, order[1:]):  # drawn left to right; a loop backwards in time points them back
            sender = a if not loop.reverse else b_
            for p in sorted(state_parts):
                self.edge(f"{base}{a}~G", f"{base}{b_}~{p}", color="#c62828", fontcolor="#c62828", penwidth="1.8",
                          dir="forward" if not loop.reverse else "back",
                          label=label((f"z({sender})", "b"), (state_text, "small")))
        for part in parts:
            self.same_rank(path, labels, [f"{base}{t}~{part}" for t in order], chain=part != "G" or not states)
        weights = sorted(set().union(*used.values()))
        if weights:
            rows = [(f"{w.rsplit('.', 1)[-1]} {fmt(self.model.params[w].shape)}", "small") for w in weights]
            total = sum(self.model.params[w].size for w in weights)
            wid = self.place(path, labels, base + "w", shape="note", style="filled", fillcolor=COLORS["weights"],
                             label=label(("w: shared by every step", "b"), (f"{total:,} parameters", "small"), *rows))
            for t in order:
                for p in parts:
                    if used[p]:
                        self.edge(wid, f"{base}{t}~{p}", style="dashed", color="#8e24aa", arrowsize="0.6")

        graph = self.graph_holding(node)
        for item in graph:
            if item.op != "item" or item.inputs != [node.name]:
                continue
            ret = loop.returns[item.attrs["index"]]
            part = sec.get(ret.node) if sec.get(ret.node) in parts else "G"
            local = ret.node.rsplit(".", 1)[-1]
            kind = {"all": f"{local}(1..{steps}) stacked", "final": "after the last step", "last": "at t = T"}[ret.kind]
            item_id = self.place(path, labels, ctx + item.name, shape="box", style="rounded,filled", fillcolor="white",
                                 label=label((item.name.rsplit(".", 1)[-1], "b"), (kind, "small")))
            self.drawn[ctx + item.name] = item_id
            if ret.kind == "all":
                self.same_rank(path, labels, [f"{base}{t}~out~{item.name}" for t in order])
                for t in order:
                    yid = self.place(path, labels, f"{base}{t}~out~{item.name}", shape="ellipse", style="filled",
                                     fillcolor=COLORS["io"], label=label((f"{local}({t})", "b")))
                    self.edge(f"{base}{t}~{part}", yid, label=label((shape_text(body[ret.node]), "small")))
                    self.edge(yid, item_id, **_FEED)
            else:
                self.edge(f"{base}{flow[-1]}~{part}", item_id, label=label((shape_text(body[ret.node]), "small")))

    # ---------------------------------------------------------------------------------------------- size

    def nodes(self) -> list[str]:
        out: list[str] = []
        todo = [self.root]
        while todo:
            cluster = todo.pop()
            out += [node_id for node_id, _ in cluster.nodes]
            todo += cluster.children.values()
        return out

    def size(self) -> "FigureSize":
        """What `dot` will lay out: the nodes, the edges, and the points where an edge crosses a rank (dot routes
        a long edge through one virtual node per rank it passes, and its work grows with them, not with the
        nodes alone: one input read by 50 chained equations is 150 edges and 1,225 crossings). Ranks are the
        longest path from a source along the edges that constrain them (not a delay's, not between same-rank
        nodes), each source moved up to just below its first reader: about as dot's ranking makes them."""
        nodes = self.nodes()
        same: dict[str, str] = {n: n for n in nodes}

        def find(n: str) -> str:
            while same[n] != n:
                same[n] = same[same[n]]
                n = same[n]
            return n

        def clusters(c: _Cluster) -> Iterator[_Cluster]:
            yield c
            for child in c.children.values():
                yield from clusters(child)

        for cluster in clusters(self.root):
            for ids in cluster.same_rank:
                for a in ids[1:]:
                    same[find(a)] = find(ids[0])
        ranked = [(find(a), find(b)) for a, b, attrs in self.edges
                  if attrs.get("constraint") != "false" and find(a) != find(b)]
        after: dict[str, list[str]] = {}
        waiting = {find(n): 0 for n in nodes}
        for a, b in ranked:
            after.setdefault(a, []).append(b)
            waiting[b] += 1
        rank = {n: 0 for n in waiting}
        reached = {b for _, b in ranked}
        ready = [n for n, k in waiting.items() if k == 0]
        while ready:  # Kahn's order; a node left on a cycle keeps the rank it reached
            a = ready.pop()
            for b in after.get(a, ()):
                rank[b] = max(rank[b], rank[a] + 1)
                waiting[b] -= 1
                if not waiting[b]:
                    ready.append(b)
        for a in [n for n in rank if n not in reached]:  # a source sits just below its first reader, as dot puts it
            if after.get(a):
                rank[a] = min(rank[b] for b in after[a]) - 1
        crossings = sum(max(0, abs(rank[b] - rank[a]) - 1) for a, b in ranked)
        return FigureSize(len(nodes), len(self.edges), crossings)

    # ---------------------------------------------------------------------------------------------- DOT

    def dot(self, title: str) -> graphviz.Digraph:
        # remincross off: a last crossing pass over the whole graph reorders the unrolled steps inside clusters
        g = graphviz.Digraph(self.model.name, graph_attr=dict(rankdir="BT", fontname="Helvetica", fontsize="12",
                                                               label=title, labelloc="t", nodesep="0.25",
                                                               remincross="false", ranksep="0.35"),
                             node_attr=dict(fontname="Helvetica", fontsize="11", margin="0.08,0.04", height="0.3"),
                             edge_attr=dict(fontname="Helvetica", fontsize="9", arrowsize="0.7"))
        counter = iter(range(1_000_000))

        def fill(target: graphviz.Digraph, cluster: _Cluster) -> None:
            for node_id, attrs in cluster.nodes:
                target.node(node_id, **attrs)
            for ids in cluster.same_rank:
                target.body.append("{rank=same; " + " ".join(f'"{i}"' for i in ids) + "}\n")  # checked ids
            for child in cluster.children.values():
                sub = graphviz.Digraph(name=f"cluster_{next(counter)}",
                                       graph_attr=dict(label=f"<{child.label}>", style=child.style,
                                                       fillcolor=child.color, color="#8a9bb5", labeljust="l",
                                                       labelloc="b"))
                fill(sub, child)
                target.subgraph(sub)

        fill(g, self.root)
        for a, b, attrs in self.edges:
            g.edge(a, b, **{k: v for k, v in attrs.items() if v != ""})
        return g


#: The most `FigureSize.cost` a figure drawn with Graphviz may have unless raised (``--max-figure N``). Measured
#: with graphviz-pure 0.2.2 on this project's 2-core machine (tests/hostile_figures.py's shapes): near 2,000 the
#: worst shapes take 0.5-0.7 s of CPU to lay out and render (four inputs read by 15 chained equations: 0.63 s; one
#: read by 45: 0.54 s), a chain of 1,000 equations 0.12 s; past it the time climbs steeply (3,600: 1.9 s; 30 module
#: calls in a row 0.07 s, 40 more than 6 s). So every figure under the cap is drawn within the 2 s budget of
#: `validate`; `seqdsl.render` also stops Graphviz at 2 s of CPU, for a shape the estimate misses.
MAX_FIGURE = 2_000


@dataclass(frozen=True)
class FigureSize:
    """How much a figure asks of Graphviz (see `_Figure.size`); `cost` is what the cap bounds."""

    nodes: int
    edges: int
    crossings: int  # edges passing through ranks: dot's virtual nodes

    @property
    def cost(self) -> int:
        return self.nodes + self.edges + self.crossings


def _too_large(model: Model, size: FigureSize, cap: int) -> SpecError:
    return SpecError("E0423", f"the figure is too large for Graphviz to lay out quickly: {size.cost:,} above the "
                     f"cap of {cap:,}", Location(model.source, 1, 1), expected=f"at most {cap:,} nodes, edges and "
                     "rank crossings in all", found=f"{size.nodes:,} nodes, {size.edges:,} edges, "
                     f"{size.crossings:,} crossings",
                     hint="draw less: --depth K (module calls below K levels as one box each), --module NAME (one "
                          "module alone) or a smaller --unroll; or raise the cap: --max-figure N (in Python: "
                          "figure(model, max_size=N)); Graphviz's time grows faster than the figure")


def figure(model: Model, unroll: int | None = None, depth: int | None = None, max_size: int | None = None) -> str:
    """The DOT source of ``model``'s figure: rolled (Figure 1), or unrolled ``unroll`` steps (Figure 2); a figure
    whose `FigureSize.cost` is above ``max_size`` is refused (`FigureTooLarge`) before Graphviz sees it."""
    if unroll is not None and unroll < 1:
        raise ValueError("unroll must be at least 1")
    fig = _Figure(model, depth, unroll)
    fig.draw_graph(model.graph, "", (), {})
    if max_size is not None:
        size = fig.size()
        if size.cost > max_size:
            raise _too_large(model, size, max_size)
    recurrent = any(n.op == "loop" for n in model.graph) or any(
        fig.has_loop(p) for p in model.scopes)
    kind = (f"unrolled, {unroll} steps" if unroll else "rolled") if recurrent else "no recurrence: dataflow"
    title = label((f"{model.name}", "b"), (f"{model.source} — {kind}, {model.param_count:,} parameters", "small"))
    return fig.dot(title).source
