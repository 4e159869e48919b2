"""Weights to and from torch.nn: move a trained nn.RNN / nn.LSTM / nn.GRU into a compiled standard spec, or back.

    net = to_module(seqdsl.load("specs/lstm.yaml", sizes={"d": 5, "h": 6}))
    load_from_torch(net, nn.LSTM(5, 6, batch_first=True))     # net now computes what the nn.LSTM computes
    save_to_torch(net, fresh_lstm)                            # and back

Which spec each layer maps to (one layer, one direction, with biases; ``batch_first`` does not matter):

    nn.RNN (tanh) -> specs/rnn.yaml        W, U, b = bias_ih + bias_hh (the spec has one bias)
    nn.LSTM       -> specs/lstm.yaml       torch stacks the gates i, f, g, o: W_i, W_f, W_c, W_o (and U_*, b_*)
    nn.GRU        -> specs/gru_torch.yaml  torch stacks r, z, n; b_i* from bias_ih, b_h* from bias_hh

``prefix`` selects a called module's parameters, e.g. ``"lstm."`` for the LSTM inside specs/classifier.yaml.
Values are copied in place under ``torch.no_grad()``: the Parameter objects stay, so optimisers keep working.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["load_from_torch", "save_to_torch"]

# (torch parameter, chunk of it along dim 0) -> spec parameter. Chunks are counted per torch parameter, so a
# parameter listed k times is split into k equal chunks. A spec name that appears under several torch
# parameters is their sum when loading; when saving, the first (in table order) gets it and the others zeros.
Table = dict[tuple[str, int], str]


def _stacked(torch_name: str, spec_names: str) -> Table:
    """``torch_name`` as equal chunks stacked along dim 0, chunk i going to the i-th of ``spec_names``."""
    return {(torch_name, i): name for i, name in enumerate(spec_names.split())}


RNN_TABLE: Table = {
    **_stacked("weight_ih_l0", "W"),
    **_stacked("weight_hh_l0", "U"),
    **_stacked("bias_ih_l0", "b"),
    **_stacked("bias_hh_l0", "b"),
}
LSTM_TABLE: Table = {  # torch's gate order: input, forget, cell (g), output
    **_stacked("weight_ih_l0", "W_i W_f W_c W_o"),
    **_stacked("weight_hh_l0", "U_i U_f U_c U_o"),
    **_stacked("bias_ih_l0", "b_i b_f b_c b_o"),
    **_stacked("bias_hh_l0", "b_i b_f b_c b_o"),
}
GRU_TABLE: Table = {  # torch's gate order: reset, update, new
    **_stacked("weight_ih_l0", "W_r W_z W_n"),
    **_stacked("weight_hh_l0", "U_r U_z U_n"),
    **_stacked("bias_ih_l0", "b_ir b_iz b_in"),
    **_stacked("bias_hh_l0", "b_hr b_hz b_hn"),
}

# torch.nn class -> (the standard spec it matches, its table).
LAYOUTS: dict[type[nn.RNNBase], tuple[str, Table]] = {
    nn.RNN: ("specs/rnn.yaml", RNN_TABLE),
    nn.LSTM: ("specs/lstm.yaml", LSTM_TABLE),
    nn.GRU: ("specs/gru_torch.yaml", GRU_TABLE),
}


def load_from_torch(target: nn.Module, source: nn.RNN | nn.LSTM | nn.GRU, prefix: str = "") -> None:
    """Copy the weights of the torch.nn layer ``source`` into the compiled spec module ``target``.

    Raises ValueError, before copying anything, if ``source`` is not one layer, one direction, with biases
    (and tanh for nn.RNN, no ``proj_size`` for nn.LSTM), or if ``target`` lacks the spec's parameters under
    ``prefix`` (``"lstm."`` or ``"lstm"``) or has them in other shapes; TypeError if it is no such layer.
    """
    spec, table = _layout(source)
    prefix = _dotted(prefix)
    params = _spec_params(target, prefix, spec, table)
    values: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for torch_name, chunks in _chunks(table).items():
            for i, chunk in enumerate(getattr(source, torch_name).chunk(len(chunks), 0)):
                name = chunks[i]
                _check_shape(prefix + name, params[name].shape, source, torch_name, i, len(chunks), chunk.shape)
                values[name] = chunk if name not in values else values[name] + chunk
        for name, value in values.items():
            params[name].copy_(value)


def save_to_torch(source: nn.Module, target: nn.RNN | nn.LSTM | nn.GRU, prefix: str = "") -> None:
    """Copy the weights of the compiled spec module ``source`` into the torch.nn layer ``target``; the reverse
    of `load_from_torch`. A spec bias that torch splits in two (nn.RNN, nn.LSTM) goes to ``bias_ih_l0``,
    and ``bias_hh_l0`` gets zeros. Raises ValueError as `load_from_torch` does, before copying anything.
    """
    spec, table = _layout(target)
    prefix = _dotted(prefix)
    params = _spec_params(source, prefix, spec, table)
    seen: set[str] = set()
    values: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for torch_name, chunks in _chunks(table).items():
            dest = getattr(target, torch_name)
            pieces = []
            for i, (name, piece) in enumerate(zip(chunks, dest.chunk(len(chunks), 0))):
                _check_shape(prefix + name, params[name].shape, target, torch_name, i, len(chunks), piece.shape)
                pieces.append(torch.zeros_like(piece) if name in seen else params[name].to(piece))
            seen.update(chunks)
            values[torch_name] = torch.cat(pieces, 0)
        for torch_name, value in values.items():
            getattr(target, torch_name).copy_(value)


def _layout(layer: nn.Module) -> tuple[str, Table]:
    """The spec and table for ``layer``, after checking it is a configuration the standard specs compute."""
    layout = next((v for cls, v in LAYOUTS.items() if isinstance(layer, cls)), None)
    if layout is None:
        raise TypeError(f"expected a torch.nn.RNN, LSTM or GRU layer, got {type(layer).__qualname__}")
    spec, _ = layout
    kind = type(layer).__name__
    problems = []
    if layer.num_layers != 1:
        problems.append(f"num_layers={layer.num_layers} (stack several spec modules instead)")
    if layer.bidirectional:
        problems.append("bidirectional=True")
    if not layer.bias:
        problems.append("bias=False")
    if getattr(layer, "proj_size", 0):
        problems.append(f"proj_size={layer.proj_size}")
    if getattr(layer, "nonlinearity", "tanh") != "tanh":
        problems.append(f"nonlinearity={layer.nonlinearity!r}")
    if problems:
        raise ValueError(f"{spec} computes a one-layer, one-direction nn.{kind} with biases"
                         + (" and tanh" if kind == "RNN" else "") + "; this one has " + ", ".join(problems))
    return layout


def _spec_params(module: nn.Module, prefix: str, spec: str, table: Table) -> dict[str, nn.Parameter]:
    """The parameters of ``spec`` in ``module`` under ``prefix``, by spec name; ValueError naming the missing."""
    have = dict(module.named_parameters())
    expected = _unique(table.values())
    missing = [name for name in expected if prefix + name not in have]
    if missing:
        under = f" under prefix {prefix!r}" if prefix else ""
        message = (f"expected the parameters of {spec} ({', '.join(expected)}){under}; "
                   f"missing: {', '.join(prefix + n for n in missing)}")
        others = [f"{other} (an nn.{cls.__name__})" for cls, (other, t) in LAYOUTS.items()
                  if other != spec and all(prefix + n in have for n in t.values())]
        if others:
            message += f"; the module has the parameters of {' or '.join(others)}"
        found = [key[: -len(expected[0])] for key in have if key.endswith("." + expected[0])]
        found = [p for p in found if p != prefix and all(p + n in have for n in expected)]
        if found:
            message += f"; they are there under prefix {' or '.join(map(repr, found))}"
        raise ValueError(message)
    return {name: have[prefix + name] for name in expected}


def _chunks(table: Table) -> dict[str, list[str]]:
    """Per torch parameter, the spec names of its chunks in order."""
    out: dict[str, dict[int, str]] = {}
    for (torch_name, i), name in table.items():
        out.setdefault(torch_name, {})[i] = name
    return {torch_name: [by_index[i] for i in sorted(by_index)] for torch_name, by_index in out.items()}


def _check_shape(spec_name: str, spec_shape: torch.Size, layer: nn.Module, torch_name: str, index: int,
                 count: int, torch_shape: torch.Size) -> None:
    """ValueError naming both shapes when spec parameter ``spec_name`` and chunk ``index`` of ``torch_name``
    differ."""
    if spec_shape != torch_shape:
        chunk = f" (chunk {index} of {count})" if count > 1 else ""
        raise ValueError(f"shape mismatch: spec parameter {spec_name} has shape {tuple(spec_shape)}, "
                         f"nn.{type(layer).__name__}'s {torch_name}{chunk} has {tuple(torch_shape)} "
                         f"(input size {layer.input_size}, hidden size {layer.hidden_size})")


def _dotted(prefix: str) -> str:
    """``prefix`` ending in a dot, so ``"lstm"`` and ``"lstm."`` both select ``lstm.W_f``."""
    return prefix + "." if prefix and not prefix.endswith(".") else prefix


def _unique(names: Iterable[str]) -> list[str]:
    """``names`` without repeats, in order."""
    return list(dict.fromkeys(names))
