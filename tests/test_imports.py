"""Reuse: modules from the same file, from other files and from the standard library; imports stay in the tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from conftest import SPECS

import seqdsl
from compilers.torch_module import to_module
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
