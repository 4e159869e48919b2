"""Parity with torch.nn, which we did not write: the standard specs, given an nn.RNN / nn.LSTM / nn.GRU's
weights through seqdsl.compilers.interop, compute the same outputs, final states and gradients as the torch layer.

torch's gate stacking is written out again here (TORCH_LAYOUT) rather than taken from seqdsl.compilers.interop, so a
wrong table there cannot confirm itself.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import seqdsl
from seqdsl.compilers.interop import load_from_torch, save_to_torch
from seqdsl.compilers.torch_module import module_class

ROOT = Path(__file__).resolve().parents[1]
D, H = 5, 6
SIZES = {"d": D, "h": H}
TOL = {"atol": 1e-5, "rtol": 0.0}
# Parameter gradients are sums over B*T steps (up to ~30 in size here); float32 summation order differs from
# torch's, so allow 1e-5 relative on top. Seen: at most 7.6e-6 absolute, 3.4e-7 relative.
GRAD_TOL = {"atol": 1e-5, "rtol": 1e-5}

CELLS: dict[str, tuple[type[nn.RNNBase], str]] = {
    "rnn": (nn.RNN, "specs/rnn.yaml"),
    "lstm": (nn.LSTM, "specs/lstm.yaml"),
    "gru": (nn.GRU, "specs/gru_torch.yaml"),
}
# torch parameter -> the spec parameters stacked in it along dim 0 (torch.nn docs: LSTM i,f,g,o; GRU r,z,n).
TORCH_LAYOUT: dict[type[nn.RNNBase], dict[str, list[str]]] = {
    nn.RNN: {"weight_ih_l0": ["W"], "weight_hh_l0": ["U"], "bias_ih_l0": ["b"], "bias_hh_l0": ["b"]},
    nn.LSTM: {
        "weight_ih_l0": ["W_i", "W_f", "W_c", "W_o"],
        "weight_hh_l0": ["U_i", "U_f", "U_c", "U_o"],
        "bias_ih_l0": ["b_i", "b_f", "b_c", "b_o"],
        "bias_hh_l0": ["b_i", "b_f", "b_c", "b_o"],
    },
    nn.GRU: {
        "weight_ih_l0": ["W_r", "W_z", "W_n"],
        "weight_hh_l0": ["U_r", "U_z", "U_n"],
        "bias_ih_l0": ["b_ir", "b_iz", "b_in"],
        "bias_hh_l0": ["b_hr", "b_hz", "b_hn"],
    },
}


@functools.cache
def _compiled(spec: str, sizes: tuple[tuple[str, int], ...], native: bool) -> type[nn.Module]:
    """The generated module class for ``spec`` at ``sizes``, compiled once per test session: the spec's own
    equations (native=False), or recognised as a standard cell and run by torch's kernel (native=True)."""
    return module_class(seqdsl.load(ROOT / spec, sizes=dict(sizes)), native_cells=native)


def _module(spec: str, sizes: dict[str, int] = SIZES, native: bool = False) -> nn.Module:
    """A fresh instance of the compiled ``spec``."""
    return _compiled(spec, tuple(sorted(sizes.items())), native)()


def _torch_outputs(layer: nn.RNNBase, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``layer``'s (y, h_n[, c_n]) in the spec's shapes: batch-first y, states without the layer axis."""
    y, state = layer(x if layer.batch_first else x.transpose(0, 1))
    y = y if layer.batch_first else y.transpose(0, 1)
    states = state if isinstance(state, tuple) else (state,)
    return (y, *(s.squeeze(0) for s in states))


def _spec_view(layer: nn.RNNBase, spec_tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Spec tensors (values or gradients) stacked into torch's parameter shapes."""
    return {name: torch.cat([spec_tensors[n] for n in names]) for name, names in TORCH_LAYOUT[type(layer)].items()}


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    torch.testing.assert_close(ours, theirs, **TOL)


def _close_grad(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    torch.testing.assert_close(ours, theirs, **GRAD_TOL)


# ----------------------------------------------------------------------------- outputs and gradients


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("T", [1, 7, 50])
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("path", ["equations", "native"])
def test_outputs_and_gradients_match_torch(cell: str, T: int, B: int, path: str) -> None:
    layer_cls, spec = CELLS[cell]
    torch.manual_seed(100 * T + B)
    net = _module(spec, native=path == "native")
    source = inspect.getsource(type(net))
    kernel = {"rnn": "torch.rnn_tanh", "lstm": "torch.lstm", "gru": "torch.gru"}[cell]
    assert (kernel in source) == (path == "native"), "the path under test is the one that runs"
    layer = layer_cls(D, H, batch_first=True)
    load_from_torch(net, layer)

    x = torch.randn(B, T, D)
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, theirs = net(x_ours), _torch_outputs(layer, x_theirs)
    expected_names = ("y", "h_n", "c_n") if layer_cls is nn.LSTM else ("y", "h_n")
    assert net.output_names == expected_names and len(ours) == len(theirs) == len(expected_names)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        _close(a, b)

    # The same random linear functional of every output, backpropagated through both.
    probes = [torch.randn_like(o) for o in ours]
    sum((o * p).sum() for o, p in zip(ours, probes)).backward()
    sum((o * p).sum() for o, p in zip(theirs, probes)).backward()
    _close_grad(x_ours.grad, x_theirs.grad)
    spec_grads = {name: p.grad for name, p in net.named_parameters()}
    assert set(spec_grads) == {n for names in TORCH_LAYOUT[layer_cls].values() for n in names}
    # For RNN/LSTM the spec's one bias b gets both bias_ih's and bias_hh's gradient (they are equal in torch).
    for torch_name, grad in _spec_view(layer, spec_grads).items():
        _close_grad(grad, getattr(layer, torch_name).grad)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("cell", list(CELLS))
def test_round_trip_through_save_to_torch(cell: str, batch_first: bool) -> None:
    layer_cls, spec = CELLS[cell]
    torch.manual_seed(7)
    net, original = _module(spec), layer_cls(D, H, batch_first=True)
    load_from_torch(net, original)
    fresh = layer_cls(D, H, batch_first=batch_first)
    before = {name: p for name, p in fresh.named_parameters()}
    save_to_torch(net, fresh)
    assert all(p is before[name] for name, p in fresh.named_parameters())  # copied into, not replaced

    x = torch.randn(3, 7, D)
    with torch.no_grad():
        for a, b, c in zip(net(x), _torch_outputs(original, x), _torch_outputs(fresh, x)):
            _close(a, c)
            _close(b, c)
    # RNN/LSTM: the one spec bias lands in bias_ih, bias_hh is zero; GRU keeps both biases as they were.
    for name, p in fresh.named_parameters():
        if name == "bias_hh_l0" and layer_cls is not nn.GRU:
            assert torch.equal(p, torch.zeros_like(p))
        elif name == "bias_ih_l0" and layer_cls is not nn.GRU:
            _close(p, original.bias_ih_l0 + original.bias_hh_l0)
        else:
            assert torch.equal(p, getattr(original, name))


@pytest.mark.parametrize("cell", list(CELLS))
def test_load_keeps_parameter_objects(cell: str) -> None:
    layer_cls, spec = CELLS[cell]
    torch.manual_seed(3)
    net = _module(spec)
    before = dict(net.named_parameters())
    optimiser = torch.optim.SGD(net.parameters(), lr=0.1)
    layer = layer_cls(D, H)
    load_from_torch(net, layer)
    assert all(p is before[name] for name, p in net.named_parameters())
    expected = {name: p.detach() for name, p in layer.named_parameters()}
    if layer_cls is not nn.GRU:  # the spec's one bias is torch's two summed
        expected["bias_ih_l0"] = expected["bias_hh_l0"] = expected["bias_ih_l0"] + expected["bias_hh_l0"]
    for torch_name, value in _spec_view(layer, dict(net.named_parameters())).items():
        _close(value, expected[torch_name])
    assert all(p.requires_grad for p in net.parameters())
    # The optimiser still steps the loaded values.
    net(torch.randn(2, 4, D))[1].sum().backward()
    w = net.U if layer_cls is nn.RNN else net.U_r if layer_cls is nn.GRU else net.U_f
    old = w.detach().clone()
    optimiser.step()
    assert not torch.equal(w.detach(), old)


# ----------------------------------------------------------------------------- the classifier (prefix)


@pytest.mark.parametrize("prefix", ["lstm.", "lstm"])
def test_classifier_matches_a_torch_pipeline(prefix: str) -> None:
    torch.manual_seed(11)
    net = _module("specs/classifier.yaml")
    lstm = nn.LSTM(D, H, batch_first=True)
    load_from_torch(net, lstm, prefix=prefix)
    embedding = nn.Embedding(*net.E.shape)
    with torch.no_grad():
        embedding.weight.copy_(net.E)

    tokens = torch.randint(0, net.E.shape[0], (3, 9))
    logits = net(tokens)
    _, (h_n, _) = lstm(embedding(tokens))
    expected = F.linear(h_n[-1], net.W_y, net.b_y)
    assert logits.shape == expected.shape == (3, net.W_y.shape[0])
    _close(logits, expected)

    probe = torch.randn_like(logits)
    (logits * probe).sum().backward()
    (expected * probe).sum().backward()
    _close_grad(net.E.grad, embedding.weight.grad)
    spec_grads = {name.removeprefix("lstm."): p.grad for name, p in net.named_parameters() if name.startswith("lstm.")}
    for torch_name, grad in _spec_view(lstm, spec_grads).items():
        _close_grad(grad, getattr(lstm, torch_name).grad)

    back = nn.LSTM(D, H, batch_first=True)
    save_to_torch(net, back, prefix=prefix)
    with torch.no_grad():
        _close(F.linear(back(embedding(tokens))[1][0][-1], net.W_y, net.b_y), logits)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("layer", "spec", "words"),
    [
        (nn.LSTM(D, H, num_layers=2), "specs/lstm.yaml", ["num_layers=2", "one-layer", "specs/lstm.yaml"]),
        (nn.GRU(D, H, bidirectional=True), "specs/gru_torch.yaml", ["bidirectional=True", "one-direction"]),
        (nn.RNN(D, H, bias=False), "specs/rnn.yaml", ["bias=False"]),
        (nn.LSTM(D, H, proj_size=3), "specs/lstm.yaml", ["proj_size=3"]),
        (nn.RNN(D, H, nonlinearity="relu"), "specs/rnn.yaml", ["nonlinearity='relu'", "tanh"]),
        (nn.LSTM(D, H), "specs/gru_torch.yaml", ["expected the parameters of specs/lstm.yaml", "missing", "W_f",
                                                 "specs/gru_torch.yaml (an nn.GRU)"]),
        (nn.GRU(D, H), "specs/gru.yaml", ["specs/gru_torch.yaml", "missing", "W_n", "b_hn"]),
        (nn.LSTM(D, H + 1), "specs/lstm.yaml", ["shape mismatch", "W_i", "(6, 5)", "(7, 5)"]),
        (nn.RNN(D + 1, H), "specs/rnn.yaml", ["shape mismatch", "W", "(6, 5)", "(6, 6)"]),
    ],
    ids=["num_layers", "bidirectional", "no_bias", "proj_size", "relu", "lstm_into_gru", "gru_into_seed_gru",
         "hidden_size", "input_size"],
)
def test_errors_name_what_is_expected(layer: nn.RNNBase, spec: str, words: list[str]) -> None:
    net = _module(spec)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError) as caught:
        load_from_torch(net, layer)
    for word in words:
        assert word in str(caught.value)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # nothing half-copied

    torch_before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(ValueError):
        save_to_torch(net, layer)
    assert all(torch.equal(v, torch_before[k]) for k, v in layer.state_dict().items())


def test_missing_prefix_points_at_the_called_module() -> None:
    net = _module("specs/classifier.yaml")
    with pytest.raises(ValueError, match=r"missing: .*W_i.*under prefix 'lstm\.'"):
        load_from_torch(net, nn.LSTM(D, H))
    with pytest.raises(ValueError, match=r"under prefix 'encoder\.'; missing: encoder\.W_i"):
        save_to_torch(net, nn.LSTM(D, H), prefix="encoder.")


def test_not_a_recurrent_layer() -> None:
    with pytest.raises(TypeError, match="nn.RNN, LSTM or GRU"):
        load_from_torch(_module("specs/rnn.yaml"), nn.Linear(D, H))  # type: ignore[arg-type]
