"""seqdsl: sequence neural networks as YAML equations, checked and compiled to PyTorch and ONNX.

The language (this package) imports no backend: `load` gives a checked IR `Model`; `compilers` turns it into
a PyTorch module, a standalone ``model.py`` and ONNX.
"""

from __future__ import annotations

from .api import load, loads
from .budget import Limits
from .errors import Location, SpecError, SpecErrors
from .ir import Graph, Model, Node, Param
from .version import __version__

__all__ = ["__version__", "load", "loads", "Limits", "SpecError", "SpecErrors", "Location", "Model", "Graph", "Node",
           "Param"]
