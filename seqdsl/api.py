"""The language's front door: a spec file in, a checked `Model` (IR) out. No backend is imported here.

    model = seqdsl.load("specs/lstm.yaml", sizes={"h": 64})
    print(model.param_count)
"""

from __future__ import annotations

from pathlib import Path

from .errors import SpecError
from .ir import Model
from .loader import Document, load_file, load_text
from .lower import Unit, build_model
from .schema import GraphModule, RecurrentModule, parse_module


def load(spec: str | Path, sizes: dict[str, int] | None = None) -> Model:
    """Load, validate and lower the spec file at ``spec``; ``sizes`` overrides its named sizes."""
    return _lower(load_file(spec), sizes)


def loads(text: str, sizes: dict[str, int] | None = None, file: str = "<spec>") -> Model:
    """Like `load`, from the text of a spec."""
    return _lower(load_text(text, file), sizes)


def _lower(doc: Document, sizes: dict[str, int] | None) -> Model:
    root = parse_module(doc)
    unit = _unit(root, doc, ())
    stem = Path(doc.file).stem if doc.file and not doc.file.startswith("<") else "model"
    return build_model(unit, sizes, name=root.name or stem)


def _unit(module: RecurrentModule | GraphModule, doc: Document, path: tuple[str | int, ...],
          visible: dict[str, Unit] | None = None) -> Unit:
    """A module with the modules it may call: those it defines, and those visible where it is defined."""
    unit = Unit(module, doc, path, dict(visible or {}))
    for name, sub in module.modules.items():
        if not name.isidentifier():
            raise SpecError("E0310", f"`{name}` cannot name a module", doc.key_loc(path + ("modules", name)),
                            hint="module names are identifiers such as `LSTM` or `Attention`")
        unit.modules[name] = _unit(sub, doc, path + ("modules", name), unit.modules)
    return unit
