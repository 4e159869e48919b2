"""What `validate` accepts, `build` builds: every case that used to pass validate and then fail in build (or crash
validate with a Python exception) is a located SpecError at its place in the spec, and for random argument values
and dtypes either validate refuses or the build succeeds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, SPECS

import seqdsl
from seqdsl.compilers.build import build
from seqdsl.errors import SpecError
from seqdsl.ops import OPS, REQUIRED

GRAPH = """\
sizes: {d: 4, h: 3}
inputs: {x: [B, T, d]}
params: {W: [h, d]}
graph:
  y: tanh(W @ x)
"""

RECURRENT = """\
sizes: {h: 3}
inputs:
  x: [B, T, h]
  h0: {shape: [B, h], dtype: DTYPE}
recurrent:
  over: [x]
  state:
    h: {shape: [B, h], init: h0}
  step:
    h: UPDATE
outputs:
  y: h
"""

CALLEE_WITHOUT_OUTPUTS = """\
sizes: {d: 4}
inputs: {x: [B, T, d]}
modules:
  M:
    inputs: {x: [B, T, d]}
    graph: {y: tanh(x)}
    outputs: {}
graph:
  a: M(x)
outputs: {y: a}
"""

# name: (spec text, code, line, column); each used to validate and then fail to build, or to crash validate
CASES = {
    "empty outputs": (GRAPH + "outputs: {}\n", "E0203", 6, 10),
    "a constant as an output": (GRAPH + "outputs: {y: y, c: '2'}\n", "E0408", 6, 20),
    "a size as an output": (GRAPH + "outputs:\n  y: y\n  c: h\n", "E0408", 8, 6),
    "a scalar parameter": ("inputs: {x: [B, T, 4]}\nparams: {s: []}\ngraph: {y: x * s}\noutputs: {y: y}\n",
                           "E0203", 2, 13),
    "dropout p=2": (GRAPH.replace("tanh(W @ x)", "dropout(W @ x, p=2)") + "outputs: {y: y}\n", "E0315", 5, 23),
    "dropout p=-0.5": (GRAPH.replace("tanh(W @ x)", "dropout(W @ x, p=-0.5)") + "outputs: {y: y}\n", "E0315", 5, 23),
    "split_heads(x, 0)": (GRAPH.replace("tanh(W @ x)", "split_heads(x, 0)") + "outputs: {y: y}\n", "E0315", 5, 21),
    "an int64 initial state": (RECURRENT.replace("DTYPE", "int64").replace("UPDATE", "tanh(x + h[t-1])"),
                               "E0403", 8, 8),
    "an int64 state update": (RECURRENT.replace("DTYPE", "float32").replace("UPDATE", "argmax(x, axis=-1)"),
                              "E0403", 10, 8),
    "an output naming the state's init input": (
        RECURRENT.replace("DTYPE", "float32").replace("UPDATE", "tanh(x + h[t-1])") + "  z: h0\n", "E0408", 13, 6),
    "a called module without outputs": (CALLEE_WITHOUT_OUTPUTS, "E0203", 7, 14),
    "a lone surrogate escape in a name": (GRAPH.replace("  y: tanh", '  "y\\ud800": tanh') + "outputs: {y: y}\n",
                                          "E0310", 5, 3),
    "a lone surrogate escape in an output name": (GRAPH + 'outputs: {"y\\udcff": y}\n', "E0310", 6, 11),
    "a lone surrogate escape in an import path": (
        'imports: {M: "m\\ud800.yaml"}\n' + GRAPH + "outputs: {y: y}\n", "E0502", 1, 14),
    "a NUL in an import path": ('imports: {M: "m\\0.yaml"}\n' + GRAPH + "outputs: {y: y}\n", "E0102", 1, 14),
    "a 300-byte name in an import path": (
        "imports: {M: " + "m" * 300 + ".yaml}\n" + GRAPH + "outputs: {y: y}\n", "E0502", 1, 14),
    "an import through a symlink loop": ("imports: {M: loop1.yaml}\n" + GRAPH + "outputs: {y: y}\n", "E0502", 1, 14),
}


@pytest.mark.parametrize("case", list(CASES))
def test_validate_refuses_what_build_would(tmp_path: Path, case: str):
    text, code, line, col = CASES[case]
    os.symlink("loop2.yaml", tmp_path / "loop1.yaml")
    os.symlink("loop1.yaml", tmp_path / "loop2.yaml")
    spec = tmp_path / "spec.yaml"
    spec.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError) as info:
        seqdsl.load(spec)
    e = info.value
    assert (e.code, e.loc.file, e.loc.line, e.loc.col) == (code, str(spec), line, col), e.format()


def test_generator_with_a_stop_token_beyond_int64_is_refused_at_the_size():
    for sizes in ({"eos": 10**20}, {"eos": 2**41}):
        with pytest.raises(SpecError) as info:
            seqdsl.load(SPECS / "generator.yaml", sizes)
        assert (info.value.code, info.value.loc.line) == ("E0302", 13), info.value.format()
        assert info.value.loc.path == "sizes.eos"


def test_set_on_the_command_line_is_checked_like_the_api():
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "validate", str(SPECS / "generator.yaml"),
                           "--set", "eos=100000000000000000000"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "generator.yaml:13:50:" in proc.stderr and "error[E0302]" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("sizes, code", [
    ({"h": "4"}, "E0306"), ({"h": 1.5}, "E0306"), ({"h": 4.0}, "E0306"), ({"h": True}, "E0306"),
    ({"h": None}, "E0306"), ({"h": 0}, "E0306"), ({"h": -3}, "E0306"), ({"h": 2**50}, "E0302"),
    ({"hh": 4}, "E0309"), ({4: 4}, "E0309"), ([("h", 4)], "E0309"), ("h=4", "E0309"),
])
def test_the_api_checks_its_size_overrides(sizes: object, code: str):
    with pytest.raises(SpecError) as info:
        seqdsl.load(SPECS / "lstm.yaml", sizes)  # type: ignore[arg-type]
    e = info.value
    assert e.code == code and e.loc.file.endswith("lstm.yaml") and e.loc.line >= 1, e.format()
    if code == "E0306":
        assert e.loc.path == "sizes.h" and e.found is not None and repr(sizes["h"]) in e.found  # type: ignore[index]
    assert seqdsl.load(SPECS / "lstm.yaml", {"h": 4}).param_count == 4 * (4 * 16 + 4 * 4 + 4)


def test_whole_file_errors_point_at_line_1_column_1(tmp_path: Path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"a: " + b"x" * 1_000_001)
    loop = tmp_path / "loop.yaml"
    os.symlink("loop.yaml", loop)
    for path, code in [(big, "E0103"), (loop, "E0120"), (tmp_path, "E0120"), (tmp_path / ("n" * 300), "E0120")]:
        with pytest.raises(SpecError) as info:
            seqdsl.load(path)
        e = info.value
        assert (e.code, e.loc.line, e.loc.col) == (code, 1, 1), e.format()
        assert e.format().startswith(f"{path}:1:1: error[{code}]")


def test_every_op_argument_has_a_range():
    """The ranges live in the op table, one entry per argument: a new argument cannot forget its range."""
    for op in OPS.values():
        for attr in op.attrs:
            assert attr.kind in (int, float) and attr.low <= attr.high, (op.name, attr)
    dropout = OPS["dropout"].attrs[0]
    assert dropout.problem(0.0) is None and dropout.problem(0.99) is None
    assert dropout.problem(1.0) and dropout.problem(-0.1) and dropout.problem(float("nan"))


# --------------------------------------------------------------- either validate refuses or build succeeds

LONG = bool(os.environ.get("SEQDSL_LONG_TESTS"))
NUMBERS = st.one_of(st.integers(-6, 6), st.integers(-2**70, 2**70), st.sampled_from([0.5, -0.5, 1.0, 0.999, 2.5]))


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, str]:
    """A spec with one drawn function call: random argument values, an input of a drawn dtype and rank."""
    dtype = draw(st.sampled_from(["float32", "int64"]))
    shape = draw(st.sampled_from(["[B, T, 4]", "[B, 4]", "[B, T, 2, 4]"]))
    func = draw(st.sampled_from(["unsqueeze", "squeeze", "sum", "mean", "argmax", "softmax", "log_softmax",
                                 "concat", "dropout", "split_heads", "tanh", "first", "transpose", "merge_heads"]))
    attrs = OPS[func].attrs
    args = ["x"] + (["x"] if func == "concat" and draw(st.booleans()) else [])
    for attr in attrs:
        if attr.default is REQUIRED or draw(st.booleans()):
            value = draw(NUMBERS)
            args.append(f"{attr.name}={value}" if draw(st.booleans()) else str(value))
    body = f"{func}({', '.join(args)})"
    out = draw(st.sampled_from(["y", "y * 1"]))  # the value, or arithmetic on it (which needs float32)
    text = (f"inputs:\n  x: {{shape: {shape}, dtype: {dtype}}}\ngraph:\n  y: \"{body}\"\n"
            f"outputs:\n  out: \"{out}\"\n")
    return "graph", text


@st.composite
def recurrences(draw: st.DrawFn) -> tuple[str, str]:
    """A recurrent block whose initial state and update have drawn dtypes."""
    init = draw(st.sampled_from(["zeros", "learned", "h0"]))
    h0 = draw(st.sampled_from(["float32", "int64"]))
    update = draw(st.sampled_from(["tanh(x + h[t-1])", "argmax(x, axis=-1) + h[t-1]", "x", "h[t-1]",
                                   "dropout(x, p=0.5) + h[t-1]"]))
    state = draw(st.sampled_from(["[B, 3]", "[B]"]))
    text = (f"sizes: {{h: 3}}\ninputs:\n  x: [B, T, h]\n  h0: {{shape: {state}, dtype: {h0}}}\n"
            f"recurrent:\n  over: [x]\n  state:\n    h: {{shape: {state}, init: {init}}}\n"
            f"  step:\n    h: \"{update}\"\noutputs:\n  y: h\n  n: final(h)\n")
    return "recurrent", text


@settings(max_examples=200 if LONG else 10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=st.one_of(calls(), recurrences()))
def test_validate_refuses_or_build_succeeds(tmp_path: Path, case: tuple[str, str]):
    _, text = case
    spec = tmp_path / "drawn.yaml"
    spec.write_text(text)
    try:
        seqdsl.load(spec)
    except SpecError as e:
        assert e.loc.file == str(spec) and e.loc.line >= 1, e.format()
        return
    build(spec, tmp_path / "out", steps=3, batch=2)  # validate accepted it: the build must pass its check
    assert (tmp_path / "out" / "model.onnx").is_file()
