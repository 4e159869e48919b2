"""`seqdsl train`'s Lightning options: each bad value is one line naming the option (exit 2, nothing written); the
build takes the best checkpoint (or the last); early stopping; schedules against torch's own schedulers; AdamW;
accumulation equal to the larger batch; TensorBoard event files equal to metrics.csv; the provider and the seed
checked before any work."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from typer.testing import CliRunner

from conftest import SPECS

from seqdsl import cli
from seqdsl.compilers.training import TrainOptions, train
from seqdsl.compilers.weights import checkpoint_weights
from seqdsl import tasks

SPEC = SPECS / "adding_lstm.yaml"
QUIET = dict(progress="quiet", build=False, threads=1)


@pytest.fixture(scope="module")
def adding(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("adding")
    tasks.save(tasks.adding(64, 6, seed=0), str(folder / "train.npz"))
    tasks.save(tasks.adding(64, 6, seed=1), str(folder / "val.npz"))
    return folder / "train.npz", folder / "val.npz"


def invoke(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli.app, [str(a) for a in args])
    return r.exit_code, r.stderr


def rows(work: Path) -> list[dict[str, str]]:
    with (work / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


BAD = {
    "--early-stop": ["0", "-1", "x", "1.5"],
    "--schedule": ["cosin", "linear", ""],
    "--warmup": ["-1", "x", "2.5", "2", "3", "99999999999999999999", "1000000000001"],  # the run has 2 steps
    "--weight-decay": ["-0.1", "nan", "inf", "x"],
    "--accumulate": ["0", "-2", "y"],
    "--use": ["worst"],
    "--logger": ["wandb"],
    "--seed": ["-1", "4294967296", "99999999999999999999999", "s"],
    "--provider": ["nope", "cudaa"],
}


@pytest.mark.parametrize("option,value", [(o, v) for o, vs in BAD.items() for v in vs])
def test_each_bad_value_is_one_line_naming_the_option_before_any_work(adding, tmp_path: Path, option: str,
                                                                       value: str):
    data, val = adding
    code, err = invoke("train", SPEC, "--data", data, "--val", val, "-o", tmp_path / "out", "--steps", "2",
                       option, value)
    assert code == 2, err
    first = err.splitlines()[0]
    assert option in first and "Traceback" not in err and len(err.splitlines()) <= 3, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.train").exists()


@pytest.mark.parametrize("warmup", ["4", "5", "1000"])
def test_a_warmup_as_long_as_an_epochs_run_is_refused_before_training(adding, tmp_path: Path, warmup: str):
    # 64 examples in batches of 16: one epoch is 4 optimiser steps, known once the data is read
    code, err = invoke("train", SPEC, "--data", adding[0], "-o", tmp_path / "out", "--epochs", "1",
                       "--batch-size", "16", "--warmup", warmup, "--progress", "quiet", "--threads", "1")
    assert code == 2 and "--warmup" in err.splitlines()[0] and "4 optimiser steps" in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    assert not (tmp_path / "out.train" / "last.ckpt").exists()


@pytest.mark.parametrize("option", [["--early-stop", "2"], ["--schedule", "plateau"], ["--use", "best"]])
def test_what_watches_the_validation_loss_needs_validation_data(adding, tmp_path: Path, option: list[str]):
    code, err = invoke("train", SPEC, "--data", adding[0], "-o", tmp_path / "out", "--steps", "2", *option)
    assert code == 2 and option[0] in err.splitlines()[0] and "--val" in err, err
    assert not (tmp_path / "out.train").exists()


def test_build_provider_is_checked_before_the_build(tmp_path: Path):
    code, err = invoke("build", SPEC, "-o", tmp_path / "out", "--provider", "nope")
    assert code == 2 and "--provider" in err.splitlines()[0] and "cpu" in err, err
    assert not (tmp_path / "out").exists()


# -- the best checkpoint, and the last


def test_the_build_takes_the_best_checkpoint_and_says_which(adding, tmp_path: Path):
    data, val = adding
    out = tmp_path / "out"
    common = ["--data", data, "--val", val, "--set", "h=4", "--steps", "24", "--lr", "0.3", "--eval-every", "3",
              "--threads", "1", "--progress", "quiet"]
    code, err = invoke("train", SPEC, "-o", out, *common)
    assert code == 0, err
    work = tmp_path / "out.train"
    validated = [(int(r["step"]), float(r["val_loss"])) for r in rows(work) if r["val_loss"]]
    assert [s for s, _ in validated] == list(range(3, 25, 3))
    best_step, best_value = min(validated, key=lambda sv: sv[1])
    assert best_step != 24  # this run's last is not its best: the choice matters
    record = json.loads((out / "build.json").read_text())["training"]
    assert record == {"use": "best", "checkpoint": "best.ckpt", "step": best_step, "monitor": "val_loss",
                      "value": pytest.approx(best_value, rel=1e-6), "last_step": 24}
    shipped = load_file(str(out / "weights.safetensors"))
    best, last = checkpoint_weights(work / "best.ckpt"), checkpoint_weights(work / "last.ckpt")
    assert all(np.array_equal(shipped[k], v.numpy()) for k, v in best.items())
    assert any(not np.array_equal(shipped[k], v.numpy()) for k, v in last.items())
    # --use last: the last weights, and build.json says so; `build --weights` reads either checkpoint
    code, err = invoke("train", SPEC, "-o", out, *common, "--use", "last", "--fresh")
    assert code == 0, err
    assert json.loads((out / "build.json").read_text())["training"]["use"] == "last"
    shipped = load_file(str(out / "weights.safetensors"))
    assert all(np.array_equal(shipped[k], v.numpy()) for k, v in checkpoint_weights(work / "last.ckpt").items())
    code, err = invoke("build", SPEC, "--set", "h=4", "-o", tmp_path / "rebuilt", "--weights", work / "best.ckpt")
    assert code == 0, err
    rebuilt = load_file(str(tmp_path / "rebuilt" / "weights.safetensors"))
    assert all(np.array_equal(rebuilt[k], v.numpy()) for k, v in checkpoint_weights(work / "best.ckpt").items())


def test_early_stopping_stops_patience_validations_after_the_best(tmp_path: Path):
    folder = tmp_path
    tasks.save(tasks.adding(16, 6, seed=0), str(folder / "small.npz"))  # 16 examples: it overfits
    tasks.save(tasks.adding(128, 6, seed=1), str(folder / "val.npz"))
    result = train(SPEC, folder / "small.npz", folder / "out", {"h": 8}, val=folder / "val.npz", options=TrainOptions(
        steps=600, lr=0.05, batch_size=16, eval_every=5, early_stop=3, work_dir=folder / "work", **QUIET))
    validated = [float(r["val_loss"]) for r in rows(folder / "work") if r["val_loss"]]
    assert result.stopped_early and result.steps < 600 and result.steps == 5 * len(validated)
    best = int(np.argmin(validated))
    assert len(validated) == best + 1 + 3  # three validations without a lower loss, then the stop


# -- schedules, against torch's own schedulers


def _reference_lrs(schedule: str, base: float, warmup: int, total: int) -> list[float]:
    """The learning rate of each step after it, from torch.optim.lr_scheduler's classes."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=base)
    span = total - warmup
    main = {"cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=span),
            "step": lambda: torch.optim.lr_scheduler.MultiStepLR(opt, [math.ceil(span / 2), math.ceil(span * 3 / 4)],
                                                                 gamma=0.1),
            "none": lambda: torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)}[schedule]()
    if warmup:
        opt.param_groups[0]["lr"] = base
        warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / warmup, total_iters=warmup - 1)
        sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.SequentialLR(opt, [warm, main],
                                                                                            milestones=[warmup])
    else:
        sched = main
    lrs = []
    for _ in range(total):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("schedule,warmup", [("cosine", 4), ("step", 0), ("none", 5), ("cosine", 0)])
def test_schedules_match_torch_schedulers(adding, tmp_path: Path, schedule: str, warmup: int):
    total = 16
    train(SPEC, adding[0], tmp_path / "out", {"h": 2}, options=TrainOptions(
        steps=total, lr=0.01, batch_size=16, schedule=schedule, warmup=warmup, log_every=1, work_dir=tmp_path / "w",
        **QUIET))
    got = [float(r["lr"]) for r in rows(tmp_path / "w")]
    assert got == pytest.approx(_reference_lrs(schedule, 0.01, warmup, total), rel=1e-9, abs=1e-15)


def test_plateau_halves_the_rate_as_torch_reduce_on_plateau_does(adding, tmp_path: Path):
    data, val = adding
    train(SPEC, data, tmp_path / "out", {"h": 2}, val=val, options=TrainOptions(
        steps=40, lr=0.5, batch_size=16, schedule="plateau", warmup=3, eval_every=2, log_every=1,
        work_dir=tmp_path / "w", **QUIET))
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.5)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2)
    for row in rows(tmp_path / "w"):  # a row's rate is read before its step's validation, which acts after it
        step = int(row["step"])
        warm = min(1.0, (step + 1) / 3)
        assert float(row["lr"]) == pytest.approx(warm * opt.param_groups[0]["lr"], rel=1e-12), step
        if row["val_loss"]:
            reference.step(float(row["val_loss"]))
    assert opt.param_groups[0]["lr"] < 0.5  # the rate was cut at least once in this run


# -- weight decay and accumulation


def test_weight_decay_is_adamw_and_accumulation_equals_the_larger_batch(adding, tmp_path: Path):
    data = adding[0]
    run = lambda name, **kw: train(SPEC, data, tmp_path / name, {"h": 4}, options=TrainOptions(  # noqa: E731
        steps=6, lr=0.01, seed=2, log_every=1, work_dir=tmp_path / name, **QUIET, **kw))
    run("decayed", batch_size=16, weight_decay=0.1)
    stored = torch.load(tmp_path / "decayed" / "last.ckpt", weights_only=True)
    group = stored["optimizer_states"][0]["param_groups"][0]
    assert group["weight_decay"] == 0.1 and group.get("decoupled_weight_decay", True)
    run("plain", batch_size=16)
    plain = checkpoint_weights(tmp_path / "plain" / "last.ckpt")
    decayed = checkpoint_weights(tmp_path / "decayed" / "last.ckpt")
    assert any(not torch.equal(plain[k], decayed[k]) for k in plain)
    run("big", batch_size=16)
    run("accumulated", batch_size=8, accumulate=2)
    big = checkpoint_weights(tmp_path / "big" / "last.ckpt")
    accumulated = checkpoint_weights(tmp_path / "accumulated" / "last.ckpt")
    assert max(float((big[k] - accumulated[k]).abs().max()) for k in big) < 1e-6
    assert [int(r["step"]) for r in rows(tmp_path / "accumulated")] == list(range(1, 7))
    assert [float(r["loss"]) for r in rows(tmp_path / "accumulated")] == \
        pytest.approx([float(r["loss"]) for r in rows(tmp_path / "big")], rel=1e-5)


# -- loggers and progress


def test_tensorboard_event_files_hold_the_metrics_rows(adding, tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data, val = adding
    train(SPEC, data, tmp_path / "out", {"h": 2}, val=val, options=TrainOptions(
        steps=6, batch_size=16, log_every=1, eval_every=3, logger="tensorboard", work_dir=tmp_path / "w",
        progress="bar", build=False, threads=1))
    events = [p for p in (tmp_path / "w").iterdir() if p.name.startswith("events.out.tfevents.")]
    assert len(events) == 1
    marker = json.loads((tmp_path / "w" / "train.json").read_text())
    assert events[0].name in marker["files"]
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    table = rows(tmp_path / "w")
    assert [e.step for e in acc.Scalars("loss")] == [int(r["step"]) for r in table]
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx([float(r["loss"]) for r in table], rel=1e-6)
    assert [e.step for e in acc.Scalars("val_loss")] == [3, 6]


def test_one_decayed_step_is_torch_adamw_step(adding, tmp_path: Path):
    import seqdsl
    from seqdsl.compilers.torch_module import module_class
    from seqdsl.compilers.training.batches import epoch_plan

    data = adding[0]
    train(SPEC, data, tmp_path / "out", {"h": 4}, options=TrainOptions(
        steps=1, lr=0.01, batch_size=16, seed=2, clip=0, weight_decay=0.1, work_dir=tmp_path / "w", **QUIET))
    torch.manual_seed(2)  # the same start: the seed's initial weights, the seed's first batch
    net = module_class(seqdsl.load(SPEC, {"h": 4}))()
    index = epoch_plan(64, 16, seed=2, epoch=0)[0]
    with np.load(data) as f:
        x, y = torch.from_numpy(f["x"][index]), torch.from_numpy(f["target"][index])
    opt = torch.optim.AdamW(net.parameters(), lr=0.01, weight_decay=0.1)
    out = net(x)
    torch.nn.functional.mse_loss(out[0] if isinstance(out, tuple) else out, y).backward()
    opt.step()
    got = checkpoint_weights(tmp_path / "w" / "last.ckpt")
    for name, value in net.state_dict().items():
        torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-7)
