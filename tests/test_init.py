"""Initialisers in the spec (`seqdsl.init`): each gives tensors with its defining property (QᵀQ = I per block, the
identity, the constant, the variance of its formula), the same numbers in a build's model.py and the live module,
and a misuse is one located error."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import seqdsl
from seqdsl.compilers.build import build
from seqdsl.compilers.torch_module import to_module
from seqdsl.errors import SpecError


def spec_with(params: str, sizes: str = "{d: 4, h: 3}") -> str:
    """A graph module whose output reads every declared parameter (so none is unused)."""
    names = [line.split(":")[0].strip() for line in textwrap.dedent(params).strip().splitlines()]
    total = " + ".join(f"sum(sum({n}, -1), -1)" if n.startswith("M") else f"sum({n}, -1)" for n in names)
    body = textwrap.indent(textwrap.dedent(params).strip(), "  ")
    return f"name: inits\nsizes: {sizes}\ninputs:\n  x: [B, d]\nparams:\n{body}\ngraph:\n  y: sum(x, -1) + {total}\n" \
           "outputs:\n  y: y\n"


def weights(text: str, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.detach() for k, v in to_module(seqdsl.loads(text, file="x.yaml")).state_dict().items()}


def is_orthonormal(block: torch.Tensor, gain: float) -> bool:
    q = block.reshape(block.shape[0], -1).double() / gain
    gram = q.T @ q if q.shape[0] >= q.shape[1] else q @ q.T
    return torch.allclose(gram, torch.eye(gram.shape[0], dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize("rows, cols, blocks, gain", [(12, 4, 4, 1.0), (8, 8, 1, 1.0), (6, 9, 3, 1.5),
                                                       (40, 5, 2, 0.7), (16, 32, 1, 2.0)])
def test_orthogonal_per_block(rows: int, cols: int, blocks: int, gain: float):
    text = spec_with(f"W: {{shape: [{rows}, {cols}], init: orthogonal, blocks: {blocks}, gain: {gain}}}",
                     f"{{d: {cols}}}").replace("sum(W, -1)", "sum(sum(W, -1), -1)")
    w = weights(text)["W"]
    parts = w.split(rows // blocks)
    assert len(parts) == blocks and all(is_orthonormal(b, gain) for b in parts)
    if blocks > 1 and rows // blocks < cols:  # the stacked matrix as a whole is not orthonormal: really per block
        assert not is_orthonormal(w, gain)


def test_identity_constant_and_gain():
    text = spec_with("""\
        U: {shape: [h, h], init: identity}
        V: {shape: [h, h], init: identity, gain: 0.25}
        R: {shape: [6, h], init: identity, blocks: 2}
        b_f: {shape: [h], init: 1.0}
        c: {shape: [h], init: -3}""", "{d: 4, h: 3}")
    for n in "UVR":
        text = text.replace(f"sum({n}, -1)", f"sum(sum({n}, -1), -1)")
    w = weights(text)
    assert torch.equal(w["U"], torch.eye(3))
    assert torch.equal(w["V"], 0.25 * torch.eye(3))
    assert torch.equal(w["R"], torch.cat([torch.eye(3), torch.eye(3)]))
    assert torch.equal(w["b_f"], torch.ones(3))
    assert torch.equal(w["c"], torch.full((3,), -3.0))


@pytest.mark.parametrize("kind, gain", [("xavier_uniform", None), ("xavier_uniform", 2.0), ("kaiming_uniform", None),
                                        ("kaiming_uniform", 1.0)])
def test_uniform_variance_matches_the_formula(kind: str, gain: float | None):
    fan_out, fan_in = 300, 500
    extra = f", gain: {gain}" if gain is not None else ""
    text = spec_with(f"W: {{shape: [{fan_out}, {fan_in}], init: {kind}{extra}}}", f"{{d: {fan_in}}}")
    w = weights(text.replace("sum(W, -1)", "sum(sum(W, -1), -1)"))["W"].double()
    g = gain if gain is not None else (1.0 if kind == "xavier_uniform" else math.sqrt(2.0))
    bound = g * (math.sqrt(6 / (fan_in + fan_out)) if kind == "xavier_uniform" else math.sqrt(3 / fan_in))
    want = bound**2 / 3
    # the variance of a sample of n uniforms has relative standard error sqrt(4/5 / n) (0.13% here): 1% is ~8 SE
    assert abs(w.var().item() / want - 1) < 0.01
    assert w.abs().max().item() <= bound and w.abs().max().item() > 0.99 * bound
    assert abs(w.mean().item()) < 4 * math.sqrt(want / w.numel())


def test_kaiming_default_is_torch_nn_init_for_relu():
    text = spec_with("W: {shape: [7, 5], init: kaiming_uniform}", "{d: 5}").replace("sum(W, -1)", "sum(sum(W, -1), -1)")
    ours = weights(text, seed=3)["W"]
    torch.manual_seed(3)
    theirs = torch.nn.init.kaiming_uniform_(torch.empty(7, 5), nonlinearity="relu")
    assert torch.equal(ours, theirs)


def test_same_seed_same_tensors_in_model_py_and_the_live_module(tmp_path: Path):
    spec = tmp_path / "lstm_init.yaml"
    spec.write_text(textwrap.dedent("""\
        name: lstm_init
        sizes: {d: 5, h: 4}
        inputs:
          x: [B, T, d]
        params:
          W: {shape: [4 * h, d], init: xavier_uniform}
          U: {shape: [4 * h, h], init: orthogonal, blocks: 4}
          b: {shape: [4 * h], init: 0.0}
          b_f: {shape: [h], init: 1.0}
        recurrent:
          state:
            h: [B, h]
            c: [B, h]
          step:
            z: W @ x + U @ h[t-1] + b
            zi, zf, zg, zo: chunk(z, 4)
            c: sigmoid(zf + b_f) * c[t-1] + sigmoid(zi) * tanh(zg)
            h: sigmoid(zo) * tanh(c)
        outputs:
          y: h
        """))
    shipped = load_file(str(Path(build(spec, tmp_path / "out", seed=11).out_dir) / "weights.safetensors"))
    torch.manual_seed(11)
    live = to_module(seqdsl.load(spec)).state_dict()
    assert shipped.keys() == live.keys()
    assert all(torch.equal(shipped[k], live[k]) for k in live)
    assert all(is_orthonormal(b, 1.0) for b in live["U"].split(4))
    assert torch.equal(live["b_f"], torch.ones(4))


# -- misuse is one located error; every accepted combination has its property -----------------------------------

KINDS = ["uniform", "normal", "zeros", "ones", "orthogonal", "identity", "xavier_uniform", "kaiming_uniform", "1.5"]


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(KINDS), shape=st.lists(st.integers(1, 6), min_size=1, max_size=3),
       gain=st.one_of(st.none(), st.sampled_from(["0.5", "2", "-1", "0", ".inf", "true"])),
       blocks=st.one_of(st.none(), st.integers(1, 4)))
def test_every_combination_loads_with_its_property_or_is_a_located_error(kind, shape, gain, blocks):
    decl = f"{{shape: {shape}, init: {kind}" + (f", gain: {gain}" if gain else "") + \
        (f", blocks: {blocks}" if blocks else "") + "}"
    text = spec_with(f"M: {decl}", "{d: 2}")
    text = text.replace("sum(sum(M, -1), -1)", "sum(" * len(shape) + "M" + ", -1)" * len(shape))
    try:
        w = weights(text)["M"]
    except SpecError as err:
        assert err.code in ("E0317", "E0203", "E0306") and err.loc.line > 0, err.format()
        return
    assert tuple(w.shape) == tuple(shape)
    g = float(gain) if gain else 1.0
    parts = w.split(shape[0] // (blocks or 1))
    if kind == "orthogonal":
        assert all(is_orthonormal(b, g) for b in parts)
    elif kind == "identity":
        assert all(torch.allclose(b, g * torch.eye(*b.shape)) for b in parts)
    elif kind in ("zeros", "ones", "1.5"):
        assert torch.all(w == {"zeros": 0.0, "ones": 1.0, "1.5": 1.5}[kind])
    elif kind in ("xavier_uniform", "kaiming_uniform") and len(shape) >= 2:
        receptive = math.prod(shape[2:])
        fan_in, fan_out = shape[1] * receptive, parts[0].shape[0] * receptive
        default = 1.0 if kind == "xavier_uniform" else math.sqrt(2.0)
        g = float(gain) if gain else default
        bound = g * (math.sqrt(6 / (fan_in + fan_out)) if kind == "xavier_uniform" else math.sqrt(3 / fan_in))
        assert w.abs().max().item() <= bound * (1 + 1e-6)


@pytest.mark.parametrize("decl, message", [
    ("{shape: [h], init: orthogonal}", "needs a parameter of 2 or more axes"),
    ("{shape: [h, h, h], init: identity}", "needs a parameter of 2 axes"),
    ("{shape: [h, h], init: uniform, gain: 2.0}", "takes no gain"),
    ("{shape: [h, h], init: 1.0, gain: 2.0}", "takes no gain"),
    ("{shape: [h, h], init: orthogonal, gain: -1.0}", "positive finite"),
    ("{shape: [h, h], init: orthogonal, blocks: 2}", "does not split"),
    ("{shape: [h, h], init: .nan}", "not finite"),
])
def test_misuse_is_located(decl: str, message: str):
    text = spec_with(f"M: {decl}", "{d: 4, h: 3}")
    with pytest.raises(SpecError) as info:
        seqdsl.loads(text, file="x.yaml")
    err = info.value
    assert err.code == "E0317" and message in err.message and err.loc.line == 6 and err.loc.file == "x.yaml"


def test_a_misspelt_initialiser_gets_a_suggestion():
    with pytest.raises(SpecError) as info:
        seqdsl.loads(spec_with("M: {shape: [h, h], init: orthogonl}", "{d: 4, h: 3}"), file="x.yaml")
    assert info.value.code == "E0203" and "orthogonal" in (info.value.hint or "")
