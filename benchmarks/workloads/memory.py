"""Memory network hops (specs/memory_network.yaml#Hops) vs hand-written matmul/softmax, forward and training
step (loss = sum of u_K)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import seqdsl
from seqdsl.compilers.torch_module import to_module

from ..harness import SPECS, TRAINING_STEP, Config, Report, Row, input_grad, max_diff, measure, train_step

ORDER = 60
FULL = {"B": 32, "N": 1024, "h": 256, "K": 3}
TINY = {"B": 2, "N": 4, "h": 8, "K": 2}
HOPS_SPEC = """
name: bench_hops
imports:
  Hops: memory_network.yaml#Hops
sizes: {h: 256, K: 3}
inputs:
  m: [B, N, h]
  c: [B, N, h]
  u: [B, h]
graph:
  hops: Hops(m, c, u, K=K)
outputs:
  u_K: hops.u_K
  p: hops.p
"""


def hops_by_hand(m: torch.Tensor, c: torch.Tensor, u: torch.Tensor, H: torch.Tensor, hops: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """p = softmax(m u), o = Σ_i p_i c_i, u = H u + o, ``hops`` times."""
    ps = []
    for _ in range(hops):
        p = torch.softmax(torch.bmm(m, u.unsqueeze(-1)).squeeze(-1), dim=-1)
        o = torch.bmm(p.unsqueeze(1), c).squeeze(1)
        u = F.linear(u, H) + o
        ps.append(p)
    return u, torch.stack(ps, 1)


def run(report: Report, cfg: Config) -> None:
    n = cfg.pick(FULL, TINY)
    torch.manual_seed(0)
    net = to_module(seqdsl.loads(HOPS_SPEC, {"h": n["h"], "K": n["K"]}, file=str(SPECS / "_bench.yaml"))).eval()
    m, c = torch.randn(n["B"], n["N"], n["h"]) / 16, torch.randn(n["B"], n["N"], n["h"])
    u = torch.randn(n["B"], n["h"])
    H = net.hops.H.detach().clone().requires_grad_(True)
    ref = lambda m, c, u: hops_by_hand(m, c, u, H, n["K"])  # noqa: E731
    stats = measure({"ours": lambda: net(m, c, u), "ref": lambda: ref(m, c, u),
                     "ours_train": train_step(net, list(net.parameters()), m, c, u),
                     "ref_train": train_step(ref, [H], m, c, u)}, cfg)
    with torch.no_grad():
        diff = max_diff(net(m, c, u), ref(m, c, u))
    grad_diff = max_diff(input_grad(net, m, c, u), input_grad(ref, m, c, u))
    w = f"memory network B={n['B']} slots={n['N']} d={n['h']} hops={n['K']}"
    report.add(Row(w, "memory_network.yaml#Hops to_module", "hand-written bmm/softmax", stats["ours"],
                   stats["ref"], 1.05, diff, headline="memory network hops vs hand-written"))
    report.add(Row(w, "memory_network.yaml#Hops to_module", "hand-written bmm/softmax", stats["ours_train"],
                   stats["ref_train"], None, grad_diff, kind="training step", note=TRAINING_STEP,
                   headline="memory network hops, training step vs hand-written"))
