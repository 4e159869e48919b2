"""Tests for seqdsl.compilers.onnx_runtime: probed versions, provider choice, silent sessions, runs, diffs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from seqdsl.compilers import onnx_runtime as rt
from seqdsl.compilers.parity import compare

GPU = rt._gpu_present()


def _stamp(graph: onnx.GraphProto) -> onnx.ModelProto:
    """A model for ``graph`` at the versions seqdsl targets, checked by onnx."""
    ir, opset = rt.target_versions()
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    onnx.checker.check_model(model, full_check=True)
    return model


def _add_model() -> onnx.ModelProto:
    """z = x + y over dynamic dims B, T."""
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", "T"])  # noqa: E731
    graph = helper.make_graph([helper.make_node("Add", ["x", "y"], ["z"])], "add", [vi("x"), vi("y")], [vi("z")])
    return _stamp(graph)


def _scan_model() -> onnx.ModelProto:
    """Running sum over time: x [B, T] and s0 [B] -> final [B], cumsum [B, T]."""
    f = TensorProto.FLOAT
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "x_t"], ["s_out"]), helper.make_node("Identity", ["s_out"], ["y_t"])],
        "step",
        [helper.make_tensor_value_info("s_in", f, ["B"]), helper.make_tensor_value_info("x_t", f, ["B"])],
        [helper.make_tensor_value_info("s_out", f, ["B"]), helper.make_tensor_value_info("y_t", f, ["B"])],
    )
    scan = helper.make_node(
        "Scan", ["s0", "x"], ["final", "cumsum"], body=body, num_scan_inputs=1,
        scan_input_axes=[1], scan_output_axes=[1],
    )
    graph = helper.make_graph(
        [scan],
        "scan_sum",
        [helper.make_tensor_value_info("s0", f, ["B"]), helper.make_tensor_value_info("x", f, ["B", "T"])],
        [helper.make_tensor_value_info("final", f, ["B"]), helper.make_tensor_value_info("cumsum", f, ["B", "T"])],
    )
    return _stamp(graph)


# ----------------------------------------------------------------------------- versions


def test_versions_are_sane_and_consistent() -> None:
    ir, opset = rt.target_versions()
    assert 7 <= rt.supported_ir_version() <= onnx.IR_VERSION
    assert 7 <= rt.supported_opset() <= onnx.defs.onnx_opset_version()
    assert ir == min(onnx.IR_VERSION, rt.supported_ir_version())
    assert opset <= min(onnx.defs.onnx_opset_version(), rt.supported_opset())
    assert helper.find_min_ir_version_for([helper.make_opsetid("", opset)]) <= ir


def test_target_versions_load_in_onnxruntime() -> None:
    ir, opset = rt.target_versions()
    session, used = rt.make_session(rt._identity_model(ir, opset), "cpu")
    assert used == rt.CPU
    assert [o.name for o in session.get_outputs()] == ["y"]


def test_versions_above_the_probe_are_refused() -> None:
    """The probe is meaningful: one step above what it found, onnxruntime refuses the model."""
    if rt.supported_ir_version() < onnx.IR_VERSION:
        with pytest.raises(Exception, match="IR version"):
            ort.InferenceSession(rt._identity_model(onnx.IR_VERSION, 13), rt._session_options(), providers=[rt.CPU])
    if rt.supported_opset() < onnx.defs.onnx_opset_version():
        model = rt._identity_model(rt.supported_ir_version(), rt.supported_opset() + 1)
        with pytest.raises(Exception, match="opset"):
            ort.InferenceSession(model, rt._session_options(), providers=[rt.CPU])
    if (rt.supported_ir_version(), rt.supported_opset()) == (onnx.IR_VERSION, onnx.defs.onnx_opset_version()):
        pytest.skip("onnxruntime loads everything this onnx writes; nothing above to refuse")


# ----------------------------------------------------------------------------- runs


def test_add_with_dynamic_dims_matches_numpy() -> None:
    model = _add_model()
    rng = np.random.default_rng(0)
    for shape in [(2, 3), (5, 1)]:
        x, y = rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(shape, dtype=np.float32)
        result = rt.run(model, {"x": x, "y": y}, provider="cpu")
        assert result.provider == rt.CPU
        assert list(result.outputs) == ["z"]
        assert compare({"z": x + y}, result.outputs).max_abs_diff["z"] == 0.0


def test_scan_running_sum_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 7), dtype=np.float32)
    s0 = rng.standard_normal(3, dtype=np.float32)
    result = rt.run(_scan_model(), {"s0": s0, "x": x})
    expected = s0[:, None] + np.cumsum(x, axis=1)
    diffs = compare({"final": expected[:, -1], "cumsum": expected}, result.outputs).max_abs_diff
    assert set(diffs) == {"final", "cumsum"}
    assert max(diffs.values()) < 1e-5


def test_model_as_path_and_bytes(tmp_path: Path) -> None:
    path = tmp_path / "add.onnx"
    onnx.save(_add_model(), path)
    ones = np.ones((1, 2), np.float32)
    for source in (path, str(path), path.read_bytes()):
        assert rt.run(source, {"x": ones, "y": ones}, "cpu").outputs["z"].tolist() == [[2.0, 2.0]]


# ----------------------------------------------------------------------------- providers


def test_cpu_provider() -> None:
    assert rt.available_providers("cpu") == [rt.CPU]
    assert rt.available_providers("CPUExecutionProvider") == [rt.CPU]
    assert rt.available_providers()[-1] == rt.CPU
    assert rt.available_providers("auto") == rt.available_providers(None)


def test_unknown_provider_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown execution provider"):
        rt.available_providers("rocm")


@pytest.mark.skipif(GPU, reason="a GPU is present here")
@pytest.mark.parametrize("name", ["cuda", "tensorrt"])
def test_gpu_request_without_gpu_raises(name: str) -> None:
    assert rt.available_providers("auto") == [rt.CPU]
    with pytest.raises(rt.RuntimeUnavailable) as info:
        rt.available_providers(name)
    assert "\n" not in str(info.value) and name in str(info.value)
    with pytest.raises(rt.RuntimeUnavailable):
        rt.make_session(_add_model(), name)



@pytest.mark.skipif(not GPU, reason="no GPU here")
def test_cuda_when_gpu_present() -> None:  # pragma: no cover - runs on GPU machines only
    ones = np.ones((1, 2), np.float32)
    try:
        result = rt.run(_add_model(), {"x": ones, "y": ones}, "cuda")
    except rt.RuntimeUnavailable as exc:
        pytest.skip(str(exc))
    assert result.provider == rt.CUDA


@pytest.mark.skipif(GPU, reason="silence is promised on CPU-only machines")
def test_cpu_only_machine_prints_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    for cached in (rt.supported_ir_version, rt.supported_opset, rt.target_versions):
        cached.cache_clear()
    rt.target_versions()
    ones = np.ones((2, 2), np.float32)
    assert rt.run(_add_model(), {"x": ones, "y": ones}).provider == rt.CPU
    rt.run(_add_model(), {"x": ones, "y": ones}, "cpu")
    with pytest.raises(rt.RuntimeUnavailable):
        rt.make_session(_add_model(), "cuda")
    out, err = capfd.readouterr()
    text = (out + err).lower()
    assert "cuda" not in text and "error" not in text, text
    assert out == "" and err == ""


def test_no_torch_at_import() -> None:
    code = "import sys, seqdsl.compilers.onnx_runtime; sys.exit('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


# ----------------------------------------------------------------------------- diffs


def test_max_abs_diff() -> None:
    a = {"y": np.array([1.0, 2.0], np.float32), "h": np.zeros((0, 3))}
    b = {"y": np.array([1.5, 1.0], np.float64), "h": np.zeros((0, 3))}
    assert compare(a, b).max_abs_diff == {"y": 1.0, "h": 0.0}


def test_max_abs_diff_shape_mismatch_names_output_and_shapes() -> None:
    with pytest.raises(ValueError, match=r"'y'.*\(2, 3\).*\(3, 2\)"):
        compare({"y": np.zeros((2, 3))}, {"y": np.zeros((3, 2))})


def test_max_abs_diff_missing_names() -> None:
    with pytest.raises(ValueError, match="only in PyTorch \\['h'\\]"):
        compare({"y": np.zeros(1), "h": np.zeros(1)}, {"y": np.zeros(1)})
    with pytest.raises(ValueError, match="only in onnxruntime \\['c'\\]"):
        compare({"y": np.zeros(1)}, {"y": np.zeros(1), "c": np.zeros(1)})
