"""What running a model once will cost, computed from the IR before anything is allocated or run.

The build's check runs the model at one batch size and one length per time axis (B=3, T=7 by default). Its
parameters are bounded by `--max-params`; this bounds the rest of that run, which parameters do not show: a model
with no parameters over ``[B, T, 10**12]`` inputs, or a ``steps: K`` loop with K = 10**12, would otherwise run out
of memory or never end.

    fp = footprint(model, {"B": 3, "T": 7})
    fp.largest      # the node holding the largest tensor, and its bytes
    fp.activations  # bytes of every value the model computes, each loop body's values counted once (they are
                    #   per step and freed as the loop goes; what a loop returns over every step is counted whole)
    fp.steps        # how many loop steps run in all (a loop inside a loop: its steps times the outer ones)

`check_footprint` turns the limits into one located `SpecError` (E0601 memory, E0602 steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .errors import SpecError
from .ir import Graph, Model, Node, Shape, all_nodes, loop_of

MAX_ACTIVATION_BYTES = 4 * 2**30  # the check run's values, above parameters: --max-memory raises it
MAX_STEPS = 100_000  # loop steps of the check run: --max-steps raises it

#: Bytes per element of each dtype a value may have; an unknown one counts as 8.
DTYPE_BYTES = {"float32": 4, "int64": 8, "bool": 1, "float64": 8, "int32": 4, "float16": 2}


@dataclass(frozen=True)
class Footprint:
    largest: Node | None  # the value with the largest tensor (None for a model that computes nothing)
    largest_bytes: int
    activations: int  # bytes
    steps: int
    longest: Node | None  # the loop node that runs the most steps
    longest_steps: int


def tensor_bytes(shape: Shape, dtype: str, lengths: Mapping[str, int], other: int = 1) -> int:
    """Bytes of one tensor of ``shape`` with the symbolic axes at ``lengths`` (an axis not given: ``other``)."""
    n = DTYPE_BYTES.get(dtype, 8)
    for d in shape:
        n *= lengths.get(d, other) if isinstance(d, str) else d
    return n


def footprint(model: Model, lengths: Mapping[str, int]) -> Footprint:
    """The cost of running ``model`` once with its symbolic axes (``B``, ``T``, ``S``, ...) at ``lengths``.

    An axis known only when the model runs (``T_stop``: the steps a loop with ``stop:`` took) counts as the most
    steps any loop may take, an upper bound."""
    runs = [loop_of(n).steps if loop_of(n).steps is not None else lengths.get(loop_of(n).time, 1)
            for n in all_nodes(model.graph) if n.op == "loop"]
    acc = _Walk(lengths, max(runs, default=1))
    acc.graph(model.graph, 1)
    return Footprint(acc.largest, acc.largest_bytes, acc.total, acc.steps, acc.longest, acc.longest_steps)


def check_footprint(model: Model, lengths: Mapping[str, int], max_bytes: int = MAX_ACTIVATION_BYTES,
                    max_steps: int = MAX_STEPS) -> Footprint:
    """Refuse a check run above ``max_bytes`` of values or ``max_steps`` loop steps, before it starts."""
    fp = footprint(model, lengths)
    at = ", ".join(f"{k}={v:,}" for k, v in lengths.items())
    if fp.steps > max_steps and fp.longest is not None:
        loop = loop_of(fp.longest)
        why = f"`steps: {loop.steps:,}`" if loop.steps is not None else f"{loop.time}={lengths.get(loop.time, 1):,}"
        raise SpecError("E0602", f"the check run would take {fp.steps:,} loop steps, above the limit of "
                                 f"{max_steps:,}", fp.longest.loc,
                        found=f"this loop runs {fp.longest_steps:,} steps ({why}) at {at}",
                        hint="check the sizes and --seq-len/--axis-len; to build it anyway, raise --max-steps")
    if fp.activations > max_bytes and fp.largest is not None:
        shape = [lengths.get(d, 1) if isinstance(d, str) else d for d in fp.largest.shape]
        raise SpecError("E0601", f"the check run would need {_bytes(fp.activations)} for its values, above the "
                                 f"limit of {_bytes(max_bytes)}", fp.largest.loc,
                        found=f"largest: `{fp.largest.name}` {shape} {fp.largest.dtype} "
                              f"({_bytes(fp.largest_bytes, exact=False)}) at {at}",
                        hint="check the sizes and --seq-len/--axis-len; to build it anyway, raise --max-memory")
    return fp


#: Nodes that name a value held elsewhere: parameters (bounded by --max-params) and a loop's view of a capture.
_ALIASES = frozenset({"param", "capture"})


class _Walk:
    def __init__(self, lengths: Mapping[str, int], other: int) -> None:
        self.lengths, self.other = lengths, other
        self.largest: Node | None = None
        self.largest_bytes = 0
        self.total = 0
        self.steps = 0
        self.longest: Node | None = None
        self.longest_steps = 0

    def graph(self, graph: Graph, outer_steps: int) -> None:
        for node in graph:
            if node.op == "loop":
                loop = loop_of(node)
                steps = loop.steps if loop.steps is not None else self.lengths.get(loop.time, 1)
                runs = outer_steps * steps
                self.steps += runs
                if runs > self.longest_steps:
                    self.longest, self.longest_steps = node, runs
                self.graph(loop.body, runs)
                continue
            if node.op in _ALIASES:
                continue
            size = tensor_bytes(node.shape, node.dtype, self.lengths, self.other)
            self.total += size
            if size > self.largest_bytes:
                self.largest, self.largest_bytes = node, size


def _bytes(n: int, exact: bool = True) -> str:
    """``n`` bytes for a person: ``4.0 GiB (4,294,967,296 bytes)``, or without the exact count."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}" + (f" ({n:,} bytes)" if exact else "")
    return f"{n:,} bytes"
