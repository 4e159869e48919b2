"""`seqdsl train`'s work folder follows `build -o`'s ownership rule, before any training: only a new, empty or
seqdsl-made folder, never through a planted link, never the build's own folder, the current directory or a
user's; an earlier run's checkpoints are replaced only with --fresh."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from conftest import SPECS

from seqdsl import cli
from seqdsl.compilers.publish import OutputError
from seqdsl.compilers.training import TrainOptions, prepare
from seqdsl.compilers.training.workdir import MARKER, claim
from seqdsl import tasks

SPEC = SPECS / "adding_lstm.yaml"
WRITTEN = ["metrics.csv", "metrics.jsonl", "metrics.png", "last.ckpt", "best.ckpt", "train.json", "hparams.yaml"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.npz"
    tasks.save(tasks.adding(16, 4, seed=0), str(path))
    return path


def _snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: a file's hash, a link's target, a folder's mark."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                found[rel] = "dir"
    return found


SHAPES = ["file", "user folder", "user metrics", "planted link", "planted link, marked", "same as -o", "inside -o",
          "holds -o", "cwd", "spec folder", "dangling link", "earlier run", "new", "empty", "marked, no run",
          "linked folder"]
REFUSED = set(SHAPES) - {"new", "empty", "marked, no run", "linked folder"}


def _make(shape: str, root: Path, planted: str) -> tuple[Path, Path]:
    """A work folder of ``shape`` under ``root`` (and the build's -o); what the user owns sits in ``root/user``."""
    user = root / "user"
    user.mkdir()
    (user / "precious.txt").write_text("the user's")
    out = root / "out"
    work = root / "work"
    if shape == "file":
        work.write_text("a file of the user's")
    elif shape == "user folder":
        work.mkdir()
        (work / "notes.md").write_text("mine")
    elif shape == "user metrics":
        work.mkdir()
        (work / "metrics.csv").write_text("my own metrics")
    elif shape in ("planted link", "planted link, marked"):
        work.mkdir()
        (work / planted).symlink_to(user / "precious.txt")
        if shape.endswith("marked") and planted != MARKER:  # a link in the marker's place: no marker at all
            claim(work, [planted])
    elif shape == "same as -o":
        work = out
    elif shape == "inside -o":
        work = out / "work"
    elif shape == "holds -o":
        out = work / "out"
    elif shape == "cwd":
        work = Path(".")
    elif shape == "spec folder":
        work = SPEC.parent
    elif shape == "dangling link":
        work.symlink_to(root / "nowhere")
    elif shape == "earlier run":
        work.mkdir()
        (work / "last.ckpt").write_bytes(b"an earlier run's checkpoint")
        claim(work, ["last.ckpt"])
    elif shape == "empty":
        work.mkdir()
    elif shape == "marked, no run":
        work.mkdir()
        (work / "metrics.csv").write_text("step\n")
        claim(work, ["metrics.csv"])
    elif shape == "linked folder":
        (root / "real").mkdir()
        work.symlink_to(root / "real")
    return work, out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(SHAPES), st.sampled_from(WRITTEN), st.booleans())
def test_any_work_folder_is_taken_or_refused_before_any_work(data: Path, tmp_path: Path, shape: str, planted: str,
                                                             build: bool):
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    work, out = _make(shape, root, planted)
    before = _snapshot(root)
    here = os.getcwd()
    os.chdir(root)
    try:
        options = TrainOptions(work_dir=work, build=build or shape in ("same as -o", "inside -o", "holds -o"))
        if shape in REFUSED:
            with pytest.raises(OutputError) as info:
                prepare(SPEC, data, {"h": 2}, options=options, out_dir=out)
            message = str(info.value)
            assert message.startswith(("--work-dir", "-o")) and "\n" not in message, message
            if shape == "earlier run":
                assert "--resume" in message and "--fresh" in message
        else:
            prepared = prepare(SPEC, data, {"h": 2}, options=options, out_dir=out)
            assert prepared.work == work.resolve()
    finally:
        os.chdir(here)
    assert _snapshot(root) == before  # the checks write nothing, anywhere


def test_cli_refusals_are_exit_2_before_training_and_fresh_replaces_a_run(data: Path, tmp_path: Path):
    runner = CliRunner()
    base = ["train", str(SPEC), "--data", str(data), "--set", "h=2", "--steps", "2", "--threads", "1",
            "--progress", "quiet"]
    out = tmp_path / "out"
    r = runner.invoke(cli.app, base + ["-o", str(out), "--work-dir", str(out)])
    assert r.exit_code == 2 and r.stderr.startswith("error: --work-dir") and not out.exists(), r.stderr
    (tmp_path / "file").write_text("x")
    r = runner.invoke(cli.app, base + ["-o", str(out), "--work-dir", str(tmp_path / "file")])
    assert r.exit_code == 2 and "not a directory" in r.stderr and not out.exists(), r.stderr
    r = runner.invoke(cli.app, base + ["-o", str(out), "--no-build"])
    assert r.exit_code == 0, r.stderr
    work = tmp_path / "out.train"
    marker = json.loads((work / MARKER).read_text())
    assert marker["built_by"] == "seqdsl" and set(marker["files"]) == {p.name for p in work.iterdir()}
    first = (work / "last.ckpt").read_bytes()
    r = runner.invoke(cli.app, base + ["-o", str(out), "--no-build", "--seed", "1"])  # a rerun: refused
    assert r.exit_code == 2 and "--resume" in r.stderr and (work / "last.ckpt").read_bytes() == first
    r = runner.invoke(cli.app, base + ["-o", str(out), "--no-build", "--seed", "1", "--fresh"])
    assert r.exit_code == 0 and (work / "last.ckpt").read_bytes() != first, r.stderr


# ----------------------------------------------------------------------------- links planted during training

OUTSIDE = b"outside: must never change\n"


def _plant(link: Path, kind: str, outside: Path) -> None:
    """A link at ``link`` (whatever is there is removed first) to a file outside, to nowhere, or to a folder outside
    holding a file of the link's name."""
    outside.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    target = outside / f"{kind}-{link.name}"
    if kind == "file":
        target.write_bytes(OUTSIDE)
    elif kind == "dir":
        target.mkdir(exist_ok=True)
        (target / link.name).write_bytes(OUTSIDE)
    link.symlink_to(target)


def _outside(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


ROW = st.fixed_dictionaries({"step": st.integers(0, 10 ** 6), "epoch": st.integers(0, 100),
                             "loss": st.floats(0, 1e6, allow_nan=False)})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(["csv", "jsonl"]), kind=st.sampled_from(["file", "dangling", "dir"]),
       before=st.lists(ROW, max_size=3), after=st.lists(ROW, min_size=1, max_size=3))
def test_a_link_planted_at_the_metrics_file_is_never_followed(tmp_path_factory, fmt: str, kind: str,
                                                             before: list, after: list):
    from seqdsl.compilers.training.report import MetricsLog

    root = tmp_path_factory.mktemp("metrics")
    work, outside = root / "work", root / "outside"
    work.mkdir()
    path = work / f"metrics.{fmt}"
    log = MetricsLog(path)
    for row in before:
        log.write(row)
    _plant(path, kind, outside)  # after the work folder's check, between two steps
    snapshot = _outside(outside)
    for row in after:
        log.write(row)
    assert _outside(outside) == snapshot and all(v == OUTSIDE for v in snapshot.values())
    assert not path.is_symlink() and path.is_file()
    again = MetricsLog.__new__(MetricsLog)
    again.path, again.jsonl = path, fmt == "jsonl"
    assert [(r["step"], r["loss"]) for r in again._read()] == [(r["step"], r["loss"]) for r in before + after]


@pytest.mark.parametrize("kind", ["file", "dangling", "dir"])
def test_links_planted_in_the_work_folder_while_training_are_never_followed(data: Path, tmp_path: Path,
                                                                            monkeypatch, kind: str):
    """A real run: at its first metrics row, links appear at metrics.csv and metrics.png (after the folder's check);
    the run writes both as files of its own, and what the links pointed at is unchanged."""
    from seqdsl.compilers.training import report

    work, outside = tmp_path / "out.train", tmp_path / "outside"
    write = report.MetricsLog.write
    planted: list[bool] = []

    def plant_then_write(self, row):
        if not planted:
            _plant(work / "metrics.csv", kind, outside)
            _plant(work / "metrics.png", kind, outside)
            planted.append(True)
        return write(self, row)

    monkeypatch.setattr(report.MetricsLog, "write", plant_then_write)
    r = CliRunner().invoke(cli.app, ["train", str(SPEC), "--data", str(data), "--set", "h=2", "--steps", "3",
                                     "--threads", "1", "--progress", "quiet", "-o", str(tmp_path / "out"),
                                     "--no-build"])
    assert r.exit_code == 0, r.output
    assert planted and _outside(outside) == {k: OUTSIDE for k in _outside(outside)}
    assert len(_outside(outside)) == (0 if kind == "dangling" else 2)
    for name in ("metrics.csv", "metrics.png"):
        assert not (work / name).is_symlink() and (work / name).is_file()
    assert (work / "metrics.png").read_bytes().startswith(b"\x89PNG")
