"""`seqdsl build -o DIR` owns only what it writes: it publishes into a new, empty or earlier build's directory and
refuses anything else (exit 2, one line) without touching it; whatever kills a build, DIR is the old build or the
new one, and what a killed build leaves beside DIR is removed by the next one (`seqdsl.compilers.publish`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file
from typer.testing import CliRunner

from conftest import ROOT, SPECS

from seqdsl import cli
from seqdsl.compilers import publish as pub
import seqdsl
from seqdsl.compilers.build import build, example_inputs
from seqdsl.compilers.onnx_runtime import run

EXAMPLES = 400 if os.environ.get("SEQDSL_LONG_TESTS") else 60
BUILT = ["build.json", "model.onnx", "model.py", "weights.safetensors"]


def snapshot(root: Path) -> dict[str, object]:
    """Every path under ``root``: a file's bytes, a link's target, or "dir"."""
    out: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = ("link", os.readlink(path)) if path.is_symlink() else "dir" if path.is_dir() else path.read_bytes()
    return out


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


DEAD_PID = dead_pid()


# ----------------------------------------------------------------------------- the directory states, end to end

def _earlier_build(tmp: Path, name: str = "out") -> Path:
    return Path(build(SPECS / "rnn.yaml", tmp / name, sizes={"h": 3}, steps=2, batch=1).out_dir)


def _with_spec(tmp: Path) -> Path:
    """The folder the spec is in (the test puts it there): ``proj/src`` beside ``proj/notes.txt``."""
    (tmp / "proj" / "src").mkdir(parents=True)
    (tmp / "proj" / "notes.txt").write_text("mine\n")
    return tmp / "proj" / "src"


ACCEPTED = {  # id: makes the state under tmp, returns the -o argument
    "new": lambda tmp: tmp / "out",
    "new-nested": lambda tmp: tmp / "a" / "b" / "out",
    "empty": lambda tmp: (tmp / "out").mkdir() or tmp / "out",
    "earlier-build": _earlier_build,
    "link-to-earlier-build": lambda tmp: (_earlier_build(tmp, "real"), os.symlink(tmp / "real", tmp / "out"))
    and tmp / "out",
    "link-to-empty": lambda tmp: ((tmp / "real").mkdir(), os.symlink("real", tmp / "out")) and tmp / "out",
}


def _foreign(tmp: Path) -> Path:
    (tmp / "out").mkdir()
    (tmp / "out" / "data.csv").write_text("1,2\n")
    return tmp / "out"


def _build_plus(extra: str, kind: str = "file") -> object:
    def make(tmp: Path) -> Path:
        out = _earlier_build(tmp)
        if kind == "file":
            (out / extra).write_text("mine\n")
        elif kind == "dir":
            (out / extra).mkdir()
        else:
            os.symlink(tmp / "elsewhere.txt", out / extra)
        return out
    return make


def _marker(data: object) -> object:
    def make(tmp: Path) -> Path:
        (tmp / "out").mkdir()
        (tmp / "out" / "model.py").write_text("# my own model.py\n")
        (tmp / "out" / "build.json").write_text(json.dumps(data))
        return tmp / "out"
    return make


REFUSED = {  # id: (makes the state, returns the -o argument; the start of the one-line message)
    "foreign-files": (_foreign, "holds files no seqdsl build wrote (data.csv)"),
    "spec-folder": (lambda tmp: _with_spec(tmp), "is the spec's own folder"),
    "above-the-spec": (lambda tmp: _with_spec(tmp).parent, "holds the spec"),
    "spec-file": (lambda tmp: _with_spec(tmp) / "rnn.yaml", "is the spec file itself"),
    "a-file": (lambda tmp: _with_spec(tmp).parent / "notes.txt", "exists and is not a directory"),
    "build-plus-notes": (_build_plus("notes.txt"), "holds files its build did not write (notes.txt)"),
    "build-plus-folder": (_build_plus("data", "dir"), "holds files its build did not write (data)"),
    "build-with-a-link": (_build_plus("model.onnx.data", "link"), "holds files its build did not write"),
    "no-signature": (_marker({"files": ["model.py", "build.json"]}), "holds files no seqdsl build wrote"),
    "forged-marker": (_marker({"built_by": "seqdsl", "files": ["build.json", "notes.txt"]}),
                      "holds files its build did not write (model.py)"),
    "not-json": (_marker("{"), "holds files no seqdsl build wrote"),
    "link-to-foreign": (lambda tmp: (_foreign(tmp), os.symlink("out", tmp / "link")) and tmp / "link",
                        "holds files no seqdsl build wrote (data.csv)"),
    "dangling-link": (lambda tmp: os.symlink("nowhere", tmp / "out") or tmp / "out",
                      "a symbolic link to nowhere, which does not exist"),
    "link-loop": (lambda tmp: os.symlink("out", tmp / "out") or tmp / "out", "a symbolic link loop"),
    "dot": (lambda tmp: Path("."), "is the current directory"),
    "dotdot": (lambda tmp: Path(".."), "holds the current directory"),
    "root": (lambda tmp: Path("/"), "is the filesystem root"),
    "name-too-long": (lambda tmp: tmp / ("a" * 300), "File name too long"),
    "through-a-file": (lambda tmp: _with_spec(tmp) / "rnn.yaml" / "out", "Not a directory"),
    "newline-name": (lambda tmp: (_foreign(tmp), (tmp / "out").rename(tmp / "o\nut")) and tmp / "o\nut",
                     "holds files no seqdsl build wrote"),
}


def _invoke(tmp: Path, out: Path, spec: Path) -> Any:
    return CliRunner().invoke(cli.app, ["build", str(spec), "-o", str(out), "--set", "h=4", "--seq-len", "3"])


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tree to work in, with the current directory inside it (for `-o .` and `-o ..`)."""
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    (tmp_path / "cwd" / "keep.txt").write_text("mine\n")
    return tmp_path


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_directories_are_one_line_exit_2_and_untouched(case: str, here: Path):
    make, message = REFUSED[case]
    out = make(here)
    spec = here / "proj" / "src" / "rnn.yaml"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text((SPECS / "rnn.yaml").read_text())
    before = snapshot(here)
    r = _invoke(here, out, spec)
    assert r.exit_code == 2, r.output
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: -o ") and message in r.stderr, r.stderr
    assert snapshot(here) == before  # nothing made, moved, changed or left behind


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_accepted_directories_get_the_build_and_nothing_else_changes(case: str, here: Path):
    out = ACCEPTED[case](here)
    before = snapshot(here)
    real = out.resolve()
    r = _invoke(here, out, SPECS / "rnn.yaml")
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(real)) == BUILT
    assert load_file(str(real / "weights.safetensors"))["U"].shape == (4, 4)
    assert json.loads((real / "build.json").read_text())["built_by"] == "seqdsl"
    after = snapshot(here)
    inside = str(real.relative_to(here))
    changed = {p for p in before if after.get(p) != before[p]}
    assert all(p.startswith(inside + os.sep) for p in changed), changed  # only what the earlier build wrote
    made = set(after) - set(before)
    assert all(p == inside or p.startswith(inside + os.sep) or inside.startswith(p + os.sep) for p in made), made
    if out.is_symlink():
        assert after[str(out.relative_to(here))] == before[str(out.relative_to(here))]  # the link stays


def test_the_spec_is_never_lost_with_the_default_output(here: Path):
    """No -o: build/<name> under the current directory, by the same rule (here a foreign one: refused)."""
    (here / "cwd" / "build" / "rnn").mkdir(parents=True)
    (here / "cwd" / "build" / "rnn" / "rnn.yaml").write_text((SPECS / "rnn.yaml").read_text())
    before = snapshot(here)
    r = CliRunner().invoke(cli.app, ["build", "build/rnn/rnn.yaml"])
    assert r.exit_code == 2 and "is the spec's own folder" in r.stderr, r.output
    assert snapshot(here) == before


# ----------------------------------------------------------------------------- the rule, drawn at random

NAMES = [*sorted(pub.BUILD_FILES), "notes.txt", ".hidden", "spec.yaml", "__pycache__", ".model.py.1.tmp"]
ENTRY = st.sampled_from(["file", "dir", "link"])


@st.composite
def directory_states(draw: st.DrawFn) -> dict[str, object]:
    """DIR absent, or a directory of drawn entries with maybe a marker; and drawn leftovers beside it."""
    exists = draw(st.sampled_from(["absent", "dir", "file"]))
    entries = draw(st.dictionaries(st.sampled_from(NAMES), ENTRY, max_size=6)) if exists == "dir" else {}
    marker = None
    if exists == "dir" and entries.get("build.json") == "file":
        marker = {"built_by": draw(st.sampled_from(["seqdsl", "other"])),
                  "files": draw(st.lists(st.sampled_from(NAMES), max_size=7))}
    leftovers = draw(st.lists(st.tuples(st.sampled_from(["dead", "alive", "odd-name"]),
                                        st.dictionaries(st.sampled_from(NAMES), ENTRY, max_size=3)), max_size=3))
    return {"exists": exists, "entries": entries, "marker": marker, "leftovers": leftovers}


def _make(root: Path, state: dict[str, object], dead: int) -> Path:
    root.mkdir()
    (root / "elsewhere.txt").write_text("not the build's\n")
    out = root / "out"
    if state["exists"] == "file":
        out.write_text("a file\n")
    elif state["exists"] == "dir":
        out.mkdir()
        _fill(out, state["entries"], root)  # type: ignore[arg-type]
        if state["marker"] is not None:
            (out / "build.json").write_text(json.dumps(state["marker"]))
    for i, (kind, entries) in enumerate(state["leftovers"]):  # type: ignore[arg-type]
        pid = {"dead": dead, "alive": os.getpid(), "odd-name": dead}[kind]
        name = f".out.staging-{pid}-{i:08d}" if kind != "odd-name" else f".out.staging-{pid}-x{i}"
        (root / name).mkdir()
        _fill(root / name, entries, root)
    return out


def _fill(directory: Path, entries: dict[str, str], root: Path) -> None:
    for name, kind in entries.items():
        if kind == "file":
            (directory / name).write_text(f"{name} of the user\n")
        elif kind == "dir":
            (directory / name).mkdir()
            (directory / name / "inner.txt").write_text("inner\n")
        else:
            os.symlink(root / "elsewhere.txt", directory / name)


def _may_go(state: dict[str, object], dead: int) -> tuple[bool, set[str]]:
    """The rule restated: whether DIR is publishable, and the paths a build may remove."""
    entries: dict[str, str] = state["entries"]  # type: ignore[assignment]
    marker = state["marker"]
    owned = set(marker["files"]) & pub.BUILD_FILES if isinstance(marker, dict) and marker["built_by"] == "seqdsl" \
        and "build.json" in marker["files"] else None
    if state["exists"] == "file":
        ok = False
    elif state["exists"] == "absent" or not entries:
        ok = True
    else:
        ok = owned is not None and all(kind == "file" and name in owned for name, kind in entries.items())
    removable = {f"out/{name}" for name in entries} if ok else set()
    for i, (kind, contents) in enumerate(state["leftovers"]):  # type: ignore[arg-type]
        ours = all(v == "file" and (n in pub.BUILD_FILES or n == ".model.py.1.tmp") for n, v in contents.items())
        if kind == "dead" and ours:
            removable |= {f".out.staging-{dead}-{i:08d}", *(f".out.staging-{dead}-{i:08d}/{n}" for n in contents)}
    return ok, removable


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=directory_states())
def test_a_publish_never_removes_or_changes_what_it_did_not_write(tmp_path_factory: pytest.TempPathFactory,
                                                                  state: dict[str, object]):
    dead = DEAD_PID
    root = tmp_path_factory.mktemp("state")
    out = _make(root / "t", state, dead)
    before = snapshot(root)
    ok, removable = _may_go(state, dead)
    try:
        real = pub.output_dir(out)
    except pub.OutputError as exc:
        assert not ok, f"refused a publishable directory: {exc}"
        assert "\n" not in str(exc)
        assert snapshot(root) == before
        return
    assert ok, "accepted a directory holding what a build did not write"
    staging = pub.make_staging(real)
    new = {name: f"new {name}\n".encode() for name in BUILT}
    for name, data in new.items():
        (staging / name).write_bytes(data)
    (staging / "build.json").write_text(json.dumps({"built_by": "seqdsl", "files": BUILT}))
    assert pub.publish(staging, real) == []
    after = snapshot(root)
    for path, value in before.items():
        if path.startswith("t/"):
            path = path[2:]
            if after.get(f"t/{path}") != value:
                assert path in removable, f"{path} was removed or changed"
    assert sorted(os.listdir(out)) == BUILT
    beside = {p.name for p in out.parent.iterdir()} - {"out", "elsewhere.txt"}
    kept = {p for p in (b.removeprefix("t/") for b in before) if "/" not in p and p.startswith(".out.")}
    assert beside == kept - removable  # the killed builds' leftovers went, nothing else did


# ----------------------------------------------------------------------------- concurrency and signals

def _fake_build(root: Path, real: Path, tag: str) -> None:
    staging = pub.make_staging(real)
    for name in BUILT[1:]:
        (staging / name).write_text(f"{tag}\n")
    (staging / "build.json").write_text(json.dumps({"built_by": "seqdsl", "files": BUILT, "tag": tag}))
    pub.publish(staging, real)


def test_concurrent_publishes_end_with_one_whole_build(tmp_path: Path):
    real = tmp_path / "out"
    for round_ in range(15):
        errors: list[BaseException] = []

        def one(tag: str) -> None:
            try:
                _fake_build(tmp_path, real, tag)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(f"{round_}-{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sorted(os.listdir(real)) == BUILT
        tag = json.loads((real / "build.json").read_text())["tag"]
        assert all((real / n).read_text() == f"{tag}\n" for n in BUILT[1:])  # every file from the same build
        assert sorted(os.listdir(tmp_path)) == ["out"]  # no staging left


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)


def test_two_builds_into_one_directory_end_consistent(tmp_path: Path):
    out = tmp_path / "out"
    runs = [_cli("build", str(SPECS / "rnn.yaml"), "-o", str(out), "--set", f"h={h}", "--json") for h in (3, 5)]
    for p in runs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
    assert sorted(os.listdir(tmp_path)) == ["out"] and sorted(os.listdir(out)) == BUILT
    summary = json.loads((out / "build.json").read_text())
    h = summary["sizes"]["h"]
    assert summary["param_count"] == h * 16 + h * h + h
    assert load_file(str(out / "weights.safetensors"))["U"].shape == (h, h)
    got = run(out / "model.onnx", example_inputs(seqdsl.load(SPECS / "rnn.yaml"), 2, 3), "cpu").outputs
    assert got["y"].shape == (2, 3, h)  # the ONNX file is the same build's


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_a_killed_build_leaves_the_previous_output_and_the_next_build_cleans_up(tmp_path: Path, sig: int):
    out = tmp_path / "out"
    build(SPECS / "rnn.yaml", out, steps=2)
    before = snapshot(out)
    p = _cli("build", str(SPECS / "lstm.yaml"), "-o", str(out), "--set", "h=64", "--seq-len", "3000")
    deadline = time.monotonic() + 120
    while not any(n.startswith(".out.staging-") for n in os.listdir(tmp_path)):  # it is writing
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.01)
    p.send_signal(sig)
    _, stderr = p.communicate(timeout=120)
    assert snapshot(out) == before
    if sig == signal.SIGINT:
        assert p.returncode == 130 and "interrupted: nothing was published" in stderr
        assert "Traceback" not in stderr
        assert sorted(os.listdir(tmp_path)) == ["out"]
    else:
        assert p.returncode == -signal.SIGKILL
        left = [n for n in os.listdir(tmp_path) if n != "out"]
        assert left and all(n.startswith(f".out.staging-{p.pid}-") for n in left)
        build(SPECS / "rnn.yaml", out, steps=2, sizes={"h": 4})
        assert sorted(os.listdir(tmp_path)) == ["out"]  # the killed build's staging is gone


def test_leftovers_of_live_processes_and_of_other_directories_are_kept(tmp_path: Path):
    alive = tmp_path / f".out.staging-{os.getpid()}-abcdefgh"
    other = tmp_path / f".other.staging-{DEAD_PID}-abcdefgh"
    mine = tmp_path / f".out.staging-{DEAD_PID}-abcdefgh"
    for d in (alive, other, mine):
        d.mkdir()
        (d / "model.py").write_text("x\n")
    assert pub.remove_leftovers(tmp_path / "out") == [mine]
    assert alive.exists() and other.exists() and not mine.exists()
