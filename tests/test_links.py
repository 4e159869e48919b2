"""seqdsl writes only what it owns, and never through a link (`seqdsl.files`): a symbolic link planted at any path
a writer writes (to a file outside, dangling, to a folder) is replaced or refused, and the bytes outside never
change. And `--triton REPO` is checked with the other pre-checks: a repository it cannot write ends the build with
exit 2 before any compile work, with no build directory made."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import SPECS

from seqdsl import cli
from seqdsl.compilers.build import UsageError, build
from seqdsl.compilers.triton import HEADER
from seqdsl import files

EXAMPLES = 200 if os.environ.get("SEQDSL_LONG_TESTS") else 25
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
KINDS = ["file", "dangling", "dir"]
SECRET = b"outside: must never change\n"


def plant(link: Path, kind: str, outside: Path) -> Path:
    """A symbolic link at ``link`` to a file outside (holding SECRET), to nowhere, or to a folder outside (holding a
    file of the link's name, so that writing through it would change it). Returns the link's target."""
    outside.mkdir(parents=True, exist_ok=True)
    if kind == "file":
        target = outside / f"target-{link.name}"
        target.write_bytes(SECRET)
    elif kind == "dangling":
        target = outside / f"missing-{link.name}"
    else:
        target = outside / f"folder-{link.name}"
        target.mkdir()
        (target / link.name).write_bytes(SECRET)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return target


def unchanged(outside: Path) -> dict[str, bytes]:
    return {str(p.relative_to(outside)): p.read_bytes() for p in sorted(outside.rglob("*")) if p.is_file()}


def assert_outside_untouched(outside: Path, before: dict[str, bytes]) -> None:
    assert unchanged(outside) == before
    assert all(v == SECRET for v in before.values())


def invoke(*args: str):
    return CliRunner().invoke(cli.app, list(args))


def one_line_exit_2(r) -> None:
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and len(r.stderr.strip().splitlines()) == 1, r.stderr


# ----------------------------------------------------------------------------- the writer itself

@SETTINGS
@given(kind=st.sampled_from(KINDS), data=st.binary(max_size=64))
def test_the_writer_replaces_a_link_and_never_writes_through_it(tmp_path_factory, kind: str, data: bytes):
    root = tmp_path_factory.mktemp("w")
    dest = root / "out" / "f.bin"
    target = plant(dest, kind, root / "outside")
    before = unchanged(root / "outside")
    files.write(dest, data)  # a link to a folder too: os.replace replaces the link, not the folder it points at
    assert not dest.is_symlink() and dest.read_bytes() == data
    assert_outside_untouched(root / "outside", before)
    assert kind == "dangling" or target.exists()
    assert sorted(os.listdir(dest.parent)) == ["f.bin"]  # no temporary left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path):
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"old")

    def broken(f) -> None:
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        files.write(dest, broken)
    assert dest.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]
    with pytest.raises(OSError):
        files.write(tmp_path / "no" / "such" / "f.bin", b"x")


# ----------------------------------------------------------------------------- run --output-dir, graph -o, data -o

@pytest.fixture(scope="module")
def rnn_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("rnn")
    built = Path(build(SPECS / "rnn.yaml", root / "b", sizes={"h": 3}, steps=2, batch=1).out_dir)
    np.save(root / "x.npy", np.ones((1, 2, 16), np.float32))
    return built / "model.onnx", root / "x.npy"


def run_into(model: Path, x: Path, out: Path, *extra: str):
    return invoke("run", str(model), "-i", f"x={x}", "--provider", "cpu", "--output-dir", str(out), *extra)


@SETTINGS
@given(kinds=st.fixed_dictionaries({name: st.sampled_from(KINDS + ["user file", "none"])
                                    for name in ["y.npy", "h_n.npy", "run.json"]}),
       earlier_run=st.booleans())
def test_run_output_dir_refuses_planted_links_and_user_files(tmp_path_factory, rnn_model: tuple[Path, Path],
                                                             kinds: dict[str, str], earlier_run: bool):
    """--output-dir is new, empty, or a folder an earlier run made (its run.json lists it all): a link at any path
    a run writes, or a user's file where no run wrote, is refused (one line, exit 2), and nothing there or outside
    changes. (A plain file at a name run.json lists counts as the run's, as in a build's folder.)"""
    model, x = rnn_model
    root = tmp_path_factory.mktemp("run")
    out = root / "out"
    if earlier_run:
        assert run_into(model, x, out).exit_code == 0
    for name, kind in kinds.items():
        if kind == "none":
            continue
        if (out / name).exists():
            (out / name).unlink()
        if kind == "user file":
            out.mkdir(exist_ok=True)
            (out / name).write_bytes(SECRET)
        else:
            plant(out / name, kind, root / "outside")
    before = unchanged(root / "outside") if (root / "outside").exists() else {}
    inside = {n: (os.readlink(out / n) if (out / n).is_symlink() else (out / n).read_bytes())
              for n in (os.listdir(out) if out.exists() else [])}
    r = run_into(model, x, out)
    links = any(kind in KINDS for kind in kinds.values())
    users = [n for n, kind in kinds.items() if kind == "user file" and (not earlier_run or n == "run.json")]
    if not links and not users:  # a new folder, or the earlier run's (its listed names replaced by plain files)
        assert r.exit_code == 0, r.output
        assert sorted(os.listdir(out)) == ["h_n.npy", "run.json", "y.npy"]
        return
    one_line_exit_2(r)
    assert r.stderr.startswith(f"error: --output-dir {out}: ") and r.stdout == "", r.output  # before the model ran
    assert {n: (os.readlink(out / n) if (out / n).is_symlink() else (out / n).read_bytes())
            for n in os.listdir(out)} == inside
    if before:
        assert_outside_untouched(root / "outside", before)


def test_run_output_dir_is_checked_before_the_model_runs(tmp_path: Path, rnn_model: tuple[Path, Path]):
    model, x = rnn_model
    (tmp_path / "od").mkdir()
    (tmp_path / "od" / "y.npy").write_bytes(b"precious")
    r = invoke("run", str(model), "-i", "nosuchinput=" + str(x), "--output-dir", str(tmp_path / "od"))
    one_line_exit_2(r)
    assert "--output-dir" in r.stderr and "nosuchinput" not in r.stderr
    assert (tmp_path / "od" / "y.npy").read_bytes() == b"precious"
    r = run_into(model, x, tmp_path / "new")  # a new folder becomes a run's, and a run may write there again
    assert r.exit_code == 0 and run_into(model, x, tmp_path / "new").exit_code == 0, r.output


@SETTINGS
@given(kind=st.sampled_from(KINDS + ["our figure", "link to our figure"]), fmt=st.sampled_from(["dot", "svg"]))
def test_graph_o_refuses_every_link_and_keeps_it(tmp_path_factory, kind: str, fmt: str):
    """A link at -o, even to a figure seqdsl made or to nothing, is refused and left as it is; so is anything not
    marked as ours. Only a figure of ours is redrawn."""
    root = tmp_path_factory.mktemp("graph")
    dest = root / f"f.{fmt}"
    ours = root / "outside" / f"ours.{fmt}"
    ours.parent.mkdir()
    assert invoke("graph", str(SPECS / "rnn.yaml"), "-o", str(ours)).exit_code == 0
    if kind == "our figure":
        shutil.copy(ours, dest)
        assert invoke("graph", str(SPECS / "gru.yaml"), "-o", str(dest)).exit_code == 0
        assert not dest.is_symlink() and "gru" in dest.read_text()
        return
    if kind == "link to our figure":
        dest.symlink_to(ours)
        target = ours
    else:
        target = plant(dest, kind, root / "outside")
    before = unchanged(root / "outside")
    r = invoke("graph", str(SPECS / "gru.yaml"), "-o", str(dest))
    one_line_exit_2(r)
    assert "symbolic link" in r.stderr
    assert dest.is_symlink() and Path(os.readlink(dest)) == target
    assert unchanged(root / "outside") == before


@SETTINGS
@given(kind=st.sampled_from(KINDS))
def test_data_o_refuses_a_link_even_with_force_and_keeps_it(tmp_path_factory, kind: str):
    """`seqdsl data` replaces only a file it wrote (seqdsl.datafiles.check_output): a link is not one."""
    root = tmp_path_factory.mktemp("data")
    dest = root / "d.npz"
    target = plant(dest, kind, root / "outside")
    before = unchanged(root / "outside")
    r = invoke("data", "adding", "-T", "4", "-n", "3", "-o", str(dest), "--force")
    one_line_exit_2(r)
    assert "symbolic link" in r.stderr
    assert dest.is_symlink() and Path(os.readlink(dest)) == target
    assert_outside_untouched(root / "outside", before)


# ----------------------------------------------------------------------------- build -o and --triton

@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An earlier build (out) with its Triton copy (repo/rnn), copied for each case."""
    root = tmp_path_factory.mktemp("pristine")
    build(SPECS / "rnn.yaml", root / "out", sizes={"h": 3}, steps=2, batch=1, triton=root / "repo")
    return root


def _copy(pristine: Path, tmp: Path) -> Path:
    shutil.copytree(pristine, tmp / "w", symlinks=True)
    return tmp / "w"


# every (kind, path) pair: a small space, so enumerated whole rather than sampled
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("where", ["model.onnx", "model.py", "weights.safetensors", "build.json", "model.onnx.data"])
def test_a_link_planted_in_a_build_directory_is_refused(pristine: Path, tmp_path: Path, kind: str, where: str):
    w = _copy(pristine, tmp_path)
    (w / "out" / where).unlink(missing_ok=True)
    target = plant(w / "out" / where, kind, tmp_path / "outside")
    before = unchanged(tmp_path / "outside")
    r = invoke("build", str(SPECS / "rnn.yaml"), "-o", str(w / "out"), "--set", "h=3", "--seq-len", "2")
    one_line_exit_2(r)
    assert (w / "out" / where).is_symlink() and Path(os.readlink(w / "out" / where)) == target
    assert unchanged(tmp_path / "outside") == before


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("where", ["1/model.onnx", "config.pbtxt", "1", "1/model.onnx.data"])
def test_a_link_planted_in_the_triton_folder_is_replaced_or_refused(pristine: Path, tmp_path: Path, kind: str,
                                                                    where: str):
    """1/model.onnx: replaced by the new file (the folder is ours); 1 or config.pbtxt as a link: refused (a link
    is not a folder or a config seqdsl wrote, even to a config that starts with its header); 1/model.onnx.data
    (not written for a small model): left alone."""
    w = _copy(pristine, tmp_path)
    path = w / "repo" / "rnn" / where
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    target = plant(path, kind, tmp_path / "outside")
    if where == "config.pbtxt" and kind == "file":
        target.write_bytes(HEADER.encode() + b"\n" + SECRET)  # looks like ours, through a link
    before = unchanged(tmp_path / "outside")
    r = invoke("build", str(SPECS / "rnn.yaml"), "-o", str(w / "out"), "--set", "h=3", "--seq-len", "2",
               "--triton", str(w / "repo"))
    assert unchanged(tmp_path / "outside") == before
    if where == "1/model.onnx":
        assert r.exit_code == 0, r.output
        assert not path.is_symlink() and path.read_bytes() == (w / "out" / "model.onnx").read_bytes()
    elif where == "1/model.onnx.data":
        assert r.exit_code == 0, r.output
        assert path.is_symlink() and Path(os.readlink(path)) == target
    else:
        one_line_exit_2(r)
        assert path.is_symlink() and Path(os.readlink(path)) == target


def _repo_shapes(tmp: Path) -> dict[str, tuple[Path, Path]]:
    """(REPO, -o DIR) for each repository --triton cannot write."""
    (tmp / "a_file").write_text("mine")
    (tmp / "dangling").symlink_to(tmp / "nowhere")
    (tmp / "one_file" / "rnn").mkdir(parents=True)
    (tmp / "one_file" / "rnn" / "1").write_text("mine")
    (tmp / "config_dir" / "rnn" / "config.pbtxt").mkdir(parents=True)
    (tmp / "elsewhere").mkdir()
    (tmp / "one_link" / "rnn").mkdir(parents=True)
    (tmp / "one_link" / "rnn" / "1").symlink_to(tmp / "elsewhere")
    return {"a file": (tmp / "a_file", tmp / "out"),
            "a dangling link": (tmp / "dangling", tmp / "out"),
            "<name>/1 a file": (tmp / "one_file", tmp / "out"),
            "<name>/1 a link": (tmp / "one_link", tmp / "out"),
            "<name>/config.pbtxt a folder": (tmp / "config_dir", tmp / "out"),
            "under a file": (tmp / "a_file" / "repo", tmp / "out"),
            "inside DIR": (tmp / "out" / "repo", tmp / "out"),
            "DIR itself": (tmp / "out", tmp / "out"),
            "DIR inside its model folder": (tmp / "repo", tmp / "repo" / "rnn" / "1"),
            "DIR is its model folder": (tmp / "repo", tmp / "repo" / "rnn")}


SHAPES = ["a file", "a dangling link", "<name>/1 a file", "<name>/1 a link", "<name>/config.pbtxt a folder",
          "under a file", "inside DIR", "DIR itself", "DIR inside its model folder", "DIR is its model folder"]


@pytest.mark.parametrize("shape", SHAPES)
def test_a_repository_triton_cannot_write_is_refused_before_any_compile_work(tmp_path: Path, shape: str,
                                                                              monkeypatch: pytest.MonkeyPatch):
    import seqdsl.compilers.torch_module

    def no_compile(*args, **kwargs):
        raise AssertionError("compile work started")

    monkeypatch.setattr(seqdsl.compilers.torch_module, "module_class", no_compile)
    repo, out = _repo_shapes(tmp_path)[shape]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    r = invoke("build", str(SPECS / "rnn.yaml"), "-o", str(out), "--triton", str(repo))
    one_line_exit_2(r)
    assert r.stderr.startswith("error: --triton"), r.stderr
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # no build directory, no staging, nothing


def test_the_triton_copy_is_written_only_after_the_build_is_published(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch):
    import seqdsl.compilers.build

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(seqdsl.compilers.build, "publish", fail)
    with pytest.raises(OSError):
        build(SPECS / "rnn.yaml", tmp_path / "out", sizes={"h": 3}, steps=2, batch=1, triton=tmp_path / "repo")
    assert not (tmp_path / "out").exists() and not (tmp_path / "repo" / "rnn").exists()


def test_dash_o_and_triton_the_same_folder_leaves_both_as_they_were(pristine: Path, tmp_path: Path):
    """Before: a new model in the repository, the old build in `out`, and every later build refused."""
    w = _copy(pristine, tmp_path)
    before = {p: p.read_bytes() for p in sorted(w.rglob("*")) if p.is_file()}
    with pytest.raises(UsageError, match="inside the build's directory"):
        build(SPECS / "rnn.yaml", w / "out", sizes={"h": 3}, steps=2, batch=1, triton=w / "out", seed=5)
    assert {p: p.read_bytes() for p in sorted(w.rglob("*")) if p.is_file()} == before
    build(SPECS / "rnn.yaml", w / "out", sizes={"h": 3}, steps=2, batch=1, triton=w / "repo", seed=5)  # still fine
