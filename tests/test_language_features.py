"""Language features built end to end (live module vs onnxruntime at several lengths): every primitive, the
encoder/decoder sections of a recurrent block, learned and input-given initial states, many-to-one outputs."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

import seqdsl
from seqdsl.compilers.build import example_inputs, run_torch
from seqdsl.compilers.onnx_export import export, set_weights
from seqdsl.compilers.onnx_runtime import run
from seqdsl.compilers.torch_module import to_module
from conftest import spec_error

PRIMITIVES = """
sizes: {vocab: 11, d: 6, h: 4}
inputs:
  tokens: {shape: [B, T], dtype: int64}
  h0: [B, h]
params:
  E: {shape: [vocab, d], init: normal}
  W: [h, d]
  U: [h, h]
  V: [h, h]
  b: [h]
  W_y: [vocab, h]
recurrent:
  state:
    h: {shape: [B, h], init: h0}
    c: {shape: [B, h], init: learned}
  encoder:
    e: embedding(E, tokens)          # Enc(x(t)): sees the input only
    wx: W @ e
  step:
    a, g: chunk(concat(U @ h[t-1], V @ c[t-1]), 2)
    z: sigmoid(wx + a + b)
    c: relu(g) - exp(-z) / 2
    h: z * h[t-1] + (1 - z) * tanh(wx + U @ (c * h[t-1]))
  decoder:
    y: log_softmax(W_y @ h)          # Dec(z(t))
    p: softmax(W_y @ h, axis=-1)
outputs:
  y: y
  p_last: last(p)
  h_n: final(h)
"""


def _compare(model: seqdsl.Model, steps: int, batch: int) -> None:
    net = to_module(model)
    proto = export(model)
    set_weights(proto, {k: v.detach().numpy() for k, v in net.state_dict().items()})
    inputs = example_inputs(model, batch, steps, seed=steps)
    want = run_torch(net, inputs)
    got = run(proto.SerializeToString(), inputs).outputs
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, atol=1e-5, rtol=0, err_msg=name)


@pytest.mark.parametrize("steps, batch", [(1, 1), (6, 3)])
def test_every_primitive_in_one_cell(steps: int, batch: int):
    model = seqdsl.loads(PRIMITIVES)
    assert "c_0" in model.params  # the learned initial state is a parameter
    _compare(model, steps, batch)


def test_decoder_output_is_a_distribution_per_step():
    model = seqdsl.loads(PRIMITIVES)
    net = to_module(model)
    y, p_last, h_n = run_torch(net, example_inputs(model, 2, 5)).values()
    assert y.shape == (2, 5, 11) and p_last.shape == (2, 11) and h_n.shape == (2, 4)
    np.testing.assert_allclose(np.exp(y).sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(p_last, np.exp(y[:, -1]), atol=1e-6)


def test_initial_state_from_an_input_is_used():
    model = seqdsl.loads(PRIMITIVES)
    net = to_module(model)
    inputs = example_inputs(model, 2, 3)
    first = run_torch(net, inputs)["h_n"]
    inputs["h0"] = inputs["h0"] + 1.0
    assert not np.allclose(run_torch(net, inputs)["h_n"], first)


def test_encoder_may_not_read_the_state():
    err = spec_error(PRIMITIVES.replace("wx: W @ e", "wx: W @ e + U @ h[t-1]"))
    assert err.code == "E0406" and "move this equation to `step:`" in (err.hint or "")


def test_graph_module_without_recurrence():
    model = seqdsl.loads(textwrap.dedent("""
        sizes: {d: 3, k: 5}
        inputs: {x: [B, T, d]}
        params: {W: [k, d], b: [k]}
        graph:
          y: softmax(W @ x + b)
          y0: first(y)
        outputs: {y: y, y0: y0}
    """))
    _compare(model, 4, 2)
    net = to_module(model)
    x = torch.randn(2, 4, 3)
    y, y0 = net(x)
    torch.testing.assert_close(y, torch.softmax(x @ net.W.T + net.b, -1))
    torch.testing.assert_close(y0, y[:, 0])


def test_generation_stops_once_every_row_produced_the_stop_token():
    from conftest import SPECS

    model = seqdsl.loads((SPECS / "generator.yaml").read_text(), {"L": 12}, file=str(SPECS / "generator.yaml"))
    net = to_module(model).eval()
    proto = export(model)
    v = torch.randn(3, 10)
    with torch.no_grad():
        net.gen.b_y.zero_()
        net.gen.b_y[1] = 50.0  # <eos> (id 1) wins as soon as the bias dominates
        net.gen.W_y.mul_(0.01)
    set_weights(proto, {k: x.detach().numpy() for k, x in net.state_dict().items()})
    with torch.no_grad():
        logits, tokens = net(v)
    assert tokens.shape == (3, 1) and (tokens == 1).all()  # stopped after one step, not 12
    got = run(proto.SerializeToString(), {"v": v.numpy()}).outputs
    assert got["tokens"].shape == (3, 1)
    np.testing.assert_allclose(got["logits"], logits.numpy(), atol=1e-5)
    with torch.no_grad():
        net.gen.b_y[1] = -50.0  # <eos> never wins: all L steps run
        _, tokens = net(v)
    assert tokens.shape == (3, 12) and not (tokens == 1).any()


def test_stop_needs_a_token_of_a_steps_block():
    from conftest import SPECS

    text = (SPECS / "generator.yaml").read_text()
    err = spec_error(text.replace("stop: {when: w, equals: eos}", "stop: {when: z, equals: eos}"))
    assert err.code == "E0403" and "int64" in err.message
