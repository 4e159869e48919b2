"""Warnings for what a spec declares and nothing uses: W0401 (a value or input), W0402 (a parameter).

Such a spec builds, but probably not as meant: an equation nobody reads is often a typo in the name that should
have read it, and a parameter nothing uses would never be trained.
"""

from __future__ import annotations

from .errors import SpecError
from .ir import Graph, Model, Node, Scope, loop_of, used_params


def unused_params(model: Model) -> list[SpecError]:
    """Declared parameters that no output depends on (W0402): nothing would train them. model.py keeps them as
    buffers (in the state_dict, never in parameters()), so that DDP sees no parameter without a gradient."""
    used = used_params(model.graph)
    return [SpecError("W0402", f"parameter `{p.name}` is never used by any output", p.loc,
                      hint="remove it; until then it is not trained (model.py holds it as a buffer)")
            for p in model.params.values() if p.name not in used]



def unused_values(graph: Graph, scopes: dict[str, Scope] | None = None) -> list[SpecError]:
    """Equations and inputs that no output depends on (W0401), in this graph and the loop bodies in it.

    What a module call gives its caller (``scopes``' outputs) is never such a value, whatever the call's form
    (forward, ``direction=both``, ``repeat=``): the caller reads the outputs it needs, and cannot remove the others.
    The copies a call makes of one equation (both directions, every layer) are one warning, as the forward call's.
    """
    scopes = scopes or {}
    unused: list[Node] = []
    users = graph.users()
    keep = set(graph.outputs.values()).union(*(s.outputs for s in scopes.values()))
    for node in graph:
        if node.op == "loop":
            loop = loop_of(node)
            body_keep = loop.read
            body_users = loop.body.users()
            unused += [b for b in loop.body
                       if b.attrs.get("eq_root") and not body_users.get(b.name) and b.name not in body_keep]
    unused += [node for node in graph if (node.attrs.get("eq_root") or node.op == "input")
               and not users.get(node.name) and node.name not in keep]
    one: dict[tuple[str, int, int, str], Node] = {}
    for node in unused:
        one.setdefault((node.loc.file, node.loc.line, node.loc.col, _spec_name(node.name, scopes)), node)
    return [_unused(node, name) for (*_, name), node in one.items()]


def _spec_name(name: str, scopes: dict[str, Scope]) -> str:
    """``name`` as the spec writes it: without the ``fw.``/``bw.`` of a ``direction=both`` copy."""
    parts = name.split(".")
    directions = {path for path, s in scopes.items() if s.part in ("forward", "backward")}
    return ".".join(p for i, p in enumerate(parts) if ".".join(parts[: i + 1]) not in directions)


def _unused(node: Node, name: str) -> SpecError:
    what = "input" if node.op == "input" else "value"
    return SpecError("W0401", f"{what} `{name}` is never used", node.loc, hint="remove it, or name it under `outputs:`")
