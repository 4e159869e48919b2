"""The language's front door: a spec file in, a checked `Model` (IR) out. No backend is imported here.

    model = seqdsl.load("specs/lstm.yaml", sizes={"h": 64})
    print(model.param_count)
"""

from __future__ import annotations

from pathlib import Path

from .errors import SpecError, did_you_mean
from .imports import unit_for
from .ir import Model
from .loader import Document, load_file, load_text
from .lower import build_model
from .schema import parse_module


def load(spec: str | Path, sizes: dict[str, int] | None = None, module: str | None = None) -> Model:
    """Load, validate and lower the spec file at ``spec``; ``sizes`` overrides its named sizes. ``module`` picks
    one of the modules the spec defines or imports, lowered on its own (with its own default sizes)."""
    return _lower(load_file(spec), sizes, module)


def loads(text: str, sizes: dict[str, int] | None = None, file: str = "<spec>", module: str | None = None) -> Model:
    """Like `load`, from the text of a spec."""
    return _lower(load_text(text, file), sizes, module)


def _lower(doc: Document, sizes: dict[str, int] | None, module: str | None = None) -> Model:
    root = parse_module(doc)
    from_file = bool(doc.file) and not doc.file.startswith("<")
    unit = unit_for(doc, root, Path(doc.file).resolve().parent if from_file else None)
    stem = Path(doc.file).stem if from_file else "model"
    if module is None:
        return build_model(unit, sizes, name=root.name or stem)
    if module not in unit.modules:
        raise SpecError("E0505", f"the spec has no module `{module}`", doc.loc(()),
                        expected="one of " + ", ".join(unit.modules) if unit.modules else "a module under `modules:`",
                        hint=did_you_mean(module, unit.modules))
    return build_model(unit.modules[module], sizes, name=module)
