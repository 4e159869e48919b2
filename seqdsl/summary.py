"""What a model holds and costs, for people: parameters grouped by the module (call) they belong to, and a
summary like torchinfo's: per module, output shapes, parameters, FLOPs per step and per sequence, activations.
Costs per op are `seqdsl.cost.COSTS`; the convention (MACs vs FLOPs) is written there and in `CONVENTION`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .cost import concrete, node_bytes, node_cost
from .ir import Graph, Model, Scope, loop_of, scope_of
from .ops import fmt


@dataclass(frozen=True)
class ModuleParams:
    module: str  # "" for the top level, else the call path such as "lstm" or "blocks.0.attn"
    params: tuple[tuple[str, tuple[int, ...]], ...]  # (local name, shape)

    @property
    def count(self) -> int:
        total = 0
        for _, shape in self.params:
            n = 1
            for d in shape:
                n *= d
            total += n
        return total


def params_by_module(model: Model) -> list[ModuleParams]:
    """Parameters grouped by owning module, in declaration order."""
    groups: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    for p in model.params.values():
        module, _, local = p.name.rpartition(".")
        groups.setdefault(module, []).append((local, p.shape))
    return [ModuleParams(m, tuple(ps)) for m, ps in groups.items()]


@dataclass
class ModuleSummary:
    """One row of `summarize`: a module call (or the whole model, path ""), everything nested in it included."""

    path: str
    module: str
    depth: int
    outputs: dict[str, str] = field(default_factory=dict)  # value name -> symbolic shape, "[B, T, 32]"
    params: int = 0
    macs_per_step: int = 0  # one step of the recurrent blocks inside (0 if there are none)
    flops_per_step: int = 0
    macs: int = 0  # the whole sequence at the summary's B and T
    flops: int = 0
    activation_bytes: int = 0  # values kept for the backward pass when training at that B and T


@dataclass
class Summary:
    model: str
    batch: int
    seq_len: int
    modules: list[ModuleSummary]

    @property
    def total(self) -> ModuleSummary:
        return self.modules[0]

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "batch": self.batch, "seq_len": self.seq_len, "convention": CONVENTION,
                "modules": [asdict(m) for m in self.modules], "total": asdict(self.total)}


CONVENTION = ("MACs: multiply-accumulates of the matrix products; FLOPs: 2 per MAC plus one per element written "
              "by every other arithmetic op (softmax 3, layer_norm 5); activations: bytes of every value computed, "
              "each step's values once per step, as kept for the backward pass (no recomputation or reuse)")


def summarize(model: Model, batch: int = 1, seq_len: int = 100) -> Summary:
    """Per module (nested as the calls nest): output shapes, parameters, MACs and FLOPs per step and per sequence,
    and training activation memory, at batch ``batch`` and every time axis of length ``seq_len``."""
    rows = {"": ModuleSummary("", model.name, 0)}
    for path, scope in model.scopes.items():
        depth = len(_ancestors(path, model.scopes))
        title = scope.module + (f" ×{scope.repeat}" if scope.repeat else "") + (
            f" ({'both directions' if scope.direction == 'both' else scope.direction})"
            if scope.direction and not scope.part else "")
        rows[path] = ModuleSummary(path, scope.part or title, depth)
    for p in model.params.values():
        for path in _owners(scope_of(p.name, model.scopes), model.scopes):
            rows[path].params += p.size

    def count(graph: Graph, steps: int, per_step: int) -> None:
        """``graph`` runs ``steps`` times a sequence, ``per_step`` times in one step of the outermost loop."""
        for node in graph:
            out = concrete(node.shape, batch, seq_len)
            macs, flops = node_cost(node, out, [concrete(graph[i].shape, batch, seq_len) for i in node.inputs])
            size = node_bytes(node, out)
            for path in _owners(scope_of(node.name, model.scopes), model.scopes):
                row = rows[path]
                row.macs += macs * steps
                row.flops += flops * steps
                row.activation_bytes += size * steps
                row.macs_per_step += macs * per_step
                row.flops_per_step += flops * per_step
            if node.op == "loop":
                loop = loop_of(node)
                length = loop.steps or seq_len
                count(loop.body, steps * length, per_step * length if per_step else 1)

    count(model.graph, 1, 0)
    _outputs(model, rows)
    return Summary(model.name, batch, seq_len, list(rows.values()))


def _ancestors(path: str, scopes: dict[str, Scope]) -> list[str]:
    parts = path.split(".")
    return [p for p in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if p in scopes]


def _owners(scope: str, scopes: dict[str, Scope]) -> list[str]:
    """The rows a node in ``scope`` counts towards: the whole model, and every call it is nested in."""
    return [""] + (_ancestors(scope, scopes) if scope else [])


def _outputs(model: Model, rows: dict[str, ModuleSummary]) -> None:
    """A module's outputs: its values read outside it (in the graph holding them), or returned by the model."""
    for name, ref in model.graph.outputs.items():
        rows[""].outputs[name] = fmt(model.graph[ref].shape)

    def walk(graph: Graph) -> None:
        users = graph.users()
        returned = set(graph.outputs.values())
        for node in graph:
            mine = scope_of(node.name, model.scopes)
            for path in _ancestors(mine, model.scopes) if mine else []:
                outside = [u for u in users.get(node.name, []) if not _inside(u, path)]
                if outside or node.name in returned:
                    rows[path].outputs[node.name.removeprefix(path + ".")] = fmt(node.shape)
            if node.op == "loop":
                walk(loop_of(node).body)

    walk(model.graph)


def _inside(name: str, path: str) -> bool:
    return name.startswith(path + ".")
