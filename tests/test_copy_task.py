"""The copy-memory task end to end, and the ``<target>_mask`` array that makes `seqdsl train` score its recall phase
only: the loss and accuracy count exactly the masked elements (checked against torch's own ``ignore_index``), the
trivial baseline is computed on them, and every malformed mask is one located error."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import ROOT

import seqdsl
from seqdsl.compilers.torch_module import to_module
from seqdsl.compilers.training import TrainOptions, prepare
from seqdsl.compilers.training.objective import Objective, real_values
from seqdsl.compilers.weights import checkpoint_weights
from seqdsl import tasks
from seqdsl.errors import SpecError

COPY_SPECS = sorted((ROOT / "benchmarks" / "specs").glob("copy_*.yaml"))
SYMBOLS = 10  # what `seqdsl data copy` writes: 10 symbols to recall


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


@pytest.mark.parametrize("spec", COPY_SPECS, ids=lambda p: p.stem)
def test_copy_specs_give_per_step_log_probabilities_over_the_vocabulary(spec: Path):
    model = seqdsl.load(spec)
    assert model.graph[model.graph.outputs["logp"]].shape == ("B", "T", tasks.COPY_VOCAB)
    net = to_module(model)
    x = torch.from_numpy(tasks.copy_memory(3, 4, seed=0)["x"])
    logp = net(x)
    assert logp.shape == (3, 4 + 2 * SYMBOLS, tasks.COPY_VOCAB)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(logp.shape[:2]), atol=1e-5)


def test_cli_trains_copy_and_scores_the_recall_phase_only(tmp_path: Path):
    delay = 5
    for name, n, seed in [("train", 256, 0), ("val", 128, 1)]:
        r = cli("data", "copy", "--length", str(delay), "-n", str(n), "--seed", str(seed), "-o",
                str(tmp_path / f"{name}.npz"))
        assert r.returncode == 0, r.stderr
        assert "target_mask" in r.stdout and "accuracy 1/8" in r.stdout
    work = tmp_path / "work"
    r = cli("train", str(ROOT / "benchmarks" / "specs" / "copy_lstm.yaml"), "--data", str(tmp_path / "train.npz"),
            "--val", str(tmp_path / "val.npz"), "--set", "h=16", "--steps", "40", "--lr", "0.02", "--threads", "1",
            "--no-build", "--work-dir", str(work), "-o", str(tmp_path / "out"), "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    # the reported figures, recomputed from the trained weights with torch.nn.functional on the last K steps
    model = seqdsl.load(ROOT / "benchmarks" / "specs" / "copy_lstm.yaml", {"h": 16})
    net = to_module(model)
    net.load_state_dict(checkpoint_weights(work / "last.ckpt"))
    with np.load(tmp_path / "val.npz") as f:
        x, y = torch.from_numpy(f["x"]), torch.from_numpy(f["target"])
    with torch.no_grad():
        logp = net(x)
    recall_logp, recall_y = logp[:, -SYMBOLS:], y[:, -SYMBOLS:]
    recall_loss = F.cross_entropy(recall_logp.reshape(-1, tasks.COPY_VOCAB), recall_y.reshape(-1)).item()
    recall_accuracy = (recall_logp.argmax(-1) == recall_y).double().mean().item()
    assert result["val"]["loss"] == pytest.approx(recall_loss, rel=1e-4)
    assert result["val"]["accuracy"] == pytest.approx(recall_accuracy, abs=1e-9)
    # ... and not over every step (the blanks, which the mask leaves out of training too, are not predicted)
    all_accuracy = (logp.argmax(-1) == y).double().mean().item()
    all_loss = F.cross_entropy(logp.reshape(-1, tasks.COPY_VOCAB), y.reshape(-1)).item()
    assert abs(all_accuracy - result["val"]["accuracy"]) > 0.05 and abs(all_loss - result["val"]["loss"]) > 0.1
    # the trivial baseline: the training data's majority class among the recalled symbols, on the validation's
    with np.load(tmp_path / "train.npz") as f:
        majority = np.bincount(f["target"][:, -SYMBOLS:].reshape(-1)).argmax()
    assert result["baseline"] == pytest.approx((recall_y == int(majority)).double().mean().item())
    assert 0.08 < result["baseline"] < 0.2 and abs(result["val"]["loss"] - math.log(8)) < 0.5


def _masked_spec(tmp_path: Path) -> Path:
    spec = tmp_path / "masked.yaml"
    spec.write_text("""name: masked
sizes: {d: 2, h: 4}
inputs:
  x: [B, T, d]
  lengths: {shape: [B], dtype: int64}
params: {W: [h, d], U: [h, h], b: [h]}
recurrent:
  lengths: lengths
  state: {h: [B, h]}
  step: {h: "tanh(W @ x + U @ h[t-1] + b)"}
outputs: {y: h}
""")
    return spec


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 6), st.integers(1, 7), st.sampled_from(["cross_entropy", "mse"]), st.integers(0, 2**31 - 1))
def test_the_loss_counts_the_masked_real_elements_as_torch_ignore_index_does(tmp_path: Path, n: int, steps: int,
                                                                             loss: str, seed: int):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, steps + 1, n)
    real = np.arange(steps)[None, :] < lengths[:, None]
    shape = (n, steps) if loss == "cross_entropy" else (n, steps, 4)
    mask = rng.random(shape) < 0.5
    spread = real if loss == "cross_entropy" else real[..., None]
    first = np.argmax(np.broadcast_to(spread, shape).reshape(n, -1), axis=1)  # one real element counts in each row
    mask.reshape(n, -1)[np.arange(n), first] = True
    y = rng.integers(0, 4, shape) if loss == "cross_entropy" else rng.standard_normal(shape).astype(np.float32)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.standard_normal((n, steps, 2)).astype(np.float32), lengths=lengths, target=y,
             target_mask=mask)
    prepared = prepare(_masked_spec(tmp_path), data, options=TrainOptions(loss=loss, build=False))
    dataset = prepared.train
    assert dataset.mask == "target_mask"
    objective = Objective.for_dataset(prepared.settings.target, dataset, 0)
    batch = {k: torch.from_numpy(v) for k, v in dataset.arrays.items()}
    pred = torch.from_numpy(rng.standard_normal((n, steps, 4)).astype(np.float32))
    sums = objective.sums((pred,), batch)
    counts = mask & np.broadcast_to(spread, shape)
    assert float(sums.count) == float(objective.count(batch)) == counts.sum()
    if loss == "cross_entropy":
        ignored = torch.from_numpy(np.where(counts, y, -100))
        reference = F.cross_entropy(pred.reshape(-1, 4), ignored.reshape(-1), ignore_index=-100, reduction="sum")
    else:
        reference = F.mse_loss(pred[torch.from_numpy(counts)], torch.from_numpy(y[counts]), reduction="sum")
    assert float(sums.loss) == pytest.approx(float(reference), rel=1e-5, abs=1e-6)
    assert np.array_equal(real_values(y, lengths, mask), y[counts])


def _copy_files(tmp_path: Path, **changes: np.ndarray | None) -> Path:
    arrays = tasks.copy_memory(6, 3, seed=0)
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    path = tmp_path / "copy.npz"
    np.savez(path, **arrays)
    return path


MASK = tasks.copy_memory(6, 3, seed=0)["target_mask"]
BAD_MASKS = {
    "float": (MASK.astype(np.float32), "E0703", "a mask is bool"),
    "shape": (MASK[:, :-1], "E0704", "the targets [6, 23]"),
    "values": (MASK.astype(np.int64) * 2, "E0705", "other than 0 and 1"),
    "empty row": (np.where(np.arange(6)[:, None] == 4, False, MASK), "E0705", "`target_mask`[4] counts no"),
}


@pytest.mark.parametrize("damage", BAD_MASKS, ids=list(BAD_MASKS))
def test_a_malformed_mask_is_one_located_error(damage: str, tmp_path: Path):
    mask, code, words = BAD_MASKS[damage]
    data = _copy_files(tmp_path, target_mask=mask)
    with pytest.raises(SpecError) as info:
        prepare(COPY_SPECS[0], data, options=TrainOptions(build=False))
    assert info.value.code == code and words in info.value.message, info.value.format()
    assert info.value.loc.file == str(data) and info.value.loc.path == "target_mask"


def test_a_mask_in_one_of_training_and_validation_is_refused_and_0_1_integers_are_a_mask(tmp_path: Path):
    with_mask = _copy_files(tmp_path)
    without = tmp_path / "without.npz"
    np.savez(without, **{k: v for k, v in tasks.copy_memory(6, 3, seed=1).items() if k != "target_mask"})
    for data, val in [(with_mask, without), (without, with_mask)]:
        with pytest.raises(SpecError) as info:
            prepare(COPY_SPECS[0], data, val=val, options=TrainOptions(build=False))
        assert info.value.code == "E0702" and "target_mask" in info.value.message
    ints = _copy_files(tmp_path, target_mask=MASK.astype(np.int8))
    prepared = prepare(COPY_SPECS[0], ints, options=TrainOptions(build=False))
    assert prepared.train.arrays["target_mask"].dtype == np.bool_
    assert np.array_equal(prepared.train.arrays["target_mask"], MASK)
    assert prepare(COPY_SPECS[0], without, options=TrainOptions(build=False)).train.mask is None


def test_class_ids_are_checked_where_the_mask_counts_only(tmp_path: Path):
    target = tasks.copy_memory(6, 3, seed=0)["target"].copy()
    target[:, 0] = -1  # an ignored step may hold anything, e.g. the -100 of torch's ignore_index habit
    prepared = prepare(COPY_SPECS[0], _copy_files(tmp_path, target=target), options=TrainOptions(build=False))
    assert prepared.train.n == 6
    target[:, -1] = tasks.COPY_VOCAB  # a counted one may not
    with pytest.raises(SpecError) as info:
        prepare(COPY_SPECS[0], _copy_files(tmp_path, target=target), options=TrainOptions(build=False))
    assert info.value.code == "E0705" and "classes" in info.value.message


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([np.bool_, np.int64, np.uint8, np.float32, np.complex64]),
       st.lists(st.integers(0, 24), max_size=3), st.integers(0, 2))
def test_any_mask_array_gives_a_dataset_or_one_spec_error(tmp_path: Path, dtype, shape, fill):
    mask = np.full(shape, fill).astype(dtype)
    data = _copy_files(tmp_path, target_mask=mask)
    try:
        prepared = prepare(COPY_SPECS[0], data, options=TrainOptions(build=False))
    except SpecError as exc:
        assert exc.code.startswith("E07") and exc.format()
        return
    assert prepared.train.arrays["target_mask"].shape == prepared.train.arrays["target"].shape
    assert prepared.train.arrays["target_mask"].reshape(6, -1).any(axis=1).all()
