"""How far a spec may expand while it is lowered, checked as it grows, so that every spec is decided quickly.

A spec is small, but what it describes need not be: a module that calls the previous one twice, twenty times
over, is 2**20 inlined copies; ``repeat=depth`` with ``--set depth=1000000000`` a billion layers. Lowering
therefore charges a `Budget` for every IR node it makes (and for the declarations of every inlined module),
counts how deeply module calls nest, and refuses a ``repeat=`` count above its limit, each before the work is
done. Running out is a located `SpecError` that names the limit and how to raise it:

    limit            default   command line         Python
    IR nodes         30,000    --max-nodes N        seqdsl.load(spec, limits=Limits(nodes=N))
    call nesting     32        --max-depth N        Limits(depth=N)
    repeat=          1,000     --max-repeat N       Limits(repeat=N)

The defaults hold models far larger than the shipped ones (the 2-layer transformer is 282 nodes, a 500-layer
LSTM stack 23,000) and keep `seqdsl validate` of any spec within 2 s and 512 MB on a 2-core machine.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import Location, SpecError


@dataclass(frozen=True)
class Limits:
    """The most a spec may expand into (see the module docstring); every field a positive integer."""

    nodes: int = 30_000  # IR nodes in all graphs and loop bodies, each inlined module's declarations included
    depth: int = 32  # module calls nested inside module calls
    repeat: int = 1_000  # copies stacked by one `repeat=N`

    def __post_init__(self) -> None:
        for name in ("nodes", "depth", "repeat"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer, got {value!r}")


class Budget:
    """What one lowering has spent; `charge`, `enter` and `repeat` raise when a limit would be passed."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.nodes = 0
        self.calls: list[tuple[Location, str]] = []  # the module calls being inlined, outermost first

    def charge(self, count: int, loc: Location) -> None:
        """Spend ``count`` IR nodes made at ``loc``."""
        self.nodes += count
        if self.nodes > self.limits.nodes:
            raise SpecError("E0420", f"the model grows past {self.limits.nodes:,} IR nodes while it is lowered",
                            loc, expected=f"at most {self.limits.nodes:,} nodes (module copies included)",
                            found="more; " + (f"{len(self.calls)} module call(s) deep here" if self.calls
                                              else "in this module's own equations"),
                            hint="a module that calls another several times multiplies its size at every level; "
                                 "if the model is meant to be this large, raise the limit: --max-nodes N "
                                 "(in Python: limits=seqdsl.Limits(nodes=N))",
                            notes=self.chain())

    def enter(self, loc: Location, callee: str) -> None:
        """A module call at ``loc`` is about to be inlined (pair with `leave`)."""
        self.calls.append((loc, callee))
        if len(self.calls) > self.limits.depth:
            raise SpecError("E0421", f"module calls nested deeper than {self.limits.depth}", loc,
                            expected=f"at most {self.limits.depth} module calls inside one another",
                            found=f"`{callee}` at depth {len(self.calls)}",
                            hint="if the nesting is meant, raise the limit: --max-depth N "
                                 "(in Python: limits=seqdsl.Limits(depth=N))",
                            notes=self.chain())

    def leave(self) -> None:
        self.calls.pop()

    def repeat(self, count: int, loc: Location) -> None:
        """``repeat=count`` at ``loc``: refused above the limit before any copy is made."""
        if count > self.limits.repeat:
            raise SpecError("E0422", f"`repeat={count:,}` is above the limit of {self.limits.repeat:,} copies", loc,
                            expected=f"at most {self.limits.repeat:,}", found=f"{count:,}",
                            hint="check the size it comes from (`--set`); if it is meant, raise the limit: "
                                 "--max-repeat N (in Python: limits=seqdsl.Limits(repeat=N))",
                            notes=self.chain())

    def chain(self) -> list[tuple[Location, str]]:
        """Notes naming the calls being inlined: the outermost two and the innermost three."""
        shown = self.calls if len(self.calls) <= 5 else self.calls[:2] + self.calls[-3:]
        notes = [(loc, f"called `{callee}`") for loc, callee in shown]
        if len(self.calls) > 5:
            notes.insert(2, (self.calls[2][0], f"... {len(self.calls) - 5} more calls ..."))
        return notes
