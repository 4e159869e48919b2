"""The ONNX form of each recurrent block (seqdsl.compilers.onnx_form) and the Scan's step (seqdsl.compilers.onnx_scan).

What a user checks: build.json says, per block, which form model.onnx holds and why; a forced form is honoured
and a form that cannot be is one usage error; the same spec and onnxruntime give the same choice; every form
computes what PyTorch computes (onnxruntime and onnx.reference); and the LSTM's Scan step is the short one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx.reference import ReferenceEvaluator

import seqdsl
from seqdsl.compilers import onnx_form
from seqdsl.compilers.build import build
from seqdsl.compilers.onnx_export import export, set_weights
from seqdsl.compilers.onnx_form import choose
from seqdsl.compilers.torch_module import to_module
from test_onnx_reference import _ScanAnyAxis  # onnx.reference's Scan runs axis 0 only

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"
VERSION = ".".join(ort.__version__.split(".")[:2])
CELL_SPECS = {"lstm": "lstm.yaml", "gru": "gru.yaml", "gru_torch": "gru_torch.yaml", "rnn": "rnn.yaml"}


def _table(**rows: dict[str, float]) -> dict[str, dict[str, dict[str, float]]]:
    return {VERSION: rows}


@pytest.fixture
def no_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")  # what CI machines set: the build must not time anything there


def test_build_json_records_form_and_reason_per_block(tmp_path: Path, monkeypatch, no_probe):
    monkeypatch.setattr(onnx_form, "TABLE", _table(lstm={"native": 1.0, "scan": 1.5}, rnn={"native": 1.6, "scan": 0.5}))
    for spec, op, form in (("lstm.yaml", "LSTM", "native"), ("rnn.yaml", "Scan", "scan")):
        result = build(SPECS / spec, tmp_path / spec, sizes={"h": 4}, steps=3)
        record = json.loads((tmp_path / spec / "build.json").read_text())
        choice = record["onnx_choice"]["recurrent"]
        assert record["onnx_blocks"] == {"recurrent": op} and result.onnx_choice == record["onnx_choice"]
        assert (choice["form"], choice["reason"], choice["op"]) == (form, "table", op)
        assert choice["onnxruntime"] == ort.__version__ == record["provenance"]["onnxruntime"]
        assert set(choice["figures"]) == {"native", "scan"} == set(choice["candidates"])
    # three blocks: two of Cho's GRU (no table row; under CI not measured: the default) and one that is no cell
    result = build(SPECS / "seq2seq_attention.yaml", tmp_path / "s2s", steps=3)
    choices = result.onnx_choice
    assert set(choices) == set(result.onnx_blocks) == {"enc.fw", "enc.bw", "dec"}
    for block in ("enc.fw", "enc.bw"):
        assert (choices[block]["form"], choices[block]["reason"], choices[block]["op"]) == ("native", "default", "GRU")
        assert "CI" in choices[block]["note"] and "figures" not in choices[block]
    assert (choices["dec"]["form"], choices["dec"]["reason"], choices["dec"]["op"]) == ("scan", "only form", "Scan")
    assert choices["dec"]["candidates"] == ["scan"]


def test_forced_forms_are_honoured(tmp_path: Path, no_probe):
    scan = build(SPECS / "lstm.yaml", tmp_path / "a", sizes={"h": 4}, steps=3, onnx_form=["scan"])
    assert scan.onnx_blocks == {"recurrent": "Scan"} and scan.onnx_choice["recurrent"]["reason"] == "forced"
    native = build(SPECS / "rnn.yaml", tmp_path / "b", sizes={"h": 4}, steps=3, onnx_form=["recurrent=native"])
    assert native.onnx_blocks == {"recurrent": "RNN"} and native.onnx_choice["recurrent"]["form"] == "native"
    mixed = build(SPECS / "bilstm.yaml", tmp_path / "c", steps=3, onnx_form=["native", "bi.bw=scan"])
    assert mixed.onnx_blocks == {"bi.fw": "LSTM", "bi.bw": "Scan"}
    assert mixed.max_abs_diff and max(mixed.max_abs_diff.values()) < 1e-4
    # native for every block: the one that is no standard cell stays a Scan, and says so
    every = build(SPECS / "seq2seq_attention.yaml", tmp_path / "d", steps=3, onnx_form=["native"])
    assert every.onnx_blocks == {"enc.fw": "GRU", "enc.bw": "GRU", "dec": "Scan"}
    assert "no standard cell" in every.onnx_choice["dec"]["note"]


@pytest.mark.parametrize("forced, says", [
    (["dec=native"], "no standard cell"), (["nope=scan"], "no recurrent block `nope`"),
    (["fast"], "a form is one of"), (["enc.fw=unrolled"], "a form is one of")])
def test_a_form_that_cannot_be_is_one_usage_error(tmp_path: Path, forced: list[str], says: str):
    from typer.testing import CliRunner

    from seqdsl import cli

    args = ["build", str(SPECS / "seq2seq_attention.yaml"), "--seq-len", "3", "-o", str(tmp_path / "x")]
    for value in forced:
        args += ["--onnx-form", value]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    assert says in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


def test_the_table_choice_is_deterministic_with_a_margin():
    model = seqdsl.load(SPECS / "rnn.yaml", {"d": 8, "h": 4})
    close = _table(rnn={"native": 1.0, "scan": 0.95})  # 5% faster: within the margin, the default stays
    far = _table(rnn={"native": 1.0, "scan": 0.5})
    runs = [choose(model, table=far, allow_probe=True)["recurrent"].record() for _ in range(3)]
    assert runs[0] == runs[1] == runs[2] and runs[0]["form"] == "scan" and runs[0]["reason"] == "table"
    assert choose(model, table=close, allow_probe=True)["recurrent"].form == "native"
    forced = choose(model, ["scan"], table=_table(rnn={"native": 0.1, "scan": 1.0}))["recurrent"]
    assert (forced.form, forced.reason) == ("scan", "forced")
    plain = choose(model, optimize=False, table=far)["recurrent"]  # --as-written: the equations, as a Scan
    assert (plain.form, plain.reason, plain.candidates) == ("scan", "only form", ["scan"])


@pytest.mark.parametrize("forced, want", [
    (["scan", "recurrent=auto"], ("native", "table")),  # the block's own word wins, in either order
    (["recurrent=auto", "scan"], ("native", "table")),
    (["native", "recurrent=scan"], ("scan", "forced")),
    (["recurrent=scan", "auto"], ("scan", "forced")),
    (["auto"], ("native", "table")),
])
def test_a_block_form_overrides_the_form_for_every_block(forced: list[str], want: tuple[str, str]):
    model = seqdsl.load(SPECS / "lstm.yaml", {"d": 8, "h": 4})
    choice = choose(model, forced, table=_table(lstm={"native": 1.0, "scan": 1.2}))["recurrent"]
    assert (choice.form, choice.reason) == want


def test_without_a_table_row_the_probe_measures_or_the_default_holds(monkeypatch):
    model = seqdsl.load(SPECS / "gru.yaml", {"d": 8, "h": 4})
    inputs = {"x": np.random.default_rng(0).standard_normal((3, 5, 8)).astype(np.float32)}
    probed = choose(model, probe_inputs=inputs, table={}, allow_probe=True, budget_s=0.3)["recurrent"]
    assert probed.reason == "probe" and probed.form in ("native", "scan")
    assert set(probed.figures) == {"native", "scan"} and all(v > 0 for v in probed.figures.values())
    assert probed.form == onnx_form._pick(probed.figures)
    monkeypatch.setenv("CI", "1")
    held = choose(model, probe_inputs=inputs, table={})["recurrent"]
    assert (held.form, held.reason, held.figures) == ("native", "default", {})


def _torch_reference(model: seqdsl.Model, proto: onnx.ModelProto, x: np.ndarray) -> tuple[list, list, list]:
    net = to_module(model, native_cells=False).eval()  # the spec's own equations, not a fused kernel
    set_weights(proto, {k: v.detach().numpy() for k, v in net.state_dict().items()})
    with torch.no_grad():
        want = net(torch.from_numpy(x))
    want = [t.numpy() for t in (want if isinstance(want, tuple) else (want,))]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    got = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})
    return want, got, ReferenceEvaluator(proto, new_ops=[_ScanAnyAxis]).run(None, {"x": x})


@pytest.mark.parametrize("cell", sorted(CELL_SPECS))
@pytest.mark.parametrize("form", ["native", "scan"])
def test_every_candidate_form_computes_what_pytorch_does(cell: str, form: str):
    model = seqdsl.load(SPECS / CELL_SPECS[cell], {"d": 6, "h": 5})
    proto = export(model, native_cells={"loop"} if form == "native" else set())
    ops = {n.op_type for n in proto.graph.node}
    assert ("Scan" in ops) == (form == "scan")
    x = np.random.default_rng(1).standard_normal((3, 7, 6)).astype(np.float32)
    want, got, reference = _torch_reference(model, proto, x)
    for expected, a, b in zip(want, got, reference, strict=True):
        np.testing.assert_allclose(a, expected, atol=2e-6)
        np.testing.assert_allclose(b, expected, atol=2e-6)


def _scan_body(proto: onnx.ModelProto) -> tuple[onnx.NodeProto, onnx.GraphProto]:
    scan = next(n for n in proto.graph.node if n.op_type == "Scan")
    return scan, next(a.g for a in scan.attribute if a.name == "body")


def test_the_lstm_scan_step_is_fused():
    proto = export(seqdsl.load(SPECS / "lstm.yaml", {"d": 8, "h": 4}), native_cells=False)
    scan, body = _scan_body(proto)
    ops = [n.op_type for n in body.node]
    # U h, + (input projection and bias, scanned), one Split into the σ gates and the candidate, one σ over the
    # three adjacent σ gates (fuse_slices) and a Split of it, 2 tanh, 3 ×, 1 +, and one Identity: h leaves the
    # step twice (the next state and y), and ONNX wants distinct output names
    assert len(ops) == 12, onnx.printer.to_text(body)
    assert ops.count("MatMul") == 1 and ops.count("Split") == 2 and ops.count("Identity") == 1
    assert ops.count("Sigmoid") == 1
    assert not {"Reshape", "Unsqueeze", "Squeeze", "Transpose", "Slice", "Gather", "Concat"} & set(ops)
    outputs = [o.name for o in body.output]
    identity = next(n for n in body.node if n.op_type == "Identity")
    assert identity.input[0] in outputs  # the copy is of a value that is also output as itself
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in scan.attribute}
    assert attrs["num_scan_inputs"] == 1 and attrs["scan_input_axes"] == [0]  # one time-major projection
    # without y, h leaves the step once: no Identity at all
    final_only = seqdsl.loads((SPECS / "lstm.yaml").read_text().replace("  y: h            # every step: (B, T, h)\n",
                                                                       ""), file=str(SPECS / "lstm.yaml"))
    _, body = _scan_body(export(final_only, native_cells=False))
    assert "Identity" not in [n.op_type for n in body.node] and len(body.node) == 11


GATE_SPEC = """
name: gates
sizes: {{d: {d}, h: {h}}}
inputs:
  x: [B, T, d]
params:
{params}
recurrent:
  state:
    h: [B, h]
{state}
  step:
{step}
    h: {update}
outputs:
  y: h
  h_n: final(h)
{outputs}"""


@st.composite
def gated_cells(draw: st.DrawFn) -> str:
    """Gated recurrences of the shape the Scan rewrite fuses: k gates, each act(W x + U h [+ b]) with the terms
    in any order, and an update that mixes them; the rewrite must keep every one's numbers."""
    k = draw(st.integers(2, 4))
    params, step, names = [], [], []
    for i in range(k):
        acts = draw(st.sampled_from(["sigmoid", "tanh"]))
        terms = [f"W{i} @ x", f"U{i} @ h[t-1]"] + ([f"b{i}"] if draw(st.booleans()) else [])
        order = draw(st.permutations(terms))
        params += [f"  W{i}: [h, d]", f"  U{i}: [h, h]"] + ([f"  b{i}: [h]"] if f"b{i}" in terms else [])
        step.append(f"    g{i}: {acts}({' + '.join(order)})")
        names.append(f"g{i}")
    update = " + ".join(f"{a} * {b}" for a, b in zip(names, names[1:] + names[:1]))
    state = ""
    if draw(st.booleans()):  # a state that is itself a sum W x + U h, read by a sum with a bias: kept as it is
        state = "    s: [B, h]"
        params += ["  Ws: [h, d]", "  Us: [h, h]", "  bs: [h]"]
        step.append("    s: Ws @ tanh(x) + Us @ h[t-1]")  # tanh: not fused with the gates
        update += " + (s + bs)"
    return GATE_SPEC.format(d=draw(st.integers(1, 5)), h=draw(st.integers(1, 5)), params="\n".join(params),
                            state=state, step="\n".join(step), update=f"tanh({update})",
                            outputs="  s_n: final(s)\n" if state else "")


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gated_cells(), st.integers(1, 3), st.integers(1, 4))
def test_the_fused_scan_step_keeps_the_numbers(text: str, batch: int, steps: int):
    model = seqdsl.loads(text, file="<gates>")
    proto = export(model, native_cells=False)
    onnx.checker.check_model(proto, full_check=True)
    d = model.graph["x"].shape[2]
    x = np.random.default_rng(batch * 10 + steps).standard_normal((batch, steps, d)).astype(np.float32)
    want, got, reference = _torch_reference(model, proto, x)
    for expected, a, b in zip(want, got, reference, strict=True):
        np.testing.assert_allclose(a, expected, atol=2e-6)
        np.testing.assert_allclose(b, expected, atol=2e-6)
