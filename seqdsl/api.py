"""The language's front door: a spec file in, a checked `Model` (IR) out. No backend is imported here.

    model = seqdsl.load("specs/lstm.yaml", sizes={"h": 64})
    print(model.param_count)

Every mistake in what is passed is a `SpecError`, the spec's or the caller's: a size override that is not an
integer of a size the spec declares (``sizes={"h": "4"}``, ``{"h": 1.5}``, ``{"h": True}``) is E0306/E0309 at
that size's declaration, exactly as ``--set`` on the command line. ``limits`` bounds how far the spec may expand
while it is lowered (`seqdsl.budget.Limits`: IR nodes, call nesting, ``repeat=``); a bad `Limits` field is a
ValueError when the `Limits` is made. ``root`` is the folder that imports may read from (by default the spec's
own folder; ``--root DIR`` on the command line): a root that is no folder, or that does not hold the spec, is
E0507.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from .budget import Budget, Limits
from .errors import Location, SpecError, did_you_mean
from .imports import unit_for
from .ir import Graph, Model, Param, Scope, TrainDefaults
from .loader import Document, load_file, load_text
from .lower import ModuleLowering, Unit, check_overrides, spec_sources
from .naming import normalize
from .recurrence import RecurrentLowering
from .schema import parse_module
from .unused import unused_params, unused_values


def load(spec: str | Path, sizes: Mapping[str, int] | None = None, limits: Limits | None = None,
         module: str | None = None, root: str | Path | None = None) -> Model:
    """Load, validate and lower the spec file at ``spec``; ``sizes`` overrides its named sizes. ``module`` picks
    one of the modules the spec defines or imports, lowered on its own (with its own default sizes). Imports stay
    inside ``root`` (default: the spec's folder), which must hold the spec; nothing outside it is read."""
    with _no_gc_pauses():
        folder = import_root(spec, root) if root is not None else None  # before the spec is read
        return _lower(load_file(spec), sizes, limits, module, folder)


def loads(text: str, sizes: Mapping[str, int] | None = None, file: str = "<spec>",
          limits: Limits | None = None, module: str | None = None, root: str | Path | None = None) -> Model:
    """Like `load`, from the text of a spec; ``file`` names it (and places its imports), ``root`` as in `load`."""
    with _no_gc_pauses():
        folder = import_root(file, root, text_only=True) if root is not None else None
        return _lower(load_text(text, file), sizes, limits, module, folder)


def import_root(spec: str | Path, root: str | Path, text_only: bool = False) -> Path:
    """``root`` resolved (symlinks followed), checked to be a folder that holds ``spec``; E0507 if not."""
    where = Location(str(spec))  # the option is the mistake, not a line of the spec (which is not read)
    hint = "name a folder that holds the spec and every file it imports (--root DIR; in Python root=DIR)"
    try:
        folder = Path(root).resolve()
        is_dir = folder.is_dir()
    except (OSError, RuntimeError, ValueError, TypeError) as exc:
        raise SpecError("E0507", f"--root {ascii(str(root))[1:-1]} cannot be followed: {exc}", where,
                        hint=hint) from None
    if not is_dir:
        raise SpecError("E0507", f"--root {folder} is not a folder", where, hint=hint)
    if text_only and not _is_file_name(str(spec)):
        return folder
    try:
        spec_path = Path(spec).resolve()
    except (OSError, RuntimeError, ValueError):
        return folder  # reading the spec says what is wrong with its path
    if folder not in spec_path.parents:
        raise SpecError("E0507", f"--root {folder} does not hold the spec", where, found=str(spec_path),
                        hint=hint)
    return folder


def _is_file_name(file: str) -> bool:
    return bool(file) and not file.startswith("<")


@contextmanager
def _no_gc_pauses() -> Iterator[None]:
    """Python's cyclic collector off while a spec is decided: loading makes hundreds of thousands of small objects
    and no garbage cycles, and the collector's passes over them were a fifth of the time of a large spec."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _lower(doc: Document, sizes: Mapping[str, int] | None, limits: Limits | None = None,
           module: str | None = None, folder: Path | None = None) -> Model:
    if limits is not None and not isinstance(limits, Limits):
        raise TypeError(f"limits must be a seqdsl.Limits, got {type(limits).__name__}")
    root = parse_module(doc)
    from_file = _is_file_name(doc.file)
    explicit = folder is not None
    if folder is None and from_file:
        folder = Path(doc.file).resolve().parent
    unit = unit_for(doc, root, folder, explicit=explicit)
    stem = Path(doc.file).stem if from_file else "model"
    if module is not None and module not in unit.modules:
        raise SpecError("E0505", f"the spec has no module `{module}`", doc.loc(()),
                        expected="one of " + ", ".join(unit.modules) if unit.modules else "a module under `modules:`",
                        hint=did_you_mean(module, unit.modules))
    try:
        if module is not None:
            return build_model(unit.modules[module], sizes, name=module, limits=limits)
        return build_model(unit, sizes, name=root.name or stem, limits=limits)
    except RecursionError:  # only with a raised Limits.depth: Python's own stack ran out first
        raise SpecError("E0421", "module calls nested deeper than Python's stack allows", Location(doc.file, 1, 1),
                        hint="lower --max-depth (Limits.depth) back towards its default of 32") from None


def build_model(unit: Unit, overrides: dict[str, int] | None = None, name: str | None = None,
                limits: Limits | None = None) -> Model:
    """Lower the top-level module ``unit`` into a `Model` whose graph inputs are the module's inputs; ``limits``
    bounds how far it may expand (`seqdsl.budget`)."""
    graph = Graph()
    params: dict[str, Param] = {}
    scopes: dict[str, Scope] = {}
    if isinstance(overrides, Mapping):  # names are NFKC-normalised when loaded: the overrides' too
        overrides = {normalize(k) if isinstance(k, str) else k: v for k, v in overrides.items()}
    lowering = ModuleLowering(unit, graph, params, prefix="", sizes_in=check_overrides(unit, overrides), bound={},
                              budget=Budget(limits), scopes=scopes, recurrent=RecurrentLowering)
    lowering.run()
    _check_onnx_names(lowering, params)
    name = name or unit.module.name or "model"
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]{0,63}", name):
        raise SpecError("E0310", f"`{name}` cannot name a model", unit.doc.loc(unit.path + ("name",)),
                        expected="letters, digits, `_` and `-` (it names the output folder and the ONNX graph)",
                        hint="for example `name: my_lstm`")
    model = Model(name=name, graph=graph, params=params,
                  inputs=lowering.input_nodes, sizes=lowering.sizes, source=unit.doc.file,
                  doc=unit.module.doc, train=_train_defaults(unit), scopes=scopes)
    model.verify()
    model.warnings = unused_values(graph, model.scopes) + unused_params(model)
    model.sources = spec_sources(unit)
    return model


def _train_defaults(unit: Unit) -> TrainDefaults:
    section = unit.module.train
    values = section.model_dump(exclude_none=True) if section is not None else {}
    return TrainDefaults(values, {k: unit.doc.loc(unit.path + ("train", k)) for k in values})


def _check_onnx_names(lowering: "ModuleLowering", params: dict[str, Param]) -> None:
    """The model's inputs, outputs and parameters are ONNX value names as the spec writes them, and ONNX wants
    every value name once: an output may not be named like an input or a parameter."""
    for name in lowering.mod.outputs:
        clash = "an input" if name in lowering.mod.inputs else "a parameter" if name in params else None
        if clash:
            raise SpecError("E0308", f"output `{name}` has the name of {clash}", lowering.key_loc("outputs", name),
                            expected="a name of its own: the model's inputs, outputs and parameters are the ONNX "
                                     "file's value names, each used once",
                            hint=f"rename the output, e.g. `{name}_out`")
