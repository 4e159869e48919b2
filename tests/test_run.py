"""`seqdsl run MODEL.onnx --input name=file.npy`: a built model run in onnxruntime from .npy files, and the
Python API under it (`seqdsl.compilers.onnx_runtime.run` / `check_inputs`). A user's mistake is one line, exit 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import ROOT, SPECS

from seqdsl.compilers import onnx_runtime as rt
from seqdsl.compilers.build import build, example_inputs
import seqdsl


def seqdsl_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Built models (rnn: x [B, T, 16]; seq2seq: src [B, S, 8] and tgt [B, T, 8]; classifier: int64 tokens;
    lstm unrolled for T=4) and .npy files for them."""
    root = tmp_path_factory.mktemp("run")
    paths = {name: Path(build(SPECS / f"{name}.yaml", root / name, steps=4).out_dir) / "model.onnx"
             for name in ("rnn", "seq2seq", "classifier")}
    unrolled = build(SPECS / "lstm.yaml", root / "lstm_u", steps=4, unroll=True)
    paths["lstm_unrolled"] = Path(unrolled.out_dir) / "model.onnx"
    rng = np.random.default_rng(0)
    arrays = {
        "x": rng.standard_normal((2, 5, 16)).astype(np.float32),
        "x64": rng.standard_normal((2, 5, 16)),
        "x_rank2": rng.standard_normal((2, 5)).astype(np.float32),
        "x_d8": rng.standard_normal((2, 5, 8)).astype(np.float32),
        "src": rng.standard_normal((2, 6, 8)).astype(np.float32),
        "tgt": rng.standard_normal((2, 3, 8)).astype(np.float32),
        "tgt_b3": rng.standard_normal((3, 3, 8)).astype(np.float32),
        "tokens": rng.integers(0, 20, size=(2, 7)),
        "tokens_f": rng.integers(0, 20, size=(2, 7)).astype(np.float32),
        "tokens_big": np.full((2, 7), 10_000, dtype=np.int64),
        "x_t4": rng.standard_normal((2, 4, 16)).astype(np.float32),
    }
    for name, array in arrays.items():
        np.save(root / f"{name}.npy", array)
    np.save(root / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(root / "two.npz", a=arrays["x"], b=arrays["x"])
    (root / "corrupt.onnx").write_bytes(b"\x08\x07this is not a protobuf of a model")
    (root / "empty.npy").write_bytes(b"")
    return {**paths, **{name: root / f"{name}.npy" for name in [*arrays, "objects", "empty"]},
            "npz": root / "two.npz", "corrupt": root / "corrupt.onnx", "root": root}


# ----------------------------------------------------------------------------- success


def test_run_prints_each_output_and_the_provider(models: dict[str, Path], tmp_path: Path):
    r = seqdsl_cli("run", str(models["rnn"]), "--input", f"x={models['x']}", "--provider", "cpu",
                   "--output-dir", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    want = rt.run(models["rnn"], {"x": np.load(models["x"])}, "cpu")
    lines = r.stdout.splitlines()
    y = next(line for line in lines if line.startswith("y "))
    assert "shape (2, 5, 32) float32" in y
    numbers = dict(re.findall(r"(min|max|mean) (\S+)", y))
    assert float(numbers["min"]) == pytest.approx(want.outputs["y"].min(), rel=1e-5)
    assert float(numbers["max"]) == pytest.approx(want.outputs["y"].max(), rel=1e-5)
    assert any(line.startswith("h_n ") and "shape (2, 32) float32" in line for line in lines)
    assert "provider: CPUExecutionProvider" in lines
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["h_n.npy", "run.json", "y.npy"]
    for name, value in want.outputs.items():  # the same numbers as the Python API
        np.testing.assert_array_equal(np.load(tmp_path / "out" / f"{name}.npy"), value)


def test_run_auto_provider_reports_the_one_used(models: dict[str, Path]):
    r = seqdsl_cli("run", str(models["seq2seq"]), "-i", f"src={models['src']}", "-i", f"tgt={models['tgt']}")
    assert r.returncode == 0, r.stderr
    assert "logp  shape (2, 3, 12) float32" in r.stdout
    used = r.stdout.splitlines()[-1].removeprefix("provider: ")
    assert used == rt.available_providers("auto")[0]


def test_run_int64_inputs_and_an_unrolled_model(models: dict[str, Path]):
    r = seqdsl_cli("run", str(models["classifier"]), "--input", f"tokens={models['tokens']}")
    assert r.returncode == 0, r.stderr
    r = seqdsl_cli("run", str(models["lstm_unrolled"]), "--input", f"x={models['x_t4']}")
    assert r.returncode == 0, r.stderr
    assert "shape (2, 4, 32) float32" in r.stdout


def test_python_api_returns_outputs_and_provider(models: dict[str, Path]):
    model = seqdsl.load(SPECS / "seq2seq.yaml")
    inputs = example_inputs(model, 2, 5)
    for source in (models["seq2seq"], str(models["seq2seq"]), models["seq2seq"].read_bytes(),
                   onnx.load(str(models["seq2seq"]))):
        rt.check_inputs(source, inputs)  # a path, bytes or a ModelProto: the same signature
        result = rt.run(source, inputs, "cpu")
        assert result.provider == rt.CPU and result.outputs["logp"].shape == (2, 5, 12)
    session, _ = rt.make_session(models["seq2seq"], "cpu")
    assert [str(s) for s in rt.input_signature(session)] == ["src [B, S, 8] float32", "tgt [B, T, 8] float32"]
    assert rt.input_signature(session) == rt.input_signature(models["seq2seq"])


# ----------------------------------------------------------------------------- the user's mistakes

CASES = {  # id: (arguments after `run`, with {key} for the paths of `models`; the expected message)
    "missing-npy": (["{rnn}", "--input", "x={root}/nope.npy"], "error: --input x={root}/nope.npy: no such file"),
    "unknown-name": (["{rnn}", "--input", "xx={x}"],
                     "error: {rnn}: the model has no input `xx` (did you mean `x`?); its inputs: x [B, T, 16] float32"),
    "missing-input": (["{seq2seq}", "--input", "src={src}"],
                      "error: {seq2seq}: missing input `tgt`; the model's inputs: src [B, S, 8] float32, "
                      "tgt [B, T, 8] float32"),
    "rank": (["{rnn}", "--input", "x={x_rank2}"],
             "error: {rnn}: input `x`: expected rank 3 (x [B, T, 16] float32), found a float32 array of shape (2, 5)"),
    "dtype": (["{rnn}", "--input", "x={x64}"],
              "error: {rnn}: input `x`: expected dtype float32 (x [B, T, 16] float32), found a float64 array of "
              "shape (2, 5, 16)"),
    "int-dtype": (["{classifier}", "--input", "tokens={tokens_f}"],
                  "error: {classifier}: input `tokens`: expected dtype int64 (tokens [B, T] int64), found a float32"),
    "fixed-axis": (["{rnn}", "--input", "x={x_d8}"],
                   "error: {rnn}: input `x`: axis 2 must be 16 (x [B, T, 16] float32), found 8 in a float32 array "
                   "of shape (2, 5, 8)"),
    "shared-axis": (["{seq2seq}", "--input", "src={src}", "--input", "tgt={tgt_b3}"],
                    "error: {seq2seq}: input `tgt`: axis 0 is `B`, which is 2 in input `src` but 3 here"),
    "unrolled-length": (["{lstm_unrolled}", "--input", "x={x}"],
                        "error: {lstm_unrolled}: input `x`: axis 1 must be 4 (x [B, 4, 16] float32), found 5"),
    "not-onnx": (["{root}/x.npy", "--input", "x={x}"], "error: {root}/x.npy: not an .onnx file"),
    "no-model": (["{root}/nope.onnx", "--input", "x={x}"], "error: {root}/nope.onnx: no such file"),
    "corrupt-onnx": (["{corrupt}", "--input", "x={x}"], "error: onnxruntime cannot load {corrupt}: INVALID_PROTOBUF"),
    "bad-input-option": (["{rnn}", "--input", "{x}"], "error: --input expects NAME=FILE.npy"),
    "twice": (["{rnn}", "--input", "x={x}", "--input", "x={x}"], "error: --input x given twice"),
    "pickled-npy": (["{rnn}", "--input", "x={objects}"],
                    "error: --input x={objects}: not a readable .npy array (the array is of dtype object"),
    "empty-npy": (["{rnn}", "--input", "x={empty}"], "error: --input x={empty}: not a readable .npy array"),
    "npz": (["{rnn}", "--input", "x={npz}"], "error: --input x={npz}: an .npz archive holds several arrays"),
    "unknown-provider": (["{rnn}", "--input", "x={x}", "--provider", "tpu"],
                         "error: --provider: unknown execution provider 'tpu'; choose auto, cpu, cuda or tensorrt"),
    "out-of-vocabulary": (["{classifier}", "--input", "tokens={tokens_big}"],
                          "error: {classifier}: onnxruntime failed on these inputs:"),
    "output-dir-is-a-file": (["{rnn}", "--input", "x={x}", "--output-dir", "{x}"],
                             "error: --output-dir {x}: exists and is not a directory"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_run_mistake_is_one_line_and_exit_2(case: str, models: dict[str, Path]):
    """Every case in-process (a process start costs a second here); the next test runs a few as real processes."""
    from typer.testing import CliRunner

    from seqdsl import cli

    args, message = CASES[case]
    paths = {k: str(v) for k, v in models.items()}
    r = CliRunner().invoke(cli.app, ["run", *(a.format(**paths) for a in args)])
    assert r.exit_code == 2, r.output
    assert r.stdout == "" and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith(message.format(**paths)), r.stderr


@pytest.mark.parametrize("case", ["unknown-name", "corrupt-onnx", "out-of-vocabulary", "pickled-npy"])
def test_run_mistake_as_a_process(case: str, models: dict[str, Path]):
    """As the user meets it: nothing else on stderr (onnxruntime's own log included), no traceback, exit 2."""
    args, message = CASES[case]
    paths = {k: str(v) for k, v in models.items()}
    r = seqdsl_cli("run", *(a.format(**paths) for a in args))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith(message.format(**paths)), r.stderr


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_unavailable_provider_is_a_clear_error(provider: str, models: dict[str, Path]):
    try:
        rt.available_providers(provider)
    except rt.RuntimeUnavailable as exc:
        expected = str(exc)
    else:
        pytest.skip(f"{provider} works on this machine")
    from typer.testing import CliRunner

    from seqdsl import cli

    r = CliRunner().invoke(cli.app, ["run", str(models["rnn"]), "--input", f"x={models['x']}", "--provider", provider])
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"error: {expected}"
    assert f"onnxruntime provider '{provider}' is unavailable" in expected
    with pytest.raises(rt.RuntimeUnavailable, match="is unavailable"):
        rt.run(models["rnn"], {"x": np.load(models["x"])}, provider)


def test_python_api_raises_the_same_messages(models: dict[str, Path]):
    x = np.load(models["x"])
    with pytest.raises(rt.InputMismatch, match=r"has no input `X` \(did you mean `x`\?\); its inputs: x \[B, T, 16\]"):
        rt.run(models["rnn"], {"X": x})
    with pytest.raises(ValueError, match=r"expected dtype float32 .*found a float64 array of shape \(2, 5, 16\)"):
        rt.run(models["rnn"], {"x": x.astype(np.float64)})
    with pytest.raises(ValueError, match=r"expected rank 3"):
        rt.check_inputs(onnx.load(str(models["rnn"])), {"x": x[0]})
    with pytest.raises(ValueError, match=r"missing input `tgt`"):
        rt.check_inputs(models["seq2seq"], {"src": np.load(models["src"])})
    with pytest.raises(ValueError, match=r"`B`, which is 2 in input `src` but 3 here"):
        rt.check_inputs(models["seq2seq"], {"src": np.load(models["src"]), "tgt": np.load(models["tgt_b3"])})
    with pytest.raises(rt.ModelLoadError, match="cannot load"):
        rt.run(models["corrupt"], {"x": x})
    with pytest.raises(ValueError, match="unknown execution provider"):
        rt.run(models["rnn"], {"x": x}, "tpu")
    rt.check_inputs(models["rnn"], {"x": x})  # fine: returns nothing


@pytest.mark.parametrize("location", ["../secret.bin", "{root}/secret.bin", "link.bin", "sub/../../secret.bin"])
def test_external_data_outside_the_models_folder_is_refused(tmp_path: Path, location: str):
    """A model.onnx may name a file for its weights (ONNX external data): `run` reads it only from inside the
    model's own folder, never `..`, an absolute path or a symlink out; refused as one line, exit 2."""
    from onnx import TensorProto, helper, numpy_helper
    from typer.testing import CliRunner

    from seqdsl import cli

    secret = np.arange(4, dtype=np.float32)
    secret.tofile(tmp_path / "secret.bin")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "sub").mkdir()
    os.symlink(tmp_path / "secret.bin", tmp_path / "m" / "link.bin")
    weight = numpy_helper.from_array(secret, "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in {"location": location.format(root=tmp_path), "offset": "0", "length": "16"}.items():
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [weight])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    (tmp_path / "m" / "model.onnx").write_bytes(proto.SerializeToString())
    np.save(tmp_path / "x.npy", np.zeros(4, np.float32))
    r = CliRunner().invoke(cli.app, ["run", str(tmp_path / "m" / "model.onnx"), "--input", f"x={tmp_path}/x.npy"])
    assert r.exit_code == 2 and r.stdout == "", r.output
    assert len(r.stderr.strip().splitlines()) == 1 and "External data path" in r.stderr, r.stderr
