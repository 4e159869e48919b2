"""The standard cells exported to ONNX (the native op, the Scan, and which of the two `seqdsl build` chooses),
in onnxruntime's CPU provider, vs torch.nn (forward)."""

from __future__ import annotations

import torch

from ..harness import Config, Report, Row, max_diff, measure, onnx_form, onnx_model, ort_session
from ._cells import FULL, TINY, sizes_label
from .rnn import CELLS, standard_cell

ORDER = 15
# the issues' targets for the native op, the Scan form and the form the build chooses, per cell
TARGETS = {"LSTM": (1.10, 1.25, 1.10), "GRU": (1.10, 1.10, 1.10), "RNN": (None, 1.10, 1.0)}


def run(report: Report, cfg: Config) -> None:
    s = cfg.pick(FULL, TINY)
    x = torch.randn(s["B"], s["T"], s["d"])
    feed = {"x": x.numpy()}
    for name, (_, cls, _, native_op, _) in CELLS.items():
        model, ref, nets = standard_cell(name, s)
        default = onnx_model(model, nets["default"], native_cells=True)
        scan = onnx_model(model, nets["default"], native_cells=False)
        chosen = "default" if onnx_form(onnx_model(model, nets["default"])) == onnx_form(default) else "scan"
        s_default, s_scan = ort_session(default, cfg.threads), ort_session(scan, cfg.threads)
        fns = {"ref": lambda: ref(x), "default": lambda: s_default.run(None, feed),
               "scan": lambda: s_scan.run(None, feed)}
        stats = measure(fns, cfg)
        with torch.no_grad():
            want = ref(x)
        w, nn_name = f"{name} {sizes_label(s)}", f"torch.nn.{cls.__name__}"
        form_default, form_scan = onnx_form(default), onnx_form(scan)
        t_default, t_scan, t_chosen = TARGETS[name]
        report.add(Row(w, f"onnxruntime, native op ({form_default})", nn_name, stats["default"],
                       stats["ref"], t_default, max_diff(tuple(s_default.run(None, feed)), want),
                       headline=f"onnxruntime, {name} as its native op vs {nn_name}"))
        form_chosen = form_default if chosen == "default" else form_scan
        report.add(Row(w, f"onnxruntime, as seqdsl build chooses ({form_chosen})", nn_name, stats[chosen],
                       stats["ref"], t_chosen, max_diff(tuple((s_default if chosen == "default" else s_scan)
                                                              .run(None, feed)), want),
                       headline=f"onnxruntime, {name} as seqdsl build chooses ({form_chosen.split(';')[0]}) "
                                f"vs {nn_name}"))
        report.add(Row(w, f"onnxruntime, native_cells=False ({form_scan})", nn_name, stats["scan"], stats["ref"],
                       t_scan, max_diff(tuple(s_scan.run(None, feed)), want),
                       headline=f"onnxruntime, {name} as {form_scan.split(' ')[0]} vs {nn_name}"))
