"""`seqdsl graph`: the figures are real SVG/PNG pictures holding the nodes and edges a reader looks for."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ROOT, SPECS
from test_properties import random_cells
from typer.testing import CliRunner

from seqdsl import cli as seqdsl_cli

import seqdsl
from seqdsl.figure import SYMBOLS, figure, label, op_symbol
from seqdsl.ir import Node, all_nodes, loop_of
from seqdsl.ops import OPS
from seqdsl.render import MARK, program, render

SVG = "{http://www.w3.org/2000/svg}"


def cli(*args: str) -> Any:
    """The command line, in this process (as a user would type it, without paying for a new interpreter)."""
    result = CliRunner().invoke(seqdsl_cli.app, list(args))
    result.returncode = result.exit_code
    return result
SHIPPED = sorted(p for p in SPECS.glob("*.yaml"))


def svg_graph(data: bytes) -> tuple[dict[str, str], set[tuple[str, str]], ET.Element]:
    """The drawn nodes (title -> the text of their label) and edges (tail, head) of a Graphviz SVG."""
    root = ET.fromstring(data)
    nodes: dict[str, str] = {}
    edges: set[tuple[str, str]] = set()
    for g in root.iter(f"{SVG}g"):
        title = g.find(f"{SVG}title")
        if title is None or title.text is None:
            continue
        if g.get("class") == "node":
            nodes[title.text] = " ".join(t.text or "" for t in g.iter(f"{SVG}text"))
        elif g.get("class") == "edge":
            tail, _, head = title.text.partition("->")
            edges.add((tail, head))
    return nodes, edges, root


def x_of(root: ET.Element, title: str) -> float:
    for g in root.iter(f"{SVG}g"):
        t = g.find(f"{SVG}title")
        if g.get("class") == "node" and t is not None and t.text == title:
            return float(next(g.iter(f"{SVG}text")).get("x"))  # type: ignore[arg-type]
    raise AssertionError(f"no node {title}")


def test_every_op_has_a_symbol_and_a_missing_one_is_named():
    assert set(OPS) <= set(SYMBOLS)
    with pytest.raises(KeyError, match="`warp`.*SYMBOLS"):
        op_symbol(Node("n", "warp"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30),
                min_size=1, max_size=3))
def test_label_escapes_any_text(lines: list[str]):
    """Whatever the text, the label is one well-formed HTML-like label whose text is exactly the input."""
    lab = label(*lines)
    assert lab.startswith("<") and lab.endswith(">")
    element = ET.fromstring(f"<l>{lab[1:-1]}</l>")
    assert [e.tag for e in element] == ["br"] * (len(lines) - 1)
    shown = "".join(c if c.isprintable() else "\ufffd" for c in "".join(lines))
    assert "".join(element.itertext()) == shown


def test_rolled_lstm_is_figure_1():
    data = render(figure(seqdsl.load(SPECS / "lstm.yaml")), "svg")
    assert MARK.encode() in data
    nodes, edges, _ = svg_graph(data)
    # the state z(t-1) and the delay edge from each update back to it
    assert "h(t−1)" in nodes["loop/h_prev"] and "c(t−1)" in nodes["loop/c_prev"]
    assert ("loop/h", "loop/h_prev") in edges and ("loop/c", "loop/c_prev") in edges
    # Enc: the input projections read x(t) and no state; parameters written into the node that uses them
    assert ("loop/x", "loop/f_linear") in edges and "W_f" in nodes["loop/f_linear"]
    assert "[32, 16]" in nodes["loop/f_linear"]
    assert "U_f" in nodes["loop/f_linear_1"] and ("loop/h_prev", "loop/f_linear_1") in edges
    assert "f = σ" in nodes["loop/f"]
    assert ("x", "loop/x") in edges and ("loop/h", "y") in edges and ("y", "out~y") in edges
    dot = figure(seqdsl.load(SPECS / "lstm.yaml"))
    assert "[B, T, 16]" in dot and "[B, 32]" in dot  # shapes on the edges
    assert "Enc: h(t) = Enc(x(t))" in dot and "G: z(t) = G(h(t), z(t−1), w)" in dot


def test_unrolled_lstm_is_figure_2():
    n = 4
    data = render(figure(seqdsl.load(SPECS / "lstm.yaml"), unroll=n), "svg")
    nodes, edges, root = svg_graph(data)
    for t in range(1, n + 1):
        assert f"x({t})" in nodes[f"loop@{t}~in~x"] and f"h({t})" in nodes[f"loop@{t}~out~y"]
        assert ("loop@w", f"loop@{t}~G") in edges and ("loop@w", f"loop@{t}~enc") in edges
        assert (f"loop@{t}~in~x", f"loop@{t}~enc") in edges and (f"loop@{t}~enc", f"loop@{t}~G") in edges
    assert [(f"loop@{t}~G", f"loop@{t + 1}~G") in edges for t in range(1, n)] == [True] * (n - 1)
    # one weights node, shared by every copy, listing each parameter once
    weights = [k for k in nodes if k.endswith("@w")]
    assert weights == ["loop@w"] and nodes["loop@w"].count("W_f") == 1 and "6,272 parameters" in nodes["loop@w"]
    assert ("h_init", "loop@1~G") in edges and ("loop@4~G", "h_n") in edges
    xs = [x_of(root, f"loop@{t}~G") for t in range(1, n + 1)]
    assert xs == sorted(xs), "time runs left to right"


@pytest.mark.parametrize("spec", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_spec_draws_rolled_and_unrolled(spec: Path):
    model = seqdsl.load(spec)
    rolled = svg_graph(render(figure(model), "svg"))[0]
    assert len(rolled) >= len(model.graph.outputs) + len(model.inputs)
    nodes, edges, root = svg_graph(render(figure(model, unroll=3), "svg"))
    expected = {n.name: min(3, loop_of(n).steps or 3) for n in all_nodes(model.graph) if n.op == "loop"}
    loops = {k.split("@")[0] for k in nodes if "@" in k}
    assert loops == set(expected)
    for loop in loops:
        steps = sorted(int(k.split("@")[1].split("~")[0]) for k in nodes if k.startswith(loop + "@") and k.endswith("~G"))
        assert steps == list(range(1, expected[loop] + 1))
        rows = {k.split("~", 1)[1] for k in nodes if k.startswith(loop + "@") and "~" in k}
        for row in rows:  # every row of copies in time order, left to right
            xs = [x_of(root, f"{loop}@{t}~{row}") for t in steps if f"{loop}@{t}~{row}" in nodes]
            assert xs == sorted(xs), (loop, row)


@pytest.mark.parametrize("spec", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_spec_collapses_to_its_top_level_calls(spec: Path):
    model = seqdsl.load(spec)
    nodes, edges, _ = svg_graph(render(figure(model, depth=0), "svg"))
    calls = [path for path, scope in model.scopes.items() if "." not in path]
    assert {k for k in nodes if k.startswith("box~")} == {f"box~{c}" for c in calls}
    assert not [k for k in nodes if any(k.startswith(c + ".") or f"/{c}." in k for c in calls)]


def test_bidirectional_passes_the_state_backwards():
    nodes, edges, root = svg_graph(render(figure(seqdsl.load(SPECS / "bilstm.yaml"), unroll=3), "svg"))
    assert ("bi.fw.loop@1~G", "bi.fw.loop@2~G") in edges and ("bi.bw.loop@1~G", "bi.bw.loop@2~G") in edges
    dot = figure(seqdsl.load(SPECS / "bilstm.yaml"), unroll=3)
    assert '"bi.bw.loop@1~G" -> "bi.bw.loop@2~G" [label=<<b>z(2)</b>' in dot and "dir=back" in dot
    assert "backwards in time" in dot and "bi: LSTM (both directions)" in dot


def test_depth_collapses_calls_into_boxes_with_their_delay_loop():
    model = seqdsl.load(SPECS / "seq2seq_attention.yaml")
    nodes, edges, _ = svg_graph(render(figure(model, depth=0), "svg"))
    assert "enc: GRU (both directions)" in nodes["box~enc"] and "720 parameters" in nodes["box~enc"]
    assert ("box~enc", "box~enc") in edges and ("box~dec", "box~dec") in edges  # z(t-1)
    assert ("box~enc", "box~dec") in edges and ("src", "box~enc") in edges
    assert not any("/" in k for k in nodes)  # nothing of the step graphs inside
    full = svg_graph(render(figure(model), "svg"))[0]
    assert "enc.fw.loop/enc.fw.h_prev" in full and "dec.loop/dec.s_prev" in full


def test_nested_repeat_and_transformer():
    dot = figure(seqdsl.load(SPECS / "deep_lstm.yaml"))
    assert "layers: LSTM ×4" in dot and all(f"layer {i}" in dot for i in range(4))
    nodes, _, _ = svg_graph(render(figure(seqdsl.load(SPECS / "transformer.yaml"), unroll=2), "svg"))
    assert not any("@" in k for k in nodes)
    assert "no recurrence" in figure(seqdsl.load(SPECS / "transformer.yaml"))


def test_png_is_a_png():
    data = render(figure(seqdsl.load(SPECS / "rnn.yaml"), unroll=2), "png")
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 200 and height > 200
    assert MARK.encode() in data[:200]


def test_unicode_names_draw():
    spec = """
sizes: {d: 3, état: 4}
inputs: {x: [B, T, d]}
params: {W_α: [état, d], U_隐: [état, état]}
recurrent:
  state: {h: [B, état]}
  step:
    α: tanh(W_α @ x + U_隐 @ h[t-1])
    h: α
outputs: {y: h}
"""
    model = seqdsl.loads(spec)
    rolled = svg_graph(render(figure(model), "svg"))[0]
    assert "W_α @" in rolled["loop/α_linear"] and "α = tanh" in rolled["loop/α"]
    unrolled = svg_graph(render(figure(model, unroll=2), "svg"))[0]
    assert "W_α [4, 3]" in unrolled["loop@w"] and "U_隐 [4, 4]" in unrolled["loop@w"]


def test_hostile_file_name_reaches_the_figure_escaped(tmp_path: Path):
    spec = tmp_path / 'a"b<c>&d\\e.yaml'
    spec.write_text((SPECS / "rnn.yaml").read_text())
    data = render(figure(seqdsl.load(spec)), "svg")
    root = ET.fromstring(data)
    assert any('a"b<c>&d\\e.yaml' in (t.text or "") for t in root.iter(f"{SVG}text"))


def test_cli_writes_svg_png_dot_and_refuses_to_clobber(tmp_path: Path):
    for suffix in ("svg", "png", "dot"):
        out = tmp_path / f"f.{suffix}"
        r = cli("graph", str(SPECS / "gru.yaml"), "--unroll", "2", "-o", str(out))
        assert r.returncode == 0, r.stderr
        again = cli("graph", str(SPECS / "gru.yaml"), "-o", str(out))  # its own file: redrawn
        assert again.returncode == 0, again.stderr
    assert ET.fromstring((tmp_path / "f.svg").read_bytes()).tag == f"{SVG}svg"
    mine = tmp_path / "notes.svg"
    mine.write_text("my notes")
    r = cli("graph", str(SPECS / "gru.yaml"), "-o", str(mine))
    assert r.returncode == 2 and "not made by `seqdsl graph`" in r.stderr and mine.read_text() == "my notes"
    r = cli("graph", str(SPECS / "gru.yaml"), "-o", str(tmp_path / "f.pdf"))
    assert r.returncode == 2 and ".svg, .png or .dot" in r.stderr
    r = cli("graph", str(SPECS / "gru.yaml"))
    assert r.returncode == 0 and r.stdout.startswith(f"// {MARK}\ndigraph gru {{")


def test_cli_module_and_errors():
    r = cli("graph", str(SPECS / "seq2seq_attention.yaml"), "--module", "AttentionDecoder", "--unroll", "2")
    assert r.returncode == 0, r.stderr
    assert '"loop@2~G"' in r.stdout and "digraph AttentionDecoder" in r.stdout
    r = cli("graph", str(SPECS / "seq2seq_attention.yaml"), "--module", "GUR")
    assert r.returncode == 2 and "E0505" in r.stderr and "did you mean `GRU`" in r.stderr
    assert "Traceback" not in r.stderr
    r = cli("graph", str(SPECS / "lstm.yaml"), "--set", "h=8")
    assert r.returncode == 0 and "[8, 16]" in r.stdout


def test_readme_figures_are_the_tools_current_output(monkeypatch: pytest.MonkeyPatch):
    """The README's figures are what its commands make today (graphviz-pure writes the same bytes everywhere):
    after a change to the figures or to these specs, rerun the four commands in the README."""
    monkeypatch.chdir(ROOT)  # the figures name their spec as the command did: specs/lstm.yaml
    readme = (ROOT / "README.md").read_text()
    for name in ("lstm", "seq2seq_attention"):
        for kind, unroll in (("rolled", None), ("unrolled", 3)):
            svg = ROOT / "docs" / "figures" / f"{name}_{kind}.svg"
            command = f"seqdsl graph specs/{name}.yaml{' --unroll 3' if unroll else ''} -o docs/figures/{name}_{kind}.svg"
            assert command in readme and f"(docs/figures/{name}_{kind}.svg)" in readme
            if Path(program()).name == "graphviz-pure":
                assert svg.read_bytes() == render(figure(seqdsl.load(f"specs/{name}.yaml"), unroll=unroll), "svg")


@settings(max_examples=15, deadline=None)
@given(spec=random_cells(), steps=st.integers(1, 4))
def test_random_cells_draw_every_op_and_their_delay(spec: str, steps: int):
    model = seqdsl.loads(spec)
    loop_node = next(n for n in model.graph if n.op == "loop")
    loop = loop_of(loop_node)
    nodes, edges, _ = svg_graph(render(figure(model), "svg"))
    for b in loop.body:
        if b.op not in ("param", "const"):
            assert f"loop/{b.name}" in nodes, b
    state = next(b for b in loop.body if b.op == "state")
    assert (f"loop/{loop.updates[0]}", f"loop/{state.name}") in edges
    unrolled, edges, root = svg_graph(render(figure(model, unroll=steps), "svg"))
    for t in range(1, steps):  # z(t) from G to what reads z(t-1) at the next step (G, or only Dec)
        assert any((f"loop@{t}~G", f"loop@{t + 1}~{p}") in edges for p in ("G", "dec"))
    xs = [x_of(root, f"loop@{t}~G") for t in range(1, steps + 1)]
    assert xs == sorted(xs)


def test_graph_finds_graphviz_pure_without_the_venv_on_path(tmp_path: Path):
    """`venv/bin/seqdsl` run with a PATH that holds neither the venv nor any Graphviz (pipx, an IDE, cron) still
    finds the program graphviz-pure installed beside it."""
    import shutil
    import subprocess
    import sys

    bare = "/usr/bin:/bin"
    assert not any(shutil.which(name, path=bare) for name in ("graphviz-pure", "dot")), "a Graphviz on " + bare
    if Path(program()).name != "graphviz-pure":
        pytest.skip("graphviz-pure is not installed here")
    out = tmp_path / "lstm.svg"
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "graph", str(SPECS / "lstm.yaml"), "-o", str(out)],
                          env={"PATH": bare, "HOME": str(tmp_path)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().lstrip().startswith(b"<?xml") and b"<svg" in out.read_bytes()
