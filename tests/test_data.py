"""`seqdsl data`: the adding, copy-memory and brackets generators hold their tasks' definitions, for any draw."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import ROOT

from seqdsl import tasks

SIZES = st.tuples(st.integers(1, 40), st.integers(4, 60), st.integers(0, 2**32 - 1))


@settings(max_examples=30, deadline=None)
@given(SIZES, st.booleans())
def test_adding_marks_two_steps_one_in_each_half_and_sums_them(args, vary):
    n, length, seed = args
    data = tasks.adding(n, length, seed=seed, min_length=2 if vary else None)
    x, y = data["x"], data["target"]
    assert x.shape == (n, length, 2) and x.dtype == np.float32 and y.shape == (n, 1) and y.dtype == np.float32
    lengths = data.get("lengths", np.full(n, length))
    assert ("lengths" in data) == vary
    for row in range(n):
        marks = np.flatnonzero(x[row, :, 1])
        size = int(lengths[row])
        assert len(marks) == 2 and marks[0] < size // 2 <= marks[1] < size
        assert np.isclose(y[row, 0], x[row, marks, 0].sum())
        assert np.all(x[row, size:] == 0) and np.all((x[row, :size, 0] >= 0) & (x[row, :size, 0] < 1))


def test_adding_baseline_is_one_sixth():
    y = tasks.adding(20_000, 10, seed=1)["target"]
    assert abs(((y - 1) ** 2).mean() - 1 / 6) < 0.005  # what `seqdsl data` prints as the trivial baseline


@settings(max_examples=30, deadline=None)
@given(SIZES, st.integers(1, 12))
def test_copy_recalls_the_first_symbols_after_the_delimiter(args, symbols):
    n, length, seed = args
    data = tasks.copy_memory(n, length, seed=seed, symbols=symbols)
    x, y = data["x"], data["target"]
    assert x.shape == y.shape == (n, length + 2 * symbols) and x.dtype == y.dtype == np.int64
    assert np.all((x[:, :symbols] >= 1) & (x[:, :symbols] <= tasks.COPY_SYMBOLS))
    assert np.all(x[:, symbols + length - 1] == tasks.COPY_SYMBOLS + 1)  # the delimiter, once
    assert np.all((x == tasks.COPY_SYMBOLS + 1).sum(axis=1) == 1)
    assert np.array_equal(y[:, -symbols:], x[:, :symbols]) and np.all(y[:, :-symbols] == 0)
    assert x.max() < tasks.COPY_VOCAB
    mask = data["target_mask"]  # what `seqdsl train` scores: the recall, the steps after the delimiter
    assert mask.dtype == np.bool_ and mask.shape == y.shape
    after = np.argmax(x == tasks.COPY_SYMBOLS + 1, axis=1)[:, None] < np.arange(y.shape[1])[None, :]
    assert np.array_equal(mask, after)


def _reference_balanced(tokens: np.ndarray) -> bool:
    """Correct nesting, written from the definition with a string and regex-free replacement (not our parser)."""
    text = "".join({1: "(", 2: ")", 3: "{", 4: "}"}.get(t, "") for t in tokens.tolist())
    while "()" in text or "{}" in text:
        text = text.replace("()", "").replace("{}", "")
    return text == ""


@settings(max_examples=30, deadline=None)
@given(SIZES, st.booleans())
def test_brackets_label_is_correct_nesting(args, vary):
    n, length, seed = args
    data = tasks.brackets(n, length, seed=seed, min_length=4 if vary else None)
    x, y = data["x"], data["target"]
    assert x.shape == (n, length) and y.shape == (n,) and x.max() < tasks.BRACKET_VOCAB
    lengths = data.get("lengths", np.full(n, length))
    for row in range(n):
        size = int(lengths[row])
        assert bool(y[row]) == _reference_balanced(x[row, :size]) == tasks.is_balanced(x[row, :size])
        assert np.all(x[row, size:] == 0) and np.all(x[row, :size] > 0)
        assert np.isin(x[row, :size], [1, 2, 3, 4]).any()  # at least one pair: never trivially balanced


def test_brackets_classes_are_balanced_and_the_same_seed_gives_the_same_data():
    a, b = tasks.brackets(4000, 30, seed=7), tasks.brackets(4000, 30, seed=7)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert abs(a["target"].mean() - 0.5) < 0.03
    assert not np.array_equal(a["x"], tasks.brackets(4000, 30, seed=8)["x"])


def test_bad_arguments_are_task_errors():
    for call in [lambda: tasks.adding(0, 10), lambda: tasks.adding(5, 1), lambda: tasks.brackets(5, 10, min_length=11),
                 lambda: tasks.copy_memory(5, 10, min_length=3), lambda: tasks.generate("nope", 5, 10)]:
        with pytest.raises(tasks.TaskError):
            call()


def seqdsl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_cli_writes_npz_refuses_to_overwrite_and_reports_bad_arguments(tmp_path: Path):
    out = tmp_path / "brackets.npz"
    r = seqdsl("data", "brackets", "--length", "12", "-n", "50", "--min-length", "6", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "accuracy 1/2" in r.stdout
    with np.load(out, allow_pickle=False) as f:
        saved = {k: f[k] for k in f.files}
    expected = tasks.brackets(50, 12, seed=0, min_length=6)
    assert saved.keys() == expected.keys() and all(np.array_equal(saved[k], expected[k]) for k in saved)
    before = out.read_bytes()
    r = seqdsl("data", "adding", "--length", "12", "-o", str(out))
    assert r.returncode == 2 and "--force" in r.stderr and out.read_bytes() == before
    r = seqdsl("data", "copy", "--length", "0", "-o", str(tmp_path / "c.npz"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and not (tmp_path / "c.npz").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["brackets.npz"]  # no temporary file left behind
