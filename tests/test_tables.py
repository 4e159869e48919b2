"""`seqdsl data csv`: windows of a real table split by time and normalised with the training part alone; every bad
table one located error; the statistics travel into build.json and, with raw I/O, into model.onnx."""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, SPECS

import seqdsl
from seqdsl.compilers.normalise import Normalisation, Stats, read
from seqdsl.compilers.training import TrainOptions, prepare
from seqdsl.compilers.training.tables import MAX_ROWS, read_table, table_windows, windows
from seqdsl.errors import SpecError

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def seqdsl_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


@st.composite
def tables(draw: st.DrawFn) -> tuple[np.ndarray, int, int, float]:
    window, horizon = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    fraction = draw(st.sampled_from([0.1, 0.2, 0.3, 0.5]))
    least = int(np.ceil((window + horizon) / min(fraction, 1 - fraction))) + 2  # a window in each part
    rows = draw(st.integers(least, least + 60))
    columns = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    values = np.random.default_rng(seed).normal(5.0, 3.0, size=(rows, columns)).cumsum(axis=0)
    return values, window, horizon, fraction


@SETTINGS
@given(tables(), st.data())
def test_windows_are_split_by_time_and_normalised_with_the_training_part_alone(table, data):
    values, window, horizon, fraction = table
    columns = [f"c{i}" for i in range(values.shape[1])]
    target = data.draw(st.sampled_from(columns))
    t = columns.index(target)
    got = windows(values, "t.csv", columns, target, window, horizon, fraction)
    split = got.split
    assert split == len(values) - round(len(values) * fraction)
    mean, std = values[:split].mean(axis=0), values[:split].std(axis=0)
    for part, first, last in ((got.train, 0, split), (got.val, split, len(values))):
        n = last - first - window - horizon + 1
        assert part["x"].shape == (n, window, len(columns)) and part["target"].shape == (n, horizon)
        np.testing.assert_allclose(part["x_mean"], mean, rtol=1e-6)
        np.testing.assert_allclose(part["target_std"], std[t], rtol=1e-6)
        raw_x = part["x"] * part["x_std"] + part["x_mean"]
        raw_y = part["target"] * part["target_std"] + part["target_mean"]
        for i in (0, n - 1):  # the first and the last window of the part: wholly inside it
            start = first + i
            assert start + window + horizon <= last
            np.testing.assert_allclose(raw_x[i], values[start:start + window], rtol=1e-4, atol=1e-3)
            np.testing.assert_allclose(raw_y[i], values[start + window:start + window + horizon, t],
                                       rtol=1e-4, atol=1e-3)
    changed = values.copy()
    changed[split:] += 1000.0  # the validation rows do not move the statistics
    again = windows(changed, "t.csv", columns, target, window, horizon, fraction)
    np.testing.assert_array_equal(again.train["x_mean"], got.train["x_mean"])
    np.testing.assert_array_equal(again.train["x"], got.train["x"])


def _plain(text: str) -> bool:
    return all(c in "\n" or unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Cn") for c in text)


@SETTINGS
@given(st.integers(2, 30), st.integers(0, 2), st.sampled_from(["", "nan", "NA", "abc", "1.5.2", "inf", "-inf",
                                                                "text", "\x1b[31mred", "0x1g"]),
       st.sampled_from(["a", "b", "c"]))
def test_a_bad_cell_is_one_error_at_its_line_and_column(tmp_path: Path, rows: int, which: int, cell: str,
                                                         target: str):
    frame = np.arange(rows * 3, dtype=float).reshape(rows, 3).astype(str)
    bad_row = rows // 2
    frame[bad_row, which] = cell
    path = tmp_path / "t.csv"
    path.write_text("a,b,c\n" + "\n".join(",".join(r) for r in frame) + "\n", encoding="utf-8")
    with pytest.raises(SpecError) as info:
        read_table(path, ["a", "b", "c"])
    error = info.value
    assert error.code == "E0709"
    assert (error.loc.line, error.loc.col) == (bad_row + 2, 1 + sum(len(frame[bad_row, j]) + 1 for j in range(which)))
    assert f"row {bad_row + 1}, column `{'abc'[which]}`" in error.message
    kind = "missing" if cell.lower() in ("", "nan", "na") else "not finite" if "inf" in cell else "not a number"
    assert kind in error.message
    assert _plain(str(error))


@SETTINGS
@given(st.text(min_size=1, max_size=12).filter(lambda s: s.strip() and "," not in s and '"' not in s
                                                and "\n" not in s and "\r" not in s and s != "missing"))
def test_a_missing_column_is_named_plainly_whatever_the_header_holds(tmp_path: Path, name: str):
    path = tmp_path / "t.csv"
    path.write_text(f"{name},v\n1,2\n3,4\n", encoding="utf-8")
    with pytest.raises(SpecError) as info:
        read_table(path, ["missing"])
    assert info.value.code == "E0709" and "no column `missing`" in info.value.message
    assert _plain(str(info.value))


def test_bad_tables_each_get_one_located_error(tmp_path: Path):
    import pandas as pd  # here, not at the top: collecting the suite must not hold pandas (test_budgets' memory)

    good = tmp_path / "good.csv"
    good.write_text("t,v,k\n" + "".join(f"{i},{np.sin(i):.4f},7\n" for i in range(30)))

    def error(path: Path, columns=("v",), target="v", window=4, horizon=2, fraction=0.2) -> SpecError:
        with pytest.raises(SpecError) as info:
            table_windows(path, list(columns), target, window, horizon, fraction)
        assert info.value.code == "E0709", info.value
        return info.value

    assert "not a table" in error(tmp_path / "table.xlsx").message
    assert "no such file" in error(tmp_path / "none.csv").message
    assert "no column `w`" in error(good, columns=("w",), target="w").message
    assert "not one of --columns" in error(good, target="t").message
    short = error(good, window=6, horizon=2)
    assert "validation part (6 rows) holds no window of 6 + 2 rows" in short.message
    assert "constant" in error(good, columns=("v", "k")).message and "`k`" in error(good, columns=("v", "k")).message
    assert "strictly between 0 and 1" in error(good, fraction=1.0).message
    assert "positive" in error(good, window=0).message
    (tmp_path / "empty.csv").write_text("")
    assert "cannot read the table as CSV" in error(tmp_path / "empty.csv").message
    (tmp_path / "blank.csv").write_text("v\n1\n\n3\n")
    blank = error(tmp_path / "blank.csv")
    assert blank.loc.line == 3 and "row 2, column `v`: the value is missing" in blank.message
    frame = pd.DataFrame({"v": [1.0, 2.0, None, 4.0] * 8, "s": ["x"] * 32, "d": pd.date_range("2020", periods=32)})
    frame.to_parquet(tmp_path / "t.parquet")
    assert "row 3, column `v`: the value is missing" in error(tmp_path / "t.parquet").message
    assert "holds 'x', not a number" in error(tmp_path / "t.parquet", columns=("s",), target="s").message
    assert "not numbers" in error(tmp_path / "t.parquet", columns=("d",), target="d").message
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    assert "cannot read the table as Parquet" in error(tmp_path / "bad.parquet").message
    assert MAX_ROWS >= 1_000_000


def test_parquet_and_csv_give_the_same_windows(tmp_path: Path):
    import pandas as pd

    frame = pd.DataFrame({"a": np.linspace(0, 3, 40) ** 2, "b": np.cos(np.arange(40.0))})
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    one = table_windows(tmp_path / "t.csv", ["a", "b"], "b", 5, 3)
    two = table_windows(tmp_path / "t.parquet", ["a", "b"], "b", 5, 3)
    for key in one.train:
        np.testing.assert_allclose(one.train[key], two.train[key], rtol=1e-6)


def test_cli_writes_both_files_and_reports_a_bad_table_with_exit_2(tmp_path: Path):
    table = tmp_path / "t.csv"
    table.write_text("v\n" + "".join(f"{np.sin(i / 3):.5f}\n" for i in range(60)))
    train, val = tmp_path / "train.npz", tmp_path / "val.npz"
    done = seqdsl_cli("data", "csv", str(table), "--columns", "v", "--target", "v", "--window", "8", "--horizon",
                      "3", "-o", str(train), "--val", str(val))
    assert done.returncode == 0, done.stderr
    with np.load(train) as f:
        assert f["x"].shape == (48 - 11 + 1, 8, 1) and f["target"].shape == (38, 3)
        assert set(f.files) == {"x", "target", "x_mean", "x_std", "target_mean", "target_std"}
    table.write_text("v\n1\n2\n")
    again = seqdsl_cli("data", "csv", str(table), "--columns", "v", "--target", "v", "--window", "8",
                       "-o", str(tmp_path / "a.npz"), "--val", str(tmp_path / "b.npz"))
    assert again.returncode == 2 and again.stderr.startswith(f"{table}: error[E0709]: the table has 2 rows")
    assert "Traceback" not in again.stderr and not (tmp_path / "a.npz").exists()
    missing = seqdsl_cli("data", "csv", str(table), "--columns", "v", "--target", "v", "-o", str(tmp_path / "a.npz"),
                         "--val", str(tmp_path / "b.npz"))
    assert missing.returncode == 2 and "--window is required" in missing.stderr


def _stats(d: int, horizon: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x_mean": rng.normal(300, 50, d).astype(np.float32), "x_std": rng.uniform(0.5, 20, d).astype(np.float32),
            "target_mean": np.float32(rng.normal(300, 50)), "target_std": np.float32(rng.uniform(0.5, 20))}


def _data(path: Path, n: int, stats: dict[str, np.ndarray], horizon: int = 12) -> Path:
    rng = np.random.default_rng(1)
    np.savez(path, x=rng.normal(size=(n, 10, 1)).astype(np.float32),
             target=rng.normal(size=(n, horizon)).astype(np.float32), **stats)
    return path


def test_statistics_are_checked_before_training(tmp_path: Path):
    spec = SPECS / "forecast_lstm.yaml"
    stats = _stats(1, 12)
    got = prepare(spec, _data(tmp_path / "a.npz", 40, stats), options=TrainOptions(build=False))
    assert got.normalisation is not None and set(got.normalisation.inputs) == {"x"}
    assert set(got.normalisation.outputs) == {"y"}  # the output the targets train
    cases = {"no std": {k: v for k, v in stats.items() if k != "x_std"},
             "bad shape": {**stats, "x_mean": np.zeros(3, np.float32)},
             "zero std": {**stats, "target_std": np.float32(0)},
             "not float": {**stats, "x_std": np.ones(1, np.int64)}}
    for name, broken in cases.items():
        with pytest.raises(SpecError) as info:
            prepare(spec, _data(tmp_path / f"{name}.npz", 40, broken), options=TrainOptions(build=False))
        assert info.value.code == "E0710", name
    with pytest.raises(SpecError, match="other normalisation statistics"):
        prepare(spec, tmp_path / "a.npz", val=_data(tmp_path / "v.npz", 8, _stats(1, 12, seed=5)),
                options=TrainOptions(build=False))
    np.savez(tmp_path / "plain.npz", x=np.zeros((4, 10, 1), np.float32), target=np.zeros((4, 12), np.float32))
    with pytest.raises(SpecError, match="--raw-io: .* carries no normalisation"):
        prepare(spec, tmp_path / "plain.npz", options=TrainOptions(build=False, raw_io=True))


def test_raw_io_folds_the_statistics_into_onnx_as_numpy_applies_them(tmp_path: Path):
    """model.onnx built with raw I/O on raw windows gives what the plain build gives on the windows normalised by
    hand, denormalised by hand (numpy, onnxruntime); build.json records the statistics either way."""
    import onnxruntime

    from seqdsl.compilers.build import build

    spec = SPECS / "forecast_gru.yaml"
    model = seqdsl.load(spec, {"d": 3, "H": 4})
    raw = _stats(3, 4, seed=2)
    norm = read({**raw, "x": np.zeros((1, 5, 3)), "target": np.zeros((1, 4))}, model, "target", "y", "mse", "d.npz")
    assert isinstance(norm, Normalisation) and isinstance(norm.outputs["y"], Stats)
    plain = build(spec, tmp_path / "plain", {"d": 3, "H": 4}, normalisation=norm)
    folded = build(spec, tmp_path / "raw", {"d": 3, "H": 4}, normalisation=norm, raw_io=True)
    assert max(folded.max_abs_diff.values()) <= 1e-4
    record = json.loads((tmp_path / "raw" / "build.json").read_text())["normalisation"]
    assert record["raw_io"] is True and record["outputs"]["y"]["std"] == pytest.approx(float(raw["target_std"]))
    assert json.loads((tmp_path / "plain" / "build.json").read_text())["normalisation"]["raw_io"] is False
    x = (raw["x_mean"] + raw["x_std"] * np.random.default_rng(3).normal(size=(6, 9, 3))).astype(np.float32)

    def session(folder: Path) -> onnxruntime.InferenceSession:
        return onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])

    by_hand = session(tmp_path / "plain").run(["y"], {"x": ((x - raw["x_mean"]) / raw["x_std"]).astype(np.float32)})
    expected = by_hand[0] * raw["target_std"] + raw["target_mean"]
    got = session(tmp_path / "raw").run(["y"], {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))
    assert [i.name for i in session(tmp_path / "raw").get_inputs()] == ["x"]
    with pytest.raises(Exception, match="--raw-io: the data carries no normalisation"):
        build(spec, tmp_path / "none", raw_io=True)


def test_build_options_for_the_statistics_refuse_bad_values_with_exit_2(tmp_path: Path):
    spec = str(SPECS / "forecast_lstm.yaml")
    alone = seqdsl_cli("build", spec, "--raw-io", "-o", str(tmp_path / "a"))
    assert alone.returncode == 2 and "--raw-io: the data carries no normalisation statistics" in alone.stderr
    np.savez(tmp_path / "plain.npz", x=np.zeros((2, 3, 1), np.float32))
    plain = seqdsl_cli("build", spec, "--stats", str(tmp_path / "plain.npz"), "-o", str(tmp_path / "b"))
    assert plain.returncode == 2 and "error[E0710]: --stats" in plain.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
