"""`seqdsl inspect --json` holds every row the table shows: the inputs, the outputs and each module's parameters by
name and shape, for every shipped spec."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from conftest import SPECS

from seqdsl import cli
import seqdsl

SHIPPED = sorted(SPECS.glob("*.yaml"))


@pytest.mark.parametrize("spec", SHIPPED, ids=lambda p: p.stem)
def test_every_row_of_the_table_is_in_the_json(spec: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(cli, "out", Console(highlight=False, soft_wrap=True, width=4000))  # no wrapped cells
    text = CliRunner().invoke(cli.app, ["inspect", str(spec)])
    assert text.exit_code == 0, text.output
    data = json.loads(CliRunner().invoke(cli.app, ["inspect", str(spec), "--json"]).stdout)
    shown = lambda d: f"[{', '.join(map(str, d['shape']))}] {d['dtype']}"  # noqa: E731
    lines = text.stdout.splitlines()
    io_rows = [m.groups() for m in map(re.compile(r"  (input|output) +(\S+): (.*)").fullmatch, lines) if m]
    assert io_rows == [("input", k, shown(v)) for k, v in data["inputs"].items()] + \
        [("output", k, shown(v)) for k, v in data["outputs"].items()]
    start = next(i for i, line in enumerate(lines) if "┃ module" in line and "parameters" in line)
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("│"):
            break
        rows.append([cell.strip() for cell in line.strip("│").split("│")])
    *modules, total = rows
    assert total == ["total", "", f"{data['param_count']:,}"]
    assert modules == [[g["module"] or "(top)", ", ".join(f"{n} {s}" for n, s in g["params"].items()),
                        f"{g['count']:,}"] for g in data["parameters"]]
    model = seqdsl.load(spec)  # and the JSON is the model's: every parameter once, under its module
    assert {f"{g['module']}.{n}".lstrip("."): tuple(s) for g in data["parameters"] for n, s in g["params"].items()} \
        == {p.name: tuple(p.shape) for p in model.params.values()}
    assert list(data["inputs"]) == [n.name for n in model.input_nodes()]
    assert data["param_count"] == model.param_count
