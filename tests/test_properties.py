"""Property tests: random valid specs always build and their backends agree; random damage to valid specs always
ends in a located seqdsl error or a successful load — never another exception, never slow or huge.

`pytest --long` runs many more examples (see README for the last long run's figures).
"""

from __future__ import annotations

import os
import time
import tracemalloc

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SPECS

import seqdsl
from seqdsl.compilers.build import example_inputs, run_torch
from seqdsl.compilers.onnx_export import export, set_weights
from seqdsl.compilers.onnx_runtime import run
from seqdsl.compilers.torch_module import to_module
from seqdsl.errors import SpecError
from seqdsl.passes import optimize, unroll

LONG = os.environ.get("SEQDSL_LONG_TESTS") == "1"
UNARY = ["sigmoid", "tanh", "relu", "exp"]
BINARY = ["+", "-", "*"]


@st.composite
def random_cells(draw: st.DrawFn, variants: bool = False) -> str:
    """A random recurrent cell: equations over the step input x, the previous state and earlier equations.

    Every value is (B, k) for a k from a small set; `W @ v` changes k (its parameter is declared to fit),
    elementwise ops join values of equal k, concat joins two, and the state's update is brought to (B, h).
    With ``variants`` the block may also run in reverse, over padded batches (`lengths:`), with a decoder and an
    int64 value; besides `y: h` and `h_n: final(h)` it then returns drawn outputs: any value (state, step or
    decoder value) every step, `final` or `last`, several outputs naming the same one.
    """
    d, h = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    values: dict[str, int] = {"x": d, "h[t-1]": h}
    params: dict[str, list[int]] = {}
    step: list[tuple[str, str]] = []
    for i in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["linear", "unary", "binary", "concat", "const"]))
        name, src = f"v{i}", draw(st.sampled_from(sorted(values)))
        if kind == "linear":
            k = draw(st.integers(1, 4))
            params[f"W{i}"] = [k, values[src]]
            expr, width = f"W{i} @ {src}", k
        elif kind == "unary":
            expr, width = f"{draw(st.sampled_from(UNARY))}({src})", values[src]
        elif kind == "binary":
            same = sorted(v for v, k in values.items() if k == values[src])
            other = draw(st.sampled_from(same))
            expr, width = f"{src} {draw(st.sampled_from(BINARY))} {other}", values[src]
        elif kind == "concat":
            other = draw(st.sampled_from(sorted(values)))
            expr, width = f"concat({src}, {other})", values[src] + values[other]
        else:
            expr, width = f"1 - tanh({src})", values[src]
        step.append((name, expr))
        values[name] = width
    last = step[-1][0]
    params["U"] = [h, values[last]]
    params["b"] = [h]
    step.append(("h", f"tanh(U @ {last} + b)"))
    if variants and draw(st.booleans()):  # an int64 value (B,): ids have their own zero and their own type
        step.append(("tok", f"argmax({draw(st.sampled_from(sorted(values)))})".replace("h[t-1]", "h")))
    decoder = []
    if variants and draw(st.booleans()):  # y(t) = Dec(z(t)): what the sinking pass moves after the loop
        params["W_y"] = [draw(st.integers(1, 4)), h]
        decoder = [("dec", f"{draw(st.sampled_from(UNARY))}(W_y @ h)")]
    lengths, reverse = (draw(st.booleans()), draw(st.booleans())) if variants else (False, False)
    lines = [f"sizes: {{d: {d}, h: {h}}}", "inputs:", "  x: [B, T, d]"]
    lines += ["  n: {shape: [B], dtype: int64}"] if lengths else []
    lines += ["params:"] + [f"  {p}: {shape}" for p, shape in params.items()]
    lines += ["recurrent:"] + (["  lengths: n"] if lengths else []) + (["  direction: reverse"] if reverse else [])
    lines += ["  state:", "    h: [B, h]", "  step:"]
    lines += [f"    {n}: {e}" for n, e in step]
    lines += (["  decoder:"] + [f"    {n}: {e}" for n, e in decoder]) if decoder else []
    named = ["h"] + [n for n, _ in step + decoder if n != "h"]
    extra = draw(st.lists(st.tuples(st.sampled_from(named), st.sampled_from(["{}", "final({})", "last({})"])),
                          max_size=4)) if variants else []
    lines += ["outputs:", "  y: h", "  h_n: final(h)"]
    lines += [f"  o{i}: {how.format(v)}" for i, (v, how) in enumerate(extra)]
    return "\n".join(lines) + "\n"


MODES = ["default", "as_written", "unroll"]


def _backends(model: seqdsl.Model, mode: str, steps: int) -> tuple[torch.nn.Module, bytes]:
    """The looped PyTorch module and the ONNX file of one build mode (`--as-written`, `--unroll` or neither)."""
    if mode == "as_written":
        net, proto = to_module(model, optimize=False, native_cells=False), export(model, optimize=False,
                                                                                  native_cells=False)
    elif mode == "unroll":
        net, proto = to_module(model), export(unroll(optimize(model), {"T": steps})[0])
    else:
        net, proto = to_module(model), export(model)
    set_weights(proto, {k: v.detach().numpy() for k, v in net.state_dict().items()})
    return net, proto.SerializeToString()


@settings(max_examples=1000 if LONG else 30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=random_cells(variants=True), steps=st.integers(1, 5), batch=st.integers(1, 3),
       mode=st.sampled_from(MODES))
def test_random_valid_cells_build_and_backends_agree(spec: str, steps: int, batch: int, mode: str):
    model = seqdsl.loads(spec)
    net, proto = _backends(model, mode, steps)
    inputs = example_inputs(model, batch, steps)
    want = run_torch(net, inputs)
    got = run(proto, inputs).outputs
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, atol=1e-4, rtol=1e-4, err_msg=f"{mode}: {name}\n{spec}")
    if "lengths: n" in spec:  # packed sequences: each row gives what it gives alone, unpadded (0 past its end)
        unpadded = spec.replace("  lengths: n\n", "").replace("  n: {shape: [B], dtype: int64}\n", "")
        alone = to_module(seqdsl.loads(unpadded))
        alone.load_state_dict(net.state_dict())
        for b, n in enumerate(inputs["n"]):
            row = run_torch(alone, {"x": inputs["x"][b:b + 1, :n]})
            for name, value in row.items():
                ours = got[name][b:b + 1]
                if model.graph[model.graph.outputs[name]].shape[1:2] == ("T",):  # every step
                    ours, padding = ours[:, :n], ours[:, n:]
                    assert not padding.any(), f"{mode}: {name} is not 0 past the row's length\n{spec}"
                np.testing.assert_allclose(ours, value, atol=1e-4, rtol=1e-4,
                                           err_msg=f"{mode}: {name}, row {b}\n{spec}")


SEEDS = [p.read_text() for p in sorted(SPECS.glob("*.yaml"))]


@st.composite
def damaged_specs(draw: st.DrawFn) -> str | bytes:
    """A shipped spec with one random kind of damage."""
    text = draw(st.sampled_from(SEEDS))
    lines = text.splitlines(keepends=True)
    kind = draw(st.sampled_from(["delete_line", "swap_words", "number", "truncate", "bytes", "duplicate_line"]))
    if kind == "delete_line":
        del lines[draw(st.integers(0, len(lines) - 1))]
        return "".join(lines)
    if kind == "duplicate_line":
        i = draw(st.integers(0, len(lines) - 1))
        lines.insert(i, lines[i])
        return "".join(lines)
    if kind == "swap_words":
        words = sorted(set(text.replace("(", " ").replace(")", " ").split()))
        a, b = draw(st.sampled_from(words)), draw(st.sampled_from(words))
        return text.replace(a, "\0").replace(b, a).replace("\0", b)
    if kind == "number":
        digits = [i for i, c in enumerate(text) if c.isdigit()]
        if not digits:
            return text
        i = draw(st.sampled_from(digits))
        return text[:i] + draw(st.sampled_from(["0", "-1", "999999999", "1e9", "3/2", "h*h*h*h*h"])) + text[i + 1:]
    if kind == "truncate":
        return text[: draw(st.integers(0, len(text)))]
    raw = bytearray(text.encode())
    for _ in range(draw(st.integers(1, 5))):
        raw.insert(draw(st.integers(0, len(raw))), draw(st.integers(0, 255)))
    return bytes(raw)


@settings(max_examples=5000 if LONG else 150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged=damaged_specs())
def test_damaged_specs_end_in_a_located_error_or_a_model(damaged: str | bytes):
    tracemalloc.start()
    start = time.process_time()  # CPU time: the bound is on our work, not on a busy machine
    try:
        if isinstance(damaged, bytes):
            from seqdsl.api import _lower
            from seqdsl.loader import load_text

            _lower(load_text(damaged, "damaged.yaml"), None)
        else:
            seqdsl.loads(damaged, file="damaged.yaml")
    except SpecError as err:
        assert err.code and err.message
        text = err.format()
        assert text.startswith("damaged.yaml") or text.startswith("<spec>")
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.process_time() - start < 2.0
    assert peak < 512 * 2**20

