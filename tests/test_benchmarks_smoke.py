"""The benchmark harness still works: every workload of benchmarks/ runs at tiny sizes (one round), its rows
compute the same thing on both sides (parity columns) and say what the modules really run (recognition
labels). Speed is not checked: a tiny run measures nothing."""

from __future__ import annotations

import json
import re

import pytest
import torch

import seqdsl
from benchmarks import run as bench_run
from benchmarks.harness import SPECS, Config, Report, onnx_form, print_report, top_table, torch_runner
from benchmarks.workloads import discover
from seqdsl.compilers.onnx_export import export
from seqdsl.compilers.torch_module import to_module

PYTORCH_RUNNER = re.compile(r"to_module \((default: )?(torch\.(lstm|gru|rnn_tanh|rnn_relu)|generic loop)")
ONNX_FORM = re.compile(r"onnxruntime, .*\(((LSTM|GRU|RNN) op|Scan \(body \d+ nodes\)|Loop \(body \d+ nodes\))")
WORKLOADS = ["rnn", "onnx", "peephole", "cifg", "irnn", "layernorm_gru", "mgu", "hypernetwork", "seq2seq",
             "transformer", "memory", "compiler"]


@pytest.fixture(scope="module")
def reports() -> dict[str, Report]:
    threads = torch.get_num_threads()
    cfg = Config(reps=1, warmup=0, threads=1, tiny=True)
    out = {}
    try:
        torch.set_num_threads(1)
        for name, module in discover().items():
            out[name] = Report()
            module.run(out[name], cfg)
    finally:
        torch.set_num_threads(threads)
    return out


def test_every_workload_is_found_and_adds_rows(reports: dict[str, Report]) -> None:
    assert set(WORKLOADS) <= set(reports)
    for name, report in reports.items():
        assert report.rows or report.tables, name


def test_both_sides_compute_the_same(reports: dict[str, Report]) -> None:
    for name, report in reports.items():
        if name == "compiler":
            continue
        checked = [r for r in report.rows if r.diff is not None]
        assert checked, f"{name}: no row checks parity"
        for row in checked:
            assert row.diff < 1e-4, (name, row.ours, row.kind, row.diff)
        assert any(r.kind == "training step" and r.diff is not None for r in report.rows) or name == "onnx", name


def test_labels_say_what_runs(reports: dict[str, Report]) -> None:
    rnn = reports["rnn"].rows
    for spec, kernel in (("lstm.yaml", "torch.lstm"), ("gru_torch.yaml", "torch.gru"), ("rnn.yaml", "torch.rnn_tanh")):
        assert any(r.ours.startswith(f"{spec} to_module (default: {kernel})") for r in rnn), spec
        assert any(r.ours == f"{spec} native_cells=False (generic loop)" for r in rnn), spec
    for name, report in reports.items():
        for row in report.rows:
            if "to_module (" in row.ours:
                assert PYTORCH_RUNNER.search(row.ours), (name, row.ours)
            if row.ours.startswith("onnxruntime"):
                assert ONNX_FORM.search(row.ours), (name, row.ours)
    onnx_rows = [r.ours for r in reports["onnx"].rows]
    assert sum("native_cells=False (Scan" in label for label in onnx_rows) == 3


def test_runner_labels_read_the_generated_module_and_graph() -> None:
    model = seqdsl.load(SPECS / "lstm.yaml", {"d": 4, "h": 4})
    assert torch_runner(to_module(model)) == "torch.lstm"
    assert torch_runner(to_module(model, native_cells=False)) == "generic loop"
    assert onnx_form(export(model)).startswith("LSTM op")
    assert onnx_form(export(model, native_cells=False)).startswith("Scan (body ")


def test_top_table_and_json(tmp_path, capsys) -> None:
    path = tmp_path / "rows.json"
    report = bench_run.main(["--tiny", "--reps", "1", "--warmup", "0", "--threads", "1", "--only", "irnn,memory",
                             "--json", str(path)])
    printed = capsys.readouterr().out
    table = top_table(report)
    assert table[0] == "| workload | now | target | status | x GEMM floor |"
    assert len(table) == 2 + sum(bool(r.headline) for r in report.rows) and len(table) > 4
    assert "\n".join(table) in printed
    rows = json.loads(path.read_text())["rows"]
    assert [r["ours"] for r in rows] == [r.ours for r in report.rows]
    assert all(len(r["ours_t"]["times_ms"]) == 1 for r in rows)
    print_report(report)  # prints again without failing


def test_unknown_workload_is_refused() -> None:
    with pytest.raises(SystemExit) as info:
        bench_run.main(["--only", "nonsense"])
    assert info.value.code == 2
