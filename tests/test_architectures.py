"""The architecture specs (seq2seq, Bahdanau attention, memory network, hypernetwork RNN, one-to-many generator,
Hopfield memory) against hand-written PyTorch references that follow the papers' equations.

Each reference below is plain torch ops and Python loops, written from the equations in the spec's header (not
from the generated code); it reads the compiled module's parameters by their spec names from ``state_dict()``.
For each spec, at two (B, T, S) shapes: every output within 1e-5, and the gradients of a random linear function
of the float outputs with respect to every float input and every parameter within 1e-5. Then each spec is
built end to end and onnxruntime is compared with PyTorch at batch sizes and lengths other than the build's;
and a property a user would take for granted is checked for each one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import seqdsl
from seqdsl.compilers.build import build, example_inputs, run_torch
from seqdsl.compilers.onnx_runtime import run
from seqdsl.compilers.torch_module import to_module

SPECS = Path(__file__).resolve().parent.parent / "specs"
ARCHITECTURES = ["seq2seq", "seq2seq_attention", "memory_network", "hypernetwork_rnn", "generator", "hopfield"]
SHAPES = [(2, 5, 7), (3, 8, 3)]  # (B, T, S): a target longer and one shorter than the source
TOL = 1e-5

sig, tanh = torch.sigmoid, torch.tanh


def lin(W: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """W x for a weight W [m, n] and a batch of vectors x [..., n]."""
    return x @ W.T


# ------------------------------------------------------------------------------------------------ references


def lstm(P: dict, pre: str, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
    """Seed 003's LSTM over x [B, T, d] from (h, c); returns every h, and the final (h, c)."""
    hs = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        f = sig(lin(P[pre + "W_f"], xt) + lin(P[pre + "U_f"], h) + P[pre + "b_f"])
        i = sig(lin(P[pre + "W_i"], xt) + lin(P[pre + "U_i"], h) + P[pre + "b_i"])
        o = sig(lin(P[pre + "W_o"], xt) + lin(P[pre + "U_o"], h) + P[pre + "b_o"])
        c = f * c + i * tanh(lin(P[pre + "W_c"], xt) + lin(P[pre + "U_c"], h) + P[pre + "b_c"])
        h = o * tanh(c)
        hs.append(h)
    return torch.stack(hs, 1), h, c


def seq2seq_ref(P: dict, src: torch.Tensor, tgt: torch.Tensor):
    B, h = src.shape[0], P["W_y"].shape[1]
    zero = src.new_zeros(B, h)
    _, h_S, c_S = lstm(P, "enc.", src, zero, zero)  # the encoder's meaning vector (and cell)
    s, _, _ = lstm(P, "dec.", tgt, h_S, c_S)        # the decoder starts from it
    return (torch.log_softmax(lin(P["W_y"], s) + P["b_y"], -1),)


def gru_cho(P: dict, pre: str, x: torch.Tensor, reverse: bool) -> list[torch.Tensor]:
    """GRU in Cho's form over x [B, S, d], forwards or backwards; h_j at each source position j."""
    S = x.shape[1]
    h = x.new_zeros(x.shape[0], P[pre + "U_z"].shape[0])
    out: list = [None] * S
    for j in (reversed(range(S)) if reverse else range(S)):
        xj = x[:, j]
        z = sig(lin(P[pre + "W_z"], xj) + lin(P[pre + "U_z"], h) + P[pre + "b_z"])
        r = sig(lin(P[pre + "W_r"], xj) + lin(P[pre + "U_r"], h) + P[pre + "b_r"])
        h = z * h + (1 - z) * tanh(lin(P[pre + "W_h"], xj) + lin(P[pre + "U_h"], r * h) + P[pre + "b_h"])
        out[j] = h
    return out


def bahdanau_ref(P: dict, src: torch.Tensor, tgt: torch.Tensor):
    fw, bw = gru_cho(P, "enc.fw.", src, False), gru_cho(P, "enc.bw.", src, True)
    annotations = [torch.cat([f, b], -1) for f, b in zip(fw, bw)]  # h_j = [→h_j ; ←h_j]
    s = tanh(lin(P["W_s"], bw[0]))                                   # s_0 = tanh(W_s ←h_1)
    y = P["E"][tgt]                                                  # teacher forcing: embeddings of the targets
    D = {k[4:]: v for k, v in P.items() if k.startswith("dec.")}
    logps, alphas = [], []
    for t in range(tgt.shape[1]):
        e = torch.stack([(D["v_a"] * tanh(lin(D["W_a"], s) + lin(D["U_a"], h_j))).sum(-1)   # v_aᵀ tanh(...)
                         for h_j in annotations], -1)                                       # (B, S)
        alpha = torch.softmax(e, -1)
        c = sum(alpha[:, j:j + 1] * h_j for j, h_j in enumerate(annotations))              # Σ_j α_tj h_j
        yt = y[:, t]
        z = sig(lin(D["W_z"], yt) + lin(D["U_z"], s) + lin(D["C_z"], c) + D["b_z"])
        r = sig(lin(D["W_r"], yt) + lin(D["U_r"], s) + lin(D["C_r"], c) + D["b_r"])
        s = (1 - z) * s + z * tanh(lin(D["W_h"], yt) + lin(D["U_h"], r * s) + lin(D["C_h"], c) + D["b_h"])
        logps.append(torch.log_softmax(lin(D["W_o"], s) + lin(D["C_o"], c) + D["b_o"], -1))
        alphas.append(alpha)
    return torch.stack(logps, 1), torch.stack(alphas, 1)


def memory_network_ref(P: dict, story: torch.Tensor, question: torch.Tensor, hops: int = 3):
    m = P["A"][story].sum(2)         # m_i = Σ_j A x_ij   (B, N, h)
    c = P["C"][story].sum(2)         # c_i = Σ_j C x_ij
    u = P["B_q"][question].sum(1)    # u = Σ_j B q_j      (B, h)
    ps = []
    for _ in range(hops):
        p = torch.softmax((m * u[:, None, :]).sum(-1), -1)   # p_i = softmax(m_iᵀ u)
        o = (p[:, :, None] * c).sum(1)                       # o = Σ_i p_i c_i
        u = lin(P["hops.H"], u) + o                          # u = H u + o
        ps.append(p)
    return torch.softmax(lin(P["W"], u), -1), torch.stack(ps, 1)


def hypernetwork_ref(P: dict, x: torch.Tensor):
    U_w = P["U_w"]                                           # [h, d, h]: u_ij ∈ R^h
    h = x.new_zeros(x.shape[0], U_w.shape[0])
    ys = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        W = (U_w[None] * h[:, None, None, :]).sum(-1)        # w_ij = u_ijᵀ h_{t-1}   (B, h, d)
        s = (W * xt[:, None, :]).sum(-1)                      # s_i = Σ_j w_ij x_j
        h = tanh(s + lin(P["W_0"], xt) + lin(P["U"], h) + P["b"])
        ys.append(h)
    return torch.stack(ys, 1), h


def generator_ref(P: dict, v: torch.Tensor, steps: int, eos: int = 1):
    h = tanh(lin(P["W_v"], v))                               # h_0 = tanh(W_v v)
    word = torch.zeros(v.shape[0], dtype=torch.long)         # <bos> = id 0
    done = torch.zeros(v.shape[0], dtype=torch.bool)
    logits, words = [], []
    for _ in range(steps):
        x = P["gen.E"][word]                                 # the previous word fed back
        h = tanh(lin(P["gen.W"], x) + lin(P["gen.U"], h) + P["gen.b"])
        z = lin(P["gen.W_y"], h) + P["gen.b_y"]
        word = z.argmax(-1)                                  # greedy
        logits.append(z)
        words.append(word)
        done |= word == eos                                  # every row has said <eos>: stop
        if done.all():
            break
    return torch.stack(logits, 1), torch.stack(words, 1)


def hopfield_ref(P: dict, probe: torch.Tensor, X: torch.Tensor, steps: int, beta: float):
    s, states, alphas = probe, [], []
    for _ in range(steps):
        alpha = torch.softmax(beta * (X * s[:, None, :]).sum(-1), -1)   # softmax(β X s)
        s = (alpha[:, :, None] * X).sum(1)                              # Xᵀ α
        states.append(s)
        alphas.append(alpha)
    return s, torch.stack(states, 1), torch.stack(alphas, 1)


# ---------------------------------------------------------------------------------------- the six cases


def _ids(high: int, *shape: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=g)


class Case:
    """One spec: its size overrides and random inputs for a (B, T, S) shape, and its reference."""

    def __init__(self, sizes: Callable[[int, int, int], dict], inputs: Callable, reference: Callable):
        self.sizes, self.inputs, self.reference = sizes, inputs, reference


CASES: dict[str, Case] = {
    "seq2seq": Case(
        lambda B, T, S: {},
        lambda B, T, S, g: {"src": torch.randn(B, S, 8, generator=g), "tgt": torch.randn(B, T, 8, generator=g)},
        lambda P, sizes, src, tgt: seq2seq_ref(P, src, tgt)),
    "seq2seq_attention": Case(
        lambda B, T, S: {},
        lambda B, T, S, g: {"src": torch.randn(B, S, 6, generator=g), "tgt": _ids(11, B, T, g=g)},
        lambda P, sizes, src, tgt: bahdanau_ref(P, src, tgt)),
    "memory_network": Case(  # N = S sentences of L = T words, a question of T + 1 words
        lambda B, T, S: {},
        lambda B, T, S, g: {"story": _ids(20, B, S, T, g=g), "question": _ids(20, B, T + 1, g=g)},
        lambda P, sizes, story, question: memory_network_ref(P, story, question)),
    "hypernetwork_rnn": Case(
        lambda B, T, S: {},
        lambda B, T, S, g: {"x": torch.randn(B, T, 6, generator=g)},
        lambda P, sizes, x: hypernetwork_ref(P, x)),
    "generator": Case(  # L = T words
        lambda B, T, S: {"L": T},
        lambda B, T, S, g: {"v": torch.randn(B, 10, generator=g)},
        lambda P, sizes, v: generator_ref(P, v, sizes["L"])),
    "hopfield": Case(  # K = T updates, P = S stored patterns
        lambda B, T, S: {"K": T},
        lambda B, T, S, g: {"probe": torch.randn(B, 16, generator=g), "X": torch.randn(B, S, 16, generator=g) / 2},
        lambda P, sizes, probe, X: hopfield_ref(P, probe, X, sizes["K"], 4.0)),
}


def _load(name: str, sizes: dict | None = None) -> seqdsl.Model:
    return seqdsl.load(SPECS / f"{name}.yaml", sizes or None)


def _net(name: str, sizes: dict | None = None, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return to_module(_load(name, sizes))


def _first(out: torch.Tensor | tuple) -> torch.Tensor:
    """The first output (a module with one output returns it bare)."""
    return out[0] if isinstance(out, tuple) else out


def _max_diff(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    if a is None and b is None:
        return 0.0
    a = torch.zeros_like(b) if a is None else a  # a value that does not reach the loss has no gradient
    b = torch.zeros_like(a) if b is None else b
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0


def compare(name: str, B: int, T: int, S: int, dtype: torch.dtype = torch.float32) -> tuple[float, float, float]:
    """The largest output difference, gradient difference, and gradient difference relative to the gradient's
    own scale (max(1, max |grad|)), between the compiled spec and its reference at one shape, in ``dtype``."""
    case = CASES[name]
    sizes = case.sizes(B, T, S)
    model = _load(name, sizes)
    net = _net(name, sizes, seed=B * 100 + T).to(dtype)
    g = torch.Generator().manual_seed(B * 1000 + T * 10 + S)
    inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in case.inputs(B, T, S, g).items()}
    assert list(inputs) == list(net.input_names)
    floats = [k for k, v in inputs.items() if v.is_floating_point()]  # integer ids have no gradient

    params = dict(net.named_parameters())
    assert sorted(params) == sorted(model.params)  # parameters are named as in the spec
    ref_params = {k: v.detach().clone().requires_grad_() for k, v in net.state_dict().items()}
    got_in = {k: v.clone().requires_grad_(k in floats) for k, v in inputs.items()}
    ref_in = {k: v.clone().requires_grad_(k in floats) for k, v in inputs.items()}

    got = net(*got_in.values())
    got = got if isinstance(got, tuple) else (got,)
    want = case.reference(ref_params, {**model.sizes}, **ref_in)
    assert len(got) == len(want) == len(net.output_names)
    out_diff = 0.0
    for oname, a, b in zip(net.output_names, got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, (oname, a.shape, b.shape, a.dtype, b.dtype)
        if a.is_floating_point():
            out_diff = max(out_diff, _max_diff(a, b))
        else:
            assert torch.equal(a, b), f"{name}.{oname}"  # token ids: exactly

    # gradients of one random linear function of every float output
    weights = [torch.randn(a.shape, generator=g).to(dtype) if a.is_floating_point() else None for a in got]
    loss_got = sum((a * w).sum() for a, w in zip(got, weights) if w is not None)
    loss_want = sum((b * w).sum() for b, w in zip(want, weights) if w is not None)
    names = list(params)
    grads_got = torch.autograd.grad(loss_got, [params[k] for k in names] + [got_in[k] for k in floats],
                                    allow_unused=True)
    grads_want = torch.autograd.grad(loss_want, [ref_params[k] for k in names] + [ref_in[k] for k in floats],
                                     allow_unused=True)
    assert any(a is not None and a.abs().sum() > 0 for a in grads_got)  # the check is not vacuous
    grad_diff = grad_rel = 0.0
    for what, a, b in zip(names + floats, grads_got, grads_want):
        d = _max_diff(a, b)
        scale = max(1.0, float(b.abs().max())) if b is not None and b.numel() else 1.0
        assert d / scale <= TOL, f"{name}: gradient w.r.t. {what} differs by {d:.3g} (scale {scale:.3g})"
        grad_diff, grad_rel = max(grad_diff, d), max(grad_rel, d / scale)
    return out_diff, grad_diff, grad_rel


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-T{}-S{}".format(*s))
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_matches_the_papers_equations(name: str, shape: tuple[int, int, int]):
    """float32 (what runs): outputs within 1e-5, gradients within 1e-5 of their own scale (a float32 gradient
    sums B*T terms of size up to ~20 here). float64 (the equations themselves): outputs and gradients within
    1e-5 absolute; they agree to ~1e-15."""
    out32, grad32, rel32 = compare(name, *shape, dtype=torch.float32)
    out64, grad64, _ = compare(name, *shape, dtype=torch.float64)
    print(f"\n{name} {shape}: float32 outputs {out32:.2e}, gradients {grad32:.2e} (relative {rel32:.2e}); "
          f"float64 outputs {out64:.2e}, gradients {grad64:.2e}")
    assert out32 <= TOL and rel32 <= TOL
    assert out64 <= TOL and grad64 <= TOL


# --------------------------------------------------------------------------------- end to end, onnxruntime


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("arch")
    return {n: Path(build(SPECS / f"{n}.yaml", root / n, steps=5, batch=2).out_dir) for n in ARCHITECTURES}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_onnx_agrees_with_pytorch_at_other_lengths(name: str, built: dict[str, Path]):
    out = built[name]
    model = _load(name)
    net = to_module(model)
    net.load_state_dict(load_file(str(out / "weights.safetensors")), strict=True)
    for batch, steps in [(1, 1), (4, 11)]:  # built at B=2, T=5 (S, N, L, ... at other lengths again)
        inputs = example_inputs(model, batch, steps, seed=batch + steps)
        want = run_torch(net, inputs)
        got = run(out / "model.onnx", inputs).outputs
        assert list(got) == list(want)
        for oname, value in want.items():
            assert got[oname].shape == value.shape and got[oname].dtype == value.dtype
            np.testing.assert_allclose(got[oname], value, atol=TOL, rtol=0, err_msg=f"{name}.{oname}")


# ------------------------------------------------------------------------------ what a user would believe


def test_attention_weights_are_a_distribution_over_the_source():
    net = _net("seq2seq_attention")
    g = torch.Generator().manual_seed(1)
    src, tgt = torch.randn(3, 6, 6, generator=g), _ids(11, 3, 4, g=g)
    with torch.no_grad():
        logp, alpha = net(src, tgt)
    assert alpha.shape == (3, 4, 6)  # (B, T, S)
    assert (alpha >= 0).all()
    torch.testing.assert_close(alpha.sum(-1), torch.ones(3, 4), atol=1e-6, rtol=0)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(3, 4), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["seq2seq", "seq2seq_attention"])
def test_teacher_forced_decoder_is_causal_and_reads_the_source(name: str):
    """The log-probabilities at step t depend on the target inputs up to t only, and on the whole source."""
    net = _net(name)
    case = CASES[name]
    g = torch.Generator().manual_seed(2)
    inputs = case.inputs(2, 6, 5, g)
    with torch.no_grad():
        base = _first(net(*inputs.values()))
        changed = dict(inputs)
        tgt = inputs["tgt"].clone()
        tgt[:, 3] = (tgt[:, 3] + 1) % 11 if not tgt.is_floating_point() else tgt[:, 3] + 1
        changed["tgt"] = tgt
        after = _first(net(*changed.values()))
        torch.testing.assert_close(after[:, :3], base[:, :3], atol=0, rtol=0)
        assert (after[:, 3:] - base[:, 3:]).abs().amax() > 1e-4
        src = inputs["src"].clone()
        src[:, -1] += 1.0  # the last source step reaches even the first target step
        moved = _first(net(src, inputs["tgt"]))
        assert (moved[:, 0] - base[:, 0]).abs().amax() > 1e-4


def test_generator_tokens_are_the_argmax_of_its_logits_fed_back():
    net = _net("generator", {"L": 7})
    v = torch.randn(5, 10, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits, tokens = net(v)
    steps = tokens.shape[1]  # 7, or fewer once every row has produced <eos>
    assert logits.shape == (5, steps, 9) and tokens.dtype == torch.int64 and 1 <= steps <= 7
    assert torch.equal(tokens, logits.argmax(-1))
    assert steps == 7 or (tokens == 1).any(1).all()
    # feeding back means: step t+1 is the same one-step cell applied to token t
    P = net.state_dict()
    h = tanh(lin(P["W_v"], v))
    for t in range(steps):
        prev = tokens[:, t - 1] if t else torch.zeros(5, dtype=torch.long)
        h = tanh(lin(P["gen.W"], P["gen.E"][prev]) + lin(P["gen.U"], h) + P["gen.b"])
        torch.testing.assert_close(lin(P["gen.W_y"], h) + P["gen.b_y"], logits[:, t], atol=1e-5, rtol=0)


def test_hopfield_retrieves_a_stored_pattern_from_a_noisy_probe():
    net = _net("hopfield", {"h": 32, "beta": 4})
    g = torch.Generator().manual_seed(4)
    B, P, n = 4, 6, 32
    X = torch.randint(0, 2, (B, P, n), generator=g).float() * 2 - 1  # ±1 patterns
    which = torch.tensor([0, 2, 3, 5])
    probe = X[torch.arange(B), which].clone()
    flip = torch.rand(B, n, generator=g).argsort(-1)[:, :6]           # 6 of 32 signs flipped
    probe.scatter_(1, flip, -probe.gather(1, flip))
    probe = probe + 0.3 * torch.randn(B, n, generator=g)             # and noise on top
    with torch.no_grad():
        retrieved, states, alpha = net(probe, X)
    assert torch.equal(alpha[:, -1].argmax(-1), which)
    torch.testing.assert_close(retrieved, X[torch.arange(B), which], atol=1e-4, rtol=0)
    assert (probe - X[torch.arange(B), which]).abs().amax() > 1.5    # the probe was far from it


def test_memory_network_hops_matter_and_address_the_matching_sentence():
    one, three = _net("memory_network", {"K": 1}), _net("memory_network", {"K": 3})
    three.load_state_dict(one.state_dict())  # K does not change the weights: the hops share them
    g = torch.Generator().manual_seed(5)
    story, question = _ids(20, 2, 5, 4, g=g), _ids(20, 2, 4, g=g)
    with torch.no_grad():
        a1, p1 = one(story, question)
        a3, p3 = three(story, question)
    assert p1.shape == (2, 1, 5) and p3.shape == (2, 3, 5)
    torch.testing.assert_close(p3[:, :1], p1, atol=1e-6, rtol=0)  # the first hop is the same hop
    assert (a3 - a1).abs().amax() > 1e-3                           # more hops, another answer
    torch.testing.assert_close(p3.sum(-1), torch.ones(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(a3.sum(-1), torch.ones(2), atol=1e-5, rtol=0)
    # seed 003: "if one of the keys exactly matches x, then the coefficient associated with this key will be
    # very close to one": ask with the very words of sentence 3, keys and question embedded alike (A = B_q)
    with torch.no_grad():
        one.B_q.copy_(one.A)
        _, p = one(story, story[:, 3])
    assert (p[:, 0].argmax(-1) == 3).all() and (p[:, 0, 3] > 0.9).all()


def test_hypernetwork_without_its_tensor_is_an_elman_rnn():
    """U_w = 0 leaves h_t = tanh(W_0 x_t + U h_{t-1} + b): torch.nn.RNN; with U_w the response to x_t depends
    on the state."""
    net = _net("hypernetwork_rnn")
    x = torch.randn(3, 7, 6, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        y_hyper, _ = net(x)
        net.U_w.zero_()
        y, h_n = net(x)
        rnn = torch.nn.RNN(6, 8, batch_first=True)
        rnn.weight_ih_l0.copy_(net.W_0)
        rnn.weight_hh_l0.copy_(net.U)
        rnn.bias_ih_l0.copy_(net.b)
        rnn.bias_hh_l0.zero_()
        want, want_n = rnn(x)
    torch.testing.assert_close(y, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(h_n, want_n[0], atol=1e-6, rtol=0)
    assert (y_hyper - y).abs().amax() > 1e-3
