"""The live PyTorch module: the generated ``model.py`` imported as a module, so what trains is what you read.

    model = seqdsl.load("specs/lstm.yaml")
    net = to_module(model)            # an nn.Module; net(x) -> (y, h_n, c_n)

The source comes from `compilers.torch_codegen` (built from the checked IR, never from spec text) and is
written to a file before import, so tracebacks and ``inspect`` show real lines.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from torch import nn

from seqdsl import passes
from seqdsl.errors import SpecError
from seqdsl.ir import Model
from seqdsl.naming import MODULE_ATTRIBUTES

from .torch_codegen import TORCH_CELLS, generate

# Attributes of nn.Module a parameter must not shadow (`self.training = nn.Parameter(...)` would break it).
_MODULE_ATTRS = set(dir(nn.Module())) | MODULE_ATTRIBUTES


def check_param_names(model: Model) -> None:
    """Parameter names become attributes of the module: refuse the ones nn.Module already uses."""
    for p in model.params.values():
        clash = next((part for part in p.name.split(".") if part in _MODULE_ATTRS), None)
        if clash:
            raise SpecError("E0310", f"parameter name `{clash}` is taken by torch.nn.Module", p.loc,
                            hint=f"rename it, e.g. `{clash}_w`")


def import_source(path: Path) -> ModuleType:
    """Import the Python file at ``path`` as a fresh module."""
    name = "seqdsl_generated_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    writes, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ beside a build's files
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = writes
    sys.modules[name] = module  # so that pickle / torch.save of a whole module finds its class
    return module


def module_class(model: Model, source_path: Path | None = None, optimize: bool = True,
                 native_cells: bool = True) -> type[nn.Module]:
    """The generated ``Model`` class for ``model``; its source goes to ``source_path`` or a cache file.

    ``optimize`` runs seqdsl's default passes first (fusion, hoisting): same numbers, same parameter names;
    ``native_cells`` runs blocks that are a standard cell on torch's own kernels (torch.lstm, torch.gru, ...).
    With neither, model.py computes the spec's equations exactly as written.
    """
    check_param_names(model)
    cells = frozenset(TORCH_CELLS) if native_cells else frozenset()
    source = generate(passes.optimize(model, cells=cells) if optimize else model)
    if source_path is None:
        digest = hashlib.sha256(source.encode()).hexdigest()[:16]
        cache = Path(tempfile.gettempdir()) / "seqdsl-modules"
        cache.mkdir(parents=True, exist_ok=True)
        source_path = cache / f"{model.name}_{digest}.py"
    if not source_path.exists() or source_path.read_text() != source:
        # write whole or not at all: another process may be importing the same cached file
        tmp = source_path.with_name(f".{source_path.name}.{os.getpid()}.tmp")
        tmp.write_text(source)
        os.replace(tmp, source_path)
    return import_source(source_path).Model


def to_module(model: Model, optimize: bool = True, native_cells: bool = True) -> nn.Module:
    """A freshly initialised nn.Module computing ``model`` (see `module_class` for the flags)."""
    return module_class(model, optimize=optimize, native_cells=native_cells)()
