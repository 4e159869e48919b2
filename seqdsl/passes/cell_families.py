"""The cell families that recognition knows: what a runtime's recurrent kernel can compute, as template steps.

A family is one kernel's space of cells, as the ONNX operators define it (the widest of our backends):
  ``lstm``       ONNX LSTM: optional peepholes (input P), coupled input-forget gate (``input_forget``: f = 1 - i),
                 activation slots f (gates i, f, o), g (candidate), h (output), with or without bias;
  ``gru``        ONNX GRU, linear_before_reset=0 (Cho's form): slots f (gates z, r) and g (candidate);
  ``gru_torch``  ONNX GRU, linear_before_reset=1 (PyTorch's form), the same slots;
  ``rnn``        ONNX RNN (Elman; with relu, the IRNN): slot f.
A `Variant` fixes the structural choices (bias, peephole, coupled gate); its template is a small spec, lowered
with the loop's sizes. Activations are wildcards while matching: the op found at each slot is read off after,
and a slot's nodes must all apply the same function (ONNX has one f for all gates of an LSTM).

Not a family member, so generic: a clipped cell (`clip`: the ONNX text clips "the input of activations", which
would include h's input, the cell state; onnxruntime does not clip that one, and onnx.reference ignores `clip`),
activations written as several ops (HardSigmoid, ScaledTanh, Affine, Softsign, ThresholdedRelu), a bias on only
some gates, peepholes on only some gates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

#: the ops that may fill an activation slot, and the one number each takes (as the op's attribute), if any; all
#: have an ONNX activation that computes the same function (Sigmoid, Tanh, Relu, Softplus, LeakyRelu, Elu)
ACTIVATIONS: dict[str, str | None] = {
    "sigmoid": None, "tanh": None, "relu": None, "softplus": None, "leaky_relu": "negative_slope", "elu": "alpha",
}

#: one slot's function: the op and its number (None for an op without one), e.g. ("leaky_relu", 0.1)
Activation = tuple[str, float | None]


@dataclass(frozen=True)
class Variant:
    """One structural form of a family; its template's parameters are named as the backends look them up."""

    family: str
    bias: bool = True
    peephole: bool = False
    input_forget: bool = False

    def attrs(self) -> dict[str, Any]:
        """The cell node's attributes that this variant fixes."""
        out: dict[str, Any] = {"bias": self.bias}
        if self.family == "lstm":
            out.update(peephole=self.peephole, input_forget=self.input_forget)
        return out


@dataclass(frozen=True)
class Family:
    name: str
    states: tuple[str, ...]  # the template's states, in order
    slots: tuple[tuple[str, ...], ...]  # per activation slot (f, g, h), the template equations that apply it
    defaults: tuple[Activation, ...]  # the standard cell's activations
    variants: tuple[Variant, ...]
    template: Callable[[Variant], dict[str, str]]  # the step equations of a variant

    def slots_of(self, variant: Variant) -> tuple[tuple[str, ...], ...]:
        """The slots' equations present in ``variant`` (a coupled forget gate applies no activation)."""
        return tuple(tuple(e for e in slot if not (variant.input_forget and e == "f")) for slot in self.slots)


def _sum(*terms: str) -> str:
    return " + ".join(t for t in terms if t)


def _lstm(v: Variant) -> dict[str, str]:
    def gate(g: str, peep: str = "") -> str:
        return _sum(f"W_{g} @ x", f"U_{g} @ h[t-1]", f"p_{g} * {peep}" if v.peephole and peep else "",
                    f"b_{g}" if v.bias else "")

    return {
        "i": f"sigmoid({gate('i', 'c[t-1]')})",
        "f": "1 - i" if v.input_forget else f"sigmoid({gate('f', 'c[t-1]')})",
        "g": f"tanh({gate('c')})",
        "c": "f * c[t-1] + i * g",
        "o": f"sigmoid({gate('o', 'c')})",  # ONNX's output peephole looks at the new cell state
        "a": "tanh(c)",
        "h": "o * a",
    }


def _gru(v: Variant) -> dict[str, str]:
    b = (lambda g: f"b_{g}") if v.bias else (lambda g: "")
    return {
        "z": f"sigmoid({_sum('W_z @ x', 'U_z @ h[t-1]', b('z'))})",
        "r": f"sigmoid({_sum('W_r @ x', 'U_r @ h[t-1]', b('r'))})",
        "n": f"tanh({_sum('W_h @ x', 'U_h @ (r * h[t-1])', b('h'))})",
        "h": "z * h[t-1] + (1 - z) * n",
    }


def _gru_torch(v: Variant) -> dict[str, str]:
    b = (lambda g: f"b_{g}") if v.bias else (lambda g: "")
    hidden_n = f"({_sum('U_n @ h[t-1]', b('hn'))})" if v.bias else "(U_n @ h[t-1])"
    return {
        "r": f"sigmoid({_sum('W_r @ x', b('ir'), 'U_r @ h[t-1]', b('hr'))})",
        "z": f"sigmoid({_sum('W_z @ x', b('iz'), 'U_z @ h[t-1]', b('hz'))})",
        "n": f"tanh({_sum('W_n @ x', b('in'), f'r * {hidden_n}')})",
        "h": "(1 - z) * n + z * h[t-1]",
    }


def _rnn(v: Variant) -> dict[str, str]:
    return {"h": f"tanh({_sum('W @ x', 'U @ h[t-1]', 'b' if v.bias else '')})"}


SIGMOID, TANH = ("sigmoid", None), ("tanh", None)
BIASES = (True, False)

FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("rnn", ("h",), (("h",),), (TANH,), tuple(Variant("rnn", b) for b in BIASES), _rnn),
    Family("lstm", ("h", "c"), (("i", "f", "o"), ("g",), ("a",)), (SIGMOID, TANH, TANH),
           tuple(Variant("lstm", b, p, c) for b in BIASES for p in (False, True) for c in (False, True)), _lstm),
    Family("gru", ("h",), (("z", "r"), ("n",)), (SIGMOID, TANH), tuple(Variant("gru", b) for b in BIASES), _gru),
    Family("gru_torch", ("h",), (("r", "z"), ("n",)), (SIGMOID, TANH),
           tuple(Variant("gru_torch", b) for b in BIASES), _gru_torch),
]}


def template_text(variant: Variant) -> str:
    """A spec whose one loop is ``variant``'s step, for sizes d (input) and h (hidden)."""
    family = FAMILIES[variant.family]
    step = family.template(variant)
    text = " ".join(step.values())
    params = sorted({tok for tok in text.replace("(", " ").replace(")", " ").split()
                     if tok[:2] in ("W_", "U_", "b_", "p_") or tok in ("W", "U", "b")})
    shape = {"W": "[h, d]", "U": "[h, h]", "b": "[h]", "p": "[h]"}
    lines = [f"name: {variant.family}_template", "sizes: {d: 1, h: 1}", "inputs:", "  x: [B, T, d]", "params:"]
    lines += [f"  {p}: {shape[p[0]]}" for p in params]
    lines += ["recurrent:", "  state:", *(f"    {s}: [B, h]" for s in family.states), "  step:"]
    lines += [f"    {name}: {eq}" for name, eq in step.items()]
    lines += ["outputs:", "  y: h"]
    return "\n".join(lines) + "\n"


def activation_of(op: str, attrs: dict[str, Any]) -> Activation | None:
    """The slot function an activation node computes, or None when the op may not fill a slot."""
    if op not in ACTIVATIONS:
        return None
    key = ACTIVATIONS[op]
    return (op, None if key is None else float(attrs[key]))
