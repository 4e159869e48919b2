"""The forms `seqdsl build` writes model.onnx in: the Scan graph (any B and T, the same file whatever --seq-len),
the explicit unrolled graph (`--unroll`, one fixed length per time axis, weights still stored once) and, above
protobuf's 2 GiB, the weights in model.onnx.data beside it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from safetensors.torch import load_file

from conftest import ROOT, SPECS

import seqdsl
import seqdsl.compilers.build
from seqdsl.compilers.build import ParityError, build, example_inputs, run_torch
from seqdsl.compilers.onnx_runtime import InputMismatch, check_inputs, make_session, run
from seqdsl.compilers.torch_module import import_source

ALL_SPECS = sorted(SPECS.glob("*.yaml"))
T_BUILD = 8
UNROLL_T = 6


def seqdsl_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def load_net(out: Path):
    """The published model.py with the published weights (what a user deploys next to model.onnx)."""
    net = import_source(out / "model.py").Model()
    net.load_state_dict(load_file(str(out / "weights.safetensors")), strict=True)
    return net


def all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from all_nodes(attr.g)


def param_initializers(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [i for i in proto.graph.initializer if "#" not in i.name]  # seqdsl's own constants carry a `#`


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scan")
    return {p.stem: Path(build(p, root / p.stem, steps=T_BUILD, batch=2).out_dir) for p in ALL_SPECS}


@pytest.fixture(scope="module")
def built_long(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scan512")
    return {p.stem: Path(build(p, root / p.stem, steps=512, batch=1).out_dir) for p in ALL_SPECS}


# ----------------------------------------------------------------------------- the Scan form


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda p: p.stem)
def test_scan_export_agrees_with_pytorch_at_any_length(spec: Path, built: dict[str, Path]):
    out = built[spec.stem]
    summary = json.loads((out / "build.json").read_text())
    assert summary["onnx_form"] != "unrolled" and summary["unrolled_lengths"] is None  # Scan, Loop or a native op
    assert "unrolled" not in summary["onnx_blocks"].values()
    model, net = seqdsl.load(spec), load_net(out)
    session, _ = make_session(out / "model.onnx", "cpu")  # one session, every length and batch size
    names = [o.name for o in session.get_outputs()]
    for steps in (1, T_BUILD, 3 * T_BUILD + 1):
        for batch in (1, 5):
            inputs = example_inputs(model, batch, steps, seed=100 * batch + steps)
            want = run_torch(net, inputs)
            check_inputs(session, inputs)
            got = dict(zip(names, session.run(names, inputs)))
            assert set(got) == set(want)
            for name, value in want.items():
                np.testing.assert_allclose(got[name], value, atol=1e-5, rtol=0,
                                           err_msg=f"{spec.stem}.{name} at B={batch}, T={steps}")


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda p: p.stem)
def test_scan_export_does_not_depend_on_the_build_length(spec: Path, built: dict[str, Path],
                                                         built_long: dict[str, Path]):
    short, long = built[spec.stem], built_long[spec.stem]
    assert (short / "model.onnx").read_bytes() == (long / "model.onnx").read_bytes()
    a, b = load_file(str(short / "weights.safetensors")), load_file(str(long / "weights.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert json.loads((long / "build.json").read_text())["check_shape"]["B"] == 1


# ----------------------------------------------------------------------------- the unrolled form

UNROLLED = {"lstm": {}, "bigru": {}, "seq2seq": {"S": 4}}  # spec -> --axis-len (seq2seq: S=4, T=6)


@pytest.fixture(scope="module")
def unrolled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("unrolled")
    return {name: Path(build(SPECS / f"{name}.yaml", root / name, steps=UNROLL_T, unroll=True,
                             axis_lengths=lengths).out_dir) for name, lengths in UNROLLED.items()}


@pytest.mark.parametrize("name", list(UNROLLED))
def test_unrolled_export_agrees_with_pytorch(name: str, unrolled: dict[str, Path]):
    out = unrolled[name]
    model = seqdsl.load(SPECS / f"{name}.yaml")
    lengths = {"T": UNROLL_T, **UNROLLED[name]}
    summary = json.loads((out / "build.json").read_text())
    assert summary["onnx_form"] == "unrolled"
    assert summary["unrolled_lengths"] == {axis: lengths[axis] for axis in seqdsl.compilers.build.loop_axes(model)}
    proto = onnx.load(str(out / "model.onnx"))
    assert not any(n.op_type in ("Scan", "Loop") for n in all_nodes(proto.graph))
    for node, value in zip(model.input_nodes(), proto.graph.input):  # unrolled axes fixed, B still symbolic
        dims = [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]
        assert dims == [lengths.get(d, d) if isinstance(d, str) and d != "B" else d for d in node.shape]
    net = load_net(out)
    for batch in (1, 5):
        inputs = example_inputs(model, batch, UNROLL_T, seed=batch, lengths=lengths)
        want = run_torch(net, inputs)
        got = run(out / "model.onnx", inputs, "cpu").outputs
        for key, value in want.items():
            np.testing.assert_allclose(got[key], value, atol=1e-5, rtol=0, err_msg=f"{name}.{key} at B={batch}")
    # another length is refused with the model's signature, not read silently up to T
    first = model.input_nodes()[0]
    with pytest.raises(InputMismatch, match=rf"input `{first.name}`: axis 1 must be {lengths[first.shape[1]]} "):
        run(out / "model.onnx", example_inputs(model, 2, UNROLL_T + 1, lengths={"S": UNROLL_T + 1}), "cpu")


def test_unrolled_node_count_grows_with_t_and_the_scan_one_does_not(tmp_path: Path):
    def nodes(steps: int, unroll: bool) -> int:
        out = build(SPECS / "gru.yaml", tmp_path / f"{steps}{unroll}", steps=steps, unroll=unroll)
        assert out.onnx_nodes == len(onnx.load(str(tmp_path / f"{steps}{unroll}" / "model.onnx")).graph.node)
        return out.onnx_nodes

    assert nodes(4, unroll=False) == nodes(8, unroll=False)
    small, big = nodes(4, unroll=True), nodes(8, unroll=True)
    assert big > 3 * small // 2 and small > nodes(4, unroll=False)


def test_unrolled_weights_are_stored_once(tmp_path: Path):
    sizes = {"h": 128}  # 74k parameters: the weights dominate the file
    model = seqdsl.load(SPECS / "lstm.yaml", sizes)
    files = {}
    for key, steps, unroll in [("scan", 8, False), ("t4", 4, True), ("t8", 8, True)]:
        build(SPECS / "lstm.yaml", tmp_path / key, sizes, steps=steps, unroll=unroll)
        files[key] = tmp_path / key / "model.onnx"
    params = model.param_count * 4
    protos = {k: onnx.load(str(f)) for k, f in files.items()}
    for key, proto in protos.items():
        names = [i.name for i in proto.graph.initializer]
        assert not [n for n, c in Counter(names).items() if c > 1], key
        weights = param_initializers(proto)
        assert sorted(i.name for i in weights) == sorted(model.params), key  # one initializer per parameter
        assert sum(len(i.raw_data) for i in weights) == params, key
    constants = {k: sum(onnx.numpy_helper.to_array(i).size for i in p.graph.initializer if "#" in i.name)
                 for k, p in protos.items()}
    assert constants["t8"] - constants["t4"] < 64  # at most a few index scalars per step
    size = {k: os.path.getsize(f) for k, f in files.items()}
    assert size["t8"] < 1.5 * size["scan"]  # T copies of the weights would be 8 times
    assert size["t8"] - size["t4"] < params / 10


def test_cli_unroll_with_a_length_per_axis(tmp_path: Path):
    r = seqdsl_cli("build", str(SPECS / "seq2seq.yaml"), "-o", str(tmp_path / "a"), "--unroll", "--seq-len", "6",
                   "--axis-len", "S=4", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["onnx_form"] == "unrolled" and summary["unrolled_lengths"] == {"S": 4, "T": 6}
    assert summary["inputs"] == {"src": ["B", 4, 8, "float32"], "tgt": ["B", 6, 8, "float32"]}
    assert summary["check_shape"] == {"B": 3, "T": 6, "S": 4}
    assert json.loads((tmp_path / "a" / "build.json").read_text())["unrolled_lengths"] == {"S": 4, "T": 6}
    from typer.testing import CliRunner

    from seqdsl import cli

    r = CliRunner().invoke(cli.app, ["build", str(SPECS / "seq2seq.yaml"), "-o", str(tmp_path / "b"), "--unroll",
                                     "--seq-len", "5"], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "unrolled for S=5, T=5" in r.output  # every axis defaults to --seq-len
    assert json.loads((tmp_path / "b" / "build.json").read_text())["unrolled_lengths"] == {"S": 5, "T": 5}


@pytest.mark.parametrize("args, message", [
    (["--axis-len", "Q=4"], "--axis-len Q: the model `seq2seq` has no axis `Q`; its time axes: S, T"),
    (["--axis-len", "S=0"], "--axis-len expects NAME=LENGTH with a positive length"),
    (["--axis-len", "S"], "--axis-len expects NAME=LENGTH"),
    (["--axis-len", "B=2"], "B is the batch axis; give its size with --batch"),
], ids=["unknown-axis", "zero", "no-length", "batch"])
def test_cli_bad_axis_len(tmp_path: Path, args: list[str], message: str):
    from typer.testing import CliRunner

    from seqdsl import cli

    result = CliRunner().invoke(cli.app, ["build", str(SPECS / "seq2seq.yaml"), "-o", str(tmp_path / "o"),
                                          "--unroll", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_axis_len_without_unroll_sets_the_check_lengths(tmp_path: Path):
    result = build(SPECS / "seq2seq.yaml", tmp_path / "s", steps=5, axis_lengths={"S": 3})
    assert result.onnx_form == "LSTM" and result.check_shape == {"B": 3, "T": 5, "S": 3}
    assert result.inputs["src"] == ["B", "S", 8, "float32"]  # the Scan graph keeps every axis free
    with pytest.raises(seqdsl.compilers.build.UsageError, match="has no axis `Q`; its time axes: S, T"):
        build(SPECS / "seq2seq.yaml", tmp_path / "q", axis_lengths={"Q": 3})
    assert sorted(os.listdir(tmp_path)) == ["s"]


def test_unroll_of_a_model_without_a_loop_writes_the_scan_form(tmp_path: Path):
    result = build(SPECS / "transformer_encoder.yaml", tmp_path / "t", steps=5, unroll=True)
    assert result.onnx_form == "none" and result.unrolled_lengths is None
    assert any("no recurrent loop to unroll" in w for w in result.warnings)


# ----------------------------------------------------------------------------- above 2 GiB: external data


def test_large_model_goes_to_external_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(seqdsl.compilers.build, "EXTERNAL_DATA_THRESHOLD", 4096)  # the lstm's weights are 25 kB
    out = tmp_path / "lstm"
    result = build(SPECS / "lstm.yaml", out, steps=5)
    assert sorted(os.listdir(tmp_path)) == ["lstm"]  # nothing outside the output directory, no staging left
    assert sorted(os.listdir(out)) == ["build.json", "model.onnx", "model.onnx.data", "model.py",
                                       "weights.safetensors"]
    assert result.onnx_external_data and "model.onnx.data" in result.files
    assert json.loads((out / "build.json").read_text())["onnx_external_data"] is True
    model = seqdsl.load(SPECS / "lstm.yaml")
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    header = onnx.load(str(out / "model.onnx"), load_external_data=False)
    big = [p for p in model.params.values() if p.size * 4 >= 1024]  # onnx keeps tensors below 1 kB inline
    assert sum(p.size * 4 for p in big) <= os.path.getsize(out / "model.onnx.data")
    assert os.path.getsize(out / "model.onnx") < os.path.getsize(out / "model.onnx.data") / 2
    external = {i.name: {e.key: e.value for e in i.external_data} for i in header.graph.initializer
                if i.data_location == onnx.TensorProto.EXTERNAL}
    assert {p.name for p in big} <= set(external)
    assert {e["location"] for e in external.values()} == {"model.onnx.data"}  # relative: the folder can move
    moved = tmp_path / "elsewhere"
    shutil.copytree(out, moved)
    net = load_net(out)
    inputs = example_inputs(model, 3, 9, seed=1)
    want = run_torch(net, inputs)
    for path in (out / "model.onnx", moved / "model.onnx"):
        got = run(path, inputs, "cpu").outputs  # onnxruntime loads it from the path, data file beside it
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, atol=1e-5, rtol=0, err_msg=name)
    # a failed build publishes neither file; a later small build drops the data file with the rest
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ParityError):
        build(SPECS / "lstm.yaml", out, steps=5, tolerance=-1.0)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.undo()
    build(SPECS / "lstm.yaml", out, steps=5)
    assert "model.onnx.data" not in os.listdir(out) and sorted(os.listdir(tmp_path)) == ["elsewhere", "lstm"]
