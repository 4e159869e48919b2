"""The build's check of onnxruntime against PyTorch judges numbers as numbers (`seqdsl.compilers.parity`): a difference of
a few float32 ulp passes at any scale, inf/-inf/NaN alike in both backends is a located warning and a written
build, and a real disagreement is still ParityError (exit 1)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from typer.testing import CliRunner

from seqdsl import cli
import seqdsl.compilers.build as build_module
from seqdsl.compilers.build import ParityError, build
from seqdsl.compilers.parity import ATOL, RTOL, compare

SHAPES = hnp.array_shapes(min_dims=1, max_dims=3, max_side=5)


def _values(data: st.DataObject, scale: float) -> np.ndarray:
    shape = data.draw(SHAPES)
    unit = data.draw(hnp.arrays(np.float32, shape, elements=st.floats(-1, 1, width=32)))
    return (unit * np.float32(scale)).astype(np.float32)


def _ulps(x: np.ndarray, data: st.DataObject, most: int) -> np.ndarray:
    """``x`` moved by up to ``most`` float32 ulp, element by element: what two correct kernels may differ by."""
    out = x.copy()
    flat = out.reshape(-1)
    for i in range(flat.size):
        for _ in range(data.draw(st.integers(0, most))):
            flat[i] = np.nextafter(flat[i], np.float32(np.inf) if data.draw(st.booleans()) else np.float32(-np.inf))
    return out


@settings(max_examples=150, deadline=None)
@given(data=st.data(), exponent=st.floats(-3, 6))
def test_a_few_ulp_pass_at_every_scale_and_a_real_difference_fails(data: st.DataObject, exponent: float):
    want = _values(data, 10.0 ** exponent)
    got = _ulps(want, data, 8)
    result = compare({"y": want}, {"y": got})
    assert result.ok, result.failure()
    assert result.outputs["y"].max_abs_diff == pytest.approx(float(np.abs(got.astype(np.float64) - want).max()))
    # one element off by a part in a hundred of the output's scale (and more than atol): a disagreement
    i = data.draw(st.integers(0, want.size - 1))
    wrong = got.copy().reshape(-1)
    wrong[i] = want.reshape(-1)[i] + np.float32(max(1e-2 * 10.0 ** exponent, 10 * ATOL))
    bad = compare({"y": want}, {"y": wrong.reshape(want.shape)})
    assert not bad.ok and bad.outputs["y"].disagree == 1 and "`y`" in bad.failure()


SPECIAL = st.sampled_from([np.inf, -np.inf, np.nan])


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_inf_and_nan_alike_in_both_agree_and_any_other_pairing_disagrees(data: st.DataObject):
    want = _values(data, 1.0)
    flat = want.reshape(-1)
    spots = data.draw(st.lists(st.integers(0, flat.size - 1), min_size=1, unique=True))
    for i in spots:
        flat[i] = data.draw(SPECIAL)
    same = compare({"y": want}, {"y": want.copy()})
    assert same.ok and same.outputs["y"].non_finite == len(spots) and same.non_finite == ["y"]
    i = data.draw(st.sampled_from(spots))
    other = data.draw(st.sampled_from([v for v in (np.inf, -np.inf, np.nan, 0.5)
                                       if not (v == flat[i] or (np.isnan(v) and np.isnan(flat[i])))]))
    wrong = want.copy().reshape(-1)
    wrong[i] = other
    assert not compare({"y": want}, {"y": wrong.reshape(want.shape)}).ok
    finite = [j for j in range(flat.size) if j not in spots]
    if finite:  # a finite value against a non-finite one
        wrong = want.copy().reshape(-1)
        wrong[finite[0]] = data.draw(SPECIAL)
        assert not compare({"y": want}, {"y": wrong.reshape(want.shape)}).ok


def _spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_readout_scaled_for_large_targets_builds(tmp_path: Path):
    spec = _spec(tmp_path, """\
        name: scaled
        imports:
          LSTM: std:lstm.yaml
        sizes: {d: 2, h: 8}
        inputs:
          x: [B, T, d]
        params:
          W_y: [1, h]
        graph:
          lstm: LSTM(x, h=h)
          y: (W_y @ lstm.h_n) * 1e6
        outputs:
          y: y
        """)
    result = build(spec, tmp_path / "out", steps=5)
    record = json.loads((tmp_path / "out" / "build.json").read_text())["check"]
    assert record["atol"] == ATOL and record["rtol"] == RTOL and record["outputs"]["y"]["disagree"] == 0
    assert result.max_abs_diff["y"] == record["outputs"]["y"]["max_abs_diff"]
    assert record["outputs"]["y"]["max_rel_diff"] <= RTOL and not result.warnings


def test_outputs_not_finite_alike_build_with_a_located_warning(tmp_path: Path):
    spec = _spec(tmp_path, """\
        name: over
        sizes: {h: 4}
        inputs:
          x: [B, T, h]
        graph:
          z: x * 2
          big: z * 1e30 * 1e30
          low: 0 - big
          nan: big - big
        outputs:
          z: z
          big: big
          low: low
          nan: nan
        """)
    result = build(spec, tmp_path / "out", steps=4)
    record = result.check["outputs"]
    assert record["z"]["non_finite"] == 0 and all(record[k]["non_finite"] for k in ("big", "low", "nan"))
    [warning] = [w for w in result.warnings if "inf or NaN" in w]
    assert warning.startswith(f"{spec}:7:8: warning: ") and "`big`" in warning and "`nan`" in warning
    assert (tmp_path / "out" / "model.onnx").exists()
    json.loads((tmp_path / "out" / "build.json").read_text(), parse_constant=pytest.fail)  # plain JSON numbers


def test_overflow_in_a_loop_points_at_its_equation(tmp_path: Path):
    spec = _spec(tmp_path, """\
        name: grows
        sizes: {d: 3, h: 3}
        inputs:
          x: [B, T, d]
        params:
          W: [h, d]
        recurrent:
          state:
            h: [B, h]
          step:
            a: W @ x
            h: h[t-1] * 1e12 + a
        outputs:
          y: h
        """)
    result = build(spec, tmp_path / "out", steps=6)
    [warning] = [w for w in result.warnings if "inf or NaN" in w]
    assert warning.startswith(f"{spec}:12:8: warning: ") and "is `h`" in warning


def test_a_real_disagreement_is_exit_1_and_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from seqdsl.compilers import onnx_runtime

    real = onnx_runtime.run

    def off_by_a_little(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = real(*args, **kwargs)
        name = next(iter(result.outputs))
        result.outputs[name] = result.outputs[name] * np.float32(1.01) + np.float32(1e-3)
        return result

    monkeypatch.setattr(onnx_runtime, "run", off_by_a_little)
    spec = Path(build_module.__file__).resolve().parent.parent / "specs" / "gru.yaml"
    with pytest.raises(ParityError, match="values differ"):
        build(spec, tmp_path / "lib", sizes={"h": 4}, steps=3)
    r = CliRunner().invoke(cli.app, ["build", str(spec), "-o", str(tmp_path / "cli"), "--set", "h=4",
                                     "--seq-len", "3"])
    assert r.exit_code == 1 and "check failed" in r.output and "a seqdsl bug" in r.output, r.output
    assert not (tmp_path / "lib").exists() and not (tmp_path / "cli").exists()


def test_train_ends_in_the_same_check(tmp_path: Path):
    from seqdsl.compilers.training import TrainOptions, train
    from seqdsl import tasks

    data = tasks.adding(64, 5, seed=0)
    data["target"] = data["target"] * 300  # targets in the hundreds, an unnormalised regression
    tasks.save(data, str(tmp_path / "train.npz"))
    spec = Path(build_module.__file__).resolve().parent.parent / "specs" / "adding_lstm.yaml"
    result = train(spec, tmp_path / "train.npz", tmp_path / "out", {"h": 4},
                   options=TrainOptions(steps=3, lr=5.0, progress="quiet", threads=1))
    assert result.build is not None and result.build.check["rtol"] == RTOL


def test_weights_at_the_float32_limit_build_with_the_overflow_located(tmp_path: Path):
    # accepted by the weights check; W @ x overflows, and the backends then differ (tanh of +inf or of -inf)
    rng = np.random.default_rng(0)
    weights = {"W": np.full((4, 4), 3.4e38, np.float32), "U": rng.standard_normal((4, 4)).astype(np.float32),
               "b": np.zeros(4, np.float32)}
    spec = Path(build_module.__file__).resolve().parent.parent / "specs" / "rnn.yaml"
    result = build(spec, tmp_path / "out", sizes={"d": 4, "h": 4}, steps=5, weights=weights)
    [warning] = [w for w in result.warnings if "overflow" in w or "inf or NaN" in w]
    assert warning.startswith(f"{spec}:15:8: warning: ") and "is `h`" in warning


CAUSAL = """\
    name: causal
    sizes: {d: 4}
    inputs:
      x: [B, T, d]
    params:
      W: [d, d]
    graph:
      q: W @ x
      s: causal(q @ transpose(x))
    outputs:
      s: s
    """


def test_causal_scores_are_minus_inf_by_design_and_a_difference_in_them_is_still_a_bug(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    spec = _spec(tmp_path, CAUSAL)
    result = build(spec, tmp_path / "out", steps=4)
    assert result.check["outputs"]["s"]["non_finite"] == 3 * 6  # B=3 rows of the 4x4 upper triangle
    [warning] = [w for w in result.warnings if "inf or NaN" in w]
    assert warning.startswith(f"{spec}:9:6: warning: ")

    from seqdsl.compilers import onnx_runtime

    real = onnx_runtime.run

    def wrong(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = real(*args, **kwargs)
        out.outputs["s"] = np.where(np.isfinite(out.outputs["s"]), out.outputs["s"] + 1, out.outputs["s"])
        return out

    monkeypatch.setattr(onnx_runtime, "run", wrong)
    with pytest.raises(ParityError):  # -inf from a constant is no overflow: it excuses nothing
        build(spec, tmp_path / "bad", steps=4)


def test_an_overflow_in_one_output_excuses_no_disagreement_in_another(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch):
    """`big` overflows by design; `z` stays finite in both backends, so a difference in `z` is still a bug."""
    from seqdsl.compilers import onnx_runtime

    spec = _spec(tmp_path, """\
        name: over
        sizes: {h: 4}
        inputs:
          x: [B, T, h]
        graph:
          z: x * 2
          big: z * 1e30 * 1e30
        outputs:
          z: z
          big: big
        """)
    real = onnx_runtime.run

    def wrong_z(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = real(*args, **kwargs)
        result.outputs["z"] = result.outputs["z"] + np.float32(1.0)
        return result

    build(spec, tmp_path / "fine", steps=3)  # the overflow alone: a warning, the build written
    monkeypatch.setattr(onnx_runtime, "run", wrong_z)
    with pytest.raises(ParityError, match="`z`"):
        build(spec, tmp_path / "lib", steps=3)
    assert not (tmp_path / "lib").exists()
