"""What a model holds, for people: parameters grouped by the module (call) they belong to."""

from __future__ import annotations

from dataclasses import dataclass

from .ir import Model


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
