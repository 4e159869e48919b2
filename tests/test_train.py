"""`seqdsl train`: trains below the trivial baseline, ships what it trained (checked against torch.nn), reproduces
itself (seed, resume), ignores padding, and turns every kind of bad data into one located error."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors.numpy import load_file

from conftest import ROOT, SPECS

import seqdsl
from seqdsl.compilers.training import TrainOptions, prepare, train
from seqdsl.compilers.training.batches import epoch_plan, shard, take
from seqdsl.compilers.weights import checkpoint_weights
from seqdsl import tasks
from seqdsl.errors import SpecError

QUIET = dict(progress="quiet", build=False, threads=1)  # one thread: two spin-waiting ones crawl on a busy machine


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def save(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def weights(work: Path, which: str = "last") -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in checkpoint_weights(work / f"{which}.ckpt").items()}


@pytest.fixture(scope="module")
def adding(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("adding")
    tasks.save(tasks.adding(512, 6, seed=0), str(folder / "train.npz"))
    tasks.save(tasks.adding(256, 6, seed=1), str(folder / "val.npz"))
    return folder / "train.npz", folder / "val.npz"


# -- the done-when path, from the command line


def test_train_below_baseline_build_and_run_gives_torch_nn_predictions(adding, tmp_path: Path):
    data, val = adding
    out = tmp_path / "adding"
    r = cli("train", str(SPECS / "adding_lstm.yaml"), "--data", str(data), "--val", str(val), "-o", str(out),
               "--set", "h=8", "--steps", "150", "--lr", "0.02", "--threads", "1", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["val"]["loss"] < 0.5 * result["baseline"] and 0.14 < result["baseline"] < 0.2  # MSE ~ 1/6
    # DIR is a build directory, exactly what `seqdsl build --weights` writes, checked with the trained weights
    assert {p.name for p in out.iterdir()} == {"model.py", "weights.safetensors", "model.onnx", "build.json"}
    assert json.loads((out / "build.json").read_text())["max_abs_diff"]["y"] < 1e-4
    trained = load_file(str(out / "weights.safetensors"))
    record = json.loads((out / "build.json").read_text())["training"]  # the best checkpoint's weights, by default
    assert record["use"] == "best" and record["step"] == result["weights"]["step"]
    assert record["value"] == pytest.approx(min(float(r["val_loss"]) for r in csv.DictReader(
        (Path(str(out) + ".train") / "metrics.csv").open()) if r["val_loss"]))
    assert all(np.array_equal(trained[k], v) for k, v in weights(Path(str(out) + ".train"), "best").items())
    assert "step" in (Path(str(out) + ".train") / "metrics.csv").read_text().splitlines()[0]
    # the same predictions from onnxruntime (seqdsl run) as from torch.nn.LSTM + a linear map with those weights
    with np.load(val, allow_pickle=False) as f:
        x = f["x"][:16]
    np.save(tmp_path / "x.npy", x)
    r = cli("run", str(out / "model.onnx"), "--input", f"x={tmp_path / 'x.npy'}",
            "--output-dir", str(tmp_path / "preds"))
    assert r.returncode == 0, r.stderr
    w = {k: torch.from_numpy(v) for k, v in trained.items()}
    lstm = torch.nn.LSTM(2, 8, batch_first=True)
    with torch.no_grad():  # torch.nn stacks the gates i, f, g, o
        lstm.weight_ih_l0.copy_(torch.cat([w[f"lstm.W_{g}"] for g in "ifco"]))
        lstm.weight_hh_l0.copy_(torch.cat([w[f"lstm.U_{g}"] for g in "ifco"]))
        lstm.bias_ih_l0.copy_(torch.cat([w[f"lstm.b_{g}"] for g in "ifco"]))
        lstm.bias_hh_l0.zero_()
        _, (h_n, _) = lstm(torch.from_numpy(x))
        expected = (h_n[0] @ w["W_y"].T + w["b_y"]).numpy()
    assert np.abs(np.load(tmp_path / "preds" / "y.npy") - expected).max() < 1e-5


def test_cli_bad_data_is_one_error_exit_2(adding, tmp_path: Path):
    data, _ = adding
    bad = save(tmp_path / "bad.npz", x=np.zeros((4, 6, 2), np.float32))
    r = cli("train", str(SPECS / "adding_lstm.yaml"), "--data", str(bad), "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"{bad}: error[E0702]: no array `target`")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.train").exists()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("not a build")  # a directory a build may not replace: before training
    r = cli("train", str(SPECS / "adding_lstm.yaml"), "--data", str(data), "-o", str(tmp_path / "notes"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and not (tmp_path / "notes.train").exists()


# -- reproducible: the seed, and --resume


def test_a_seed_reproduces_a_run_and_resume_continues_it_exactly(adding, tmp_path: Path):
    data, _ = adding
    spec = SPECS / "adding_lstm.yaml"
    run = lambda name, **kw: train(spec, data, tmp_path / name, {"h": 4}, options=TrainOptions(  # noqa: E731
        batch_size=64, lr=0.01, work_dir=tmp_path / name, eval_every=100, **QUIET, **kw))  # one checkpoint: the last
    run("straight", steps=12)
    run("again", steps=12)
    run("seed1", steps=12, seed=1)
    run("resumed", steps=5)
    run("resumed", steps=12, resume=True)  # crosses an epoch boundary (8 batches per epoch)
    straight = weights(tmp_path / "straight")
    assert all(np.array_equal(straight[k], v) for k, v in weights(tmp_path / "again").items())
    assert all(np.array_equal(straight[k], v) for k, v in weights(tmp_path / "resumed").items())
    assert any(not np.array_equal(straight[k], v) for k, v in weights(tmp_path / "seed1").items())
    with (tmp_path / "resumed" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    with (tmp_path / "straight" / "metrics.csv").open() as f:
        assert [r["loss"] for r in csv.DictReader(f)] == [r["loss"] for r in rows]
    with pytest.raises(SpecError) as info:  # another optimiser's checkpoint
        run("resumed", steps=14, resume=True, optimizer="sgd")
    assert info.value.code == "E0708" and "optimizer" in info.value.message


# -- masks and buckets


LENGTHS_SPEC = """\
    name: masked
    sizes: {d: 2, h: 4}
    inputs:
      x: [B, T, d]
      lengths: {shape: [B], dtype: int64}
    params: {W: [h, d], U: [h, h], b: [h], V: [1, h]}
    recurrent:
      lengths: lengths
      state: {h: [B, h]}
      step: {h: "tanh(W @ x + U @ h[t-1] + b)"}
    outputs: {y: h, h_n: final(h)}
"""


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_padding_changes_nothing_and_buckets_cut_batches_to_their_longest(tmp_path: Path, loss: str):
    spec = tmp_path / "masked.yaml"
    spec.write_text(textwrap.dedent(LENGTHS_SPEC))
    rng = np.random.default_rng(0)
    n, steps = 24, 9
    x = rng.standard_normal((n, steps, 2)).astype(np.float32)
    lengths = rng.integers(1, steps + 1, n)
    if loss == "mse":  # per-step targets of `y` (B, T, 4)
        y = rng.standard_normal((n, steps, 4)).astype(np.float32)
    else:  # per-step class ids, `y` read as the logits of 4 classes
        y = rng.integers(0, 4, (n, steps))
    real = np.arange(steps)[None, :] < lengths[:, None]
    noisy_x, noisy_y = x.copy(), y.copy()
    noisy_x[~real], noisy_y[~real] = 1e3, (-1e3 if loss == "mse" else 99)  # padding's values must not matter
    runs = {"clean": (x, y, True), "noisy": (noisy_x, noisy_y, True), "unbucketed": (noisy_x, noisy_y, False)}
    for name, (xs, ys, bucket) in runs.items():
        data = save(tmp_path / f"{name}.npz", x=xs, lengths=lengths, target=ys)
        train(spec, data, tmp_path / name, options=TrainOptions(batch_size=n, steps=3, output="y", bucket=bucket,
                                                                  loss=loss, work_dir=tmp_path / name, **QUIET))
    clean = weights(tmp_path / "clean")
    for name in ("noisy", "unbucketed"):
        assert all(np.allclose(clean[k], v, atol=1e-6) for k, v in weights(tmp_path / name).items()), name
    # a batch is cut to its longest sequence; the plan covers every example once, in buckets of like lengths
    prepared = prepare(spec, tmp_path / "clean.npz", options=TrainOptions(output="y", loss=loss))
    tensors = {k: torch.from_numpy(v) for k, v in prepared.train.arrays.items()}
    short = np.flatnonzero(lengths <= 4)
    batch = take(tensors, prepared.train, short, crop=True)
    assert batch["x"].shape[1] == batch["target"].shape[1] == lengths[short].max()
    long_lengths = np.random.default_rng(1).integers(1, 500, 5000)
    plan = epoch_plan(5000, 50, seed=3, epoch=0, lengths=long_lengths)
    assert sorted(np.concatenate(plan).tolist()) == list(range(5000))
    spread = np.mean([np.ptp(long_lengths[b]) for b in plan])
    assert spread < 0.1 * np.ptp(long_lengths)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 200), st.integers(1, 40), st.integers(1, 4), st.integers(0, 3), st.booleans())
def test_shards_of_each_global_batch_are_the_global_batch(n, batch, world, epoch, bucketed):
    lengths = np.random.default_rng(n).integers(1, 30, n) if bucketed else None
    plan = epoch_plan(n, batch, seed=0, epoch=epoch, lengths=lengths, world=world)
    alone = epoch_plan(n, batch, seed=0, epoch=epoch, lengths=lengths, world=1)
    assert [b.tolist() for b in plan] == [b.tolist() for b in alone if len(b) >= world]
    for b in plan:
        shares = [shard(b, r, world) for r in range(world)]
        assert all(len(s) > 0 for s in shares) and sorted(np.concatenate(shares).tolist()) == sorted(b.tolist())


# -- classification, the spec's train: section, metrics and progress


BRACKETS_SPEC = """\
    name: brackets_rnn
    sizes: {vocab: 10, d: 4, h: 8}
    inputs:
      x: {shape: [B, T], dtype: int64}
    params:
      E: {shape: [vocab, d], init: normal}
      W_y: [2, h]
      b_y: [2]
    modules:
      RNN:
        sizes: {d: 4, h: 8}
        inputs: {x: [B, T, d]}
        params: {W: [h, d], U: [h, h], b: [h]}
        recurrent:
          state: {h: [B, h]}
          step: {h: "tanh(W @ x + U @ h[t-1] + b)"}
        outputs: {h_n: final(h)}
    graph:
      e: embedding(E, x)
      r: RNN(e, h=h)
      logits: W_y @ r + b_y
    outputs: {logits: logits}
    train: {lr: 0.05, batch_size: 16, steps: 4, optimizer: sgd}
"""


def test_cross_entropy_the_spec_train_section_jsonl_metrics_plot_and_lines(tmp_path: Path, capsys):
    spec = tmp_path / "brackets.yaml"
    spec.write_text(textwrap.dedent(BRACKETS_SPEC))
    data = tmp_path / "b.npz"
    tasks.save(tasks.brackets(64, 12, seed=0), str(data))
    result = train(spec, data, tmp_path / "out", val=data, options=TrainOptions(
        metrics_format="jsonl", progress="lines", log_every=1, eval_every=2, build=False, threads=1))
    assert result.loss == "cross_entropy" and result.steps == 4 and 0 <= result.val["accuracy"] <= 1
    rows = [json.loads(line) for line in (tmp_path / "out.train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["lr"] == 0.05 for r in rows)  # the spec's lr
    assert [r["val_accuracy"] is not None for r in rows] == [False, True, False, True]
    assert (tmp_path / "out.train" / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "train brackets_rnn: steps 1-4" and lines[-1].startswith("step 4/4  epoch 1  loss")
    train(spec, data, tmp_path / "out", options=TrainOptions(lr=0.5, steps=1, fresh=True, **QUIET))  # the CLI wins
    assert "0.5" in (tmp_path / "out.train" / "metrics.csv").read_text().splitlines()[1]
    bad = save(tmp_path / "bad.npz", x=np.zeros((8, 12), np.int64), target=np.full(8, 2))
    with pytest.raises(SpecError) as info:
        prepare(spec, bad)
    assert info.value.code == "E0705" and "classes of `logits` [0, 2)" in info.value.message


def test_nested_train_section_and_steps_with_epochs_are_refused(tmp_path: Path, adding):
    spec = tmp_path / "s.yaml"
    spec.write_text(textwrap.dedent(BRACKETS_SPEC).replace("    outputs: {h_n: final(h)}",
                                                         "    outputs: {h_n: final(h)}\n    train: {lr: 1}"))
    with pytest.raises(SpecError) as info:
        prepare(spec, adding[0])
    assert info.value.code == "E0201" and info.value.loc.line == 18
    spec.write_text(textwrap.dedent(BRACKETS_SPEC).replace("steps: 4", "steps: 4, epochs: 2"))
    data = tmp_path / "b.npz"
    tasks.save(tasks.brackets(8, 12), str(data))
    with pytest.raises(SpecError) as info:
        prepare(spec, data)
    assert info.value.code == "E0707" and info.value.loc.line == 23


# -- bad data: one located error for each kind


def _adding_arrays(n: int = 8, steps: int = 6) -> dict[str, np.ndarray]:
    return tasks.adding(n, steps, seed=0)


DAMAGES = {
    "missing input": (lambda a: {"target": a["target"]}, "E0702", "`x`"),
    "int input": (lambda a: {**a, "x": a["x"].astype(np.int64)}, "E0703", "`x` is int64"),
    "cross entropy on one value": (lambda a: a, "E0707", "two classes or more"),
    "int target for mse": (lambda a: {**a, "target": a["target"].astype(np.int32)}, "E0703", "MSE targets are real"),
    "rank": (lambda a: {**a, "x": a["x"][..., 0]}, "E0704", "`x` has 2 axes"),
    "fixed size": (lambda a: {**a, "x": np.concatenate([a["x"], a["x"]], axis=2)}, "E0704", "size 4 on axis 2"),
    "example count": (lambda a: {**a, "target": a["target"][:5]}, "E0704", "holds 5 examples"),
    "target shape": (lambda a: {**a, "target": a["target"][:, 0]}, "E0704", "targets of `y`"),
    "nan": (lambda a: {**a, "x": np.where(np.arange(6)[None, :, None] == 3, np.nan, a["x"])}, "E0705", "NaN"),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_bad_data_is_one_located_error(damage: str, tmp_path: Path):
    change, code, words = DAMAGES[damage]
    data = save(tmp_path / "d.npz", **change(_adding_arrays()))
    options = TrainOptions(loss="cross_entropy") if "cross entropy" in damage else TrainOptions()
    with pytest.raises(SpecError) as info:
        prepare(SPECS / "adding_lstm.yaml", data, options=options)
    assert info.value.code == code and words in info.value.message, info.value.format()
    assert info.value.loc.file == (str(data) if code != "E0707" else "--loss")  # where the mistake was made


def test_unreadable_files_and_pickled_objects_are_refused(tmp_path: Path):
    objects = tmp_path / "objects.npz"
    np.savez(objects, x=np.array([{"a": 1}], dtype=object), target=np.zeros(1))
    (tmp_path / "text.npz").write_text("not a zip")
    for path, words in [(objects, "is of dtype object"), (tmp_path / "text.npz", "not an .npz archive"),
                        (tmp_path / "missing.npz", "no such file")]:
        with pytest.raises(SpecError) as info:
            prepare(SPECS / "adding_lstm.yaml", path)
        assert info.value.code == "E0701" and words in info.value.message


ARRAYS = st.dictionaries(
    st.sampled_from(["x", "target", "lengths", "y"]),
    st.tuples(st.sampled_from([np.float32, np.float64, np.int64, np.int8, np.bool_, np.complex64]),
              st.lists(st.integers(0, 4), max_size=4)),
    max_size=4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ARRAYS)
def test_any_arrays_give_a_dataset_or_one_spec_error(tmp_path: Path, spec_arrays):
    arrays = {k: np.ones(shape, dtype=dtype) for k, (dtype, shape) in spec_arrays.items()}
    data = save(tmp_path / "any.npz", **arrays)
    try:
        prepared = prepare(SPECS / "adding_lstm.yaml", data)
    except SpecError as exc:
        assert exc.code.startswith("E07") and exc.format()
        return
    assert prepared.train.arrays["x"].dtype == np.float32 and prepared.train.n >= 1


def test_a_loss_that_overflows_is_one_error(tmp_path: Path):
    arrays = _adding_arrays()
    data = save(tmp_path / "huge.npz", x=arrays["x"], target=np.full_like(arrays["target"], 3e38))
    with pytest.raises(SpecError) as info:
        train(SPECS / "adding_lstm.yaml", data, tmp_path / "out", {"h": 4}, options=TrainOptions(steps=2, **QUIET))
    assert info.value.code == "E0706" and "at step 1" in info.value.message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec", sorted((ROOT / "benchmarks" / "specs").glob("*.yaml")), ids=lambda p: p.stem)
def test_benchmark_specs_load(spec: Path):
    model = seqdsl.load(spec)
    if spec.stem.startswith("adding_"):
        assert model.graph[model.graph.outputs["y"]].shape == ("B", 1)


def test_ctrl_c_saves_the_step_and_resume_ends_where_an_uninterrupted_run_ends(adding, tmp_path: Path):
    import signal
    import time

    data, val = adding
    steps = "300"
    args = [sys.executable, str(ROOT / "cli.py"), "train", str(SPECS / "adding_lstm.yaml"), "--data", str(data),
            "--val", str(val), "--set", "h=4", "--steps", steps, "--batch-size", "16", "--lr", "0.01",
            "--eval-every", "50", "--log-every", "1", "--threads", "1", "--progress", "quiet", "--no-build",
            "--work-dir", str(tmp_path / "w"), "-o", str(tmp_path / "out")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    metrics = tmp_path / "w" / "metrics.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not metrics.is_file() or len(metrics.read_text().splitlines()) < 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted at step" in err and "--resume" in err and "Traceback" not in err
    stopped = int(err.split("interrupted at step ")[1].split()[0])
    assert 0 < stopped < int(steps)
    r = subprocess.run(args + ["--resume"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    train(SPECS / "adding_lstm.yaml", data, tmp_path / "out", {"h": 4}, val=val, options=TrainOptions(
        steps=int(steps), batch_size=16, lr=0.01, eval_every=50, log_every=1, work_dir=tmp_path / "straight",
        **QUIET))
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "w")
    assert all(np.array_equal(straight[k], v) for k, v in resumed.items())
    best = weights(tmp_path / "straight", "best")  # the best's tracking resumed too
    assert all(np.array_equal(best[k], v) for k, v in weights(tmp_path / "w", "best").items())
    with metrics.open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, int(steps) + 1))
