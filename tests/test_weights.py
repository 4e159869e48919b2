"""Trained weights into a build (`seqdsl build --weights`, `build(weights=...)`): the files carry the weights
given, the check runs with them, and weights that do not fit the spec are one located error listing every problem.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from conftest import ROOT, SPECS

import seqdsl
from seqdsl.compilers.build import build, example_inputs
from seqdsl.compilers.interop import load_from_torch
from seqdsl.compilers.onnx_runtime import run
from seqdsl.compilers.torch_module import import_source, to_module
from seqdsl.compilers.weights import read_weights
from seqdsl.errors import SpecError

LSTM = SPECS / "lstm.yaml"


@pytest.fixture(scope="module")
def lstm_model() -> seqdsl.Model:
    return seqdsl.load(LSTM)


@pytest.fixture(scope="module")
def trained(lstm_model: seqdsl.Model) -> tuple[torch.nn.LSTM, dict[str, torch.Tensor]]:
    """Weights we did not make: a torch.nn.LSTM's, brought into the spec's names."""
    torch.manual_seed(123)
    lstm = torch.nn.LSTM(16, 32, batch_first=True)
    net = to_module(lstm_model)
    load_from_torch(net, lstm)
    return lstm, {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_build_with_weights_ships_them_and_onnx_computes_torch_nn(tmp_path: Path, trained, lstm_model):
    lstm, state = trained
    file = tmp_path / "trained.safetensors"
    save_file(state, str(file))
    result = build(LSTM, tmp_path / "out", weights=file)
    out = Path(result.out_dir)
    shipped = load_file(str(out / "weights.safetensors"))
    assert shipped.keys() == state.keys()
    assert all(torch.equal(shipped[k], state[k]) for k in state)
    assert max(result.max_abs_diff.values()) < 1e-5
    # the ONNX file and the standalone model.py compute what torch.nn.LSTM computes with those weights
    inputs = example_inputs(lstm_model, 4, 11, seed=5)
    want_y, (want_h, want_c) = lstm(torch.from_numpy(inputs["x"]))
    got = run(out / "model.onnx", inputs).outputs
    np.testing.assert_allclose(got["y"], want_y.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(got["h_n"], want_h[0].detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(got["c_n"], want_c[0].detach().numpy(), atol=1e-5)
    standalone = import_source(out / "model.py").Model()
    standalone.load_state_dict(shipped)
    np.testing.assert_allclose(standalone(torch.from_numpy(inputs["x"]))[0].detach().numpy(),
                               want_y.detach().numpy(), atol=1e-5)


def test_a_state_dict_of_arrays_or_tensors_is_taken_as_is(tmp_path: Path, trained):
    _, state = trained
    as_arrays = {k: v.numpy().astype(np.float64) for k, v in state.items()}  # float64 is converted
    a = build(LSTM, tmp_path / "a", weights=as_arrays)
    b = build(LSTM, tmp_path / "b", weights=state)
    for out in (a, b):
        shipped = load_file(str(Path(out.out_dir) / "weights.safetensors"))
        assert all(torch.allclose(shipped[k], state[k], atol=0, rtol=1e-7) for k in state)


def test_without_weights_the_seeded_initial_weights_are_shipped(tmp_path: Path, trained):
    _, state = trained
    shipped = load_file(str(Path(build(LSTM, tmp_path / "o").out_dir) / "weights.safetensors"))
    assert not torch.equal(shipped["W_f"], state["W_f"])


# -- every way weights can fail to fit: one error, every problem listed with the declaring line ----------------

_DAMAGE = st.sampled_from(["drop", "reshape", "int", "nan", "extra", "prefix"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=st.lists(st.tuples(_DAMAGE, st.integers(0, 11)), min_size=1, max_size=5))
@example(damage=[("int", 0), ("nan", 0)])
def test_damaged_weights_are_one_error_listing_each_problem(lstm_model, trained, damage):
    _, state = trained
    weights: dict[str, torch.Tensor] = dict(state)
    names = sorted(state)
    expected: set[str] = set()
    for kind, index in damage:
        name = names[index]
        if name not in weights:
            continue
        if kind == "drop":
            del weights[name]
        elif kind == "reshape":
            weights[name] = weights[name].reshape(-1)[:-1]
        elif kind == "int":
            weights[name] = torch.zeros(weights[name].shape, dtype=torch.int32)
        elif kind == "nan":
            if not weights[name].is_floating_point():
                continue  # already damaged (an int tensor): it has no NaN
            weights[name] = weights[name].clone()
            weights[name].view(-1)[0] = float("nan")
        elif kind == "extra":
            weights[f"extra_{index}"] = torch.zeros(2)
            expected.add(f"extra_{index}")
            continue
        elif kind == "prefix":
            weights[f"module.{name}"] = weights.pop(name)
            expected.add(f"module.{name}")
        expected.add(name)
    with pytest.raises(SpecError) as info:
        read_weights(lstm_model, weights)
    err = info.value
    assert err.code == "E0603"
    listed = {note.split("`")[1] for _, note in err.notes}
    assert listed == expected
    declared = {p.name: p.loc for p in lstm_model.params.values()}
    for loc, note in err.notes:
        name = note.split("`")[1]
        if name in declared:  # a parameter's problem points at its declaration in the spec
            assert (loc.file, loc.line, loc.col) == (declared[name].file, declared[name].line, declared[name].col)
            assert loc.line > 0


def test_ddp_prefix_gets_a_hint(lstm_model, trained):
    _, state = trained
    with pytest.raises(SpecError) as info:
        read_weights(lstm_model, {f"module.{k}": v for k, v in state.items()})
    assert "`module.` prefix" in (info.value.hint or "")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupt_files_are_a_clean_error(tmp_path_factory, lstm_model, trained, data):
    _, state = trained
    good = tmp_path_factory.mktemp("w") / "good.safetensors"
    save_file(state, str(good))
    raw = bytearray(good.read_bytes())
    how = data.draw(st.sampled_from(["truncate", "flip", "random"]))
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, min(len(raw), 400) - 1))  # mostly the header
            raw[i] ^= 1 << data.draw(st.integers(0, 7))
    else:
        raw = bytearray(data.draw(st.binary(max_size=300)))
    bad = good.with_name("bad.safetensors")
    bad.write_bytes(bytes(raw))
    try:
        weights = read_weights(lstm_model, bad)
    except SpecError as err:
        assert err.code in ("E0603", "E0604")
    else:  # a flip in the data bytes that still reads: then it is a full, finite set of the right shapes
        assert weights.keys() == state.keys()


def test_a_pickle_is_never_unpickled(tmp_path: Path, lstm_model):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    file = tmp_path / "w.safetensors"
    file.write_bytes(pickle.dumps({"W_f": Payload()}))
    with pytest.raises(SpecError) as info:
        read_weights(lstm_model, file)
    assert info.value.code == "E0604" and not marker.exists()


def test_cli_weights_bad_and_good(tmp_path: Path, trained):
    _, state = trained
    bad = dict(state)
    del bad["U_c"]
    save_file(bad, str(tmp_path / "bad.safetensors"))
    save_file(state, str(tmp_path / "good.safetensors"))
    out = tmp_path / "out"

    def seqdsl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(ROOT / "cli.py"), "build", str(LSTM), "-o", str(out), *args],
                              capture_output=True, text=True, timeout=300)

    r = seqdsl("--weights", str(tmp_path / "bad.safetensors"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "error[E0603]" in r.stderr and "lstm.yaml:14:3: `U_c` [32, 32]: missing" in r.stderr
    assert not out.exists()  # nothing was published
    r = seqdsl("--weights", str(tmp_path / "nope.safetensors"))
    assert r.returncode == 2 and "error[E0604]" in r.stderr and "Traceback" not in r.stderr
    r = seqdsl("--weights", str(tmp_path / "good.safetensors"))
    assert r.returncode == 0, r.stderr
    assert torch.equal(load_file(str(out / "weights.safetensors"))["U_c"], state["U_c"])


# -- a checkpoint is bounded before torch.load (seqdsl.datafiles.check_torch_archive): zip bombs, lying sizes

_CKPT_CHILD = """
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # a runaway fails, not the machine
sys.path.insert(0, sys.argv[1])
from seqdsl.compilers.weights import checkpoint_weights
from seqdsl.errors import SpecError
def peak():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmHWM")) / 1024
for path in json.loads(sys.argv[2]):
    before, start = peak(), time.process_time()
    try:
        result = {"ok": sorted(checkpoint_weights(path, int(sys.argv[3])))}
    except SpecError as e:
        result = {"error": e.format(), "code": e.code}
    except BaseException as e:
        result = {"crash": f"{type(e).__name__}: {e}"}
    result["cpu"], result["grew_mb"] = time.process_time() - start, peak() - before
    print(json.dumps({path: result}), flush=True)
"""


def _patched_sizes(data: bytes, size: int) -> bytes:
    """The zip ``data`` with every central directory entry declaring ``size`` bytes, packed and unpacked."""
    import struct

    out, at = bytearray(data), data.find(b"PK\x01\x02")
    while at != -1:
        out[at + 20:at + 28] = struct.pack("<II", min(size, 0xFFFFFFFE), min(size, 0xFFFFFFFE))
        at = data.find(b"PK\x01\x02", at + 4)
    return bytes(out)


def _entries_patched(data: bytes, entries: int) -> bytes:
    import struct

    out, at = bytearray(data), data.rfind(b"PK\x05\x06")
    out[at + 8:at + 12] = struct.pack("<HH", entries & 0xFFFF, entries & 0xFFFF)
    return bytes(out)


@settings(max_examples=1, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.sampled_from(["real", "deflated", "bomb", "declared", "legacy", "bytes"]),
                          st.integers(0, 2**31)), min_size=12, max_size=12, unique_by=lambda t: t[0] + str(t[1])))
def test_a_checkpoint_is_bounded_before_it_is_loaded(tmp_path_factory, drawn):
    import io
    import json
    import random
    import zipfile

    cap = 8 << 20
    folder = tmp_path_factory.mktemp("ckpt")
    buffer = io.BytesIO()
    torch.save({"state_dict": {"net.W": torch.ones(4, 4), "net.b": torch.zeros(4)}}, buffer)
    real = buffer.getvalue()
    files = {}
    for i, (kind, seed) in enumerate(drawn + [("real", 0), ("bomb", 1), ("legacy", 3)]):
        rng = random.Random(seed)
        if kind in ("real", "deflated", "bomb"):
            out = io.BytesIO()
            with zipfile.ZipFile(io.BytesIO(real)) as src, zipfile.ZipFile(
                    out, "w", zipfile.ZIP_STORED if kind == "real" else zipfile.ZIP_DEFLATED) as dst:
                for info in src.infolist():
                    dst.writestr(info.filename, src.read(info))
                if kind == "bomb":  # zeros that deflate a thousandfold: a small file declaring more than the cap
                    dst.writestr(f"archive/data/{rng.randint(1, 9)}", bytes(cap + rng.randint(1, cap)))
            data = out.getvalue()
        elif kind == "declared":
            data = _patched_sizes(real, rng.randint(cap + 1, 2**32 - 2))
        elif kind == "many":
            data = _entries_patched(real, rng.randint(2**15 + 1, 2**16 - 1))
        elif kind == "legacy":
            out = io.BytesIO()
            torch.save({"state_dict": {"W": torch.ones(2)}}, out, _use_new_zipfile_serialization=False)
            data = out.getvalue()
        else:
            data = rng.randbytes(rng.randint(0, 400))
        path = folder / f"{i}_{kind}.ckpt"
        path.write_bytes(data)
        assert len(data) < 200_000
        files[str(path)] = kind
    proc = subprocess.run([sys.executable, "-c", _CKPT_CHILD, str(ROOT), json.dumps(list(files)), str(cap)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = {k: v for line in proc.stdout.strip().splitlines() for k, v in json.loads(line).items()}
    assert results.keys() == files.keys()
    for path, kind in files.items():
        got = results[path]
        assert "crash" not in got, (kind, got)
        if kind == "real":
            assert got.get("ok") == ["W", "b"], got
        else:
            assert got.get("code") == "E0604" and "Traceback" not in got["error"], (kind, got)
            assert len(got["error"].splitlines()[0]) < 300, got
        assert got["grew_mb"] < 64 and got["cpu"] < 2, (kind, got)


def test_cli_a_zip_bomb_checkpoint_is_one_error_exit_2(tmp_path: Path):
    import io
    import zipfile

    buffer = io.BytesIO()
    torch.save({"state_dict": {"net.W": torch.ones(2)}}, buffer)
    declared = tmp_path / "declared.ckpt"
    declared.write_bytes(_patched_sizes(buffer.getvalue(), 2**32 - 2))  # 4 GiB each: above the 4 GiB default
    deflated = tmp_path / "deflated.ckpt"
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src, zipfile.ZipFile(deflated, "w",
                                                                                  zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    for file, says in ((declared, "above --max-data"), (deflated, "compressed")):
        r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "build", str(LSTM), "-o", str(tmp_path / "o"),
                            "--weights", str(file)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and "error[E0604]" in r.stderr.splitlines()[0] and says in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()
