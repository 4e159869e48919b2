"""The benchmark workloads: one module per workload, found by name (``--only NAME``).

A workload module has a docstring (its first line is printed as the workload starts), an ``ORDER`` (where it
runs in a full run) and ``run(report, cfg)``, which times its variants with `benchmarks.harness.measure` and
adds rows to the report. Modules whose name starts with ``_`` are shared helpers, not workloads.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def discover() -> dict[str, ModuleType]:
    """Every workload module, by name, in run order."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            module = importlib.import_module(f"{__name__}.{info.name}")
            found[info.name] = module
    return dict(sorted(found.items(), key=lambda kv: (kv[1].ORDER, kv[0])))
