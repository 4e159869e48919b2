"""Bahdanau seq2seq (specs/seq2seq_attention.yaml: bidirectional Cho GRU encoder, GRU decoder, additive
attention) vs hand-written PyTorch, forward and training step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import seqdsl
from seqdsl.compilers.torch_module import to_module

from ..harness import SPECS, TRAINING_STEP, Config, Report, Row, input_grad, max_diff, measure, train_step

ORDER = 40
FULL = ({"d": 256, "h": 256, "a": 256, "m": 256, "vocab": 1024}, {"B": 32, "S": 64, "T": 32})
TINY = ({"d": 8, "h": 8, "a": 8, "m": 8, "vocab": 16}, {"B": 2, "S": 3, "T": 2})


class Seq2seqByHand(nn.Module):
    """Bahdanau's seq2seq as in specs/seq2seq_attention.yaml, written by hand for speed. The spec's encoder is a
    GRU in Cho's form (reset gate before U_h), which torch.nn.GRU does not compute, so the encoder is a hand loop:
    input projections of all steps in one matmul outside the loop, U_z and U_r in one matmul per step. The
    decoder precomputes U_a h_j once, and the output layer log_softmax(W_o s_t + C_o c_t + b_o) runs once over
    all steps after the loop."""

    def __init__(self, net: nn.Module):
        super().__init__()
        p = {k: v.detach().clone() for k, v in net.state_dict().items()}
        cat = lambda *names: nn.Parameter(torch.cat([p[n] for n in names]))  # noqa: E731
        self.h = p["W_s"].shape[0]
        self.E, self.W_s = nn.Parameter(p["E"]), nn.Parameter(p["W_s"])
        for side in ("fw", "bw"):
            q = f"enc.{side}."
            setattr(self, f"{side}_W", cat(q + "W_z", q + "W_r", q + "W_h"))
            setattr(self, f"{side}_b", cat(q + "b_z", q + "b_r", q + "b_h"))
            setattr(self, f"{side}_Uzr", cat(q + "U_z", q + "U_r"))
            setattr(self, f"{side}_Uh", nn.Parameter(p[q + "U_h"]))
        self.W = cat("dec.W_z", "dec.W_r", "dec.W_h")
        self.b = cat("dec.b_z", "dec.b_r", "dec.b_h")
        self.Uzr = cat("dec.U_z", "dec.U_r")
        self.Uh = nn.Parameter(p["dec.U_h"])
        self.C = cat("dec.C_z", "dec.C_r", "dec.C_h")
        self.W_a, self.U_a, self.v_a = (nn.Parameter(p["dec." + n]) for n in ("W_a", "U_a", "v_a"))
        self.W_o, self.C_o, self.b_o = (nn.Parameter(p["dec." + n]) for n in ("W_o", "C_o", "b_o"))

    def gru(self, x: torch.Tensor, side: str, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        W, b, Uzr, Uh = (getattr(self, f"{side}_{n}") for n in ("W", "b", "Uzr", "Uh"))
        xw = F.linear(x, W, b)
        h = x.new_zeros(x.shape[0], self.h)
        ys = []
        for t in (range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])):
            xz, xr, xh = xw[:, t].chunk(3, dim=1)
            hz, hr = F.linear(h, Uzr).chunk(2, dim=1)
            z = torch.sigmoid(xz + hz)
            r = torch.sigmoid(xr + hr)
            h = z * h + (1 - z) * torch.tanh(xh + F.linear(r * h, Uh))
            ys.append(h)
        if reverse:
            ys.reverse()
        return torch.stack(ys, 1), h

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fw, _ = self.gru(src, "fw", False)
        bw, bw_1 = self.gru(src, "bw", True)
        hs = torch.cat([fw, bw], dim=-1)  # (B, S, 2h)
        s = torch.tanh(F.linear(bw_1, self.W_s))
        yw = F.linear(F.embedding(tgt, self.E), self.W, self.b)  # (B, T, 3h)
        Uh_s = F.linear(hs, self.U_a)  # (B, S, a)
        ss, cs, alphas = [], [], []
        for t in range(tgt.shape[1]):
            e = (torch.tanh(F.linear(s, self.W_a).unsqueeze(1) + Uh_s) @ self.v_a)  # (B, S)
            alpha = torch.softmax(e, dim=-1)
            c = (alpha.unsqueeze(1) @ hs).squeeze(1)  # (B, 2h)
            yz, yr, yh = yw[:, t].chunk(3, dim=1)
            cz, cr, ch = F.linear(c, self.C).chunk(3, dim=1)
            sz, sr = F.linear(s, self.Uzr).chunk(2, dim=1)
            z = torch.sigmoid(yz + sz + cz)
            r = torch.sigmoid(yr + sr + cr)
            s = (1 - z) * s + z * torch.tanh(yh + F.linear(r * s, self.Uh) + ch)
            ss.append(s)
            cs.append(c)
            alphas.append(alpha)
        logits = F.linear(torch.stack(ss, 1), self.W_o) + F.linear(torch.stack(cs, 1), self.C_o, self.b_o)
        return torch.log_softmax(logits, dim=-1), torch.stack(alphas, 1)


def run(report: Report, cfg: Config) -> None:
    sizes, n = cfg.pick(FULL, TINY)
    torch.manual_seed(0)
    model = seqdsl.load(SPECS / "seq2seq_attention.yaml", sizes)
    net = to_module(model).eval()
    ref = Seq2seqByHand(net).eval()
    src = torch.randn(n["B"], n["S"], sizes["d"])
    tgt = torch.randint(0, sizes["vocab"], (n["B"], n["T"]))
    stats = measure({"ours": lambda: net(src, tgt), "ref": lambda: ref(src, tgt),
                     "ours_train": train_step(net, list(net.parameters()), src, tgt),
                     "ref_train": train_step(ref, list(ref.parameters()), src, tgt)}, cfg)
    with torch.no_grad():
        diff = max_diff(net(src, tgt), ref(src, tgt))
    grad_diff = max_diff(input_grad(net, src, tgt), input_grad(ref, src, tgt))
    label = ", ".join(f"{k}={v}" for k, v in sizes.items())
    w = f"seq2seq+attention B={n['B']} S={n['S']} T={n['T']} ({label})"
    ref_name = "hand-written (hand-loop Cho GRU encoder)"
    report.add(Row(w, "seq2seq_attention.yaml to_module", ref_name, stats["ours"], stats["ref"], 1.05, diff,
                   headline="seq2seq + Bahdanau attention vs hand-written"))
    report.add(Row(w, "seq2seq_attention.yaml to_module", ref_name, stats["ours_train"], stats["ref_train"], None,
                   grad_diff, kind="training step", note=TRAINING_STEP,
                   headline="seq2seq + Bahdanau attention, training step vs hand-written"))
