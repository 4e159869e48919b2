"""The default thread count (seqdsl.compilers.threads): 1 for a small step or on a busy machine, else one per core;
an explicit --threads wins; a bad one is exit 2 on every command that takes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import SPECS

from seqdsl.compilers.threads import MAX_THREADS, SMALL_WORK, ThreadsError, choose_threads, describe, step_work

WORK = st.floats(0, 1e13, allow_nan=False)
CORES = st.integers(1, 256)
LOAD = st.floats(0, 512, allow_nan=False)


@given(WORK, WORK, CORES, LOAD, st.integers(1, 16))
def test_more_work_never_gets_fewer_threads(a: float, b: float, cores: int, load: float, processes: int):
    small, large = sorted((a, b))
    n_small, _ = choose_threads(small, cores=cores, load=load, processes=processes)
    n_large, _ = choose_threads(large, cores=cores, load=load, processes=processes)
    assert 1 <= n_small <= n_large <= max(1, cores // processes)


@given(WORK, CORES, LOAD)
def test_small_steps_and_busy_machines_get_one_thread(work: float, cores: int, load: float):
    n, why = choose_threads(work, cores=cores, load=load)
    if work < SMALL_WORK:
        assert (n, why.split(":")[0]) == (1, "small model")
    elif cores == 1:
        assert n == 1
    elif load > cores - 0.5:
        assert n == 1 and why.startswith("busy machine")
    else:
        assert n == cores
    line = describe(n, why)
    assert line.startswith(f"threads: {n} (") and line.endswith("; --threads to change)") and "\n" not in line


@given(st.integers(1, MAX_THREADS), WORK, CORES, LOAD)
def test_an_explicit_count_wins(requested: int, work: float, cores: int, load: float):
    assert choose_threads(work, requested, cores=cores, load=load) == (requested, "--threads")
    assert describe(requested, "--threads") == f"threads: {requested} (--threads)"


@pytest.mark.parametrize("bad", [0, -1, MAX_THREADS + 1, True, 1.5, "2", 10 ** 30])
def test_a_bad_count_is_refused(bad: object):
    with pytest.raises(ThreadsError, match="--threads must be a whole number"):
        choose_threads(1e12, bad)


def test_the_work_of_a_step():
    assert step_work(6272, 32) == 2 * 6272 * 32
    assert step_work(10, 0) == 20  # a batch is at least one sequence


@pytest.mark.parametrize("command", ["build", "run", "train"])
@pytest.mark.parametrize("bad", ["0", "-2", "abc", "1.5", str(MAX_THREADS + 1)])
def test_a_bad_threads_option_is_exit_2(command: str, bad: str, tmp_path: Path):
    from typer.testing import CliRunner

    from seqdsl import cli

    args = {"build": [str(SPECS / "rnn.yaml"), "-o", str(tmp_path / "o")],
            "run": [str(tmp_path / "m.onnx"), "-i", f"x={tmp_path / 'x.npy'}"],
            "train": [str(SPECS / "rnn.yaml"), "--data", str(tmp_path / "d.npz")]}[command]
    r = CliRunner().invoke(cli.app, [command, *args, "--threads", bad])
    assert r.exit_code == 2, r.output
    assert "--threads" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


def _matmul_onnx(path: Path, n: int) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(n, dtype=np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", n])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def test_run_says_the_threads_the_rule_chose(tmp_path: Path):
    import numpy as np
    from typer.testing import CliRunner

    from seqdsl import cli
    from seqdsl.compilers import onnx_runtime as rt

    _matmul_onnx(tmp_path / "m.onnx", 8)
    np.save(tmp_path / "x.npy", np.ones((4, 8), np.float32))
    args = ["run", str(tmp_path / "m.onnx"), "-i", f"x={tmp_path / 'x.npy'}"]
    r = CliRunner().invoke(cli.app, args)
    assert r.exit_code == 0, r.output
    assert f"threads: 1 (small model: {step_work(64, 4) / 1e6:.3g} MFLOP/step; --threads to change)" in r.stdout
    assert r.stdout.splitlines()[-1].startswith("provider: ")
    r = CliRunner().invoke(cli.app, [*args, "--threads", "3"])
    assert r.exit_code == 0 and "threads:" not in r.output, r.output  # a given count is not repeated
    session, _ = rt.make_session(tmp_path / "m.onnx", "cpu", threads=3)
    assert session.get_session_options().intra_op_num_threads == 3


def test_build_checks_with_the_chosen_threads_and_keeps_them_out_of_build_json(tmp_path: Path):
    import torch

    from seqdsl.compilers.build import build

    before = torch.get_num_threads()
    result = build(SPECS / "rnn.yaml", tmp_path / "out")
    assert result.threads.startswith("threads: 1 (small model: ")
    assert torch.get_num_threads() == before  # a library call leaves the process as it found it
    assert "threads" not in json.loads((tmp_path / "out" / "build.json").read_text())
