"""`seqdsl build --triton REPO`: a Triton model repository whose config.pbtxt parses with Triton's own
model_config protobuf, matches the ONNX file's signature and the spec's, and follows Triton's batching rules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx.helper import tensor_dtype_to_np_dtype
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import np_to_triton_dtype

from conftest import ROOT, SPECS

import seqdsl
from seqdsl.compilers.build import UsageError, build
from seqdsl.compilers.triton import HEADER, _quote

CASES = {  # spec file, sizes, what it exercises
    "lstm": "float sequences in, every step and final states out",
    "seq2seq_attention": "two time axes (S and T), an int64 input, an output over both axes",
    "classifier": "int64 tokens in, one vector per sequence out",
}


def parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def onnx_signature(path: Path) -> dict[str, tuple[str, list[int]]]:
    """name -> (Triton data type, dims with -1 for symbolic axes), read from the ONNX file."""
    graph = onnx.load(str(path)).graph
    out = {}
    for v in [*graph.input, *graph.output]:
        dtype = "TYPE_" + np_to_triton_dtype(tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type))
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
        out[v.name] = (dtype, dims)
    return out


def check_repository(repo: Path, name: str, model: seqdsl.Model, fixed: dict[str, int] | None = None) -> None:
    folder = repo / name
    config = parse(folder / "config.pbtxt")
    assert config.name == name
    assert config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime"
    # every tensor has the batch axis first: Triton's batching convention (max_batch_size > 0, batch left out)
    assert config.max_batch_size > 0 and config.HasField("dynamic_batching")
    signature = onnx_signature(folder / "1" / "model.onnx")
    entries = {t.name: t for t in [*config.input, *config.output]}
    assert [t.name for t in config.input] == model.inputs
    assert [t.name for t in config.output] == list(model.graph.outputs)
    assert entries.keys() == signature.keys()
    spec_shapes = {n.name: (n.shape, n.dtype) for n in model.input_nodes()}
    spec_shapes |= {k: (model.graph[v].shape, model.graph[v].dtype) for k, v in model.graph.outputs.items()}
    for tname, entry in entries.items():
        dtype, dims = signature[tname]
        assert model_config_pb2.DataType.Name(entry.data_type) == dtype
        assert dims[0] == -1  # the batch axis, left to Triton
        want = dims[1:] or [1]  # a per-request scalar is [1], reshaped to []
        assert list(entry.dims) == want, tname
        assert entry.HasField("reshape") == (len(dims) == 1)
        shape, spec_dtype = spec_shapes[tname]
        assert dtype == {"float32": "TYPE_FP32", "int64": "TYPE_INT64"}[spec_dtype]
        assert [(fixed or {}).get(d, -1) if isinstance(d, str) else d for d in shape[1:]] == list(entry.dims[:len(shape) - 1])


@pytest.mark.parametrize("name", sorted(CASES))
def test_repository_matches_onnx_and_spec(tmp_path: Path, name: str):
    repo = tmp_path / "repo"
    result = build(SPECS / f"{name}.yaml", tmp_path / "out", triton=repo)
    assert result.triton == str(repo / name)
    assert (repo / name / "1" / "model.onnx").read_bytes() == (tmp_path / "out" / "model.onnx").read_bytes()
    assert (repo / name / "config.pbtxt").read_text().splitlines()[0] == HEADER
    check_repository(repo, name, seqdsl.load(SPECS / f"{name}.yaml"))


def test_a_lengths_vector_is_a_per_request_scalar(tmp_path: Path):
    text = (SPECS / "rnn.yaml").read_text().replace("  x: [B, T, d]", "  x: [B, T, d]\n  lens: {shape: [B], dtype: int64}")
    spec = tmp_path / "rnn_lengths.yaml"
    spec.write_text(text.replace("recurrent:\n", "recurrent:\n  lengths: lens\n").replace("name: rnn", "name: rnn_lengths"))
    build(spec, tmp_path / "out", triton=tmp_path / "repo")
    model = seqdsl.load(spec)
    check_repository(tmp_path / "repo", model.name, model)
    lens = next(t for t in parse(tmp_path / "repo" / model.name / "config.pbtxt").input if t.name == "lens")
    assert list(lens.dims) == [1] and list(lens.reshape.shape) == []


def test_unrolled_build_has_its_fixed_lengths(tmp_path: Path):
    build(SPECS / "lstm.yaml", tmp_path / "out", triton=tmp_path / "repo", unroll=True, steps=6)
    check_repository(tmp_path / "repo", "lstm", seqdsl.load(SPECS / "lstm.yaml"), fixed={"T": 6})
    x = parse(tmp_path / "repo" / "lstm" / "config.pbtxt").input[0]
    assert list(x.dims) == [6, 16]


def test_rebuild_replaces_only_what_it_wrote(tmp_path: Path):
    repo = tmp_path / "repo"
    build(SPECS / "lstm.yaml", tmp_path / "a", triton=repo, seed=1)
    (repo / "lstm" / "2").mkdir()
    (repo / "lstm" / "2" / "model.onnx").write_bytes(b"the user's version 2")
    (repo / "lstm" / "notes.txt").write_text("mine")
    build(SPECS / "lstm.yaml", tmp_path / "b", triton=repo, seed=2)
    assert (repo / "lstm" / "1" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()
    assert (repo / "lstm" / "2" / "model.onnx").read_bytes() == b"the user's version 2"
    assert (repo / "lstm" / "notes.txt").read_text() == "mine"


def test_a_folder_seqdsl_did_not_write_is_refused_before_building(tmp_path: Path):
    repo = tmp_path / "repo"
    (repo / "lstm" / "1").mkdir(parents=True)
    (repo / "lstm" / "config.pbtxt").write_text('name: "lstm"\nplatform: "tensorrt_plan"\n')
    (repo / "lstm" / "1" / "model.onnx").write_bytes(b"someone else's")
    with pytest.raises(UsageError, match="not written by seqdsl"):
        build(SPECS / "lstm.yaml", tmp_path / "out", triton=repo)
    assert (repo / "lstm" / "1" / "model.onnx").read_bytes() == b"someone else's"
    assert not (tmp_path / "out").exists()
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "build", str(SPECS / "lstm.yaml"), "-o",
                        str(tmp_path / "out"), "--triton", str(repo)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "not written by seqdsl" in r.stderr and "Traceback" not in r.stderr


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_quoted_names_parse_back_exactly(text: str):
    config = text_format.Parse(f"name: {_quote(text)}\n", model_config_pb2.ModelConfig())
    assert config.name == text
    assert "\n" not in _quote(text)


def test_model_names_that_cannot_be_folders_are_refused(tmp_path: Path):
    for bad in ["..", "a/b", "x\ny", ".hidden", "a b"]:
        spec = tmp_path / "s.yaml"
        spec.write_text((SPECS / "rnn.yaml").read_text().replace("name: rnn", f"name: {bad!r}"))
        try:
            seqdsl.load(spec)
        except seqdsl.SpecError:
            continue  # the language refuses it already
        with pytest.raises(UsageError, match="Triton model folder"):
            build(spec, tmp_path / "out", triton=tmp_path / "repo")
        assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())
