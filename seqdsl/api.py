"""The language's front door: a spec file in, a checked `Model` (IR) out. No backend is imported here.

    model = seqdsl.load("specs/lstm.yaml", sizes={"h": 64})
    print(model.param_count)

Every mistake in what is passed is a `SpecError`, the spec's or the caller's: a size override that is not an
integer of a size the spec declares (``sizes={"h": "4"}``, ``{"h": 1.5}``, ``{"h": True}``) is E0306/E0309 at
that size's declaration, exactly as ``--set`` on the command line. ``limits`` bounds how far the spec may expand
while it is lowered (`seqdsl.budget.Limits`: IR nodes, call nesting, ``repeat=``); a bad `Limits` field is a
ValueError when the `Limits` is made.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .budget import Limits
from .errors import Location, SpecError
from .imports import unit_for
from .ir import Model
from .loader import Document, load_file, load_text
from .lower import build_model
from .schema import parse_module


def load(spec: str | Path, sizes: Mapping[str, int] | None = None, limits: Limits | None = None) -> Model:
    """Load, validate and lower the spec file at ``spec``; ``sizes`` overrides its named sizes."""
    return _lower(load_file(spec), sizes, limits)


def loads(text: str, sizes: Mapping[str, int] | None = None, file: str = "<spec>",
          limits: Limits | None = None) -> Model:
    """Like `load`, from the text of a spec."""
    return _lower(load_text(text, file), sizes, limits)


def _lower(doc: Document, sizes: Mapping[str, int] | None, limits: Limits | None = None) -> Model:
    if limits is not None and not isinstance(limits, Limits):
        raise TypeError(f"limits must be a seqdsl.Limits, got {type(limits).__name__}")
    root = parse_module(doc)
    from_file = bool(doc.file) and not doc.file.startswith("<")
    unit = unit_for(doc, root, Path(doc.file).resolve().parent if from_file else None)
    stem = Path(doc.file).stem if from_file else "model"
    try:
        return build_model(unit, sizes, name=root.name or stem, limits=limits)
    except RecursionError:  # only with a raised Limits.depth: Python's own stack ran out first
        raise SpecError("E0421", "module calls nested deeper than Python's stack allows", Location(doc.file, 1, 1),
                        hint="lower --max-depth (Limits.depth) back towards its default of 32") from None
