"""`seqdsl data text`: next-token windows of a text file, for any drawn text, checked against Python's own string
and bytes slicing (not our ids); a time-ordered split; the vocabulary file; each bad file one line, exit 2; and
`seqdsl train` on specs/char_lm.yaml reads what it writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import ROOT

from seqdsl import text_data

TEXT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=400)


def _decode(ids: np.ndarray, tokens: list) -> list:
    return [tokens[i] for i in ids.tolist()]


def _check(made: text_data.TextData, stream: list, window: int, stride: int, fraction: float) -> None:
    """The windows are the slices of ``stream`` (characters or byte values) the definition names."""
    tokens = made.vocabulary.to_json()["tokens"]
    n_val = int(round(len(stream) * fraction)) if fraction else 0
    parts = [stream[: len(stream) - n_val]] + ([stream[len(stream) - n_val:]] if fraction else [])
    seen = set(parts[0])
    for part, arrays in zip(parts, [made.train, made.val]):
        x, y = arrays["x"], arrays["target"]
        assert x.dtype == y.dtype == np.int64 and x.shape == y.shape
        starts = list(range(0, len(part) - window, stride))
        assert x.shape == (len(starts), window)
        for row, start in enumerate(starts):
            want = [c if c in seen else None for c in part[start:start + window + 1]]  # unseen: id 0, unknown
            assert _decode(x[row], tokens) == want[:-1] and _decode(y[row], tokens) == want[1:]
    assert made.val is None if not fraction else made.val is not None


@settings(max_examples=60, deadline=None)
@given(text=TEXT, window=st.integers(1, 12), stride=st.integers(1, 12),
       fraction=st.sampled_from([0.0, 0.1, 0.25, 0.5]))
def test_char_windows_are_the_texts_slices_one_step_apart(text, window, stride, fraction, tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    chars = list(text[1:] if text.startswith("\ufeff") else text)
    n_val = int(round(len(chars) * fraction)) if fraction else 0
    if min(len(chars) - n_val, n_val if fraction else len(chars)) < window + 1:
        with pytest.raises(text_data.TextDataError, match="fewer than --window" if chars else "empty"):
            text_data.make(path, "char", window, stride, fraction)
        return
    made = text_data.make(path, "char", window, stride, fraction)
    vocab = made.vocabulary.tokens
    assert list(vocab) == sorted(set(chars[: len(chars) - n_val]))  # code-point order, the training part's
    _check(made, chars, window, stride, fraction)


@settings(max_examples=40, deadline=None)
@given(raw=st.binary(min_size=1, max_size=300), window=st.integers(1, 10), stride=st.integers(1, 10),
       fraction=st.sampled_from([0.0, 0.2]))
def test_byte_windows_are_the_files_bytes_plus_one(raw, window, stride, fraction, tmp_path_factory):
    path = tmp_path_factory.mktemp("bytes") / "b.bin"
    path.write_bytes(raw)
    n_val = int(round(len(raw) * fraction)) if fraction else 0
    if min(len(raw) - n_val, n_val if fraction else len(raw)) < window + 1:
        with pytest.raises(text_data.TextDataError, match="fewer than --window"):
            text_data.make(path, "byte", window, stride, fraction)
        return
    made = text_data.make(path, "byte", window, stride, fraction)
    assert made.vocabulary.size == 257 and made.unknown == 0
    assert made.vocabulary.to_json()["tokens"] == [None, *range(256)]
    _check_bytes(made, list(raw), window, stride, fraction)


def _check_bytes(made: text_data.TextData, stream: list, window: int, stride: int, fraction: float) -> None:
    n_val = int(round(len(stream) * fraction)) if fraction else 0
    parts = [stream[: len(stream) - n_val]] + ([stream[len(stream) - n_val:]] if fraction else [])
    for part, arrays in zip(parts, [made.train, made.val]):
        starts = list(range(0, len(part) - window, stride))
        assert arrays["x"].tolist() == [[b + 1 for b in part[s:s + window]] for s in starts]
        assert arrays["target"].tolist() == [[b + 1 for b in part[s + 1:s + window + 1]] for s in starts]


def _invoke(args: list[str]):
    from typer.testing import CliRunner

    from seqdsl import cli

    return CliRunner().invoke(cli.app, ["data", "text", *args])


def test_cli_writes_train_validation_and_vocabulary(tmp_path: Path):
    corpus = tmp_path / "corpus.txt"
    text = "".join(f"line {i}: the quick brown fox, ünïcödé €\n" for i in range(40))
    corpus.write_text(text, encoding="utf-8")
    out = tmp_path / "data" / "lm.npz"
    r = _invoke([str(corpus), "-o", str(out), "--window", "16", "--stride", "8", "--val-fraction", "0.2"])
    assert r.exit_code == 0, r.output
    vocab = json.loads((tmp_path / "data" / "lm.vocab.json").read_text())
    assert vocab["written_by"] == "seqdsl data" and vocab["level"] == "char" and vocab["tokens"][0] is None
    assert vocab["size"] == len(vocab["tokens"]) and f"--set vocab={vocab['size']}" in r.stdout
    with np.load(out, allow_pickle=False) as train, np.load(tmp_path / "data" / "lm.val.npz") as val:
        assert train["x"].shape[1] == 16 and val["x"].shape[1] == 16
        decoded = "".join(vocab["tokens"][i] for i in train["x"][0])
        assert decoded == text[:16]
        last = "".join(vocab["tokens"][i] or "?" for i in val["target"][-1])
        assert text.endswith(last) or last in text[-int(len(text) * 0.2):]
    assert sorted(p.name for p in out.parent.iterdir()) == ["lm.npz", "lm.val.npz", "lm.vocab.json"]


@pytest.mark.parametrize("content, args, message", [
    (b"ok text\nbad \xff here", [], "t.txt:2:5: not UTF-8 (byte 0xff at offset 12)"),
    (b"", [], "t.txt: empty"),
    (b"\xef\xbb\xbf", [], "t.txt: empty"),
    (b"short", ["--window", "64"], "the training part holds 5 characters, fewer than --window + 1 = 65"),
    (b"x" * 100, ["--window", "20"], "the validation part (the last 0.1 of the file) holds 10 characters"),
    ("".join(map(chr, range(0x4E00, 0x4E00 + 1200))).encode(), ["--window", "4", "--val-fraction", "0"],
     "1,200 distinct characters in the training part, above --max-vocab 1,024; use --level byte"),
    (b"abc" * 50, ["--level", "word"], "error: --level expects char or byte, got 'word'"),
    (b"abc" * 50, ["--val-fraction", "1"], "error: --val-fraction expects a number in [0, 1)"),
    (b"abc" * 50, ["--val-fraction", "nan"], "error: --val-fraction expects a number in [0, 1)"),
    (b"abc" * 50, ["--window", "0"], "error: --window expects a positive integer"),
    (b"abc" * 50, ["--stride", "-2"], "error: --stride expects a positive integer"),
    (b"abc" * 50, ["--level", "byte", "--max-vocab", "9"], "error: --max-vocab applies to --level char"),
    (b"abc" * 5000, ["--window", "8", "--stride", "1", "--max-data", "200K"], "the windows would take 1.83 MiB, "
                                                                             "above --max-data 200 KiB"),
    (b"abc" * 5000, ["--max-data", "64K"], "larger than 8 KiB, whose tokens would fill --max-data 64 KiB"),
])
def test_each_bad_file_or_option_is_one_line_exit_2(content, args, message, tmp_path: Path):
    source = tmp_path / "t.txt"
    source.write_bytes(content)
    r = _invoke([str(source), "-o", str(tmp_path / "d.npz"), *args])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("error:"), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]


def test_a_missing_or_folder_source_is_one_line(tmp_path: Path):
    for source, message in [(tmp_path / "nope.txt", "no such file"), (tmp_path, "not a file")]:
        r = _invoke([str(source), "-o", str(tmp_path / "d.npz")])
        assert r.exit_code == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_char_lm_trains_on_what_seqdsl_data_text_writes(tmp_path: Path):
    """The shipped spec with the vocabulary size the data prints trains (a few steps); one size less is the
    out-of-table id error before any step."""
    from typer.testing import CliRunner

    from seqdsl import cli

    corpus = tmp_path / "c.txt"
    corpus.write_text("to be or not to be, that is the question\n" * 30)
    out = tmp_path / "c.npz"
    assert _invoke([str(corpus), "-o", str(out), "--window", "12"]).exit_code == 0
    size = json.loads((tmp_path / "c.vocab.json").read_text())["size"]

    def train(vocab: int):
        return CliRunner().invoke(cli.app, ["train", str(ROOT / "specs/char_lm.yaml"), "--data", str(out), "--val",
                                            str(tmp_path / "c.val.npz"), "--set", f"vocab={vocab}", "--set", "h=16",
                                            "--steps", "10", "--progress", "quiet", "--no-build", "--work-dir",
                                            str(tmp_path / "work")])

    r = train(size - 1)
    assert r.exit_code == 2 and "E0705" in r.stderr and f"ids from 1 to {size - 1}" in r.stderr, r.stderr
    r = train(size)
    assert r.exit_code == 0, r.output
    assert "validation cross entropy" in r.stdout
