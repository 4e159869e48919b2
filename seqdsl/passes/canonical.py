"""Canonical sums: ``W x + (U h + b)``, ``(W x + b) + U h`` and ``b + U h + W x`` become one and the same graph.

Recognition compares step graphs node for node, so a sum must have one form however the spec groups or orders
it. Rewrite rules, in a graph and every loop body inside it:
  1. a *sum* is a tree of ``add``, ``sub`` and ``neg`` nodes, a *product* a tree of ``mul`` nodes; a node is
     inside its reader's tree only when that reader is its one and only use, of the same kind and dtype, and
     the node is none of the values others name: not a graph output, a loop's state update, returned value or
     stop condition, nor (with ``keep_equations``) the result of an equation. Everything else is a root;
  2. the tree's leaves are signed terms (``a - (b - c)`` is ``a - b + c``, ``a - (-b)`` is ``a + b``), sorted by
     a structural key that never reads a node name: terms that do not depend on a state first, then those that
     do; within each, bias-free linear maps, then parameters, then the rest; then a digest of the term's own
     graph (ops, with the activations as one, constants, parameter shapes, which state / step input / capture
     it reads);
  3. the tree is rebuilt left-deep, ``((t1 + t2) + t3) - n1 - n2`` (``-n1 - n2`` when no term is positive);
     the root keeps its name, attrs (``eq_root``) and location, the partial sums reuse the names of the tree's
     old interior nodes (so every name of the canonical graph was a name of the original) and take the root's
     location; shapes follow broadcasting, the dtype is the root's. A tree of one term is left as it is.
The order puts an input projection beside its bias (``(W x + b) + U h``), which `fold_bias` folds and `hoist`
moves out of the loop. Reassociation changes floating-point rounding (a few ulps, as any reordered sum does);
the result is the same sum in exact arithmetic. Ties in the key (two terms with equal graphs, such as two biases
of one shape) keep their order in the spec.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, replace

from ..ir import Graph, Loop, Model, Node, loop_of
from ..ops import broadcast
from .cell_families import ACTIVATIONS  # one label in the key: a template's activation slot takes any of them

KIND = {"add": "sum", "sub": "sum", "neg": "sum", "mul": "product"}
LEAF_INDEX = ("state", "step_input", "capture")  # leaves told apart by their index, never by their name


def canonicalise(model: Model) -> tuple[Model, bool]:
    """``model`` with every sum and product in canonical form (equations keep their results); and whether
    anything was regrouped."""
    model = copy.deepcopy(model)
    changed = _canonical(model.graph, set(model.graph.outputs.values()), keep_equations=True)
    model.verify()
    return model, changed


def canonical_body(loop: Loop, keep_equations: bool = False) -> Graph:
    """A canonical copy of ``loop``'s step graph, for matching. By default an equation's result may become part
    of a larger sum (a name the spec gave a partial sum does not change the cell); the values the loop itself
    reads (updates, returns, stop) always stay."""
    body = Graph()  # a copy: node by node (a deep copy of the whole body costs more than the pass)
    body.nodes = {k: copy.deepcopy(n) if n.op == "loop" else replace(n, inputs=list(n.inputs), attrs=dict(n.attrs))
                  for k, n in loop.body.nodes.items()}
    body.outputs, body.reserved = dict(loop.body.outputs), set(loop.body.reserved)
    _canonical(body, loop.read, keep_equations)
    return body


@dataclass
class _Tree:
    root: Node
    terms: list[tuple[bool, str]]  # (positive, term node), in the spec's order
    interior: list[str]  # the tree's nodes below the root, in graph order


def _canonical(graph: Graph, keep: set[str], keep_equations: bool) -> bool:
    changed = False
    for node in graph:
        if node.op == "loop":
            changed |= _canonical(loop_of(node).body, loop_of(node).read, keep_equations)
    trees = _trees(graph, keep, keep_equations)
    digests = _Digests(graph)
    rebuilt: dict[str, list[Node]] = {}  # root -> its new nodes, the root last
    for tree in trees:  # in graph order: a tree's terms are final before their digests are taken
        nodes = _rebuild(graph, tree, digests)
        old = [graph[n] for n in tree.interior] + [tree.root]
        if nodes is None or [(n.name, n.op, n.inputs) for n in nodes] == [(n.name, n.op, n.inputs) for n in old]:
            continue  # already canonical: left where it is
        changed = True
        for name in tree.interior:
            del graph.nodes[name]
        graph.nodes.update((n.name, n) for n in nodes)  # a later tree's digests read these
        rebuilt[tree.root.name] = nodes
    if rebuilt:
        order: dict[str, Node] = {}
        for name, node in graph.nodes.items():
            if name in rebuilt:
                order.update((n.name, n) for n in rebuilt[name])
            elif name not in order:
                order[name] = node
        graph.nodes = order
    return changed


def _trees(graph: Graph, keep: set[str], keep_equations: bool) -> list[_Tree]:
    """Every sum and product tree of ``graph`` (rule 1), in the order of their roots."""
    users = graph.users()

    def inside(node: Node) -> bool:
        readers = users.get(node.name, [])
        return (node.op in KIND and node.name not in keep and len(readers) == 1
                and not (keep_equations and node.attrs.get("eq_root"))
                and KIND.get(graph[readers[0]].op) == KIND[node.op] and graph[readers[0]].dtype == node.dtype)

    position = {name: i for i, name in enumerate(graph.nodes)}
    trees = []
    for root in graph:
        if root.op not in KIND or inside(root):
            continue
        terms: list[tuple[bool, str]] = []
        interior: list[str] = []
        stack = [(root, True)]
        while stack:  # the leaves, with their signs
            node, positive = stack.pop()
            signs = {"neg": (not positive,), "sub": (positive, not positive)}.get(node.op, (positive, positive))
            for name, sign in reversed(list(zip(node.inputs, signs))):
                operand = graph[name]
                if inside(operand):
                    interior.append(name)
                    stack.append((operand, sign))
                else:
                    terms.append((sign, name))
        terms.sort(key=lambda term: position[term[1]])  # ties in the key keep the spec's order
        trees.append(_Tree(root, terms, sorted(interior, key=position.__getitem__)))
    return trees


def _rebuild(graph: Graph, tree: _Tree, digests: _Digests) -> list[Node] | None:
    """The tree's canonical nodes (rules 2 and 3), the root last; None where it stays as it is."""
    if len(tree.terms) < 2 or any(graph[t].dtype != tree.root.dtype for _, t in tree.terms):
        return None
    positive = sorted((t for sign, t in tree.terms if sign), key=digests.key)
    negative = sorted((t for sign, t in tree.terms if not sign), key=digests.key)
    join = "mul" if KIND[tree.root.op] == "product" else "add"
    steps: list[tuple[str, list[str]]] = []
    if positive:
        acc = positive[0]
    else:
        steps.append(("neg", [negative[0]]))
        acc, negative = "", negative[1:]
    steps += [(join, [t]) for t in positive[1:]] + [("sub", [t]) for t in negative]
    names = tree.interior[: len(steps) - 1] + [tree.root.name]
    nodes: list[Node] = []
    shapes = {t: graph[t].shape for _, t in tree.terms}
    for (op, operands), name in zip(steps, names):
        inputs = operands if op == "neg" else [acc, *operands]
        shape = shapes[inputs[0]]
        for other in inputs[1:]:
            shape = broadcast(shape, shapes[other])
        attrs = dict(tree.root.attrs) if name == tree.root.name else {}
        nodes.append(Node(name, op, inputs, attrs, shape, tree.root.dtype, tree.root.loc))
        shapes[name], acc = shape, name
    assert nodes[-1].shape == tree.root.shape, f"internal: canonical `{tree.root.name}` changed shape"
    return nodes


class _Digests:
    """The structural sort key of a term (rule 2): computed from ops, attributes and leaves, never node names."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.memo: dict[str, tuple[str, bool]] = {}  # node -> (digest, depends on a state)

    def key(self, name: str) -> tuple[bool, int, str]:
        digest, stateful = self.of(name)
        node = self.graph[name]
        kind = 0 if node.op == "linear" and len(node.inputs) == 2 else 1 if node.op == "param" else 2
        return stateful, kind, digest

    def of(self, name: str) -> tuple[str, bool]:
        stack = [name]  # operands first, without recursion: a chain may be longer than Python's stack
        while stack:
            top = self.graph[stack[-1]]
            if top.name in self.memo:  # pushed twice, done once
                stack.pop()
                continue
            missing = [i for i in top.inputs if i not in self.memo]
            if missing:
                stack.extend(missing)
                continue
            stack.pop()
            inputs = [self.memo[i] for i in top.inputs]
            label = {k: v for k, v in top.attrs.items() if k not in ("eq_root", "name", "loop")}
            if top.op in LEAF_INDEX:
                label = {"index": top.attrs["index"]}
            op = "activation" if top.op in ACTIVATIONS else top.op
            if op == "activation":
                label = {}
            text = repr((op, sorted(label.items()), top.shape, top.dtype, [d for d, _ in inputs]))
            digest = hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
            self.memo[top.name] = digest, top.op == "state" or any(s for _, s in inputs)
        return self.memo[name]
