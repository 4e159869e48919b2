"""DDP: `seqdsl train --nproc 2` (torchrun, gloo on the CPU) keeps the replicas identical and computes what one
process computes with the same global batch; rank 0 alone writes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from conftest import ROOT, SPECS

import seqdsl
from seqdsl.compilers.torch_module import to_module
from seqdsl.compilers.training import TrainOptions, train
from seqdsl.compilers.weights import checkpoint_weights
from seqdsl import tasks


def _weights(work: Path) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in checkpoint_weights(work / "last.ckpt").items()}


def _losses(work: Path) -> list[float]:
    with (work / "metrics.csv").open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path: Path):
    data = tmp_path / "train.npz"
    tasks.save(tasks.adding(60, 5, seed=0), str(data))  # 60 = 7 global batches of 8 and one of 4: a ragged end
    common = dict(batch_size=8, steps=9, optimizer="sgd", lr=0.5, seed=3)  # 9 steps: into the second epoch
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", str(SPECS / "adding_lstm.yaml"), "--data",
                        str(data), "--set", "h=4", "--steps", "9", "--batch-size", "8", "--optimizer", "sgd", "--lr",
                        "0.5", "--seed", "3", "--log-every", "1", "--nproc", "2", "--no-build", "--json",
                        "--progress", "quiet", "--work-dir", str(tmp_path / "two"), "-o", str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)  # rank 0's report, alone
    assert result["world_size"] == 2 and result["steps"] == 9
    assert result["replica_max_diff"] == 0.0  # every weight of rank 1 equals rank 0's, bit for bit
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["last.ckpt", "metrics.csv", "metrics.png",
                                                                  "train.json"]
    assert not (tmp_path / "out").exists()  # --no-build

    train(SPECS / "adding_lstm.yaml", data, tmp_path / "out", {"h": 4}, options=TrainOptions(
        **common, log_every=1, work_dir=tmp_path / "one", progress="quiet", build=False, threads=1))
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert one.keys() == two.keys() and len(one) == 14
    worst = max(float(np.abs(one[k] - two[k]).max()) for k in one)
    assert worst < 1e-6, worst
    torch.manual_seed(3)  # the initial weights of that seed: training moved every run away from them
    initial = to_module(seqdsl.load(SPECS / "adding_lstm.yaml", {"h": 4})).state_dict()
    assert all(not np.allclose(one[k], initial[k].numpy()) for k in one if "W_" in k)
    assert np.allclose(_losses(tmp_path / "one"), _losses(tmp_path / "two"), rtol=1e-6, atol=0)

