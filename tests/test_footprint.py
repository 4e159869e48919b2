"""The build's check run is bounded before anything runs: its values' memory (`--max-memory`), its loop steps
(`--max-steps`) and what this machine can hold, each a located error (`seqdsl.footprint`, `seqdsl.compilers.build`)."""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ROOT, SPECS

import seqdsl
from seqdsl.compilers.build import build, example_inputs, run_torch
from seqdsl.compilers.memory import check_memory, memory_needed, physical_memory
from seqdsl.compilers.torch_module import to_module
from seqdsl.errors import SpecError
from seqdsl.footprint import DTYPE_BYTES, check_footprint, footprint

NO_PARAMS = textwrap.dedent("""\
    name: wide
    inputs:
      x: [B, T, 1000000000000]
    graph:
      y: tanh(x)
    outputs:
      y: y
    """)


def seqdsl_cli(*args: str, limit_memory: int | None = None) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        if limit_memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit_memory, limit_memory))

    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, preexec_fn=limit)


@pytest.mark.parametrize("spec", ["rnn", "lstm", "seq2seq", "hopfield", "generator", "transformer_encoder"])
@settings(max_examples=4, deadline=None)
@given(batch=st.integers(1, 4), steps=st.integers(1, 6))
def test_largest_value_and_steps_match_a_real_run(spec: str, batch: int, steps: int):
    """What the IR says before running is what PyTorch then holds: every output fits under `largest`, and the
    total counts each output; a loop over T runs T steps, a `steps: K` loop K."""
    model = seqdsl.load(SPECS / f"{spec}.yaml")
    inputs = example_inputs(model, batch, steps)
    lengths = {d: inputs[n.name].shape[i] for n in model.input_nodes() for i, d in enumerate(n.shape)
               if isinstance(d, str)}
    fp = footprint(model, lengths)
    outputs = run_torch(to_module(model), inputs)
    assert max(v.nbytes for v in outputs.values()) <= fp.largest_bytes
    assert sum(v.nbytes for v in [*outputs.values(), *inputs.values()]) <= fp.activations
    loops = [n for n in seqdsl.ir.all_nodes(model.graph) if n.op == "loop"]
    want = sum(seqdsl.ir.loop_of(n).steps or lengths[seqdsl.ir.loop_of(n).time] for n in loops)
    assert fp.steps == want


def test_dtype_sizes_are_numpys():
    for name, size in DTYPE_BYTES.items():
        assert np.dtype(name).itemsize == size


@pytest.mark.parametrize("args, code, where, words", [
    (["specs/hopfield.yaml", "--set", "K=1000000000000"], "E0602", "specs/hopfield.yaml:18:3",
     "1,000,000,000,000 loop steps, above the limit of 100,000"),
    (["specs/rnn.yaml", "--seq-len", "200000"], "E0602", "specs/rnn.yaml:12:3", "200,000 loop steps"),
    (["{wide}"], "E0601", "{wide}:3:3", "for its values, above the limit of 4.0 GiB"),
    (["specs/rnn.yaml", "--seq-len", "20000000", "--max-steps", "100000000"], "E0601", "specs/rnn.yaml:17:6",
     "above the limit of 4.0 GiB"),
    (["specs/lstm.yaml", "--set", "h=1000000", "--max-params", "100000000000000"], "E0601", "specs/lstm.yaml:14:3",
     "of memory, more than this machine's"),
])
def test_a_check_run_too_large_is_refused_before_it_runs(tmp_path: Path, args: list[str], code: str, where: str,
                                                         words: str):
    from typer.testing import CliRunner

    from seqdsl import cli

    (tmp_path / "wide.yaml").write_text(NO_PARAMS)
    fill = {"wide": str(tmp_path / "wide.yaml")}
    start = time.monotonic()
    r = CliRunner().invoke(cli.app, ["build", *(a.format(**fill) for a in args), "-o", str(tmp_path / "out")])
    assert time.monotonic() - start < 10
    assert r.exit_code == 2, r.output
    first = r.stderr.splitlines()[0]
    assert first.startswith(f"{where.format(**fill)}: error[{code}]: ") and words in first, r.stderr
    assert "help:" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wide.yaml"]  # nothing allocated, nothing written


def test_the_limits_can_be_raised(tmp_path: Path):
    model = seqdsl.load(SPECS / "hopfield.yaml", {"K": 300})
    with pytest.raises(SpecError) as info:
        check_footprint(model, {"B": 3, "T": 7, "P": 9}, max_steps=299)
    assert info.value.code == "E0602"
    with pytest.raises(SpecError) as info:
        check_footprint(model, {"B": 3, "T": 7, "P": 9}, max_bytes=1000)
    assert info.value.code == "E0601" and "`states`" in info.value.found
    result = build(SPECS / "hopfield.yaml", tmp_path / "h", sizes={"K": 300}, max_steps=300, max_memory=10**6)
    assert result.outputs["states"][:3] == ["B", 300, 16]


def test_a_model_this_machine_cannot_hold_is_refused(tmp_path: Path):
    model = seqdsl.load(SPECS / "lstm.yaml")
    fp = footprint(model, {"B": 3, "T": 7})
    check_memory(model, fp, available=10**9)  # fine
    with pytest.raises(SpecError) as info:
        check_memory(model, fp, available=10_000)
    err = info.value
    assert err.code == "E0601" and "more than this machine's" in err.message and "6,272 parameters" in err.found
    assert (err.loc.line, err.loc.col) == (14, 3)  # the largest parameters


def test_failing_to_allocate_is_an_exit_2_error_with_the_size(tmp_path: Path):
    """Under a memory limit the machine-size check cannot see (ulimit -v): the allocation fails and says so."""
    model = seqdsl.load(SPECS / "rnn.yaml", {"h": 40_000})  # 1.6e9 parameters: 6 GiB
    have = physical_memory()
    if have is None or memory_needed(model, footprint(model, {"B": 3, "T": 7})) > have:
        pytest.skip("this machine is too small to pass the machine-size check with a model above the limit")
    r = seqdsl_cli("build", str(SPECS / "rnn.yaml"), "-o", str(tmp_path / "out"), "--set", "h=40000",
                   "--max-params", "2000000000", limit_memory=4 * 2**30)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: out of memory building `rnn`: 1,600,680,000 parameters (6.0 GiB)"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
