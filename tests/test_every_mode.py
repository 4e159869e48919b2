"""Every shipped spec builds in every documented mode, and the modes agree with each other.

Modes: the default (passes on), ``--as-written`` (no passes) and ``--unroll`` (no Scan: one fixed length per time
axis). Each build checks its own ONNX file in onnxruntime against the PyTorch module; on top of that the three
ONNX files of one spec must give the same numbers on the same inputs (so the unrolled graph equals the loop, and
the optimised graph the equations as written). The recurrent specs are also built as derived variants: run in
reverse, over padded batches (``lengths:``), with a decoder, and with several outputs naming one value.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import ROOT, SPECS

import seqdsl
from seqdsl.compilers.build import UsageError, build, example_inputs, loop_axes
from seqdsl.compilers.onnx_runtime import run
from seqdsl.errors import SpecError
from seqdsl.ir import Graph, Node, all_nodes, loop_of
from seqdsl.passes.unroll import UnrollError

MODES = {"default": {}, "as_written": {"optimize_passes": False}, "unroll": {"unroll": True}}
STEPS, BATCH = 4, 3
SHIPPED = sorted(SPECS.glob("*.yaml"))  # specs/lib/ holds modules only


def _stops(model: seqdsl.Model) -> bool:
    return any(n.op == "loop" and loop_of(n).stop is not None for n in all_nodes(model.graph))


def _build_every_mode(spec: Path, out: Path) -> dict[str, Path]:
    """Build ``spec`` in each mode (its own check runs); the folder of each build that there is."""
    model = seqdsl.load(spec)
    axis_lengths = {a: STEPS + 1 + i for i, a in enumerate(x for x in loop_axes(model) if x != "T")}
    built = {}
    for mode, options in MODES.items():
        if mode == "unroll" and _stops(model):  # a data-dependent number of steps: refused as a usage error
            with pytest.raises(UsageError, match="cannot be unrolled"):
                build(spec, out / mode, steps=STEPS, batch=BATCH, axis_lengths=axis_lengths, **options)
            continue
        result = build(spec, out / mode, steps=STEPS, batch=BATCH, axis_lengths=axis_lengths, **options)
        assert max(result.max_abs_diff.values(), default=0.0) <= 1e-4
        if any(n.op == "loop" for n in model.graph):
            assert (result.onnx_form == "unrolled") == (mode == "unroll"), (mode, result.onnx_form)
        else:
            assert result.onnx_form == "none"
        built[mode] = out / mode
    return built


def _modes_agree(spec: Path, built: dict[str, Path], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run every build's model.onnx on ``inputs``; they agree, and weigh the same. Returns the default's outputs."""
    weights = {mode: load_file(str(d / "weights.safetensors")) for mode, d in built.items()}
    outputs = {mode: run(str(d / "model.onnx"), inputs).outputs for mode, d in built.items()}
    want = outputs["default"]
    for mode, got in outputs.items():
        assert weights[mode].keys() == weights["default"].keys()
        for key, value in weights[mode].items():
            np.testing.assert_array_equal(value, weights["default"][key])  # same seed, same parameters
        assert got.keys() == want.keys()
        for name, value in got.items():
            np.testing.assert_allclose(value, want[name], atol=1e-5, rtol=1e-5, err_msg=f"{spec.name} {mode}: {name}")
    return want


def _check_inputs(model: seqdsl.Model) -> dict[str, np.ndarray]:
    others = {a: STEPS + 1 + i for i, a in enumerate(x for x in loop_axes(model) if x != "T")}
    return example_inputs(model, BATCH, STEPS, seed=7, lengths=others)


@pytest.mark.parametrize("spec", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_spec_builds_in_every_mode(spec: Path, tmp_path: Path):
    built = _build_every_mode(spec, tmp_path)
    _modes_agree(spec, built, _check_inputs(seqdsl.load(spec)))


# ------------------------------------------------------------------------------------------- derived variants

# a step value of each recurrent spec that is not a state (None: the cell has none)
NOT_A_STATE = {"rnn": None, "lstm": "f", "gru": "z", "gru_torch": "n", "lstm_peephole": "o",
               "hypernetwork_rnn": "W_h", "lstm_gates": "f"}


def _variant(name: str, *, reverse: bool = False, lengths: bool = False, decoder: bool = True,
             values: bool = True) -> str:
    """specs/<name>.yaml with more outputs naming what it already names (and a decoder's values, a step value's
    final and last), optionally reversed and over padded batches."""
    text = (SPECS / f"{name}.yaml").read_text()
    head = "recurrent:\n" + ("  lengths: lens\n" if lengths else "") + ("  direction: reverse\n" if reverse else "")
    text = text.replace("recurrent:\n", head, 1)
    if lengths:
        text = text.replace("  x: [B, T, d]\n", "  x: [B, T, d]\n  lens: {shape: [B], dtype: int64}\n", 1)
    extra = ["again: h", "h_last: last(h)", "h_final: final(h)"]
    if decoder:
        text = text.replace("\noutputs:\n", "\n  decoder:\n    dec: relu(h)\noutputs:\n", 1)
        extra += ["dec: dec", "dec_again: dec"] + (["dec_final: final(dec)", "dec_last: last(dec)"] if values else [])
    value = NOT_A_STATE[name]
    if values and value:
        extra += [f"v_every: {value}", f"v_final: final({value})", f"v_last: last({value})"]
    return text.rstrip("\n") + "\n" + "".join(f"  {line}\n" for line in extra)


def _copy_of_specs(tmp_path: Path) -> Path:
    """A copy of specs/ (lib/ included), so that a derived spec's imports resolve as the original's do."""
    root = tmp_path / "specs"
    shutil.copytree(SPECS, root)
    return root


EVERY_STEP = {"y", "again", "dec", "dec_again", "v_every"}  # the variants' outputs over time
VARIANTS = {  # name -> options; each is built in every mode
    "repeated_outputs": {"decoder": False, "values": False},  # still a standard cell: the native kernels
    "sunk_decoder": {"values": False},  # the decoder is read only every step: it leaves the loop
    "forward": {},
    "reverse": {"reverse": True},
    "lengths": {"lengths": True},
    "lengths_reverse": {"lengths": True, "reverse": True},
}


@pytest.mark.parametrize("name", sorted(NOT_A_STATE))
def test_recurrent_variants_build_in_every_mode(name: str, tmp_path: Path):
    root = _copy_of_specs(tmp_path)
    x = np.random.default_rng(3).standard_normal((BATCH, STEPS, seqdsl.load(SPECS / f"{name}.yaml").sizes["d"]))
    x = x.astype(np.float32)
    lengths = np.array([STEPS, 1, 2], dtype=np.int64)[:BATCH]
    results: dict[str, dict[str, np.ndarray]] = {}
    for variant, options in VARIANTS.items():
        spec = root / f"{name}_{variant}.yaml"
        spec.write_text(_variant(name, **options))
        built = _build_every_mode(spec, tmp_path / variant)
        results[variant] = _modes_agree(spec, built, {"x": x, **({"lens": lengths} if options.get("lengths") else {})})
        outputs = results[variant]
        for alias, original in (("again", "y"), ("h_final", "h_n"), ("dec_again", "dec")):
            if alias in outputs and original in outputs:  # outputs naming one value are equal
                np.testing.assert_array_equal(outputs[alias], outputs[original])
    # under `lengths:` each row gives what it gives alone, unpadded (packed sequences): the plain variant, run on
    # the row cut to its length, is the reference; every-step outputs are 0 past the row's end
    for padded, plain in (("lengths", "forward"), ("lengths_reverse", "reverse")):
        reference = str(tmp_path / plain / "default" / "model.onnx")
        for b, n in enumerate(lengths):
            alone = run(reference, {"x": x[b:b + 1, :n]}).outputs
            assert alone.keys() == results[padded].keys()
            for out, value in alone.items():
                ours = results[padded][out][b:b + 1]
                if out in EVERY_STEP:
                    assert not ours[:, n:].any(), f"{name} {padded}: {out} past the row's end"
                    ours = ours[:, :n]
                np.testing.assert_allclose(ours, value, atol=1e-5, rtol=1e-5, err_msg=f"{name} {padded}: {out} row {b}")


# ------------------------------------------------------------------------------------------- the command line

def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_unroll_of_a_sunk_decoder_builds_from_the_command_line(tmp_path: Path):
    r = _cli("build", str(SPECS / "seq2seq_attention.yaml"), "--unroll", "--seq-len", "6", "--axis-len", "S=5",
             "-o", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    info = json.loads((tmp_path / "out" / "build.json").read_text())
    assert info["onnx_form"] == "unrolled" and info["unrolled_lengths"] == {"S": 5, "T": 6}


def test_a_block_that_stops_refuses_to_unroll_as_a_usage_error(tmp_path: Path):
    r = _cli("build", str(SPECS / "generator.yaml"), "--unroll", "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and "cannot be unrolled" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_broken_invariant_while_unrolling_is_internal_not_the_users(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Only `UnrollError` is a mistake in the request (exit 2); a pass defining a node twice is a bug (exit 1)."""
    import seqdsl.passes

    with pytest.raises(UnrollError, match="several time axes"):
        seqdsl.passes.unroll(seqdsl.load(SPECS / "seq2seq.yaml"), 4)

    def broken(model: seqdsl.Model, steps: object) -> tuple[seqdsl.Model, bool]:
        graph = Graph()
        graph.add(Node("twice", "const", attrs={"value": 0.0}))
        graph.add(Node("twice", "const", attrs={"value": 0.0}))
        return model, True

    monkeypatch.setattr(seqdsl.passes, "unroll", broken)
    with pytest.raises(AssertionError, match="defined twice") as caught:
        build(SPECS / "rnn.yaml", tmp_path / "out", unroll=True)
    assert not isinstance(caught.value, (ValueError, SpecError))
    assert not (tmp_path / "out").exists()
