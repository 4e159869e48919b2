"""Reuse: modules from the same file, from other files and from the standard library; imports stay in the tree."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import SPECS

import seqdsl
from seqdsl.compilers.torch_module import to_module
from seqdsl.errors import SpecError

CALLER = """\
sizes: {d: 3, h: 5}
inputs: {x: [B, T, d]}
imports:
  LSTM: std:lstm.yaml
  Cell: lib/cells.yaml#Cell
graph:
  a: LSTM(x, h=h)
  b: Cell(a.y, h=2)
  c: Cell(a.y)
outputs: {y: b, z: c}
"""
CELLS = """\
sizes: {d: 4}
inputs: {x: [B, T, d]}
modules:
  Cell:
    sizes: {d: 4, h: 7}
    inputs: {x: [B, T, d]}
    params: {W: [h, d]}
    graph:
      y: tanh(W @ x)
    outputs: {y: y}
graph: {y: x}
outputs: {y: y}
"""


def _tree(tmp_path: Path, caller: str = CALLER) -> Path:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "cells.yaml").write_text(CELLS)
    (tmp_path / "top.yaml").write_text(caller)
    return tmp_path / "top.yaml"


def test_modules_from_files_and_the_standard_library_with_other_sizes(tmp_path: Path):
    model = seqdsl.load(_tree(tmp_path))
    assert model.params["a.U_f"].shape == (5, 5)          # std:lstm.yaml with h=5, d read off x
    assert model.params["b.W"].shape == (2, 5)            # the same Cell twice: its own sizes,
    assert model.params["c.W"].shape == (7, 5)            # its own parameters
    g = model.graph
    assert g[g.outputs["y"]].shape == ("B", "T", 2) and g[g.outputs["z"]].shape == ("B", "T", 7)


@pytest.mark.parametrize("target, code, words", [
    ("../outside.yaml", "E0502", "leaves the spec's folder"),
    ("/etc/passwd", "E0502", "must be relative"),
    ("std:../pyproject.toml", "E0502", "leaves the spec's folder"),      # std: is specs/, and no further
    ("std:lib/../../cli.py", "E0502", "leaves the spec's folder"),
    ("std:/etc/passwd", "E0502", "must be relative"),
    ("std:~/x.yaml", "E0502", "must be relative"),
    ("lib/nope.yaml", "E0506", "does not exist"),
    ("lib/cells.yaml#Cel", "E0505", "did you mean `Cell`?"),
    ("top.yaml", "E0503", "import cycle: top.yaml -> top.yaml"),
])
def test_bad_imports_are_located(tmp_path: Path, target: str, code: str, words: str):
    (tmp_path / "outside.yaml").write_text(CELLS)
    proj = tmp_path / "proj"
    proj.mkdir()
    spec = _tree(proj, CALLER.replace("lib/cells.yaml#Cell", target))
    with pytest.raises(SpecError) as info:
        seqdsl.load(spec)
    err = info.value
    assert err.code == code and words in err.format()
    assert err.loc.line == 5 and err.loc.path == "imports.Cell"


def test_symlink_out_of_the_tree_is_refused(tmp_path: Path):
    (tmp_path / "secret.yaml").write_text(CELLS)
    proj = tmp_path / "proj"
    proj.mkdir()
    spec = _tree(proj, CALLER.replace("lib/cells.yaml#Cell", "link.yaml#Cell"))
    os.symlink(tmp_path / "secret.yaml", proj / "link.yaml")
    with pytest.raises(SpecError) as info:
        seqdsl.load(spec)
    assert info.value.code == "E0502"


def test_indirect_import_cycle_shows_the_chain(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(CELLS.replace("modules:", "imports: {X: b.yaml}\nmodules:"))
    (tmp_path / "b.yaml").write_text(CELLS.replace("modules:", "imports: {X: a.yaml}\nmodules:"))
    with pytest.raises(SpecError) as info:
        seqdsl.load(tmp_path / "a.yaml")
    assert info.value.code == "E0503" and "a.yaml -> b.yaml -> a.yaml" in info.value.message


def test_gate_building_block_gives_the_lstm():
    """lstm_gates.yaml writes the LSTM's gates with lib/gates.yaml's Gate: same numbers as lstm.yaml."""
    gated, plain = to_module(seqdsl.load(SPECS / "lstm_gates.yaml")), to_module(seqdsl.load(SPECS / "lstm.yaml"))
    weights = gated.state_dict()
    mapped = {k: weights[k] for k in ("W_c", "U_c", "b_c")}
    for g in "fio":
        mapped |= {f"W_{g}": weights[f"{g}.W"], f"U_{g}": weights[f"{g}.U"], f"b_{g}": weights[f"{g}.b"]}
    plain.load_state_dict(mapped)
    x = torch.randn(3, 6, 16)
    for a, b in zip(gated(x), plain(x)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------ --root

MAIN = "inputs: {x: [B, T, 4]}\nimports: {Cell: TARGET}\ngraph: {b: Cell(x)}\noutputs: {y: b}\n"
_OPENED: list[str] | None = None  # while set, every file the process opens (or lists) is recorded


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event in ("open", "os.listdir", "os.scandir") and args:
        if isinstance(args[0], (str, bytes, os.PathLike)):
            _OPENED.append(os.fsdecode(args[0]))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """base/proj/{models,cells} side by side, with sentinels outside proj that would be valid modules, links in
    and out of it, and a sibling that differs from it only by case."""
    import sys

    sys.addaudithook(_audit)  # audit hooks cannot be removed: this one records only while _OPENED is set
    base = tmp_path_factory.mktemp("roots").resolve()
    proj = base / "proj"
    for folder in (proj / "models", proj / "cells", base / "Proj" / "cells", base / "PROJ" / "models"):
        folder.mkdir(parents=True)
    for path in (base / "sentinel.yaml", proj / "cells" / "cell.yaml", proj / "models" / "local.yaml",
                 base / "Proj" / "cells" / "cell.yaml", base / "PROJ" / "models" / "local.yaml"):
        path.write_text(CELLS)
    os.symlink("cell.yaml", proj / "cells" / "in_link.yaml")
    os.symlink("../../sentinel.yaml", proj / "cells" / "out_link.yaml")
    os.symlink("../../Proj/cells/cell.yaml", proj / "cells" / "case_link.yaml")
    os.symlink("..", proj / "models" / "up")  # proj: inside the root, outside the spec's folder
    os.symlink("../..", proj / "models" / "out")  # base: outside both
    return base


_SEGMENT = st.sampled_from(["..", ".", "cells", "Cells", "models", "MODELS", "proj", "Proj", "PROJ", "up", "out",
                            "nope", "", "./.."])
_FILE = st.sampled_from(["cell.yaml", "CELL.yaml", "local.yaml", "sentinel.yaml", "in_link.yaml", "out_link.yaml",
                         "case_link.yaml", "missing.yaml"])
_NEAR = st.sampled_from(["local.yaml", "../cells/cell.yaml", "up/cells/cell.yaml", "../cells/in_link.yaml",
                         "../cells/out_link.yaml", "../cells/case_link.yaml", "../../sentinel.yaml", "out/sentinel.yaml",
                         "../../Proj/cells/cell.yaml", "../../PROJ/models/local.yaml", "../Cells/cell.yaml",
                         "../../proj/cells/cell.yaml", "out/proj/cells/cell.yaml", "./up/../local.yaml"])
_PATH = st.one_of(_NEAR, st.builds(lambda parts, name: "/".join([*parts, name]), st.lists(_SEGMENT, max_size=5), _FILE))


@settings(max_examples=150 if not os.environ.get("SEQDSL_LONG_TESTS") else 2000, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rel=_PATH, absolute=st.sampled_from([False, False, False, True]), use_root=st.booleans(), inner=st.booleans())
def test_imports_never_read_outside_the_root(project: Path, rel: str, absolute: bool, use_root: bool, inner: bool):
    global _OPENED
    proj, spec_dir = project / "proj", project / "proj" / "models"
    target = (str(spec_dir) + "/" + rel) if absolute else rel
    absolute = target.startswith("/")  # an empty first segment makes one too
    spec = spec_dir / "main.yaml"
    spec.write_text(MAIN.replace("TARGET", target + ("#Cell" if inner else "")))
    root = proj if use_root else spec_dir
    resolved = Path(os.path.realpath(spec_dir / rel))  # the file the path names, by the OS's own resolution
    allowed = not absolute and (resolved == root or root in resolved.parents)
    _OPENED = []
    try:
        outcome: Any = seqdsl.load(spec, root=proj if use_root else None)
    except SpecError as exc:
        outcome = exc
    finally:
        opened, _OPENED = _OPENED, None
    outside = [p for p in opened if project in Path(os.path.realpath(p)).parents
               and not (root == Path(os.path.realpath(p)) or root in Path(os.path.realpath(p)).parents)]
    assert not outside, (target, use_root, outside)
    event("loaded" if not isinstance(outcome, SpecError) else outcome.code)
    if not allowed:
        assert isinstance(outcome, SpecError) and outcome.code == "E0502", (target, use_root, outcome)
        assert outcome.loc.line == 2, outcome
        assert ("--root" in outcome.format()) or not use_root or absolute
    elif resolved.is_file():
        assert not isinstance(outcome, SpecError), (target, use_root, outcome.format())
    else:
        assert isinstance(outcome, SpecError) and outcome.code in ("E0506", "E0502"), (target, outcome)


def test_root_lets_side_by_side_folders_import_and_a_bad_root_is_one_error(project: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from seqdsl import cli as seqdsl_cli

    spec = project / "proj" / "models" / "main.yaml"
    spec.write_text(MAIN.replace("TARGET", "../cells/cell.yaml#Cell"))
    with pytest.raises(SpecError) as info:
        seqdsl.load(spec)
    assert info.value.code == "E0502" and "--root DIR" in info.value.format()  # the way out is named
    assert seqdsl.load(spec, root=project / "proj").params["b.W"].shape == (7, 4)
    assert seqdsl.loads(spec.read_text(), file=str(spec), root=project / "proj").params["b.W"].shape == (7, 4)
    runner = CliRunner()
    for command in ("validate", "inspect", "graph"):
        done = runner.invoke(seqdsl_cli.app, [command, str(spec), "--root", str(project / "proj")])
        assert done.exit_code == 0, (command, done.output)
    for bad, words in ((project / "sentinel.yaml", "is not a folder"), (tmp_path, "does not hold the spec"),
                       (project / "nope", "is not a folder")):
        with pytest.raises(SpecError) as info:
            seqdsl.load(spec, root=bad)
        assert info.value.code == "E0507" and words in info.value.message
        for command in ("validate", "build", "inspect", "graph"):
            done = runner.invoke(seqdsl_cli.app, [command, str(spec), "--root", str(bad)])
            assert done.exit_code == 2, (command, done.output)
            assert f"error[E0507]: --root {bad} {words}" in done.output and "Traceback" not in done.output
