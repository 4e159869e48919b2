"""Forecasting real series that ship with statsmodels: an LSTM and a GRU trained by `seqdsl train`, against
SARIMAX and the seasonal-naive forecast, on the held-out tail of each series.

    python benchmarks/forecast.py                     # both series, every model (5-15 minutes on one busy core)
    python benchmarks/forecast.py --table             # the Markdown table and the plot again, from forecast.json

Per series: the last ``test`` points are held out. Everything is fitted on the points before them: the networks
through the command line exactly as a user runs it (`seqdsl data csv` on a CSV of the training points, then
`seqdsl train --raw-io`, whose ``model.onnx`` takes and returns raw values), SARIMAX by maximum likelihood. Then
every model forecasts the same points the same way: from each forecast origin o in the held-out tail (o = the
first held-out point, ..., the last point minus H + 1), the next H values from the series up to o − 1 alone,
with no parameter refitted (the networks read the last W values through onnxruntime; SARIMAX runs its Kalman
filter with the fitted parameters over the series up to o − 1 and forecasts H steps; seasonal naive repeats the
last observed season, and with drift adds the training points' mean change over a season). MAE and RMSE are over
every (origin, step) pair, in the series' units.

The networks' variants: ``level`` reads and predicts the series itself; ``seasonal difference`` reads and
predicts y_t − y_{t−m} (the differencing SARIMA's D = 1 applies) and adds the forecast to the value a season
before, for a series with a trend that leaves the training range (co2). Each network is trained with several
seeds (the table gives the mean over the seeds and the range) and scored twice: with its last weights, and
early-stopped (the weights of the validation's best step; the validation is the last fifth of the training
points, never the held-out tail).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / "cli.py"
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Series:
    name: str
    title: str
    period: int  # m: of the seasonal-naive forecast and the seasonal difference
    test: int  # held-out points at the end
    window: int  # W: input points per network forecast
    horizon: int  # H: points forecast from each origin
    sarimax: dict  # order, seasonal_order, trend; or "aic_ar": the largest AR order tried


SERIES = {
    # Mauna Loa CO2, weekly 1958-2001, averaged per month (the gaps interpolated): a trend and a yearly season
    "co2": Series("co2", "CO2 at Mauna Loa, monthly (ppm)", 12, 48, 36, 12,
                  {"order": (1, 1, 1), "seasonal_order": (1, 1, 1, 12)}),
    # yearly sunspot numbers 1700-2008: a cycle of about 11 years whose length and height vary
    "sunspots": Series("sunspots", "sunspots, yearly (Wolf number)", 11, 44, 33, 11, {"aic_ar": 9}),
}
CELLS = {"lstm": "specs/forecast_lstm.yaml", "gru": "specs/forecast_gru.yaml"}
EVAL_EVERY = 50  # steps between validations: where the early-stopped weights may come from


def load(name: str) -> np.ndarray:
    """The series as float64, oldest first (statsmodels' copy, read offline from its package)."""
    if name == "co2":
        from statsmodels.datasets import co2

        weekly = co2.load_pandas().data["co2"]
        return weekly.resample("MS").mean().interpolate().to_numpy(dtype=np.float64)
    from statsmodels.datasets import sunspots

    return sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(dtype=np.float64)


def origins(series: Series, n: int) -> list[int]:
    return list(range(n - series.test, n - series.horizon + 1))


def seasonal_naive(y: np.ndarray, o: int, horizon: int, m: int) -> np.ndarray:
    """y[o + h] forecast as the last value observed (before o) in the same season."""
    h = np.arange(horizon)
    return y[o + h - m * (1 + h // m)]


def seasonal_naive_drift(y: np.ndarray, o: int, horizon: int, m: int, test: int) -> np.ndarray:
    """Seasonal naive plus the mean change over one season in the training points (the drift)."""
    train = y[: len(y) - test]
    drift = float((train[m:] - train[:-m]).mean())
    h = np.arange(horizon)
    return seasonal_naive(y, o, horizon, m) + drift * (1 + h // m)


def sarimax_forecasts(y: np.ndarray, series: Series, maxiter: int) -> tuple[dict[int, np.ndarray], str]:
    """SARIMAX fitted on the training points; from each origin, H steps with the fitted parameters."""
    import warnings

    from statsmodels.tsa.statespace.sarimax import SARIMAX

    train = y[: len(y) - series.test]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence and frequency chatter; the fit is judged on the test points
        if "aic_ar" in series.sarimax:  # the AR order by AIC, as usual for a series without a fixed season
            fits = [(SARIMAX(train, order=(p, 0, 0), trend="c").fit(disp=False, maxiter=maxiter), p)
                    for p in range(1, series.sarimax["aic_ar"] + 1)]
            fit, p = min(fits, key=lambda f: f[0].aic)
            label = f"SARIMAX({p},0,0) + constant (AR order by AIC, 1-{series.sarimax['aic_ar']})"
        else:
            kw = series.sarimax
            fit = SARIMAX(train, order=kw["order"], seasonal_order=kw["seasonal_order"]).fit(disp=False,
                                                                                           maxiter=maxiter)
            label = f"SARIMAX{kw['order']}x{kw['seasonal_order']}"
        out = {o: np.asarray(fit.apply(y[:o]).forecast(series.horizon)) for o in origins(series, len(y))}
    return out, label


def run_cli(*args: str) -> str:
    done = subprocess.run(["nice", "-n", "15", sys.executable, str(CLI), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"seqdsl {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def network_forecasts(y: np.ndarray, series: Series, cell: str, variant: str, seed: int, steps: int,
                      work: Path) -> dict[str, tuple[dict[int, np.ndarray], dict]]:
    """Train ``cell`` through the command line on the training points (``variant``: level or seasonal
    difference) and forecast from every origin with the built model.onnx (raw values in and out): with the last
    weights (``last``), and with the weights of the step of lowest validation loss (``best``: the same run again
    up to that step, which gives those weights exactly: the batch order is seeded and validating draws nothing)."""
    m, n = series.period, len(y)
    model_input = y if variant == "level" else np.concatenate([np.full(m, np.nan), y[m:] - y[:-m]])
    train = model_input[: n - series.test]
    train = train[~np.isnan(train)]
    folder = work / f"{series.name}_{cell}_{variant.replace(' ', '_')}_{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "series.csv"
    table.write_text("value\n" + "\n".join(repr(float(v)) for v in train) + "\n")
    run_cli("data", "csv", str(table), "--columns", "value", "--target", "value", "--window", str(series.window),
            "--horizon", str(series.horizon), "--val-fraction", "0.2", "-o", str(folder / "train.npz"),
            "--val", str(folder / "val.npz"), "--force")

    def train_for(total: int, name: str) -> tuple[dict, float]:
        began = time.perf_counter()
        result = json.loads(run_cli("train", str(ROOT / CELLS[cell]), "--data", str(folder / "train.npz"),
                                    "--val", str(folder / "val.npz"), "--set", f"H={series.horizon}", "--steps",
                                    str(total), "--seed", str(seed), "--threads", "1", "--raw-io", "--eval-every",
                                    str(EVAL_EVERY), "--use", "last", "--progress", "quiet", "-o", str(folder / name),
                                    "--work-dir", str(folder / f"{name}.train"), "--json"))
        return result, time.perf_counter() - began

    def forecast(name: str) -> dict[int, np.ndarray]:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(folder / name / "model.onnx"), providers=["CPUExecutionProvider"])
        starts = origins(series, n)
        windows = np.stack([model_input[o - series.window:o] for o in starts])[:, :, None].astype(np.float32)
        predicted = session.run(["y"], {"x": windows})[0].astype(np.float64)
        if variant == "level":
            return dict(zip(starts, predicted))
        # y[o + h] = y[o + h − m] + the forecast difference (h < m: a value before the origin)
        return {o: y[o + np.arange(series.horizon) - m] + p for o, p in zip(starts, predicted)}

    result, seconds = train_for(steps, "last")
    curve = [(int(r["step"]), float(r["val_loss"])) for r in csv.DictReader(open(folder / "last.train" / "metrics.csv"))
             if r.get("val_loss")]
    best_step, best_loss = min(curve, key=lambda c: c[1])
    out = {"last": (forecast("last"), {"seconds": seconds, "val_mse_normalised": result["val"]["loss"],
                                       "steps": result["steps"]})}
    if best_step < result["steps"]:
        again, _ = train_for(best_step, "best")
        assert abs(again["val"]["loss"] - best_loss) <= 1e-4 * max(1.0, best_loss), (again["val"], best_loss)
        out["best"] = (forecast("best"), {"seconds": seconds, "val_mse_normalised": best_loss, "steps": best_step})
    else:
        out["best"] = out["last"]
    return out


def scores(y: np.ndarray, forecasts: dict[int, np.ndarray], horizon: int) -> dict:
    errors = np.stack([forecasts[o] - y[o:o + horizon] for o in sorted(forecasts)])
    return {"mae": float(np.abs(errors).mean()), "rmse": float(np.sqrt((errors ** 2).mean())),
            "mae_by_step": np.abs(errors).mean(axis=0).tolist()}


def evaluate(names: list[str], cells: list[str], seeds: int, steps: int, variants: list[str], maxiter: int,
             work: Path) -> dict:
    rows, curves = [], {}
    for name in names:
        series = SERIES[name]
        y = load(name)
        first = origins(series, len(y))[0]
        curves[name] = {"actual": y.tolist(), "first_origin": first}

        def add(model: str, scored: dict, **extra: object) -> dict:
            row = {"series": name, "model": model, **scored, **extra}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "mae_by_step"}), flush=True)
            return row

        naive = {o: seasonal_naive(y, o, series.horizon, series.period) for o in origins(series, len(y))}
        add(f"seasonal naive (m = {series.period})", scores(y, naive, series.horizon))
        curves[name]["seasonal naive"] = naive[first].tolist()
        drift = {o: seasonal_naive_drift(y, o, series.horizon, series.period, series.test)
                 for o in origins(series, len(y))}
        add(f"seasonal naive + drift (m = {series.period})", scores(y, drift, series.horizon))
        began = time.perf_counter()
        fitted, label = sarimax_forecasts(y, series, maxiter)
        add(label, scores(y, fitted, series.horizon), seconds=time.perf_counter() - began)
        curves[name]["SARIMAX"] = fitted[first].tolist()
        for variant in variants:
            if variant != "level" and name != "co2":
                continue  # the difference is for the trend: sunspots has none
            for cell in cells:
                runs = [network_forecasts(y, series, cell, variant, seed, steps, work) for seed in range(seeds)]
                for choice, suffix in (("last", f", last of {steps} steps"), ("best", ", early-stopped")):
                    each = [scores(y, run[choice][0], series.horizon) for run in runs]
                    infos = [run[choice][1] for run in runs]
                    label = f"{cell.upper()} ({variant}{suffix})"
                    averaged = {"mae": float(np.mean([e["mae"] for e in each])),
                                "rmse": float(np.mean([e["rmse"] for e in each])),
                                "mae_by_step": np.mean([e["mae_by_step"] for e in each], axis=0).tolist()}
                    add(label, averaged, seeds=seeds, steps=[i["steps"] for i in infos],
                        mae_seeds=[e["mae"] for e in each], rmse_seeds=[e["rmse"] for e in each],
                        seconds=float(np.mean([i["seconds"] for i in infos])),
                        val_mse_normalised=[i["val_mse_normalised"] for i in infos])
                    first_forecasts = [run[choice][0][first] for run in runs]
                    curves[name][label] = np.mean(first_forecasts, axis=0).tolist()
    return {"rows": rows, "curves": curves}


def table(results: dict) -> str:
    out = []
    for name in dict.fromkeys(r["series"] for r in results["rows"]):
        s = SERIES[name]
        out.append(f"**{s.title}**: the last {s.test} points held out, H = {s.horizon} steps from each of "
                   f"{s.test - s.horizon + 1} origins (networks: windows of W = {s.window})\n")
        out.append("| model | MAE | RMSE | steps | seconds |")
        out.append("| --- | --- | --- | --- | --- |")
        for r in (r for r in results["rows"] if r["series"] == name):
            if "mae_seeds" in r:
                mae = f"{r['mae']:.3f} ({min(r['mae_seeds']):.3f}-{max(r['mae_seeds']):.3f})"
                rmse = f"{r['rmse']:.3f} ({min(r['rmse_seeds']):.3f}-{max(r['rmse_seeds']):.3f})"
            else:
                mae, rmse = f"{r['mae']:.3f}", f"{r['rmse']:.3f}"
            seconds = f"{r['seconds']:.1f}" if "seconds" in r else ""
            steps = ", ".join(map(str, r["steps"])) if "steps" in r else ""
            out.append(f"| {r['model']} | {mae} | {rmse} | {steps} | {seconds} |")
        out.append("")
    return "\n".join(out)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["curves"])
    fig, axes = plt.subplots(len(names), 2, figsize=(13.5, 3.6 * len(names)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1]})
    for (left, right), name in zip(axes, names):
        s, curve = SERIES[name], results["curves"][name]
        y, o = np.asarray(curve["actual"]), curve["first_origin"]
        t = np.arange(len(y))
        shown = slice(max(0, o - 3 * s.horizon), len(y))
        left.plot(t[shown], y[shown], "k-", lw=1.2, label="actual")
        left.axvline(o - 0.5, color="grey", ls=":", lw=1)
        family = lambda model: model.split(", ")[0]  # noqa: E731 - a network's two rows share a colour
        kinds = list(dict.fromkeys(family(r["model"]) for r in results["rows"] if r["series"] == name))
        colours = {r["model"]: f"C{kinds.index(family(r['model']))}" for r in results["rows"] if r["series"] == name}
        for label, values in curve.items():
            if label in ("actual", "first_origin") or "last of" in label:
                continue  # the early-stopped networks only: the plot stays readable
            model = next((m for m in colours if m.startswith(label) or label.startswith(m.split(" (m =")[0])), None)
            left.plot(np.arange(o, o + s.horizon), values, color=colours.get(model, "C9"), lw=1.2, label=label)
        span = float(y[shown].max() - y[shown].min())
        left.set_ylim(float(y[shown].min()) - 0.15 * span, float(y[shown].max()) + 0.15 * span)
        left.set_title(f"{s.title}: H = {s.horizon} from the first held-out point", fontsize=9)
        left.set_xlabel("time step (the held-out tail right of the dotted line)", fontsize=8)
        left.legend(fontsize=6, loc="upper left")
        for r in (r for r in results["rows"] if r["series"] == name):
            right.plot(np.arange(1, s.horizon + 1), r["mae_by_step"], marker="o", ms=3, color=colours[r["model"]],
                       ls=":" if "last of" in r["model"] else "-", label=r["model"])
        right.set_yscale("log")
        right.set_title(f"{name}: MAE by step ahead, over every origin", fontsize=9)
        right.set_xlabel("steps ahead", fontsize=8)
        right.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", nargs="+", default=list(SERIES), choices=list(SERIES))
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--seeds", type=int, default=3, help="networks trained per cell and variant")
    parser.add_argument("--steps", type=int, default=1000, help="optimiser steps per network")
    parser.add_argument("--variants", nargs="+", default=["level", "seasonal difference"],
                        choices=["level", "seasonal difference"])
    parser.add_argument("--maxiter", type=int, default=200, help="SARIMAX's optimiser iterations")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, help="the CSVs, data and builds (default: a temporary folder)")
    parser.add_argument("--table", action="store_true", help="print the table of --out/forecast.json, redraw the plot")
    args = parser.parse_args()
    path = args.out / "forecast.json"
    if args.table:
        results = json.loads(path.read_text())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            work = args.work or Path(tmp)
            began = time.perf_counter()
            results = evaluate(args.series, args.cells, args.seeds, args.steps, args.variants, args.maxiter, work)
            results["machine"] = {"python": platform.python_version(), "command": " ".join(sys.argv),
                                  "seconds": time.perf_counter() - began}
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.out / "forecast.png")
    print(table(results))


if __name__ == "__main__":
    main()
