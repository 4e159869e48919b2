"""What `seqdsl run` (and `seqdsl.compilers.onnx_runtime.run`) reads is what the model gets: inputs in either byte order,
of any dtype (refused, or converted with --cast), of any shape (an empty axis refused before onnxruntime, which would
kill the process), `lengths:` inside [1, T] as `train` requires, and one --output-dir file per output.

Every answer is compared with onnxruntime fed the intended native array directly. The cases that would kill the
process if the check regressed run in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from conftest import ROOT, SPECS

import seqdsl
from seqdsl.compilers import onnx_runtime as rt
from seqdsl.compilers import sequence_lengths
from seqdsl.compilers.onnx_export import export, set_weights
from seqdsl.compilers.torch_module import to_module

EXAMPLES = 200 if os.environ.get("SEQDSL_LONG_TESTS") else 40
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
D = 3


def _exported(model: seqdsl.Model, native: bool) -> bytes:
    proto = export(model, native_cells=native)
    net = to_module(model)
    set_weights(proto, {k: v.detach().numpy() for k, v in net.state_dict().items()})
    return proto.SerializeToString()


def _with_lengths(spec: str) -> seqdsl.Model:
    text = (SPECS / spec).read_text().replace("  x: [B, T, d]", "  x: [B, T, d]\n  lens: {shape: [B], dtype: int64}")
    return seqdsl.loads(text.replace("recurrent:\n", "recurrent:\n  lengths: lens\n"), {"d": D, "h": 4})


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """rnn as a Scan, lstm as ONNX's LSTM op, rnn with `lengths: lens` (Scan): x [B, T, 3]."""
    root = tmp_path_factory.mktemp("inputs")
    out = {}
    for name, model, native in (("scan", seqdsl.load(SPECS / "rnn.yaml", {"d": D, "h": 4}), False),
                                ("lstm", seqdsl.load(SPECS / "lstm.yaml", {"d": D, "h": 4}), True),
                                ("lengths", _with_lengths("rnn.yaml"), False)):
        out[name] = root / f"{name}.onnx"
        out[name].write_bytes(_exported(model, native))
    return out


def _direct(model: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """onnxruntime itself, on arrays that are already what the model means."""
    session = ort.InferenceSession(str(model), providers=[rt.CPU])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


DTYPES = ["float32", "float64", "float16", "int32", "int64", "int8", "uint8", "bool"]


@SETTINGS
@given(dtype=st.sampled_from(DTYPES), order=st.sampled_from("<>"), b=st.integers(0, 3), t=st.integers(0, 3),
       d=st.sampled_from([0, D]), cast=st.booleans(), seed=st.integers(0, 2**16))
def test_inputs_of_any_dtype_byte_order_and_shape(models: dict[str, Path], dtype: str, order: str, b: int, t: int,
                                                  d: int, cast: bool, seed: int):
    """An input that fits runs with exactly the numbers onnxruntime gives on the native float32 array; one of another
    dtype is refused unless --cast (then converted, with one line); an empty axis anywhere is refused, never run."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(-1, 1, (b, t, d))
    if dtype == "bool":
        values = values > 0
    elif np.dtype(dtype).kind in "iu":
        values = np.round(values * 3)
        values = np.abs(values) if np.dtype(dtype).kind == "u" else values
    x = values.astype(np.dtype(dtype).newbyteorder(order))
    for model in (models["scan"], models["lstm"]):
        if dtype != "float32" and not cast:
            with pytest.raises(rt.InputMismatch, match=rf"expected dtype float32 .* found a {dtype} array.*--cast"):
                rt.prepare_inputs(model, {"x": x})
            continue
        if 0 in x.shape:
            with pytest.raises(rt.InputMismatch, match=r"axis \d is empty"):  # the check alone: no session.run here
                rt.prepare_inputs(model, {"x": x}, cast=cast)
            continue
        got = rt.run(model, {"x": x}, "cpu", cast=cast)
        want = _direct(model, {"x": np.ascontiguousarray(x.astype("=f4"))})
        assert got.outputs.keys() == want.keys()
        for name in want:
            np.testing.assert_array_equal(got.outputs[name], want[name])
        assert len(got.casts) == (dtype != "float32"), got.casts


def _identity(dtype: int, shape: list[int | str]) -> bytes:
    graph = helper.make_graph([helper.make_node("Identity", ["v"], ["w"])], "id",
                              [helper.make_tensor_value_info("v", dtype, shape)],
                              [helper.make_tensor_value_info("w", dtype, shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


TARGETS = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "int64": TensorProto.INT64,
           "int32": TensorProto.INT32, "uint8": TensorProto.UINT8, "bool": TensorProto.BOOL}
NUMBERS = st.one_of(st.integers(-2**64, 2**64), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, 1, -1, 0.5, 255, 256, 2**31, 2**63, 2**63 - 1, 2**64 - 1, 1e300, 65520.0]))


def _fits(value: float | int, target: np.dtype) -> bool:
    """The rule --cast promises, in Python numbers: to a float, anything that stays finite (or was not);
    to an integer or bool, only a value it holds exactly."""
    if target.kind == "f":
        with np.errstate(over="ignore"):
            return not (np.isfinite(value) and np.isinf(np.asarray(value, np.float64).astype(target)))
    if isinstance(value, float) and (not np.isfinite(value) or value != int(value)):
        return False
    low, high = (0, 1) if target.kind == "b" else (int(np.iinfo(target).min), int(np.iinfo(target).max))
    return low <= int(value) <= high


@SETTINGS
@given(target=st.sampled_from(sorted(TARGETS)), values=st.lists(NUMBERS, min_size=1, max_size=4),
       source=st.sampled_from(["float64", "float32", "int64", "int32", "int8", "uint64", "bool"]))
def test_cast_converts_only_what_the_model_dtype_holds(target: str, values: list, source: str):
    """--cast between every pair of widths: the values come through as numpy's astype gives them, or, where one
    does not fit (beyond an integer type's range, not an integer, an overflow to inf), the input is refused."""
    with np.errstate(all="ignore"):
        try:
            array = np.array(values, dtype=source)
        except (OverflowError, ValueError):
            return
        if source != "bool" and np.dtype(source).kind in "iu" and array.tolist() != values:
            return  # numpy wrapped a Python integer: not an array a file can hold
    if source == "bool":
        array = np.array([bool(v) if not isinstance(v, float) or np.isfinite(v) else True for v in values])
    model = _identity(TARGETS[target], [len(array)])
    wanted = np.dtype(target)
    numbers = [float(v) if array.dtype.kind == "f" else int(v) for v in array.tolist()]
    if source == target:
        rt.prepare_inputs(model, {"v": array})
        return
    if all(_fits(v, wanted) for v in numbers):
        feed, casts = rt.prepare_inputs(model, {"v": array}, cast=True)
        with np.errstate(all="ignore"):
            np.testing.assert_array_equal(feed["v"], array.astype(wanted))
        assert feed["v"].dtype == wanted and len(casts) == 1 and f"cast from {source} to {target}" in casts[0]
    else:
        with pytest.raises(rt.InputMismatch, match=rf"cannot cast {source} to {target}"):
            rt.prepare_inputs(model, {"v": array}, cast=True)


def test_cast_say_exactly_or_rounded():
    model = _identity(TensorProto.FLOAT, [2])
    _, casts = rt.prepare_inputs(model, {"v": np.array([0.5, 2.0])}, cast=True)
    assert casts == ["input `v`: cast from float64 to float32 (exactly)"]
    _, casts = rt.prepare_inputs(model, {"v": np.array([0.1, 2.0])}, cast=True)
    assert casts == ["input `v`: cast from float64 to float32 (rounded to the nearest value)"]
    _, casts = rt.prepare_inputs(model, {"v": np.array([2**24 + 1, 3])}, cast=True)
    assert casts == ["input `v`: cast from int64 to float32 (rounded to the nearest value)"]


@SETTINGS
@given(lengths=st.lists(st.integers(-2, 7), min_size=1, max_size=4), t=st.integers(1, 5))
def test_lengths_outside_1_to_T_are_refused_as_train_refuses_them(models: dict[str, Path], lengths: list[int], t: int):
    """`run` applies train's rule (seqdsl.compilers.sequence_lengths): refused exactly when train's data check refuses the
    same arrays (E0705); in range, the numbers onnxruntime gives directly."""
    from seqdsl.compilers.training.data import Target, check

    from seqdsl.errors import SpecError

    x = np.random.default_rng(len(lengths) * 10 + t).uniform(-1, 1, (len(lengths), t, D)).astype(np.float32)
    lens = np.array(lengths, dtype=np.int64)
    model = _with_lengths("rnn.yaml")
    target = Target("target", "y", "mse", ("B", "T", 4), None)
    try:
        check(model, {"x": x, "lens": lens, "target": np.zeros((len(lengths), t, 4), np.float32)}, "d.npz", target)
        train_refuses = False
    except SpecError as exc:
        assert exc.code == "E0705", exc
        train_refuses = True
    bad = [i for i, n in enumerate(lengths) if not 1 <= n <= t]
    assert train_refuses == bool(bad)
    if bad:
        with pytest.raises(rt.InputMismatch, match=rf"`lens`\[{bad[0]}\] = {lengths[bad[0]]}: a length lies in "
                                                   rf"\[1, {t}\] \(axis 1 of `x`\); {len(bad)} length"):
            rt.run(models["lengths"], {"x": x, "lens": lens}, "cpu")
        return
    got = rt.run(models["lengths"], {"x": x, "lens": lens}, "cpu").outputs
    for name, value in _direct(models["lengths"], {"x": x, "lens": lens}).items():
        np.testing.assert_array_equal(got[name], value)


def test_the_lengths_metadata_names_the_input_and_axis(models: dict[str, Path]):
    meta = rt._model_info(models["lengths"])[1]
    assert sequence_lengths.from_metadata(meta) == {"lens": ("x", 1)}
    assert sequence_lengths.METADATA_KEY not in rt._model_info(models["scan"])[1]  # no lengths: nothing recorded


KILLERS = textwrap.dedent("""
    import sys, numpy as np
    from seqdsl.compilers import onnx_runtime as rt
    for model in sys.argv[1:]:
        for shape in [(0, 4, 3), (2, 0, 3), (0, 0, 3)]:
            try:
                rt.run(model, {"x": np.zeros(shape, np.float32)}, "cpu")
            except rt.InputMismatch as exc:
                print("refused:", exc)
    """)


def test_an_empty_batch_or_time_axis_cannot_kill_a_python_caller(models: dict[str, Path]):
    """Before: SIGFPE (Scan) and SIGABRT (the native LSTM) inside onnxruntime. In a subprocess, so that a regression
    fails this test instead of killing pytest."""
    done = subprocess.run([sys.executable, "-c", KILLERS, str(models["scan"]), str(models["lstm"])],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr)
    lines = done.stdout.splitlines()
    assert len(lines) == 6 and all(line.startswith("refused: input `x`: axis ") and "is empty" in line
                                   for line in lines), lines


def test_the_command_refuses_an_empty_axis_and_casts_with_a_warning(models: dict[str, Path], tmp_path: Path):
    from typer.testing import CliRunner

    from seqdsl import cli

    np.save(tmp_path / "empty.npy", np.zeros((0, 4, D), np.float32))
    np.save(tmp_path / "x64.npy", np.ones((2, 4, D)))
    np.save(tmp_path / "big.npy", np.ones((2, 4, D), ">f4"))
    args = ["run", str(models["lstm"]), "--provider", "cpu", "--input"]
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args, f"x={tmp_path}/empty.npy"], capture_output=True,
                       text=True, timeout=120)  # as a process: a regression would kill it
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stderr)
    assert r.stderr.strip().splitlines() == [f"error: {models['lstm']}: input `x`: axis 0 is empty in a float32 array "
                                             f"of shape (0, 4, 3) (x [B, T, 3] float32); every axis needs at least "
                                             "one element"]
    r = CliRunner().invoke(cli.app, [*args, f"x={tmp_path}/x64.npy"])
    assert r.exit_code == 2 and r.stderr.rstrip().endswith("--cast (cast=True) converts it"), r.output
    r = CliRunner().invoke(cli.app, [*args, f"x={tmp_path}/x64.npy", "--cast"])
    assert r.exit_code == 0, r.output
    assert r.stderr.splitlines() == ["warning: --cast: input `x`: cast from float64 to float32 (exactly)"]
    r2 = CliRunner().invoke(cli.app, [*args, f"x={tmp_path}/big.npy"])
    assert r2.exit_code == 0 and r2.stderr == "" and r2.stdout == r.stdout  # big-endian: the same numbers


# ----------------------------------------------------------------------------- --output-dir names

def _old_name(name: str) -> str:
    import re

    return (re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "output") + ".npy"


NAMES = st.text(st.sampled_from("yYé è./\\~_-.0\x00\u202e"), min_size=1, max_size=6)


@SETTINGS
@given(names=st.lists(NAMES, min_size=1, max_size=6, unique=True))
def test_output_files_are_one_per_output(names: list[str]):
    """The mapping is injective, even under case folding, and never leaves the folder; plain names stay as they are."""
    from seqdsl.cli import _output_files

    files = _output_files(names)
    assert len({f.casefold() for f in files.values()}) == len(names)
    for name, file in files.items():
        assert "/" not in file and "\\" not in file and "\x00" not in file and not file.startswith(".")
        assert file.endswith(".npy") and len(file.encode()) <= 255
        if file == f"{name}.npy":
            assert "~" not in name


@SETTINGS
@given(stem=st.text(st.sampled_from("ab_"), max_size=3), pair=st.sampled_from([("é", "è"), ("/", "\\"), (" ", "\t"),
                                                                               ("ü", "_"), ("\n", "\r")]))
def test_names_that_collided_under_the_old_mapping_are_kept_apart(stem: str, pair: tuple[str, str]):
    from seqdsl.cli import _output_files

    a, b = f"y{stem}{pair[0]}", f"y{stem}{pair[1]}"
    assert _old_name(a) == _old_name(b)
    files = _output_files([a, b])
    assert files[a] != files[b]


def test_two_outputs_that_map_alike_are_both_written(tmp_path: Path):
    """`yé` and `yè` (and `Y`/`y`, `..`, a slash) in one model: every output in its own file, with its own values."""
    names = ["yé", "yè", "Y", "y", "..", "a/b", "a_b"]
    nodes = [helper.make_node("Mul", ["x", f"k{i}"], [n]) for i, n in enumerate(names)]
    consts = [helper.make_tensor(f"k{i}", TensorProto.FLOAT, [1], [float(i + 1)]) for i in range(len(names))]
    graph = helper.make_graph(nodes, "many", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in names], consts)
    model = tmp_path / "many.onnx"
    model.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                        ir_version=8).SerializeToString())
    np.save(tmp_path / "x.npy", np.array([1.0, 2.0], np.float32))
    from typer.testing import CliRunner

    from seqdsl import cli
    from seqdsl.cli import _output_files

    r = CliRunner().invoke(cli.app, ["run", str(model), "-i", f"x={tmp_path}/x.npy", "--provider", "cpu",
                                     "--output-dir", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output

    files = _output_files(names)
    assert sorted(os.listdir(tmp_path / "out")) == sorted([*files.values(), "run.json"])
    for i, name in enumerate(names):
        np.testing.assert_array_equal(np.load(tmp_path / "out" / files[name]), np.array([1.0, 2.0]) * (i + 1))
    assert files["a_b"] == "a_b.npy" and files["Y"] != "Y.npy"  # Y and y: one file on macOS, so both digested


@SETTINGS
@given(kind=st.sampled_from(["scan", "lstm"]), bad=st.lists(st.sampled_from([np.nan, np.inf, -np.inf]), min_size=0,
                                                           max_size=4), seed=st.integers(0, 2**16))
def test_inputs_that_are_not_finite_are_said_once_each(models: dict[str, Path], kind: str, bad: list, seed: int):
    """onnxruntime's native LSTM turns NaN inputs into finite states: `run` says so rather than pass it off."""
    x = np.random.default_rng(seed).standard_normal((2, 3, D)).astype(np.float32)
    x.reshape(-1)[: len(bad)] = bad
    result = rt.run(models[kind], {"x": x})
    assert len(result.warnings) == (1 if bad else 0)
    if bad:
        assert f"holds {len(bad)} of {x.size} values" in result.warnings[0]
