"""benchmarks/forecast.py (EXPERIMENTS.md's forecasting table) still runs end to end at tiny sizes: statsmodels'
co2 series through `seqdsl data csv`, `seqdsl train --raw-io` and onnxruntime, against SARIMAX and the
seasonal-naive forecast. Nothing about the scores is checked but what can be recomputed here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import ROOT


def test_the_forecast_experiment_runs_at_tiny_sizes(tmp_path: Path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "forecast.py"), "--series", "co2", "--cells",
                           "lstm", "--seeds", "1", "--steps", "10", "--variants", "level", "--maxiter", "3",
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "forecast.json").read_text())
    models = [r["model"] for r in results["rows"]]
    assert models[:2] == ["seasonal naive (m = 12)", "seasonal naive + drift (m = 12)"]
    assert models[2].startswith("SARIMAX") and models[3] == "LSTM (level, last of 10 steps)"
    assert all(np.isfinite(r["mae"]) and r["rmse"] >= r["mae"] > 0 for r in results["rows"])
    from statsmodels.datasets import co2

    y = co2.load_pandas().data["co2"].resample("MS").mean().interpolate().to_numpy()
    naive = [np.abs(y[o:o + 12] - y[o - 12:o]).mean() for o in range(len(y) - 48, len(y) - 11)]
    assert abs(results["rows"][0]["mae"] - float(np.mean(naive))) < 1e-9
    assert (tmp_path / "forecast.png").stat().st_size > 1000
    assert "| LSTM (level, early-stopped) |" in done.stdout
