"""Cost of the compiler: build time and model.onnx size vs T for specs/lstm.yaml at d=h=64, unrolled vs looped
(Scan, native); and the build time of a 24-block transformer encoder."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

import seqdsl
from seqdsl.compilers.build import build
from seqdsl.compilers.onnx_export import export, set_weights
from seqdsl.compilers.torch_module import to_module
from seqdsl.passes import optimize, unroll

from ..harness import SPECS, Config, Report, ort_session

ORDER = 70


def run(report: Report, cfg: Config) -> None:
    spec, sizes = SPECS / "lstm.yaml", cfg.pick({"d": 64, "h": 64}, {"d": 4, "h": 4})
    lengths = [4] if cfg.tiny else [16, 128] if cfg.quick else [16, 128, 512, 2048]
    # onnxruntime takes ~quadratic time to open an unrolled graph (5 s at T=128, 80 s at T=512 on 2 cores), and
    # build() opens one for its parity check: above this T the unrolled form is exported and measured, not opened
    session_cap = min(cfg.unroll_session_cap, 16) if cfg.quick or cfg.tiny else cfg.unroll_session_cap
    model = seqdsl.load(spec, sizes)
    weights = {k: v.detach().numpy() for k, v in to_module(model).state_dict().items()}
    lines: list[list[str]] = []
    sizes_of: dict[str, dict[int, int]] = {"native": {}, "scan": {}, "unrolled": {}}
    tmp = Path(tempfile.mkdtemp(prefix="seqdsl-bench-"))
    x = np.random.default_rng(0).standard_normal((3, max(lengths), sizes["d"])).astype(np.float32)
    try:
        for steps in lengths:
            for form in ("native", "scan", "unrolled"):
                # export alone, for every form (build() has no switch for the Scan form)
                t0 = time.perf_counter()
                m = unroll(optimize(model), steps)[0] if form == "unrolled" else model
                proto = export(m, native_cells=(form == "native"))
                set_weights(proto, weights)
                path = tmp / f"{form}_{steps}.onnx"
                onnx.save(proto, str(path))
                export_s = time.perf_counter() - t0
                nbytes = path.stat().st_size
                sizes_of[form][steps] = nbytes
                session_s = run_ms = build_s = "-"
                if form != "unrolled" or steps <= session_cap:
                    t0 = time.perf_counter()
                    session = ort_session(proto, cfg.threads)
                    session_s = f"{time.perf_counter() - t0:.2f}"
                    t0 = time.perf_counter()
                    session.run(None, {"x": x[:, :steps]})
                    run_ms = f"{(time.perf_counter() - t0) * 1e3:.1f}"
                    # the whole `build` (model.py, weights, export, onnx.checker, onnxruntime vs torch check)
                    if form != "scan":
                        t0 = time.perf_counter()
                        out = tmp / f"build_{form}_{steps}"
                        result = build(spec, out, sizes, steps=steps, batch=3, unroll=(form == "unrolled"))
                        build_s = f"{time.perf_counter() - t0:.2f}"
                        assert (result.onnx_form == "unrolled") == (form == "unrolled"), result.onnx_form
                        assert abs((out / "model.onnx").stat().st_size - nbytes) <= 1024, (form, steps)
                        shutil.rmtree(out)
                note = f"{len(proto.graph.node)} nodes"
                if form == "unrolled" and steps > session_cap:
                    note += f"; not opened in onnxruntime (T > --unroll-session-cap {session_cap})"
                lines.append([str(steps), form, build_s, f"{export_s:.2f}", session_s, run_ms,
                              f"{nbytes / 1024:.1f}", note])
                print(f"  lstm d=h={sizes['h']} T={steps} {form}: build {build_s} s, export {export_s:.2f} s, session "
                      f"{session_s} s, {nbytes / 1024:.1f} KiB, {note}", flush=True)
                del proto
        for form in ("native", "scan"):  # the looped forms do not grow with T
            assert len(set(sizes_of[form].values())) == 1, f"{form} export grows with T: {sizes_of[form]}"
        report.notes.append(f"Looped exports (native and Scan) have the same size at every T in {lengths}: asserted.")
        title = f"Cost of the compiler: specs/lstm.yaml, d=h={sizes['h']} (build: B=3, parity check at T)"
        report.tables.append((title,
                              ["T", "ONNX form", "build() s", "export + save s", "ort session s",
                               "first ort run ms (B=3)", "model.onnx KiB", "graph"], lines))
        # a 24-block transformer encoder
        tf_sizes = cfg.pick({"vocab": 1000, "d": 256, "heads": 4, "ffn": 1024, "N": 24},
                            {"vocab": 10, "d": 8, "heads": 2, "ffn": 16, "N": 1})
        sizes_text = ", ".join(f"{k}={v}" for k, v in tf_sizes.items() if k != "N")
        t0 = time.perf_counter()
        loaded = seqdsl.load(SPECS / "transformer_encoder.yaml", tf_sizes)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        tf_net = to_module(loaded)
        module_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        tf_proto = export(loaded)
        export_s = time.perf_counter() - t0
        del tf_net, tf_proto
        t0 = time.perf_counter()
        result = build(SPECS / "transformer_encoder.yaml", tmp / "tf24", tf_sizes, steps=16, batch=3)
        tf_s = time.perf_counter() - t0
        onnx_mib = (tmp / "tf24" / "model.onnx").stat().st_size / 2**20
        report.tables.append((
            f"Cost of the compiler: {tf_sizes['N']}-block transformer encoder ({sizes_text})",
            ["step", "s", "parameters", "ONNX nodes", "model.onnx MiB"],
            [["seqdsl.load (parse, check, lower)", f"{load_s:.2f}", f"{loaded.param_count:,}", "-", "-"],
             ["to_module (codegen, import, init)", f"{module_s:.2f}", "-", "-", "-"],
             ["export (ONNX proto, zero weights)", f"{export_s:.2f}", "-", "-", "-"],
             ["build() in all (B=3, T=16: model.py, weights, ONNX, checker, onnxruntime parity)", f"{tf_s:.2f}",
              f"{result.param_count:,}", str(result.onnx_nodes), f"{onnx_mib:.1f}"]]))
        print(f"  transformer encoder N={tf_sizes['N']}: load {load_s:.2f} s, to_module {module_s:.2f} s, "
              f"export {export_s:.2f} s, build {tf_s:.2f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
