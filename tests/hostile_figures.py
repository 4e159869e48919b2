"""Specs whose figures are hard for Graphviz: shared by the graph budget test and its calibration.

``dot`` routes an edge that spans several ranks through one virtual node per rank and then minimises crossings
rank by rank, so what costs is not the number of nodes but long edges that run beside each other: one input read
by every equation of a long chain, several such inputs, many module calls, `repeat=`, and unrolled loops."""

from __future__ import annotations

HEAD = "sizes: {d: 2, h: 3}\n"


def fanout(inputs: int, n: int) -> str:
    """``inputs`` inputs, each read by every one of ``n`` chained equations."""
    xs = [f"x{j}" for j in range(inputs)]
    body = "".join(f"  v{i}: tanh(v{i - 1} + " + " + ".join(xs) + ")\n" for i in range(1, n))
    return (HEAD + "inputs: {" + ", ".join(f"{x}: [B, T, d]" for x in xs) + "}\n"
            + f"graph:\n  v0: tanh({xs[0]})\n{body}outputs: {{y: v{n - 1}}}\n")


def chain(n: int) -> str:
    body = "".join(f"  v{i}: tanh(v{i - 1})\n" for i in range(1, n))
    return HEAD + f"inputs: {{x: [B, T, d]}}\ngraph:\n  v0: tanh(x)\n{body}outputs: {{y: v{n - 1}}}\n"


def calls(n: int, reads_input: bool = True) -> str:
    """A three-equation module called ``n`` times in a row, each call also reading the input (a long edge)."""
    module = ("modules:\n  M:\n    sizes: {d: 2}\n    inputs: {a: [B, T, d], b: [B, T, d]}\n    params: {W: [d, d]}\n"
              "    graph: {u: W @ a, v: tanh(u + b), w: v * a}\n    outputs: {y: w}\n")
    body = "".join(f"  c{i}: M(c{i - 1}, {'x' if reads_input else f'c{i - 1}'})\n" for i in range(1, n))
    return (HEAD + "inputs: {x: [B, T, d]}\n" + module
            + f"graph:\n  c0: M(x, x)\n{body}outputs: {{y: c{n - 1}}}\n")


def stacked(n: int) -> str:
    """An LSTM layer stacked ``n`` times with `repeat=` (rolled: n loops; unrolled: n rows of copies)."""
    return (HEAD + "imports: {LSTM: std:lstm.yaml}\ninputs: {x: [B, T, d]}\n"
            + f"graph:\n  layers: LSTM(x, h=h, repeat={n})\noutputs: {{y: layers.y}}\n")


def recurrent(n: int) -> str:
    """One recurrent block of ``n`` equations, each reading the input and the state (wide when unrolled)."""
    body = "".join(f"      e{i}: tanh(e{i - 1} + x + h[t-1])\n" for i in range(1, n))
    return (HEAD + "inputs: {x: [B, T, d]}\nrecurrent:\n  state: {h: [B, d]}\n  step:\n"
            f"    e0: tanh(x + h[t-1])\n{body.replace('      ', '    ')}    h: e{n - 1}\noutputs: {{y: h}}\n")
