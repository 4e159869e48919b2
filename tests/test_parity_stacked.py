"""Parity with torch.nn for stacked and bidirectional layers: a spec that calls the standard LSTM / GRU / RNN with
``repeat=L`` and/or ``direction=both``, given a multi-layer or bidirectional nn.LSTM / nn.GRU / nn.RNN's weights
through seqdsl.compilers.interop, computes torch's output, the top layer's final states and the same gradients; the
weights go back into a fresh torch layer; the shipped specs (deep_lstm, bilstm, bigru) build end to end.

Where torch keeps each layer and direction is written out again here (``_torch_layout``: torch's suffixes
``_l{k}`` / ``_reverse``, the spec's ``{k}.`` / ``fw.`` / ``bw.``) rather than taken from seqdsl.compilers.interop, so a
wrong table there cannot confirm itself.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import seqdsl
from seqdsl.compilers.build import build, example_inputs, run_torch
from seqdsl.compilers.interop import load_from_torch, save_to_torch
from seqdsl.compilers.onnx_runtime import run
from seqdsl.compilers.torch_module import import_source, module_class

ROOT = Path(__file__).resolve().parents[1]
D, H = 5, 6
# Outputs, states and every gradient (input and parameters): 1e-5 absolute, no relative slack. Parameter
# gradients here reach ~12 in size; seen at most 2.1e-6 off (birnn_x2), outputs 1.8e-7, input gradients 3.1e-7.
TOL = {"atol": 1e-5, "rtol": 0.0}
SHAPES = [(3, 7), (2, 1)]  # (B, T)

# torch parameter of layer 0, forward -> the spec parameters stacked in it along dim 0 (torch.nn docs: LSTM
# gates i, f, g, o; GRU r, z, n; nn.RNN and nn.LSTM have two biases where the spec has one).
ONE_LAYER: dict[type[nn.RNNBase], dict[str, list[str]]] = {
    nn.RNN: {"weight_ih": ["W"], "weight_hh": ["U"], "bias_ih": ["b"], "bias_hh": ["b"]},
    nn.LSTM: {"weight_ih": ["W_i", "W_f", "W_c", "W_o"], "weight_hh": ["U_i", "U_f", "U_c", "U_o"],
              "bias_ih": ["b_i", "b_f", "b_c", "b_o"], "bias_hh": ["b_i", "b_f", "b_c", "b_o"]},
    nn.GRU: {"weight_ih": ["W_r", "W_z", "W_n"], "weight_hh": ["U_r", "U_z", "U_n"],
             "bias_ih": ["b_ir", "b_iz", "b_in"], "bias_hh": ["b_hr", "b_hz", "b_hn"]},
}
STD = {nn.RNN: "std:rnn.yaml", nn.LSTM: "std:lstm.yaml", nn.GRU: "std:gru_torch.yaml"}


class Case:
    """A torch layer configuration and the spec that computes it: a shipped spec, or the standard cell called
    with ``repeat`` / ``direction=both`` from a spec written here."""

    def __init__(self, cls: type[nn.RNNBase], layers: int, bi: bool, spec: str | None = None,
                 sizes: dict[str, int] | None = None, prefix: str = "rnn."):
        self.cls, self.layers, self.bi, self.spec, self.prefix = cls, layers, bi, spec, prefix
        self.sizes = {"d": D, "h": H, **(sizes or {})}

    def layer(self) -> nn.RNNBase:
        return self.cls(D, H, num_layers=self.layers, bidirectional=self.bi, batch_first=True)

    def text(self) -> str:
        """A spec calling the standard cell as this layer is stacked."""
        args = [f"repeat={self.layers}"] * (self.layers > 1) + ["direction=both"] * self.bi
        states = ["h_n", "c_n"] if self.cls is nn.LSTM else ["h_n"]
        return (f"imports: {{CELL: {STD[self.cls]}}}\nsizes: {{d: {D}, h: {H}}}\ninputs: {{x: [B, T, d]}}\n"
                f"graph:\n  rnn: CELL(x, {', '.join(['h=h', *args])})\n"
                f"outputs: {{y: rnn.y, {', '.join(f'{s}: rnn.{s}' for s in states)}}}\n")


CASES = {
    "lstm_x2": Case(nn.LSTM, 2, False, "specs/deep_lstm.yaml", {"depth": 2}, "layers."),
    "lstm_x4": Case(nn.LSTM, 4, False, "specs/deep_lstm.yaml", {}, "layers."),
    "bilstm": Case(nn.LSTM, 1, True, "specs/bilstm.yaml", {}, "bi."),
    "bilstm_x2": Case(nn.LSTM, 2, True),
    "gru_x2": Case(nn.GRU, 2, False),
    "gru_x4": Case(nn.GRU, 4, False),
    "bigru": Case(nn.GRU, 1, True, "specs/bigru.yaml", {"depth": 1}, "layers.0."),  # repeat=1: numbered
    "bigru_x2": Case(nn.GRU, 2, True, "specs/bigru.yaml", {}, "layers."),
    "birnn_x2": Case(nn.RNN, 2, True),
}


@functools.cache
def _compiled(name: str, native: bool = False) -> type[nn.Module]:
    """The case's module class: the spec's equations, or (native) standard cells on torch's kernels."""
    case = CASES[name]
    if case.spec is None:
        return module_class(seqdsl.loads(case.text(), file="<stacked>"), native_cells=native)
    return module_class(seqdsl.load(ROOT / case.spec, sizes=case.sizes), native_cells=native)


def _torch_layout(layer: nn.RNNBase) -> dict[str, list[str]]:
    """Every torch parameter of ``layer`` -> the spec parameters (without the call's prefix) stacked in it."""
    out = {}
    for k in range(layer.num_layers):
        for reverse in [False, True] if layer.bidirectional else [False]:
            where = (f"{k}." if layer.num_layers > 1 else "") + \
                    (("bw." if reverse else "fw.") if layer.bidirectional else "")
            for base, names in ONE_LAYER[type(layer)].items():
                out[f"{base}_l{k}" + ("_reverse" if reverse else "")] = [where + n for n in names]
    return out


def _torch_outputs(layer: nn.RNNBase, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """torch's output and, of each final state (layers * directions, B, h), the top layer's: its one direction,
    or [forward ; backward] on the last axis, as the spec's concatenated outputs."""
    y, state = layer(x)
    states = state if isinstance(state, tuple) else (state,)
    top = 2 if layer.bidirectional else 1
    return (y, *(torch.cat(list(s[-top:]), dim=-1) for s in states))


@pytest.mark.parametrize(("B", "T"), SHAPES)
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("native", [False, True], ids=["equations", "native"])
def test_outputs_and_gradients_match_torch(name: str, B: int, T: int, native: bool) -> None:
    case = CASES[name]
    torch.manual_seed(10 * T + B)
    net, layer = _compiled(name, native)(), case.layer()
    load_from_torch(net, layer, prefix=case.prefix)

    x = torch.randn(B, T, D)
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, theirs = net(x_ours), _torch_outputs(layer, x_theirs)
    assert net.output_names == (("y", "h_n", "c_n") if case.cls is nn.LSTM else ("y", "h_n"))
    width = H * (2 if case.bi else 1)
    assert ours[0].shape == (B, T, width) and all(o.shape == (B, width) for o in ours[1:])
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, **TOL)

    probes = [torch.randn_like(o) for o in ours]
    sum((o * p).sum() for o, p in zip(ours, probes)).backward()
    sum((o * p).sum() for o, p in zip(theirs, probes)).backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, **TOL)
    spec_grads = {n: p.grad for n, p in net.named_parameters()}
    layout = _torch_layout(layer)
    assert set(spec_grads) == {case.prefix + n for names in layout.values() for n in names}
    assert {n for n, _ in layer.named_parameters()} == set(layout)
    for torch_name, names in layout.items():
        # for RNN/LSTM the spec's one bias gets bias_ih's and bias_hh's gradient, equal in torch
        ours_grad = torch.cat([spec_grads[case.prefix + n] for n in names])
        torch.testing.assert_close(ours_grad, getattr(layer, torch_name).grad, **TOL, msg=torch_name)


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_through_save_to_torch(name: str) -> None:
    case = CASES[name]
    torch.manual_seed(7)
    net, original, fresh = _compiled(name)(), case.layer(), case.layer()
    load_from_torch(net, original, prefix=case.prefix)
    before = dict(fresh.named_parameters())
    save_to_torch(net, fresh, prefix=case.prefix)
    assert all(p is before[n] for n, p in fresh.named_parameters())  # copied into, not replaced

    x = torch.randn(3, 7, D)
    with torch.no_grad():
        for a, b, c in zip(net(x), _torch_outputs(original, x), _torch_outputs(fresh, x), strict=True):
            torch.testing.assert_close(a, c, **TOL)
            torch.testing.assert_close(b, c, **TOL)
    # RNN/LSTM: each layer's one spec bias lands in bias_ih, bias_hh is zero; GRU keeps both as they were.
    for n, p in fresh.named_parameters():
        if case.cls is not nn.GRU and n.startswith("bias_hh"):
            assert torch.equal(p, torch.zeros_like(p)), n
        elif case.cls is not nn.GRU and n.startswith("bias_ih"):
            other = getattr(original, n.replace("bias_ih", "bias_hh"))
            torch.testing.assert_close(p, getattr(original, n) + other, **TOL)
        else:
            assert torch.equal(p, getattr(original, n)), n


# ----------------------------------------------------------------------------- what does not fit


def test_a_one_layer_spec_is_no_stack() -> None:
    net = module_class(seqdsl.load(ROOT / "specs/lstm.yaml", sizes={"d": D, "h": H}))()
    with pytest.raises(ValueError, match=r"num_layers=2.*'0\.', '1\.'.*missing: 0\.W_i.*one-layer, one-direction"):
        load_from_torch(net, nn.LSTM(D, H, num_layers=2))


def test_missing_prefix_points_at_the_stack() -> None:
    net = _compiled("bigru_x2")()
    with pytest.raises(ValueError, match=r"'fw\.', 'bw\.'.*under prefix 'layers\.0\.' or 'layers\.1\.'"):
        load_from_torch(net, nn.GRU(D, H, bidirectional=True))  # one layer: either of the spec's two
    load_from_torch(net, nn.GRU(2 * H, H, bidirectional=True), prefix="layers.1")  # reads layer 0's [fw ; bw]


def test_stack_depths_must_agree() -> None:
    net = _compiled("lstm_x4")()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=r"more layers under prefix 'layers\.'.*num_layers=3.*layers\.3\.W_i"):
        load_from_torch(net, nn.LSTM(D, H, num_layers=3), prefix="layers")
    with pytest.raises(ValueError, match=r"under prefixes 'layers\.0\.', .*'layers\.4\.'.*missing: layers\.4\.W_i"):
        load_from_torch(net, nn.LSTM(D, H, num_layers=5), prefix="layers")
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # nothing half-copied
    with pytest.raises(ValueError, match="more layers"):
        save_to_torch(net, nn.LSTM(D, H, num_layers=3), prefix="layers")


def test_upper_layers_check_their_input_width() -> None:
    net = _compiled("bilstm_x2")()  # layer 1 reads [fw ; bw]: W is (H, 2H)
    with pytest.raises(ValueError, match=r"rnn\.0\.fw\.W_i has shape \(6, 5\).*weight_ih_l0 .*\(6, 4\)"):
        load_from_torch(net, nn.LSTM(D - 1, H, num_layers=2, bidirectional=True), prefix="rnn")


@pytest.mark.parametrize("layer", [nn.LSTM(D, H, num_layers=2, bias=False), nn.GRU(D, H, bias=False,
                                   bidirectional=True), nn.LSTM(D, H, num_layers=2, proj_size=3),
                                   nn.RNN(D, H, num_layers=2, nonlinearity="relu")],
                         ids=["no_bias", "gru_no_bias", "proj_size", "relu"])
def test_configurations_no_spec_computes(layer: nn.RNNBase) -> None:
    with pytest.raises(ValueError, match="bias=False|proj_size=3|nonlinearity='relu'"):
        load_from_torch(_compiled("bilstm_x2")(), layer, prefix="rnn")


# ----------------------------------------------------------------------------- the shipped specs, built


SHIPPED = ["deep_lstm", "bilstm", "bigru"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stacked")
    return {s: Path(build(ROOT / "specs" / f"{s}.yaml", root / s, steps=5, batch=2).out_dir) for s in SHIPPED}


@pytest.mark.parametrize("spec", SHIPPED)
def test_shipped_spec_builds_and_its_onnx_runs_at_other_lengths(spec: str, built: dict[str, Path]) -> None:
    out = built[spec]
    net = import_source(out / "model.py").Model()
    net.load_state_dict(load_file(str(out / "weights.safetensors")), strict=True)
    model = seqdsl.load(ROOT / "specs" / f"{spec}.yaml")
    for batch, steps in [(1, 1), (3, 11)]:  # built at B=2, T=5
        inputs = example_inputs(model, batch, steps, seed=batch + steps)
        want = run_torch(net, inputs)
        got = run(out / "model.onnx", inputs).outputs
        assert list(got) == list(want) == list(model.graph.outputs)
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, atol=1e-5, rtol=0, err_msg=f"{spec}.{name}")
            assert value.shape[0] == batch
