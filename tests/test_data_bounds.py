"""Bounded work from small inputs: a data file is refused on what it *declares* before anything is loaded, and
`seqdsl data`'s options and -o targets are each one line naming the option, exit 2, before any work.

Drawn ``.npz`` files (huge declared shapes over tiny or absent data, stored or deflated; a zip directory that lies
about a member's size; many members; broken headers; object, string and structured dtypes; truncated archives;
members that are not arrays) are read by `seqdsl.datafiles` in a fresh interpreter under an address-space limit,
which reports each file's outcome, the CPU time of the read and the peak resident memory. Every one ends in one
`DataFileError` line or in the arrays numpy itself reads from the file, within 1 s of CPU and 200 MB."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import ROOT

from seqdsl import datafiles, tasks

LONG = bool(os.environ.get("SEQDSL_LONG_TESTS"))
CPU_SECONDS = 1.0
PEAK_MB = 200
CHILD_CAP = 8 << 20  # the --max-data of the child: 8 MiB, so that a real zip bomb stays cheap to make here

_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # a runaway fails, not the machine
    sys.path.insert(0, sys.argv[1])
    from seqdsl import datafiles
    for path in json.loads(sys.argv[2]):
        start = time.process_time()
        try:
            read = datafiles.read_npz if path.endswith(".npz") else datafiles.read_npy
            got = read(path, int(sys.argv[3]))
            arrays = got if isinstance(got, dict) else {"": got}
            result = {"ok": {k: [list(v.shape), v.dtype.str, v.tobytes().hex()[:64]] for k, v in arrays.items()}}
        except datafiles.DataFileError as e:
            result = {"error": e.line()}
        except BaseException as e:
            result = {"crash": f"{type(e).__name__}: {e}"}
        result["cpu"] = time.process_time() - start
        # the peak so far (VmHWM: ru_maxrss would carry the parent's peak across fork and exec)
        with open("/proc/self/status") as status:
            result["rss_mb"] = next(int(l.split()[1]) for l in status if l.startswith("VmHWM")) / 1024
        print(json.dumps({path: result}), flush=True)
""")


def read_all(paths: list[Path], cap: int = CHILD_CAP) -> dict[str, dict]:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(ROOT), json.dumps([str(p) for p in paths]), str(cap)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results: dict[str, dict] = {}
    for line in proc.stdout.strip().splitlines():
        results.update(json.loads(line))
    return results


# ------------------------------------------------------------------------------------------- hostile files

def npy(header: str | dict, data: bytes = b"", version: int = 1) -> bytes:
    """An .npy stream with ``header`` (a dict, or the raw header text) and ``data`` after it."""
    text = header if isinstance(header, str) else repr(header)
    body = text.encode("latin1") + b" "
    pad = (-(len(body) + 10 + 1)) % 64
    body = body + b" " * pad + b"\n"
    length = struct.pack("<H", len(body)) if version == 1 else struct.pack("<I", len(body))
    return b"\x93NUMPY" + bytes([version, 0]) + length + body + data


def zipped(members: list[tuple[str, bytes]], deflate: bool) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


def lie_about_size(archive: bytes, size: int) -> bytes:
    """``archive`` with its first member's uncompressed size in the central directory (and local header) set to
    ``size``: what a hand-made zip may say."""
    out = bytearray(archive)
    central = out.find(b"PK\x01\x02")
    out[central + 24:central + 28] = struct.pack("<I", size)
    out[22:26] = struct.pack("<I", size)
    return bytes(out)


class Blob(bytes):
    """A drawn file's bytes, shown by their length in hypothesis' reports (a zip bomb is megabytes)."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes: {bytes(self[:40])!r}...>"


DTYPES = st.sampled_from(["<f4", "<f8", "<i8", "|u1", "|b1", ">i4", "<u2", "<f2"])
HUGE = st.integers(2**20, 2**62)


def hostile() -> st.SearchStrategy[tuple[str, bytes, bool]]:
    """(kind, file bytes, True: numpy's own reading of it is the answer; False: an error; None: either)."""
    return _hostile().map(lambda case: (case[0], Blob(case[1]), case[2]))


@st.composite
def _hostile(draw: st.DrawFn) -> tuple[str, bytes, bool]:
    kind = draw(st.sampled_from(["huge-shape", "zip-bomb", "lying-directory", "many-members", "bad-header",
                                 "bad-version", "object", "text-dtype", "structured", "truncated", "not-an-array",
                                 "control-name", "negative-shape", "valid", "valid-fortran", "npy-huge",
                                 "npy-valid", "npy-object", "not-a-zip"]))
    deflate = draw(st.booleans())
    dtype = draw(DTYPES)
    if kind == "huge-shape":  # a header declaring terabytes over a few bytes of data
        shape = tuple(draw(st.lists(HUGE, min_size=1, max_size=3)))
        members = [("x.npy", npy({"descr": dtype, "fortran_order": False, "shape": shape}, b"\0" * draw(
            st.integers(0, 64))))]
        return kind, zipped(members, deflate), False
    if kind == "zip-bomb":  # real zeros, deflated to almost nothing, declaring more than the cap
        n = draw(st.integers(CHILD_CAP + 1, 2 * CHILD_CAP))
        return kind, zipped([("x.npy", npy({"descr": "|u1", "fortran_order": False, "shape": (n,)}, bytes(n)))],
                            True), False
    if kind == "lying-directory":
        members = [("x.npy", npy({"descr": "<f4", "fortran_order": False, "shape": (4,)}, bytes(16)))]
        return kind, lie_about_size(zipped(members, deflate), draw(st.integers(0, 2**32 - 1))), None
    if kind == "many-members":
        count = draw(st.integers(datafiles.MAX_MEMBERS + 1, datafiles.MAX_MEMBERS + 300))
        arr = npy({"descr": "<f4", "fortran_order": False, "shape": (1,)}, bytes(4))
        return kind, zipped([(f"a{i}.npy", arr) for i in range(count)], deflate), False
    if kind == "bad-header":
        text = draw(st.one_of(st.text(max_size=200), st.sampled_from([
            "{'descr': '<f4', 'shape': (3,)}", "{'descr': '<f4', 'fortran_order': False, 'shape': 3}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1.5,)}", "(" * 150 + ")" * 150,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': __import__('os')}",
            "{'descr': 'nope', 'fortran_order': False, 'shape': (2,)}"])))
        cut = draw(st.integers(0, 12))
        raw = npy(text.encode("utf-8", "replace").decode("latin1"), bytes(8))
        return kind, zipped([("x.npy", raw[:-cut] if cut else raw)], deflate), False
    if kind == "bad-version":
        raw = bytearray(npy({"descr": "<f4", "fortran_order": False, "shape": (2,)}, bytes(8)))
        raw[6:8] = bytes([draw(st.sampled_from([0, 3, 4, 255])), draw(st.integers(0, 255))])
        return kind, zipped([("x.npy", bytes(raw))], deflate), False
    if kind == "object":
        buf = io.BytesIO()
        np.save(buf, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
        return kind, zipped([("x.npy", buf.getvalue())], deflate), False
    if kind == "text-dtype":
        buf = io.BytesIO()
        np.save(buf, np.array(draw(st.lists(st.text(max_size=5), min_size=1, max_size=4))))
        return kind, zipped([("x.npy", buf.getvalue())], deflate), False
    if kind == "structured":
        buf = io.BytesIO()
        np.save(buf, np.zeros(3, dtype=[("a", "<f4"), ("b", "<i8")]))
        return kind, zipped([("x.npy", buf.getvalue())], deflate), False
    if kind == "truncated":
        buf = io.BytesIO()
        np.savez_compressed(buf, x=np.arange(200, dtype=np.float32), target=np.ones(200)) if deflate else \
            np.savez(buf, x=np.arange(200, dtype=np.float32), target=np.ones(200))
        raw = buf.getvalue()
        return kind, raw[:draw(st.integers(0, len(raw) - 1))], False
    if kind == "not-an-array":
        return kind, zipped([("notes.txt", b"hello"), ("x.npy", npy({"descr": "<f4", "fortran_order": False,
                                                                     "shape": (1,)}, bytes(4)))], deflate), False
    if kind == "control-name":
        name = draw(st.sampled_from(["x\x1b[2J", "a\nb", "\x07", "t\u202e"])) + ".npy"
        return kind, zipped([(name, npy({"descr": "<f4", "fortran_order": False, "shape": (1,)}, bytes(4)))],
                            deflate), False
    if kind == "negative-shape":
        return kind, zipped([("x.npy", npy({"descr": "<f4", "fortran_order": False, "shape": (-draw(HUGE), 4)}))],
                            deflate), False
    if kind in ("valid", "valid-fortran"):
        shape = tuple(draw(st.lists(st.integers(0, 7), min_size=0, max_size=3)))
        values = (np.arange(int(np.prod(shape))) % 2).astype(np.dtype(dtype)).reshape(shape)
        if kind == "valid-fortran":
            values = np.asfortranarray(values)
        buf = io.BytesIO()
        (np.savez_compressed if deflate else np.savez)(buf, x=values, target=values.reshape(-1)[:1])
        return kind, buf.getvalue(), True
    if kind == "npy-huge":
        return kind, npy({"descr": dtype, "fortran_order": False, "shape": (draw(HUGE),)}, bytes(8)), False
    if kind == "npy-object":
        buf = io.BytesIO()
        np.save(buf, np.array([None, 1], dtype=object), allow_pickle=True)
        return kind, buf.getvalue(), False
    if kind == "npy-valid":
        buf = io.BytesIO()
        np.save(buf, (np.arange(draw(st.integers(0, 50))) % 2).astype(np.dtype(dtype)).reshape(-1, 1))
        return kind, buf.getvalue(), True
    return kind, draw(st.binary(max_size=300)), False  # not-a-zip


def _numpy_reads(path: Path) -> dict:
    """What numpy itself reads from ``path`` (the reference a checked read must agree with)."""
    if path.suffix == ".npy":
        arrays = {"": np.load(path, allow_pickle=False)}
    else:
        with np.load(path, allow_pickle=False) as got:
            arrays = {k: got[k] for k in got.files}
    return {k: [list(v.shape), v.dtype.str, v.tobytes().hex()[:64]] for k, v in arrays.items()}


@settings(max_examples=8 if LONG else 2, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                                  HealthCheck.data_too_large])
@given(cases=st.lists(hostile(), min_size=25, max_size=25))
def test_drawn_data_files_are_refused_on_what_they_declare_in_bounded_time_and_memory(cases, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    paths = []
    for i, (kind, raw, _) in enumerate(cases):
        path = folder / f"{i}-{kind}.{'npy' if kind.startswith('npy') else 'npz'}"
        path.write_bytes(raw)
        paths.append(path)
    results = read_all(paths)
    for path, (kind, _, valid) in zip(paths, cases):
        result = results[str(path)]
        assert "crash" not in result, (kind, result)
        assert result["cpu"] < CPU_SECONDS and result["rss_mb"] < PEAK_MB, (kind, result)
        if valid is None and "ok" in result:  # a harmless lie (numpy reads only what the header declares)
            valid = True
        if valid:
            assert result.get("ok") == _numpy_reads(path), (kind, result)
        else:
            assert "error" in result, (kind, result)
            message = result["error"]
            assert "\n" not in message and message.isprintable(), (kind, message)


def test_the_default_cap_refuses_a_small_file_that_declares_terabytes(tmp_path: Path):
    """At the default --max-data (4 GiB, the build's --max-memory): 8 TiB declared over no data, in a zip of a few
    hundred bytes, whose directory may say anything (a real zip of zeros is the drawn `zip-bomb` above)."""
    files = []
    for size in (0, 2**32 - 1):
        files.append(tmp_path / f"tiny{size}.npz")
        raw = zipped([("x.npy", npy({"descr": "<f8", "fortran_order": False, "shape": (2**30, 2**10)}))], True)
        files[-1].write_bytes(lie_about_size(raw, size) if size else raw)
    results = read_all(files, cap=datafiles.MAX_DATA_BYTES)
    for path in files:
        result = results[str(path)]
        assert "8 TiB" in result["error"] and "above --max-data 4 GiB" in result["error"], result
        assert result["cpu"] < CPU_SECONDS and result["rss_mb"] < PEAK_MB, result


# --------------------------------------------------------------------------------- the command line's reads

def test_train_refuses_a_declared_bomb_with_one_error_naming_the_file(tmp_path: Path):
    from typer.testing import CliRunner

    from seqdsl import cli

    def train(*args: str):
        return CliRunner().invoke(cli.app, ["train", str(ROOT / "specs/adding_lstm.yaml"), *args, "--no-build"])

    bomb = tmp_path / "bomb.npz"
    bomb.write_bytes(zipped([("x.npy", npy({"descr": "<f4", "fortran_order": False, "shape": (2**31, 2, 2)}))],
                            True))
    r = train("--data", str(bomb))
    assert r.exit_code == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"{bomb}: error[E0701]: --data {bomb}: declares 32 GiB"), r.stderr
    good = tmp_path / "adding.npz"
    tasks.save(tasks.adding(64, 6), str(good))
    r = train("--data", str(good), "--max-data", "1K")
    assert r.exit_code == 2 and "above --max-data 1 KiB" in r.stderr, r.stderr
    r = train("--data", str(good), "--val", str(bomb))
    assert r.exit_code == 2 and r.stderr.startswith(f"{bomb}: error[E0701]: --val {bomb}: declares"), r.stderr
    r = train("--data", str(good), "--max-data", "lots")
    assert r.exit_code == 2 and r.stderr.startswith("error: --max-data expects a size in bytes"), r.stderr


def test_run_refuses_an_input_over_its_cap_or_shorter_than_declared(tmp_path: Path):
    from typer.testing import CliRunner

    from seqdsl import cli

    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 5, 16), dtype=np.float32))
    bomb = tmp_path / "bomb.npy"
    bomb.write_bytes(npy({"descr": "<f4", "fortran_order": False, "shape": (2**40,)}, bytes(16)))
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    for path, cap, expected in [(bomb, "4G", "above --max-data 4 GiB"), (bomb, "8T", "is truncated"),
                                (x, "100", "above --max-data 100 B")]:
        r = CliRunner().invoke(cli.app, ["run", str(model), "--input", f"x={path}", "--max-data", cap])
        assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stderr.startswith(f"error: --input x={path}: not a readable .npy array") and expected in r.stderr


# ------------------------------------------------------------------------------ `seqdsl data`'s options

NOT_INTEGERS = st.sampled_from(["1.5", "1e3", "abc", "", " ", "１２", "1_000", "0x10", "--", "nan", "inf", "½",
                                "10" * 60, "+-3", "1\x1b[2J"])
BAD_INTEGERS = st.one_of(st.integers(max_value=0).map(str), NOT_INTEGERS)  # sizes are positive
BAD_SEEDS = st.one_of(st.integers(max_value=-1).map(str), st.integers(2**64, 10**40).map(str), NOT_INTEGERS)
HUGE_INTEGERS = st.integers(10**12, 10**99).map(str)


@st.composite
def bad_data_options(draw: st.DrawFn) -> tuple[list[str], str]:
    """(arguments after `data`, the option the one error line must name)."""
    task = draw(st.sampled_from(["adding", "copy", "brackets"]))
    base = {"--length": "8", "-n": "4"}
    option = draw(st.sampled_from(["--length", "-n", "--seed", "--min-length", "--max-data", "huge"]))
    if option == "huge":  # valid integers whose data would not fit: the size check names both options
        key = draw(st.sampled_from(["--length", "-n"]))
        base[key] = draw(HUGE_INTEGERS)
        named = "--max-data"
    elif option == "--seed":
        base[option] = draw(BAD_SEEDS)
        named = option
    elif option == "--max-data":
        base[option] = draw(st.one_of(st.sampled_from(["0", "-1", "1X", "", "4 G B", "1.5G"]), st.text(max_size=5)
                                      .filter(lambda s: not s.strip().isdigit())))
        named = option
    else:
        base[option] = draw(BAD_INTEGERS)
        named = "--examples" if option == "-n" else option
    args = [task]
    for key, value in base.items():
        args += [key, value]
    return args, named


def _invoke(args: list[str]):
    from typer.testing import CliRunner

    from seqdsl import cli

    return CliRunner().invoke(cli.app, ["data", *args])


@settings(max_examples=150 if LONG else 40, deadline=None)
@given(case=bad_data_options())
def test_each_bad_option_value_is_one_line_naming_it_before_any_work(case, tmp_path_factory):
    args, named = case
    folder = tmp_path_factory.mktemp("opts")
    r = _invoke([*args, "-o", str(folder / "d.npz")])
    assert r.exit_code == 2, (args, r.output)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and named in lines[0], (args, r.stderr)
    assert lines[0].isprintable() and "Traceback" not in r.stderr
    assert list(folder.iterdir()) == []


def test_the_output_size_is_what_the_generators_make():
    for task in tasks.TASKS:
        for n, length, min_length in [(3, 8, None), (5, 12, 6), (1, 4, 4)]:
            if task == "copy" and min_length not in (None, length):
                continue
            arrays = tasks.generate(task, n, length, min_length=min_length)
            assert tasks.output_bytes(task, n, length, min_length) == sum(a.nbytes for a in arrays.values())


TARGETS = st.sampled_from(["folder", "under-a-file", "unwritable", "users-file", "users-file-force", "symlink",
                           "suffix", "users-json", "seqdsl-file", "name-too-long", "under-a-long-name"])


@settings(max_examples=30 if LONG else 12, deadline=None)
@given(target=TARGETS, task=st.sampled_from(["adding", "text", "csv"]))
def test_each_bad_output_target_is_exit_2_naming_o_and_leaves_every_file_alone(target, task, tmp_path_factory):
    folder = tmp_path_factory.mktemp("out")
    user = folder / "mine.npz"
    np.savez(user, x=np.ones(3))  # the user's own file: never replaced, even with --force
    text = folder / "corpus.txt"
    text.write_text("abcdefghij" * 20)
    table = folder / "t.csv"
    table.write_text("v\n" + "".join(f"{i % 7}\n" for i in range(40)))
    extra = ["--force"] if target in ("users-file-force", "users-json") else []
    out = {"folder": folder, "under-a-file": user / "d.npz", "unwritable": Path("/proc/seqdsl-test/d.npz"),
           "users-file": user, "users-file-force": user, "symlink": folder / "link.npz", "suffix": folder / "d.txt",
           "users-json": folder / "d.npz", "seqdsl-file": folder / "d.npz",
           "name-too-long": folder / ("d" * 300 + ".npz"),
           "under-a-long-name": folder / ("d" * 300) / "d.npz"}[target]
    if target == "symlink":
        out.symlink_to(user)
    if target == "users-json":
        (folder / "d.vocab.json").write_text('{"mine": 1}')  # the vocabulary's place, taken by a user's file
    if target == "seqdsl-file":  # ours, but without --force
        assert _invoke(["adding", "--length", "4", "-n", "2", "-o", str(out)]).exit_code == 0
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}
    args = ["text", str(text), "--window", "4"] if task == "text" or target == "users-json" \
        else ["adding", "--length", "4", "-n", "2"]
    if task == "csv" and target != "users-json":
        args = ["csv", str(table), "--columns", "v", "--target", "v", "--window", "4", "--val", str(folder / "v.npz")]
    r = _invoke([*args, "-o", str(out), *extra])
    assert r.exit_code == 2, (target, r.output)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: -o "), (target, r.stderr)
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}
    assert after == before, target


def test_force_replaces_a_file_seqdsl_wrote_and_nothing_else(tmp_path: Path):
    out = tmp_path / "d.npz"
    assert _invoke(["adding", "--length", "4", "-n", "2", "-o", str(out)]).exit_code == 0
    assert datafiles.is_seqdsl_file(out)
    r = _invoke(["brackets", "--length", "8", "-n", "3", "-o", str(out), "--force"])
    assert r.exit_code == 0, r.output
    with np.load(out) as f:
        assert f["x"].shape == (3, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]  # no temporary file left
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("args, message", [
    (["nope", "-o", "d.npz"], "error: seqdsl data: unknown task 'nope'; one of adding, copy, brackets, text, csv"),
    (["adding", "-o", "d.npz"], "error: seqdsl data adding: --length is required"),
    (["adding", "--length", "5", "--window", "3", "-o", "d.npz"], "error: --window applies to seqdsl data text "
                                                                 "and csv, not adding"),
    (["text", "f.txt", "--horizon", "3", "-o", "d.npz"], "error: --horizon applies to seqdsl data csv, not text"),
    (["csv", "-o", "d.npz"], "error: seqdsl data csv FILE: give a table (.csv or .parquet) to read"),
    (["text", "--length", "5", "-o", "d.npz"], "error: --length applies to seqdsl data adding/copy/brackets"),
    (["text", "-o", "d.npz"], "error: seqdsl data text FILE: give a text file to read"),
    (["copy", "f.txt", "--length", "5", "-o", "d.npz"], "error: seqdsl data copy makes its data; it reads no FILE"),
])
def test_options_that_do_not_apply_are_named(args, message, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    r = _invoke(args)
    assert r.exit_code == 2 and r.stderr.startswith(message), r.stderr
    assert list(tmp_path.iterdir()) == []
