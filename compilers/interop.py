"""Weights to and from torch.nn: move a trained nn.RNN / nn.LSTM / nn.GRU into a compiled standard spec, or back.

    net = to_module(seqdsl.load("specs/lstm.yaml", sizes={"d": 5, "h": 6}))
    load_from_torch(net, nn.LSTM(5, 6, batch_first=True))     # net now computes what the nn.LSTM computes
    save_to_torch(net, fresh_lstm)                            # and back

Which spec each layer (one layer, one direction) maps to, with biases; ``batch_first`` does not matter:

    nn.RNN (tanh) -> specs/rnn.yaml        W, U, b = bias_ih + bias_hh (the spec has one bias)
    nn.LSTM       -> specs/lstm.yaml       torch stacks the gates i, f, g, o: W_i, W_f, W_c, W_o (and U_*, b_*)
    nn.GRU        -> specs/gru_torch.yaml  torch stacks r, z, n; b_i* from bias_ih, b_h* from bias_hh

A torch layer with ``num_layers=L`` and/or ``bidirectional=True`` is one such spec per layer and direction, as
a spec's ``LSTM(x, repeat=L, direction=both)`` lays them out: torch's ``weight_ih_l{k}`` goes to the spec
parameters under ``{k}.`` (only when L > 1), and under ``fw.``, its ``weight_ih_l{k}_reverse`` under ``bw.``
(only when bidirectional):

    nn.LSTM(d, h, num_layers=4)                  weight_hh_l2 -> 2.U_i 2.U_f 2.U_c 2.U_o     (specs/deep_lstm.yaml)
    nn.LSTM(d, h, bidirectional=True)            bias_ih_l0_reverse -> bw.b_i ...            (specs/bilstm.yaml)
    nn.GRU(d, h, num_layers=2, bidirectional=True)  weight_ih_l1_reverse -> 1.bw.W_r ...     (specs/bigru.yaml)

Those tables are derived from the one-layer tables below (`layer_table`), never written per layer. torch's
``dropout`` between layers acts in training only and has no spec counterpart; the weights move all the same.

``prefix`` selects a called module's parameters, e.g. ``"lstm."`` for the LSTM inside specs/classifier.yaml,
``"layers."`` for the stack in specs/deep_lstm.yaml: ``layers.`` + ``2.`` + ``U_i``.
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

# torch.nn class -> (the standard spec it matches, its table for one layer and one direction).
LAYOUTS: dict[type[nn.RNNBase], tuple[str, Table]] = {
    nn.RNN: ("specs/rnn.yaml", RNN_TABLE),
    nn.LSTM: ("specs/lstm.yaml", LSTM_TABLE),
    nn.GRU: ("specs/gru_torch.yaml", GRU_TABLE),
}


def layer_table(table: Table, num_layers: int = 1, bidirectional: bool = False) -> Table:
    """``table`` (one layer, one direction: torch names ending in ``_l0``) extended to every layer and direction
    of a torch layer with ``num_layers`` and ``bidirectional``: ``weight_ih_l0`` -> ``W_i`` becomes
    ``weight_ih_l{k}`` -> ``{k}.W_i`` and ``weight_ih_l{k}_reverse`` -> ``{k}.bw.W_i`` (see `copy_prefixes`).
    One layer, one direction gives ``table`` back as it is."""
    out: Table = {}
    for suffix, where in copy_prefixes(num_layers, bidirectional).items():
        for (torch_name, i), name in table.items():
            assert torch_name.endswith("_l0"), f"{torch_name}: a one-layer table names torch's layer 0"
            out[(torch_name.removesuffix("_l0") + suffix, i)] = where + name
    return out


def _numbered_single_layer(module: nn.Module, prefix: str, layer: nn.RNNBase) -> str:
    """A spec call with an explicit ``repeat=1`` numbers its one copy (``layers.0.``): accept that layout for a
    one-layer torch module too."""
    names = [n for n, _ in module.named_parameters()]
    numbered = prefix + "0."
    if layer.num_layers == 1 and any(n.startswith(numbered) for n in names) \
            and not any(n.startswith(prefix) and not n.startswith(numbered) for n in names):
        return numbered
    return prefix


def copy_prefixes(num_layers: int = 1, bidirectional: bool = False) -> dict[str, str]:
    """torch's parameter suffix -> the spec prefix of that layer and direction, in torch's order, as a spec's
    ``LSTM(x, repeat=num_layers, direction=both)`` names its copies: ``{k}.`` only when num_layers > 1, ``fw.`` /
    ``bw.`` only when bidirectional. ``(2, True)`` -> ``{"_l0": "0.fw.", "_l0_reverse": "0.bw.", "_l1": "1.fw.",
    "_l1_reverse": "1.bw."}``; ``(1, False)`` -> ``{"_l0": ""}``."""
    out: dict[str, str] = {}
    for k in range(num_layers):
        for reverse in (False, True)[: 1 + bidirectional]:
            layer = f"{k}." if num_layers > 1 else ""
            direction = ("bw." if reverse else "fw.") if bidirectional else ""
            out[f"_l{k}" + ("_reverse" if reverse else "")] = layer + direction
    return out


def load_from_torch(target: nn.Module, source: nn.RNN | nn.LSTM | nn.GRU, prefix: str = "") -> None:
    """Copy the weights of the torch.nn layer ``source`` into the compiled spec module ``target``.

    Raises ValueError, before copying anything, if ``source`` has no biases (or, for nn.RNN, not tanh; for
    nn.LSTM, a ``proj_size``), or if ``target`` lacks the spec's parameters under ``prefix`` (``"lstm."`` or
    ``"lstm"``; per layer and direction under ``prefix`` + ``{k}.`` / ``fw.`` / ``bw.``, see the module
    docstring) or has them in other shapes; TypeError if it is no such layer.
    """
    spec, table = _layout(source)
    prefix = _numbered_single_layer(target, _dotted(prefix), source)
    params = _spec_params(target, prefix, spec, table, source)
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
    of `load_from_torch`. A spec bias that torch splits in two (nn.RNN, nn.LSTM) goes to ``bias_ih_l{k}``
    (``bias_ih_l{k}_reverse``), and ``bias_hh_l{k}`` gets zeros. Raises ValueError as `load_from_torch` does,
    before copying anything.
    """
    spec, table = _layout(target)
    prefix = _numbered_single_layer(source, _dotted(prefix), target)
    params = _spec_params(source, prefix, spec, table, target)
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
    """The spec and the table for every layer and direction of ``layer``, after checking it is a configuration
    the standard specs compute."""
    spec, table = _one_layer(layer)
    kind = type(layer).__name__
    problems = []
    if not layer.bias:
        problems.append("bias=False")
    if getattr(layer, "proj_size", 0):
        problems.append(f"proj_size={layer.proj_size}")
    if getattr(layer, "nonlinearity", "tanh") != "tanh":
        problems.append(f"nonlinearity={layer.nonlinearity!r}")
    if problems:
        raise ValueError(f"{spec} computes (per layer and direction) an nn.{kind} with biases"
                         + (" and tanh" if kind == "RNN" else "") + "; this one has " + ", ".join(problems))
    return spec, layer_table(table, layer.num_layers, layer.bidirectional)


def _one_layer(layer: nn.Module) -> tuple[str, Table]:
    """``layer``'s entry in LAYOUTS: its spec and one-layer, one-direction table; TypeError if it has none."""
    layout = next((v for cls, v in LAYOUTS.items() if isinstance(layer, cls)), None)
    if layout is None:
        raise TypeError(f"expected a torch.nn.RNN, LSTM or GRU layer, got {type(layer).__qualname__}")
    return layout


def _spec_params(module: nn.Module, prefix: str, spec: str, table: Table,
                 layer: nn.RNNBase) -> dict[str, nn.Parameter]:
    """The parameters of ``spec`` in ``module`` under ``prefix`` (per layer and direction of ``layer``), by
    spec name; ValueError naming the missing."""
    have = dict(module.named_parameters())
    expected = _unique(table.values())
    missing = [name for name in expected if prefix + name not in have]
    kind = type(layer).__name__
    one = _unique(_one_layer(layer)[1].values())
    copies = list(copy_prefixes(layer.num_layers, layer.bidirectional).values())
    if not missing:
        # a deeper stack would be copied in part and silently keep its other layers: refuse
        extra = f"{prefix}{layer.num_layers}.{copies[0].partition('.')[2]}{one[0]}"
        if layer.num_layers > 1 and extra in have:
            raise ValueError(f"the module has more layers under prefix {prefix!r} than this nn.{kind} "
                             f"(num_layers={layer.num_layers}): {extra} has no counterpart in it")
        return {name: have[prefix + name] for name in expected}
    under = f" under prefix {prefix!r}" if prefix else ""
    if copies == [""]:
        message = f"expected the parameters of {spec} ({', '.join(expected)}){under}"
    else:
        config = ", ".join(([f"num_layers={layer.num_layers}"] if layer.num_layers > 1 else [])
                           + (["bidirectional=True"] if layer.bidirectional else []))
        call = ", ".join([f"repeat={layer.num_layers}"] * (layer.num_layers > 1)
                         + ["direction=both"] * layer.bidirectional)
        message = (f"expected the parameters of {spec} ({', '.join(one)}) once per layer and direction of this "
                   f"nn.{kind} ({config}), under prefixes {', '.join(repr(prefix + c) for c in copies)} "
                   f"(as a spec's `{kind.upper()}(x, {call})` lays them out)")
    limit = len(one)  # one copy's worth of names; a stack can miss hundreds
    message += "; missing: " + ", ".join(prefix + n for n in missing[:limit])
    if len(missing) > limit:
        message += f", and {len(missing) - limit} more"
    if copies != [""] and all(prefix + n in have for n in one):
        message += (f"; the module has them once{under}: that is a one-layer, one-direction {spec}, "
                    f"which a one-layer, one-direction nn.{kind} maps to")
    others = [f"{other} (an nn.{cls.__name__})" for cls, (other, t) in LAYOUTS.items()
              if other != spec and all(prefix + n in have
                                      for n in layer_table(t, layer.num_layers, layer.bidirectional).values())]
    if others:
        message += f"; the module has the parameters of {' or '.join(others)}"
    found = [key[: -len(expected[0])] for key in have if key.endswith("." + expected[0])]
    found = [p for p in found if p != prefix and all(p + n in have for n in expected)]
    if found:
        message += f"; they are there under prefix {' or '.join(map(repr, found))}"
    raise ValueError(message)


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
