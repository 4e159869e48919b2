"""`seqdsl graph` is bounded like `validate`: every figure under the cap is laid out and rendered by Graphviz within
2 s of CPU, and one above it is refused before Graphviz starts, with one located error that names the cap and the
ways out. The hostile shapes (tests/hostile_figures.py) are those that make `dot` slow: long edges side by side
(inputs read by every equation of a chain), many module calls, `repeat=`, unrolled loops. Graphviz's CPU time is
that of the child process (`RUSAGE_CHILDREN`), which, unlike wall time, does not grow when the machine is busy."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import hostile_figures as hostile

from seqdsl import cli as seqdsl_cli

import seqdsl
from seqdsl import render
from seqdsl.errors import SpecError
from seqdsl.figure import MAX_FIGURE, figure

resource = pytest.importorskip("resource")  # POSIX: the CPU time of a child, and the limit on it
CPU_SECONDS = 2.0  # the README's budget; under the cap the worst shapes take about a third of it on a quiet machine


def graphviz_cpu(text: str, unroll: int | None = None, depth: int | None = None) -> tuple[str, float]:
    """("drawn" | "refused" | "stopped", Graphviz's CPU seconds) for the figure of ``text`` under the default cap."""
    model = seqdsl.loads(text, file="x.yaml", limits=seqdsl.Limits(nodes=100_000))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        svg = render.render(figure(model, unroll=unroll, depth=depth, max_size=MAX_FIGURE), "svg")
        outcome = "drawn" if b"<svg" in svg else "empty"
    except SpecError as exc:
        assert exc.code == "E0423" and (exc.loc.line, exc.loc.col) == (1, 1), exc.format()
        outcome = "refused"
    except render.RenderError:
        outcome = "stopped"  # the CPU limit: the estimate let through a figure it should have refused
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return outcome, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


SHAPES = {  # name -> (spec text, unroll, depth): the largest of each shape under the cap, and some over it
    "fanout_1x43": (hostile.fanout(1, 43), None, None),  # cost 1,979
    "fanout_2x25": (hostile.fanout(2, 25), None, None),  # 1,878
    "fanout_4x14": (hostile.fanout(4, 14), None, None),  # 1,763
    "fanout_8x8": (hostile.fanout(8, 8), None, None),  # 1,713
    "fanout_10x10": (hostile.fanout(10, 10), None, None),  # 4,271: 2.8 s if drawn
    "chain_990": (hostile.chain(990), None, None),  # 1,983
    "calls_28": (hostile.calls(28), None, None),  # 1,907
    "calls_40": (hostile.calls(40), None, None),  # 3,683: 3 s if drawn
    "calls_40_depth_0": (hostile.calls(40), None, 0),  # the same, each call one box
    "repeat_22": (hostile.stacked(22), None, None),  # 1,917
    "repeat_4_unroll_30": (hostile.stacked(4), 30, None),  # 1,963
    "repeat_10_unroll_64": (hostile.stacked(10), 64, None),  # 10,343
    "recurrent_24": (hostile.recurrent(24), None, None),  # 1,858
    "recurrent_30_unroll_64": (hostile.recurrent(30), 64, None),
}


@pytest.mark.parametrize("name", SHAPES)
def test_hostile_figures_are_drawn_within_2_s_or_refused(name: str):
    outcome, cpu = graphviz_cpu(*SHAPES[name])
    assert outcome in ("drawn", "refused"), (name, outcome)
    assert cpu < CPU_SECONDS, f"{name}: Graphviz took {cpu:.2f} s of CPU"


@settings(max_examples=12, deadline=None, derandomize=True)
@given(shape=st.sampled_from(["fanout", "chain", "calls", "repeat", "recurrent"]), n=st.integers(2, 60),
       k=st.integers(1, 8), unroll=st.sampled_from([None, None, 3, 16, 64]))
def test_drawn_hostile_figures_stay_in_the_budget(shape: str, n: int, k: int, unroll: int | None):
    text = {"fanout": lambda: hostile.fanout(k, n), "chain": lambda: hostile.chain(20 * n),
            "calls": lambda: hostile.calls(n), "repeat": lambda: hostile.stacked(n),
            "recurrent": lambda: hostile.recurrent(n)}[shape]()
    outcome, cpu = graphviz_cpu(text, unroll=unroll)
    assert outcome in ("drawn", "refused"), outcome
    assert cpu < CPU_SECONDS, f"Graphviz took {cpu:.2f} s of CPU"


def test_an_over_cap_figure_is_one_error_naming_the_cap_and_the_ways_out(tmp_path: Path):
    spec = tmp_path / "calls.yaml"
    spec.write_text(hostile.calls(40))
    runner = CliRunner()
    done = runner.invoke(seqdsl_cli.app, ["graph", str(spec), "-o", str(tmp_path / "calls.svg")])
    assert done.exit_code == 2, done.output
    assert done.output.startswith(f"{spec}:1:1: error[E0423]:") and done.output.count("error") == 1, done.output
    for way_out in ("--depth", "--module", "--max-figure", f"{MAX_FIGURE:,}"):
        assert way_out in done.output
    assert not (tmp_path / "calls.svg").exists()
    boxed = runner.invoke(seqdsl_cli.app, ["graph", str(spec), "--depth", "0", "-o", str(tmp_path / "boxed.svg")])
    assert boxed.exit_code == 0, boxed.output  # a way out that the message names
    text = runner.invoke(seqdsl_cli.app, ["graph", str(spec)])  # DOT text: nothing is laid out, nothing capped
    assert text.exit_code == 0 and text.output.startswith("// made by seqdsl graph")
    raised = runner.invoke(seqdsl_cli.app, ["graph", str(spec), "--max-figure", "1000", "-o", str(tmp_path / "r.svg")])
    assert raised.exit_code == 2 and "cap of 1,000" in raised.output


def test_graphviz_is_stopped_at_its_cpu_limit():
    dot = figure(seqdsl.loads(hostile.fanout(10, 10), file="x.yaml"))  # 2.8 s of layout; not capped here
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with pytest.raises(render.RenderError) as info:
        render.render(dot, "svg", cpu_seconds=1)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert "1 s of CPU" in str(info.value) and "--max-figure" in str(info.value)
    assert (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime) < 2.5
