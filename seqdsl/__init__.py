"""seqdsl: sequence neural networks as YAML equations, checked and compiled to PyTorch and ONNX.

The language (this package) imports no backend: `load` gives a checked IR `Model`; `seqdsl.compilers` turns it
into a PyTorch module, a standalone ``model.py`` and ONNX; `seqdsl.cli` is the command line.
"""

from __future__ import annotations

from pathlib import Path as _Path

# The repository keeps compilers/ and cli.py beside this folder; an install puts them inside it. Run from a checkout
# (tests, `python cli.py`, a git worktree, an editable install), seqdsl.compilers and seqdsl.cli are found beside.
_checkout = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).parent / "compilers").is_dir() and (_checkout / "compilers" / "__init__.py").is_file() \
        and (_checkout / "cli.py").is_file() and (_checkout / "pyproject.toml").is_file():
    __path__.append(str(_checkout))  # type: ignore[name-defined]  # noqa: F821
del _checkout, _Path

from .api import load, loads
from .budget import Limits
from .errors import Location, SpecError, SpecErrors
from .ir import Graph, Model, Node, Param
from .version import __version__

__all__ = ["__version__", "load", "loads", "Limits", "SpecError", "SpecErrors", "Location", "Model", "Graph", "Node",
           "Param"]
