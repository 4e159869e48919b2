"""The standard cells against ONNX's own reference implementation, which seqdsl did not write.

For specs/lstm.yaml, specs/gru.yaml and specs/gru_torch.yaml we build, with onnx.helper, a one-node ONNX model
holding the standard ``LSTM`` or ``GRU`` op (layout=0: X [T, B, d]; Y [T, 1, B, h], Y_h [1, B, h], Y_c), copy
the spec module's weights into its W/R/B, and run it with ``onnx.reference.ReferenceEvaluator``. That is the
reference. Against it we check:

* the spec's PyTorch module (`seqdsl.compilers.torch_module.to_module`): y at every step, h_n, c_n;
* the spec's own exported ONNX (`seqdsl.compilers.onnx_export.export` + `set_weights`), exported once per spec and run
  at every T and B from those same bytes, in onnxruntime and in the reference evaluator.

Gate orders: ONNX LSTM stacks i, o, f, c (W [1, 4h, d], R [1, 4h, h], B [1, 8h] = Wb then Rb); ONNX GRU
stacks z, r, h (W [1, 3h, d], R [1, 3h, h], B [1, 6h]). The single-bias specs put their bias in Wb and zeros
in Rb; gru_torch maps b_i* to Wb and b_h* to Rb. gru.yaml is Cho's form (reset before U_h:
linear_before_reset=0), gru_torch.yaml is PyTorch's (linear_before_reset=1).

The reference evaluator's ``Scan`` only handles scan axis 0, and seqdsl's export scans the batch-first axis 1
(valid ONNX). The stock evaluator is tried as is and the test skips with that reason when it refuses; the
exported graph is then run, unchanged, with `_ScanAnyAxis`: onnx's own Scan with the scan inputs moved to axis
0 before and the scan outputs moved back after (the body, outer-scope captures and every other op stay onnx's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.ops.op_scan import Scan as _OnnxScan

import seqdsl
from seqdsl.compilers import onnx_runtime as rt
from seqdsl.compilers.parity import compare
from seqdsl.compilers.onnx_export import OPSET, export, set_weights
from seqdsl.compilers.torch_module import to_module

SPECS = Path(__file__).resolve().parents[1] / "specs"
D, H = 5, 6
SIZES = {"d": D, "h": H}
TS = (1, 7, 50)
BS = (1, 3)
TOL = 1e-5
SEED = 0

Weights = dict[str, np.ndarray]


# ----------------------------------------------------------------------------- spec -> ONNX op weights


def _stack(w: Weights, names: list[str]) -> np.ndarray:
    """The named [h, n] matrices stacked on axis 0, with ONNX's leading num_directions axis: [1, k*h, n]."""
    return np.concatenate([w[n] for n in names], axis=0)[None]


def _bias(w: Weights, wb: list[str], rb: list[str] | None) -> np.ndarray:
    """B [1, 2*k*h]: Wb then Rb; Rb is zeros when the spec has a single bias per gate."""
    first = np.concatenate([w[n] for n in wb])
    second = np.concatenate([w[n] for n in rb]) if rb else np.zeros_like(first)
    return np.concatenate([first, second])[None]


def _lstm_wrb(w: Weights) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gates = "iofc"  # ONNX LSTM order
    return (_stack(w, [f"W_{g}" for g in gates]), _stack(w, [f"U_{g}" for g in gates]),
            _bias(w, [f"b_{g}" for g in gates], None))


def _gru_wrb(w: Weights) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gates = "zrh"  # ONNX GRU order
    return (_stack(w, [f"W_{g}" for g in gates]), _stack(w, [f"U_{g}" for g in gates]),
            _bias(w, [f"b_{g}" for g in gates], None))


def _gru_torch_wrb(w: Weights) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gates = "zrn"  # ONNX GRU order z, r, h; the spec calls the candidate n
    return (_stack(w, [f"W_{g}" for g in gates]), _stack(w, [f"U_{g}" for g in gates]),
            _bias(w, [f"b_i{g}" for g in gates], [f"b_h{g}" for g in gates]))


@dataclass(frozen=True)
class Case:
    spec: str
    op: str                      # "LSTM" or "GRU"
    wrb: Callable[[Weights], tuple[np.ndarray, np.ndarray, np.ndarray]]
    linear_before_reset: int | None = None  # GRU only

    @property
    def outputs(self) -> tuple[str, ...]:
        return ("y", "h_n", "c_n") if self.op == "LSTM" else ("y", "h_n")


CASES = {
    "lstm": Case("lstm", "LSTM", _lstm_wrb),
    "gru": Case("gru", "GRU", _gru_wrb, linear_before_reset=0),
    "gru_torch": Case("gru_torch", "GRU", _gru_torch_wrb, linear_before_reset=1),
}


def op_model(case: Case, w: Weights, linear_before_reset: int | None = None) -> onnx.ModelProto:
    """A one-node model with ONNX's standard LSTM/GRU op; W, R, B are initializers, T and B symbolic."""
    W, R, Bias = case.wrb(w)
    f = TensorProto.FLOAT
    outs = ["Y", "Y_h"] + (["Y_c"] if case.op == "LSTM" else [])
    attrs: dict[str, object] = {"hidden_size": H, "direction": "forward", "layout": 0}
    if case.op == "GRU":
        lbr = case.linear_before_reset if linear_before_reset is None else linear_before_reset
        attrs["linear_before_reset"] = lbr
    node = helper.make_node(case.op, ["X", "W", "R", "B"], outs, name=case.op, **attrs)
    graph = helper.make_graph(
        [node], f"{case.spec}_onnx_{case.op.lower()}",
        [helper.make_tensor_value_info("X", f, ["T", "B", D])],
        [helper.make_tensor_value_info("Y", f, ["T", 1, "B", H])]
        + [helper.make_tensor_value_info(n, f, [1, "B", H]) for n in outs[1:]],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(a, np.float32), n)
                     for n, a in (("W", W), ("R", R), ("B", Bias))],
    )
    ir, opset = rt.target_versions()
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", min(OPSET, opset))])
    model.ir_version = ir
    return model


def run_op(evaluator: ReferenceEvaluator, case: Case, x: np.ndarray) -> dict[str, np.ndarray]:
    """The op model on batch-first x [B, T, d], its outputs renamed and laid out as the spec's."""
    outs = evaluator.run(None, {"X": np.ascontiguousarray(x.transpose(1, 0, 2))})
    got = {"y": outs[0][:, 0].transpose(1, 0, 2), "h_n": outs[1][0]}
    if case.op == "LSTM":
        got["c_n"] = outs[2][0]
    return got


# ----------------------------------------------------------------------------- Scan on any axis


class _ScanAnyAxis(_OnnxScan):
    """onnx's reference Scan, with scan inputs/outputs on any axis (it implements axis 0 only).

    The node is handed to onnx's Scan without its axis attributes; `_run` moves each scan input's axis to 0
    and each scan output's axis 0 back to where the node asks for it. Directions stay onnx's (forward only).
    """

    op_domain = ""

    def __init__(self, onnx_node: onnx.NodeProto, run_params: dict) -> None:
        attrs = {a.name: helper.get_attribute_value(a) for a in onnx_node.attribute}
        self._in_axes = list(attrs.get("scan_input_axes", []))
        self._out_axes = list(attrs.get("scan_output_axes", []))
        stripped = onnx.NodeProto()
        stripped.CopyFrom(onnx_node)
        del stripped.attribute[:]
        stripped.attribute.extend(a for a in onnx_node.attribute
                                  if a.name not in ("scan_input_axes", "scan_output_axes"))
        super().__init__(stripped, run_params)

    def _run(self, *args, **kwargs):  # type: ignore[override]
        n_states = len(args) - self.num_scan_inputs
        moved = list(args)
        for i, axis in enumerate(self._in_axes):
            moved[n_states + i] = np.moveaxis(args[n_states + i], axis, 0)
        outs = list(super()._run(*moved, **kwargs))
        for i, axis in enumerate(self._out_axes):
            outs[n_states + i] = np.moveaxis(outs[n_states + i], 0, axis)
        return tuple(outs)


_ScanAnyAxis.__name__ = "Scan"  # ReferenceEvaluator keys new_ops by class name


# ----------------------------------------------------------------------------- per-spec fixtures


@dataclass
class Bundle:
    case: Case
    net: torch.nn.Module
    weights: Weights
    op_model: onnx.ModelProto
    op_eval: ReferenceEvaluator
    exported: bytes           # exported once, run at every T and B


_BUNDLES: dict[str, Bundle] = {}


def bundle(spec: str) -> Bundle:
    if spec not in _BUNDLES:
        case = CASES[spec]
        model = seqdsl.load(SPECS / f"{spec}.yaml", sizes=SIZES)
        torch.manual_seed(SEED)
        net = to_module(model, native_cells=False).eval()  # the spec's own equations, not torch's kernel
        weights = {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}
        proto = op_model(case, weights)
        exported = export(model, native_cells=False)  # the equations as a Scan, not ONNX's own op
        set_weights(exported, weights)
        _BUNDLES[spec] = Bundle(case, net, weights, proto, ReferenceEvaluator(proto), exported.SerializeToString())
    return _BUNDLES[spec]


def x_for(T: int, B: int) -> np.ndarray:
    return np.random.default_rng(1000 * T + B).standard_normal((B, T, D)).astype(np.float32)


def module_outputs(b: Bundle, x: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        outs = b.net(torch.from_numpy(x))
    return {n: o.numpy() for n, o in zip(b.case.outputs, outs, strict=True)}


def reference(b: Bundle, T: int, B: int) -> dict[str, np.ndarray]:
    return run_op(b.op_eval, b.case, x_for(T, B))


def assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray], what: str) -> dict[str, float]:
    diffs = compare(want, got).max_abs_diff  # also checks names and shapes
    print(f"{what}: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) <= TOL, f"{what}: {diffs}"
    return diffs


SPEC_NAMES = list(CASES)
GRID = [(T, B) for T in TS for B in BS]


# ----------------------------------------------------------------------------- the one-node models


@pytest.mark.parametrize("spec", SPEC_NAMES)
def test_op_model_is_valid_onnx_with_dynamic_dims(spec: str) -> None:
    b = bundle(spec)
    onnx.checker.check_model(b.op_model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(b.op_model, strict_mode=True)
    dims = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in inferred.graph.output}
    assert dims["Y"] == ["T", 1, "B", H] and dims["Y_h"] == [1, "B", H]
    W, R, Bias = (numpy_helper.to_array(i) for i in b.op_model.graph.initializer)
    k = 4 if b.case.op == "LSTM" else 3
    assert W.shape == (1, k * H, D) and R.shape == (1, k * H, H) and Bias.shape == (1, 2 * k * H)


@pytest.mark.parametrize("spec", SPEC_NAMES)
def test_reference_tells_the_variants_apart(spec: str) -> None:
    """Not vacuous: the reference disagrees with the module under a wrong gate order or the other GRU form."""
    b = bundle(spec)
    x = x_for(7, 3)
    want = module_outputs(b, x)
    if b.case.op == "GRU":
        other = op_model(b.case, b.weights, linear_before_reset=1 - b.case.linear_before_reset)
        wrong = run_op(ReferenceEvaluator(other), b.case, x)
        assert np.max(np.abs(wrong["y"] - want["y"])) > 1e-3
        swapped = Case(spec, "GRU", lambda w: b.case.wrb(_swap(w, "r", "z")),
                       b.case.linear_before_reset)
    else:
        swapped = Case(spec, "LSTM", lambda w: _lstm_wrb(_swap(w, "f", "o")))
    wrong = run_op(ReferenceEvaluator(op_model(swapped, b.weights)), b.case, x)
    assert np.max(np.abs(wrong["y"] - want["y"])) > 1e-3


def _swap(w: Weights, g1: str, g2: str) -> Weights:
    """``w`` with the parameters of gates g1 and g2 exchanged (W_g1 <-> W_g2, b_ig1 <-> b_ig2, ...)."""
    out = dict(w)
    for name in w:
        prefix, _, gate = name.rpartition("_")
        for a, c in ((g1, g2), (g2, g1)):
            if gate.endswith(a) and (prefix + "_" + gate[: -1] + c) in w:
                out[name] = w[prefix + "_" + gate[: -1] + c]
    return out


@pytest.mark.parametrize("T,B", GRID)
@pytest.mark.parametrize("spec", SPEC_NAMES)
def test_spec_module_matches_onnx_op(spec: str, T: int, B: int) -> None:
    b = bundle(spec)
    got = module_outputs(b, x_for(T, B))
    want = reference(b, T, B)
    assert got["y"].shape == (B, T, H)
    assert_close(got, want, f"{spec} module vs ONNX {b.case.op} T={T} B={B}")


# ----------------------------------------------------------------------------- the spec's own exported ONNX


@pytest.mark.parametrize("spec", SPEC_NAMES)
def test_exported_has_symbolic_batch_and_time(spec: str) -> None:
    model = onnx.load_from_string(bundle(spec).exported)
    (x,) = model.graph.input
    assert [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim] == ["B", "T", D]
    assert [o.name for o in model.graph.output] == list(CASES[spec].outputs)


@pytest.mark.parametrize("T,B", GRID)
@pytest.mark.parametrize("spec", SPEC_NAMES)
def test_exported_onnxruntime_matches_onnx_op(spec: str, T: int, B: int) -> None:
    b = bundle(spec)
    result = rt.run(b.exported, {"x": x_for(T, B)}, provider="cpu")
    assert_close(result.outputs, reference(b, T, B), f"{spec} exported/onnxruntime vs ONNX {b.case.op} T={T} B={B}")


@pytest.mark.parametrize("spec", SPEC_NAMES)
def test_exported_in_stock_reference_evaluator(spec: str) -> None:
    """As is; skips, naming the reason, where onnx's reference Scan cannot run seqdsl's batch-first scan."""
    b = bundle(spec)
    T, B = 7, 3
    try:
        outs = ReferenceEvaluator(b.exported).run(None, {"x": x_for(T, B)})
    except RuntimeError as exc:
        if "Scan is not implemented for other" in str(exc):
            pytest.skip(f"onnx {onnx.__version__} reference Scan handles scan axis 0 only; seqdsl scans axis 1 "
                        f"(batch-first), so see test_exported_reference_evaluator_matches_onnx_op: {exc}")
        raise
    got = dict(zip(b.case.outputs, outs, strict=True))
    assert_close(got, reference(b, T, B), f"{spec} exported/stock reference vs ONNX {b.case.op} T={T} B={B}")


@pytest.mark.parametrize("T,B", GRID)
@pytest.mark.parametrize("spec", SPEC_NAMES)
def test_exported_reference_evaluator_matches_onnx_op(spec: str, T: int, B: int) -> None:
    b = bundle(spec)
    scans = [n for n in onnx.load_from_string(b.exported).graph.node if n.op_type == "Scan"]
    assert len(scans) == 1  # one Scan, whatever T: the same file serves every length
    evaluator = ReferenceEvaluator(b.exported, new_ops=[_ScanAnyAxis])
    got = dict(zip(b.case.outputs, evaluator.run(None, {"x": x_for(T, B)}), strict=True))
    assert_close(got, reference(b, T, B), f"{spec} exported/reference vs ONNX {b.case.op} T={T} B={B}")


@pytest.mark.parametrize("spec", list(CASES))
def test_native_op_export_matches_the_reference(spec: str) -> None:
    """By default a standard cell is exported as ONNX's own op, weights in ONNX's gate order."""
    b = bundle(spec)
    native = export(seqdsl.load(SPECS / f"{spec}.yaml", sizes=SIZES))
    assert [n.op_type for n in native.graph.node if n.op_type in ("LSTM", "GRU", "Scan")] == [b.case.op]
    set_weights(native, b.weights)
    for T, B in [(1, 1), (7, 3)]:
        got = dict(zip(b.case.outputs, rt.run(native.SerializeToString(), {"x": x_for(T, B)}).outputs.values()))
        assert_close(got, reference(b, T, B), f"{spec} native export vs ONNX {b.case.op} T={T} B={B}")
