"""`seqdsl build` end to end, for every spec in specs/: the three artefacts agree with each other at lengths and
batch sizes other than the ones used to build, and a failed build leaves nothing damaged behind."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import load_file

from conftest import SPECS

import seqdsl
import seqdsl.files
from seqdsl.compilers.build import ParityError, build, example_inputs, run_torch
from seqdsl.compilers.onnx_runtime import run, supported_ir_version, supported_opset
from seqdsl.compilers.torch_module import import_source, to_module
from seqdsl.errors import SpecError

ALL_SPECS = sorted(SPECS.glob("*.yaml"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("build")
    return {p.stem: Path(build(p, root / p.stem, steps=5, batch=2).out_dir) for p in ALL_SPECS}


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda p: p.stem)
def test_artefacts_agree_at_other_lengths(spec: Path, built: dict[str, Path]):
    out = built[spec.stem]
    assert sorted(os.listdir(out)) == ["build.json", "model.onnx", "model.py", "weights.safetensors"]
    source = (out / "model.py").read_text()
    imports = {n.names[0].name.split(".")[0] for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import)}
    imports |= {n.module.split(".")[0] for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)}
    assert imports <= {"torch", "math"}
    net = import_source(out / "model.py").Model()
    net.load_state_dict(load_file(str(out / "weights.safetensors")), strict=True)
    model = seqdsl.load(spec)
    for batch, steps in [(1, 1), (5, 16)]:  # built at B=2, T=5
        inputs = example_inputs(model, batch, steps, seed=batch + steps)
        want = run_torch(net, inputs)
        got = run(out / "model.onnx", inputs).outputs
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, atol=1e-5, rtol=0, err_msg=f"{spec.stem}.{name}")
            assert value.shape[0] == batch


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda p: p.stem)
def test_onnx_is_checked_named_and_loadable(spec: Path, built: dict[str, Path]):
    proto = onnx.load(str(built[spec.stem] / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version <= supported_ir_version()
    assert all(o.version <= supported_opset() for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    model = seqdsl.load(spec)
    assert [i.name for i in proto.graph.input] == model.inputs
    assert [o.name for o in proto.graph.output] == list(model.graph.outputs)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "B"
    summary = json.loads((built[spec.stem] / "build.json").read_text())
    assert summary["param_count"] == model.param_count
    assert max(summary["max_abs_diff"].values()) <= 1e-4


def test_live_module_matches_the_written_one(built: dict[str, Path]):
    model = seqdsl.load(SPECS / "lstm.yaml")
    live = to_module(model)
    written = import_source(built["lstm"] / "model.py").Model()
    written.load_state_dict(live.state_dict())
    x = torch.randn(3, 9, 16)
    for a, b in zip(live(x), written(x)):
        assert torch.equal(a, b)


def test_weights_are_safetensors_with_spec_names(built: dict[str, Path]):
    weights = load_file(str(built["classifier"] / "weights.safetensors"))
    assert {"E", "W_y", "b_y", "lstm.W_f", "lstm.U_c"} <= set(weights)


def _snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_failed_build_leaves_previous_output_untouched(tmp_path: Path):
    out = tmp_path / "rnn"
    build(SPECS / "rnn.yaml", out)
    before = _snapshot(out)
    bad = tmp_path / "bad.yaml"
    bad.write_text((SPECS / "rnn.yaml").read_text().replace("U @ h[t-1]", "U @ hh[t-1]"))
    with pytest.raises(SpecError):
        build(bad, out)
    with pytest.raises(ParityError):
        build(SPECS / "rnn.yaml", out, tolerance=-1.0)  # every comparison fails: nothing may be published
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "rnn"]  # no staging left behind


def test_rebuild_replaces_output(tmp_path: Path):
    out = tmp_path / "rnn"
    build(SPECS / "rnn.yaml", out, sizes={"h": 4})
    build(SPECS / "rnn.yaml", out, sizes={"h": 6})
    assert load_file(str(out / "weights.safetensors"))["U"].shape == (6, 6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rnn"]


@pytest.mark.parametrize("failure", [KeyboardInterrupt(), OSError(28, "No space left on device")],
                         ids=["ctrl-c", "disk-full"])
def test_interrupted_or_failed_write_leaves_previous_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           failure: BaseException):
    out = tmp_path / "rnn"
    build(SPECS / "rnn.yaml", out)
    before = _snapshot(out)

    def broken_save(*args: object, **kwargs: object) -> None:
        raise failure

    monkeypatch.setattr(seqdsl.files, "_durable", broken_save)  # every file is written through seqdsl.files
    with pytest.raises(type(failure)):
        build(SPECS / "rnn.yaml", out, sizes={"h": 4})
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rnn"]


def test_as_written_keeps_the_equations_and_default_runs_the_kernel(tmp_path: Path):
    fast = (Path(build(SPECS / "lstm.yaml", tmp_path / "fast").out_dir) / "model.py").read_text()
    plain = (Path(build(SPECS / "lstm.yaml", tmp_path / "plain", optimize_passes=False).out_dir) / "model.py").read_text()
    assert "torch.lstm(" in fast and "for t in" not in fast
    assert "torch.lstm(" not in plain
    assert "c = f * c_prev + i * torch.tanh(F.linear(x_t, self.W_c) + F.linear(h_prev, self.U_c) + self.b_c)" in plain


def test_builds_are_byte_reproducible(tmp_path: Path):
    a, b = build(SPECS / "gru.yaml", tmp_path / "a"), build(SPECS / "gru.yaml", tmp_path / "b")
    for name in ("model.py", "weights.safetensors", "model.onnx"):
        assert (Path(a.out_dir) / name).read_bytes() == (Path(b.out_dir) / name).read_bytes(), name
