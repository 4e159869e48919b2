"""The live PyTorch module: the generated ``model.py`` imported as a module, so what trains is what you read.

    model = seqdsl.load("specs/lstm.yaml")
    net = to_module(model)            # an nn.Module; net(x) -> (y, h_n, c_n)

The source comes from `seqdsl.compilers.torch_codegen` (built from the checked IR, never from spec text) and is
written to a file before import, so tracebacks and ``inspect`` show real lines. The class is importable by a
stable name (`seqdsl.compilers.generated`), so ``torch.save(net)`` / ``torch.load(..., weights_only=False)`` round-trip
the whole module, and ``copy.deepcopy(net)`` works.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from torch import nn

from seqdsl import files, passes
from seqdsl.errors import SpecError
from seqdsl.ir import Model
from seqdsl.naming import MODULE_ATTRIBUTES

from . import generated
from .torch_codegen import generate, torch_runs

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
    """The generated ``Model`` class for ``model``; its source also goes to ``source_path`` when given.

    ``optimize`` runs seqdsl's default passes first (fusion, hoisting): same numbers, same parameter names;
    ``native_cells`` runs blocks that are a standard cell on torch's own kernels (torch.lstm, torch.gru, ...).
    With neither, model.py computes the spec's equations exactly as written.
    """
    check_param_names(model)
    cells = torch_runs if native_cells else frozenset()
    source = generate(passes.optimize(model, cells=cells) if optimize else model)
    if source_path is not None and (not source_path.exists() or source_path.read_text() != source):
        files.write_text(source_path, source)
    # imported from the cache under a stable name (seqdsl.compilers.generated.<model>_<digest>), so torch.save(net) finds
    # the class again in another process
    return generated.load(model.name, source).Model


def to_module(model: Model, optimize: bool = True, native_cells: bool = True) -> nn.Module:
    """A freshly initialised nn.Module computing ``model`` (see `module_class` for the flags)."""
    return module_class(model, optimize=optimize, native_cells=native_cells)()
