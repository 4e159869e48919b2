"""Modules and where they come from: defined in the same file, imported from another spec file, or from the
standard library (the specs that ship with seqdsl).

    imports:
      LSTM: lstm.yaml                 # the root module of lstm.yaml, next to this file
      Additive: lib/attention.yaml#Additive   # a module under that file's `modules:`
      GRU: std:gru.yaml               # from the standard library

A relative path is read from the importing file's folder and may not leave the root: the folder of the spec
being built, or the folder named by ``--root DIR`` (``root=`` in Python). No absolute paths, no `..` past the
root, no symlinks out; the check is made on the resolved path before anything there is looked at, so nothing
outside the root is read. Import cycles are reported with the chain.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import Location, SpecError, did_you_mean
from .loader import MAX_NODES, MAX_SPEC_BYTES, Document, load_file
from .lower import Unit
from .naming import normalize
from .schema import GraphModule, RecurrentModule, parse_module

# the `std:` library: the shipped specs, inside the package once installed (seqdsl/specs), beside it in a checkout
STD_ROOT = next((p for p in (Path(__file__).resolve().parent / "specs", Path(__file__).resolve().parent.parent / "specs")
                 if p.is_dir()), Path(__file__).resolve().parent / "specs")
MAX_IMPORT_DEPTH = 16


@dataclass
class _Session:
    """One build's imports: the tree files may come from, files already loaded, and the chain being loaded."""

    root: Path
    explicit: bool = False  # the root was named (--root, root=), not the spec's folder
    units: dict[Path, Unit] = field(default_factory=dict)  # each file's root module, loaded and resolved once
    chain: list[Path] = field(default_factory=list)
    bytes_left: int = MAX_SPEC_BYTES  # what the files still to be read may take, all together
    nodes_left: int = MAX_NODES


def unit_for(doc: Document, module: RecurrentModule | GraphModule, root: Path | None, explicit: bool = False
             ) -> Unit:
    """The top-level module of ``doc``, with every module it may call resolved (files under ``root``, which is
    the spec's folder unless ``explicit``: named by the user, ``--root``)."""
    session = _Session(root.resolve() if root else Path.cwd().resolve(), explicit=explicit,
                       bytes_left=MAX_SPEC_BYTES - doc.size, nodes_left=MAX_NODES - doc.nodes)
    if root is not None:
        session.chain.append(Path(doc.file).resolve())
    return _unit(session, module, doc, (), {})


def _unit(session: _Session, module: RecurrentModule | GraphModule, doc: Document, path: tuple[str | int, ...],
          visible: dict[str, Unit]) -> Unit:
    unit = Unit(module, doc, path, dict(visible))
    for name, target in module.imports.items():
        key = path + ("imports", name)
        _check_module_name(name, doc, key)
        unit.modules[name] = _import(session, target, doc, key)
    for name, sub in module.modules.items():
        key = path + ("modules", name)
        _check_module_name(name, doc, key)
        if name in module.imports:
            raise SpecError("E0501", f"module `{name}` is both imported and defined here", doc.key_loc(key))
        unit.modules[name] = _unit(session, sub, doc, key, unit.modules)
    return unit


def _check_module_name(name: str, doc: Document, key: tuple[str | int, ...]) -> None:
    if not name.isidentifier() or name.startswith("_"):
        raise SpecError("E0310", f"`{name}` cannot name a module", doc.key_loc(key),
                        hint="module names are identifiers such as `LSTM` or `Attention`")


def _import(session: _Session, target: str, doc: Document, key: tuple[str | int, ...]) -> Unit:
    loc = doc.loc(key)
    file_part, _, inner = target.partition("#")
    inner = normalize(inner)  # a module name, read as Python reads identifiers; the file part is a path
    path = _resolve(session, file_part, Path(doc.file), loc)
    if path in session.chain:
        chain = session.chain[session.chain.index(path):] + [path]
        raise SpecError("E0503", "import cycle: " + " -> ".join(p.name for p in chain), loc,
                        hint="a module cannot import, directly or not, the file that imports it")
    if len(session.chain) >= MAX_IMPORT_DEPTH:
        raise SpecError("E0504", f"imports nested deeper than {MAX_IMPORT_DEPTH} files", loc)
    unit = session.units.get(path)
    if unit is None:  # a file imported twice (a diamond) is read and resolved once, not once per path to it
        session.chain.append(path)
        try:
            sub_doc = load_file(path, session.bytes_left, session.nodes_left)  # bounded before it is read
            session.bytes_left -= sub_doc.size
            session.nodes_left -= sub_doc.nodes
            unit = _unit(session, parse_module(sub_doc), sub_doc, (), {})
        finally:
            session.chain.pop()
        session.units[path] = unit
    if not inner:
        return unit
    if inner not in unit.modules:
        raise SpecError("E0505", f"`{file_part}` defines no module `{inner}`", loc,
                        expected="one of " + ", ".join(unit.modules) if unit.modules else "a module under `modules:`",
                        hint=did_you_mean(inner, unit.modules))
    return unit.modules[inner]


def _resolve(session: _Session, target: str, importer: Path, loc: Location) -> Path:
    """The real path of an import, refused when it is absolute or leaves the allowed tree."""
    if target.startswith("std:"):
        base, rel, tree = STD_ROOT, target[4:], STD_ROOT
    else:
        base, rel = importer.resolve().parent, target
        tree = STD_ROOT if _inside(importer.resolve(), STD_ROOT) and not _inside(importer.resolve(), session.root) \
            else session.root
    try:
        os.fsencode(rel)  # surrogateescape: U+DC80-U+DCFF stand for a file name's raw bytes; other surrogates name nothing
    except UnicodeEncodeError as exc:
        raise SpecError("E0502", f"import path `{ascii(target)[1:-1]}` cannot name a file: it holds a lone surrogate "
                        f"U+{ord(exc.object[exc.start]):04X}", loc,
                        hint="write the path as plain text; remove the `\\u` escape") from None
    if not rel or Path(rel).is_absolute() or rel.startswith("~") or "\\" in rel:
        raise SpecError("E0502", f"import path `{target}` must be relative to this file", loc,
                        hint="write a path such as `lstm.yaml` or `lib/attention.yaml`, or `std:lstm.yaml`")
    try:
        path = (base / rel).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a name too long, a symlink loop (RuntimeError in 3.11)
        raise _unfollowable(target, exc, loc) from None
    if not _inside(path, tree):  # checked before anything at `path` is looked at
        named = tree is session.root and session.explicit
        raise SpecError("E0502", f"import `{target}` leaves " + ("the --root folder" if named else "the spec's folder"),
                        loc, expected=f"a file under {tree}", found=str(path),
                        hint="imports stay inside " + ("--root DIR" if named else "the folder of the spec being built")
                        + " (symlinks are followed)" + ("" if named or tree is STD_ROOT else
                                                        "; to import from a folder beside it, name a folder that "
                                                        "holds both: --root DIR (in Python: root=DIR)"))
    try:
        is_file = path.is_file()
    except (OSError, ValueError) as exc:
        raise _unfollowable(target, exc, loc) from None
    if not is_file:
        raise SpecError("E0506", f"imported file `{target}` does not exist", loc, found=str(path),
                        hint=did_you_mean(Path(rel).name, [p.name for p in path.parent.glob("*.yaml")])
                        if path.parent.is_dir() else None)
    return path


def _unfollowable(target: str, exc: Exception, loc: Location) -> SpecError:
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).split(":")[0]
    shown = target if len(target) <= 80 else target[:60] + "..." + target[-16:]
    return SpecError("E0502", f"import path `{shown}` cannot be followed: {why}", loc,
                     hint="name an existing .yaml file with a plain relative path (each name at most 255 bytes, "
                          "no symlink loops)")


def _inside(path: Path, tree: Path) -> bool:
    return path == tree or tree in path.parents
