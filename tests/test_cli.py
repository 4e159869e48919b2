"""The command line as a user meets it: summaries on success, one located error block (no traceback) on failure."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ROOT, SPECS


def seqdsl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=300)


def test_validate_ok():
    r = seqdsl("validate", str(SPECS / "lstm.yaml"))
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout and "6,272 parameters" in r.stdout


def test_validate_bad_spec_exits_2_with_location_and_no_traceback(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((SPECS / "rnn.yaml").read_text().replace("+ b)", "+ bb)"))
    r = seqdsl("validate", str(bad))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    first = r.stderr.splitlines()[0]
    assert first.startswith(f"{bad}:15:34: error[E0301]: unknown name `bb`")
    assert "help: did you mean `b`?" in r.stderr
    assert "^^" in r.stderr


def test_missing_file_is_a_spec_error(tmp_path: Path):
    r = seqdsl("validate", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "nope.yaml" in r.stderr


def test_bad_set_option():
    r = seqdsl("validate", str(SPECS / "rnn.yaml"), "--set", "h=abc")
    assert r.returncode == 2 and "NAME=INTEGER" in r.stderr
    r = seqdsl("validate", str(SPECS / "rnn.yaml"), "--set", "hidden=4")
    assert r.returncode == 2 and "E0309" in r.stderr


def test_build_prints_summary_and_writes_files(tmp_path: Path):
    out = tmp_path / "gru"
    r = seqdsl("build", str(SPECS / "gru.yaml"), "-o", str(out), "--set", "h=8", "--seq-len", "4", "--batch", "2")
    assert r.returncode == 0, r.stderr
    for words in ["parameters", "input x", "output y", "CPUExecutionProvider", "max abs diff"]:
        assert words in r.stdout
    assert "CUDA" not in r.stdout + r.stderr  # no provider noise on a machine without a GPU
    assert {p.name for p in out.iterdir()} == {"model.py", "weights.safetensors", "model.onnx", "build.json"}
    r = seqdsl("build", str(SPECS / "gru.yaml"), "-o", str(out), "--json")
    summary = json.loads(r.stdout)
    assert summary["param_count"] == 3 * (16 * 32 + 32 * 32 + 32)
    assert summary["max_abs_diff"]["y"] < 1e-4


def test_schema_command_prints_json_schema():
    r = seqdsl("schema")
    schema = json.loads(r.stdout)
    assert schema["title"] == "seqdsl spec"


def test_inspect_counts_parameters_per_module():
    r = seqdsl("inspect", str(SPECS / "classifier.yaml"))
    assert r.returncode == 0, r.stderr
    assert "lstm" in r.stdout and "6,272" in r.stdout and "8,037" in r.stdout


def test_too_large_model_is_refused_before_allocation(tmp_path: Path):
    r = seqdsl("build", str(SPECS / "lstm.yaml"), "-o", str(tmp_path / "big"), "--set", "h=100000")
    assert r.returncode == 2 and "E0410" in r.stderr and "--max-params" in r.stderr
    assert not (tmp_path / "big").exists()


def test_unused_equation_is_a_warning(tmp_path: Path):
    spec = tmp_path / "w.yaml"
    spec.write_text((SPECS / "rnn.yaml").read_text().replace("    h: tanh", "    junk: tanh(W @ x)\n    h: tanh"))
    r = seqdsl("validate", str(spec))
    assert r.returncode == 0
    assert "warning[W0401]: value `junk` is never used" in r.stderr


def test_internal_failure_exits_1_and_says_it_is_a_bug(monkeypatch, tmp_path: Path):
    from typer.testing import CliRunner

    from seqdsl import cli
    import seqdsl.compilers.build

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(seqdsl.compilers.build, "build", broken)
    result = CliRunner().invoke(cli.app, ["build", str(SPECS / "rnn.yaml"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "internal error: RuntimeError: boom" in result.output and "bug in seqdsl" in result.output
    assert "Traceback" not in result.output


INTEGER_OPTIONS = ["--seq-len", "--batch", "--max-params", "--max-steps", "--set h=", "--axis-len T="]


@settings(max_examples=60, deadline=None)
@given(option=st.sampled_from([*INTEGER_OPTIONS, "--max-memory"]),
       value=st.one_of(st.text(max_size=8), st.sampled_from(["²", "١٢", "１２", "1_000", "+-1", "0", "-3", "1e3",
                                                              " 7", "4G", "9" * 5000, "8GiB", "12x"])))
def test_every_number_on_the_command_line_parses_one_way(option: str, value: str):
    """An ASCII integer (a byte count may end in K/M/G/T) is the one form; anything else (`²`, Arabic-Indic or
    full-width digits, `1_000`) is one line naming the option, exit 2: never a traceback."""
    from typer.testing import CliRunner

    from seqdsl import cli

    name, _, prefix = option.partition(" ")
    args = [name, prefix + value] if prefix else [name, value]
    r = CliRunner().invoke(cli.app, ["build", "/nonexistent/x.yaml", *args])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and r.stdout == ""
    digits = re.fullmatch(r"\s*[+-]?[0-9]{1,100}\s*", value, re.ASCII)
    unit = re.fullmatch(r"\s*[0-9]{1,100}\s*([KMGT]i?B?|B)?\s*", value, re.ASCII | re.IGNORECASE)
    valid = (unit if name == "--max-memory" else digits) and int(re.sub(r"\D", "", value) or 0) >= 1 \
        and not value.strip().startswith("-")
    if valid:
        assert "nonexistent" in r.stderr  # the value was taken; the spec is what is missing
    else:
        first = r.stderr.splitlines()[0]
        assert name in first or (name == "--set" and "size `h` must be a positive integer" in first), r.stderr


def test_output_directory_mistake_exits_2(tmp_path: Path):
    """`-o .` (and `/`, `..`, a file, a folder of other files: tests/test_output_dir.py) is one line, exit 2."""
    (tmp_path / "cwd").mkdir()
    r = seqdsl("build", str(SPECS / "rnn.yaml"), "-o", ".", cwd=tmp_path / "cwd")
    assert r.returncode == 2 and r.stderr == "error: -o .: is the current directory; give a directory of its own, " \
        "e.g. -o build/NAME\n"
    assert sorted(os.listdir(tmp_path)) == ["cwd"] and os.listdir(tmp_path / "cwd") == []
