"""The standard cells exported to ONNX (export() default, and the Scan form), in onnxruntime's CPU provider,
vs torch.nn (forward)."""

from __future__ import annotations

import torch

from ..harness import Config, Report, Row, max_diff, measure, onnx_form, onnx_model, ort_session
from ._cells import FULL, TINY, sizes_label
from .rnn import CELLS, standard_cell

ORDER = 15
# the issue's targets for export()'s default form and for the Scan form, per cell
TARGETS = {"LSTM": (1.10, 1.25), "GRU": (1.10, 1.10), "RNN": (1.0, 1.10)}


def run(report: Report, cfg: Config) -> None:
    s = cfg.pick(FULL, TINY)
    x = torch.randn(s["B"], s["T"], s["d"])
    feed = {"x": x.numpy()}
    for name, (_, cls, _, native_op, _) in CELLS.items():
        model, ref, nets = standard_cell(name, s)
        default = onnx_model(model, nets["default"], native_cells=True)
        scan = onnx_model(model, nets["default"], native_cells=False)
        s_default, s_scan = ort_session(default, cfg.threads), ort_session(scan, cfg.threads)
        fns = {"ref": lambda: ref(x), "default": lambda: s_default.run(None, feed),
               "scan": lambda: s_scan.run(None, feed)}
        stats = measure(fns, cfg)
        with torch.no_grad():
            want = ref(x)
        w, nn_name = f"{name} {sizes_label(s)}", f"torch.nn.{cls.__name__}"
        form_default, form_scan = onnx_form(default), onnx_form(scan)
        t_default, t_scan = TARGETS[name]
        report.add(Row(w, f"onnxruntime, export() default ({form_default})", nn_name, stats["default"],
                       stats["ref"], t_default, max_diff(tuple(s_default.run(None, feed)), want),
                       headline=f"onnxruntime, {name} as export() chooses ({form_default.split(';')[0]}) "
                                f"vs {nn_name}"))
        report.add(Row(w, f"onnxruntime, native_cells=False ({form_scan})", nn_name, stats["scan"], stats["ref"],
                       t_scan, max_diff(tuple(s_scan.run(None, feed)), want),
                       headline=f"onnxruntime, {name} as {form_scan.split(' ')[0]} vs {nn_name}"))
