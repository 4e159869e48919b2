"""The house: every import arrow between seqdsl/, compilers/ and cli.py points down.

The graph is read with `ast` (nothing is imported, so no import side effect can hide or make an arrow) and counts
every import: top-level, inside functions, and under ``if TYPE_CHECKING:``. An import cycle fails here, with the
modules on it, and so does the language (seqdsl/) reaching for a backend, a compiler or the command line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("seqdsl", "compilers")
BACKENDS = {"torch", "onnx", "onnxruntime", "onnxscript", "compilers", "cli"}
INSTALLED_AS = {"seqdsl.compilers": "compilers", "seqdsl.cli": "cli"}  # how the install names compilers/ and cli.py


def _local_name(name: str) -> str:
    """``seqdsl.compilers.build`` -> ``compilers.build``: the repository's folder, whichever name imports it."""
    for installed, local in INSTALLED_AS.items():
        if name == installed or name.startswith(installed + "."):
            return local + name[len(installed):]
    return name


def modules(root: Path) -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    if (root / "cli.py").exists():
        found["cli"] = root / "cli.py"
    return found


def imported(module: str, path: Path, found: dict[str, Path]) -> set[str]:
    """Every module name ``module`` imports, relative imports resolved: ``from pkg import name`` is ``pkg.name``
    when that is a module of the repository, else ``pkg``."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(_local_name(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            base = _local_name(base)
            names.update(f"{base}.{a.name}" if f"{base}.{a.name}" in found else base for a in node.names)
    return names


def import_graph(root: Path = ROOT) -> tuple[nx.DiGraph, dict[str, set[str]]]:
    """The arrows between the repository's own modules, and the top-level names of what each imports besides."""
    found = modules(root)
    graph, outside = nx.DiGraph(), {}
    graph.add_nodes_from(found)
    for module, path in found.items():
        outside[module] = set()
        for name in imported(module, path, found):
            target = name
            while target and target not in found:  # `import onnx.helper` -> onnx; `compilers.x.f` -> compilers.x
                target = target.rpartition(".")[0]
            if not target:
                outside[module].add(name.split(".")[0])
            elif target != module:
                graph.add_edge(module, target)
    return graph, outside


def test_no_import_cycle():
    graph, _ = import_graph()
    cycles = sorted(" -> ".join(c + [c[0]]) for c in nx.simple_cycles(graph))
    assert not cycles, "import cycles (move the shared name to the module that owns it):\n" + "\n".join(cycles)


def test_the_language_imports_no_backend_compiler_or_command_line():
    graph, outside = import_graph()
    for module in (m for m in graph if m == "seqdsl" or m.startswith("seqdsl.")):
        if module == "seqdsl.__main__":
            continue  # the program `python -m seqdsl`: nothing imports it, it runs the command line
        reached = outside[module] | {t.split(".")[0] for t in graph.successors(module)}
        assert not reached & BACKENDS, f"{module} imports {sorted(reached & BACKENDS)}"


def test_python_dash_m_seqdsl_only_runs_the_command_line():
    graph, outside = import_graph()
    assert set(graph.successors("seqdsl.__main__")) <= {"cli"}
    assert not outside["seqdsl.__main__"] & (BACKENDS - {"cli"})


def test_the_graph_sees_every_kind_of_arrow(tmp_path):
    """The checker itself: a cycle through a function-level import, a TYPE_CHECKING import and a relative one is
    found, and `from pkg import submodule` is an arrow to the submodule, not to the package."""
    (tmp_path / "compilers" / "sub").mkdir(parents=True)
    (tmp_path / "seqdsl").mkdir()
    files = {
        "compilers/__init__.py": "",
        "compilers/a.py": "def f():\n    from .b import g\n",
        "compilers/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from seqdsl.compilers.a import f\n",
        "compilers/sub/__init__.py": "from .leaf import x\n",
        "compilers/sub/leaf.py": "from . import other\nimport torch\n",
        "compilers/sub/other.py": "",
        "seqdsl/__init__.py": "",
        "seqdsl/lang.py": "import onnx.helper\nfrom . import __init__\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    graph, outside = import_graph(tmp_path)
    assert sorted(map(sorted, nx.simple_cycles(graph))) == [["compilers.a", "compilers.b"]]
    assert graph.has_edge("compilers.sub.leaf", "compilers.sub.other")
    assert not graph.has_edge("compilers.sub.leaf", "compilers.sub")
    assert outside["compilers.sub.leaf"] == {"torch"} and outside["seqdsl.lang"] == {"onnx"}
