"""Warnings for what a spec declares and nothing uses: W0401 (a value or input), W0402 (a parameter).

Such a spec builds, but probably not as meant: an equation nobody reads is often a typo in the name that should
have read it, and a parameter nothing uses would never be trained.
"""

from __future__ import annotations

from .errors import SpecError
from .ir import Graph, Model, Node, loop_of, used_params


def unused_params(model: Model) -> list[SpecError]:
    """Declared parameters that no output depends on (W0402): nothing would train them. model.py keeps them as
    buffers (in the state_dict, never in parameters()), so that DDP sees no parameter without a gradient."""
    used = used_params(model.graph)
    return [SpecError("W0402", f"parameter `{p.name}` is never used by any output", p.loc,
                      hint="remove it; until then it is not trained (model.py holds it as a buffer)")
            for p in model.params.values() if p.name not in used]



def unused_values(graph: Graph) -> list[SpecError]:
    """Equations and inputs that no output depends on (W0401), in this graph and the loop bodies in it."""
    found: list[SpecError] = []
    users = graph.users()
    keep = set(graph.outputs.values())
    for node in graph:
        if node.op == "loop":
            loop = loop_of(node)
            body_keep = loop.read
            body_users = loop.body.users()
            for b in loop.body:
                if b.attrs.get("eq_root") and not body_users.get(b.name) and b.name not in body_keep:
                    found.append(_unused(b))
    for node in graph:
        if (node.attrs.get("eq_root") or node.op == "input") and not users.get(node.name) and node.name not in keep:
            found.append(_unused(node))
    return found


def _unused(node: Node) -> SpecError:
    what = "input" if node.op == "input" else "value"
    return SpecError("W0401", f"{what} `{node.name}` is never used", node.loc,
                     hint="remove it, or name it under `outputs:`")
