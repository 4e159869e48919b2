"""Variable lengths within a batch (`lengths:`): padded steps change nothing, as PyTorch's packed sequences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from conftest import SPECS, spec_error

import seqdsl
from seqdsl.compilers.interop import load_from_torch
from seqdsl.compilers.onnx_export import export, set_weights
from seqdsl.compilers.onnx_runtime import run
from seqdsl.compilers.torch_module import to_module

D, H, T = 3, 4, 6
LENGTHS = torch.tensor([6, 2, 4, 1])


def _with_lengths(spec: str, reverse: bool = False) -> seqdsl.Model:
    text = (SPECS / spec).read_text().replace("  x: [B, T, d]", "  x: [B, T, d]\n  lens: {shape: [B], dtype: int64}")
    text = text.replace("recurrent:\n", "recurrent:\n  lengths: lens\n" + ("  direction: reverse\n" if reverse else ""))
    return seqdsl.loads(text, {"d": D, "h": H})


def _packed(layer: nn.RNNBase, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    out, state = layer(pack_padded_sequence(x, LENGTHS, batch_first=True, enforce_sorted=False))
    y, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
    states = state if isinstance(state, tuple) else (state,)
    return (y, *(s[0] for s in states))


@pytest.mark.parametrize("spec, layer_cls", [("rnn.yaml", nn.RNN), ("lstm.yaml", nn.LSTM),
                                             ("gru_torch.yaml", nn.GRU)])
def test_padded_batch_equals_packed_sequences(spec: str, layer_cls: type[nn.RNNBase]):
    torch.manual_seed(0)
    model = _with_lengths(spec)
    net, layer = to_module(model), layer_cls(D, H, batch_first=True)
    load_from_torch(net, layer)
    x = torch.randn(len(LENGTHS), T, D)
    ours, theirs = net(x, LENGTHS), _packed(layer, x)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    proto = export(model)
    set_weights(proto, {k: v.detach().numpy() for k, v in net.state_dict().items()})
    got = run(proto.SerializeToString(), {"x": x.numpy(), "lens": LENGTHS.numpy()}).outputs
    for name, value in zip(net.output_names, ours):
        np.testing.assert_allclose(got[name], value.detach().numpy(), atol=1e-5)


def test_reverse_direction_starts_at_each_sequence_end():
    torch.manual_seed(1)
    model = _with_lengths("rnn.yaml", reverse=True)
    net, layer = to_module(model), nn.RNN(D, H, batch_first=True, bidirectional=True)
    with torch.no_grad():
        net.W.copy_(layer.weight_ih_l0_reverse)
        net.U.copy_(layer.weight_hh_l0_reverse)
        net.b.copy_(layer.bias_ih_l0_reverse + layer.bias_hh_l0_reverse)
    x = torch.randn(len(LENGTHS), T, D)
    y, h_n = net(x, LENGTHS)
    out, state = layer(pack_padded_sequence(x, LENGTHS, batch_first=True, enforce_sorted=False))
    want_y, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
    torch.testing.assert_close(y, want_y[..., H:], atol=1e-6, rtol=0)
    torch.testing.assert_close(h_n, state[1], atol=1e-6, rtol=0)


def test_padding_values_do_not_matter():
    model = _with_lengths("lstm.yaml")
    net = to_module(model)
    x = torch.randn(len(LENGTHS), T, D)
    noisy = x.clone()
    for b, n in enumerate(LENGTHS):
        noisy[b, n:] = 1e3 * torch.randn(T - n, D)
    for a, b in zip(net(x, LENGTHS), net(noisy, LENGTHS)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_lengths_must_be_an_int64_vector():
    text = (SPECS / "rnn.yaml").read_text().replace("  x: [B, T, d]", "  x: [B, T, d]\n  n: [B, d]")
    err = spec_error(text.replace("recurrent:\n", "recurrent:\n  lengths: n\n"))
    assert err.code == "E0403" and "int64 [B]" in (err.expected or "")
    err = spec_error((SPECS / "rnn.yaml").read_text().replace("recurrent:\n", "recurrent:\n  lengths: nn\n"))
    assert err.code == "E0301" and "`lengths` names `nn`" in err.message


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_final_and_last_follow_packed_sequences(reverse: bool):
    """`final(h)` is the packed layer's h_n (the last step processed); `last(h)` is its output at position n-1,
    the row's last real position, in either direction; the same holds for a value that is not a state."""
    torch.manual_seed(2)
    text = (SPECS / "rnn.yaml").read_text().replace("  h_n: final(h)", "  h_n: final(h)\n  h_last: last(h)\n"
                                                       "  a_n: final(a)\n  a_last: last(a)")
    text = text.replace("    h: tanh(W @ x + U @ h[t-1] + b)", "    a: W @ x + U @ h[t-1] + b\n    h: tanh(a)")
    text = text.replace("  x: [B, T, d]", "  x: [B, T, d]\n  lens: {shape: [B], dtype: int64}")
    text = text.replace("recurrent:\n", "recurrent:\n  lengths: lens\n" + ("  direction: reverse\n" if reverse else ""))
    model = seqdsl.loads(text, {"d": D, "h": H})
    net, layer = to_module(model), nn.RNN(D, H, batch_first=True, bidirectional=True)
    half = "_reverse" if reverse else ""
    with torch.no_grad():
        net.W.copy_(getattr(layer, f"weight_ih_l0{half}"))
        net.U.copy_(getattr(layer, f"weight_hh_l0{half}"))
        net.b.copy_(getattr(layer, f"bias_ih_l0{half}") + getattr(layer, f"bias_hh_l0{half}"))
    x = torch.randn(len(LENGTHS), T, D)
    ours = dict(zip(net.output_names, net(x, LENGTHS)))
    out, state = layer(pack_padded_sequence(x, LENGTHS, batch_first=True, enforce_sorted=False))
    y = pad_packed_sequence(out, batch_first=True, total_length=T)[0][..., H:] if reverse else \
        pad_packed_sequence(out, batch_first=True, total_length=T)[0][..., :H]
    at_end = y[torch.arange(len(LENGTHS)), LENGTHS - 1]
    torch.testing.assert_close(ours["y"], y, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours["h_n"], state[1 if reverse else 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(ours["h_last"], at_end, atol=1e-6, rtol=0)
    # `a` is the pre-activation: tanh(final(a)) and tanh(last(a)) are the packed layer's values at those steps
    torch.testing.assert_close(torch.tanh(ours["a_n"]), state[1 if reverse else 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.tanh(ours["a_last"]), at_end, atol=1e-6, rtol=0)
    proto = export(model)
    set_weights(proto, {k: v.detach().numpy() for k, v in net.state_dict().items()})
    got = run(proto.SerializeToString(), {"x": x.numpy(), "lens": LENGTHS.numpy()}).outputs
    for name, value in ours.items():
        np.testing.assert_allclose(got[name], value.detach().numpy(), atol=1e-5)
