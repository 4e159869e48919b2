"""The generated module behaves like any nn.Module: torch.save / torch.load of the whole module, copy.deepcopy,
torch.compile without recompiling for a new B or T (recognised cells keep torch's kernel), and DDP with a declared
parameter that nothing uses."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, SPECS

import seqdsl
from seqdsl.compilers import generated
from seqdsl.compilers.torch_module import to_module

SPECS_UNDER_TEST = ["lstm.yaml", "lstm_peephole.yaml", "classifier.yaml", "seq2seq_attention.yaml"]


def inputs_for(model: seqdsl.Model, batch: int, steps: int, seed: int = 0) -> list[torch.Tensor]:
    from seqdsl.compilers.build import example_inputs

    return [torch.from_numpy(v) for v in example_inputs(model, batch, steps, seed).values()]


def outputs(net: torch.nn.Module, args: list[torch.Tensor]) -> list[torch.Tensor]:
    out = net(*args)
    return list(out) if isinstance(out, tuple) else [out]


def test_torch_save_and_load_in_a_fresh_process(tmp_path: Path):
    names = []
    for spec in ["lstm.yaml", "lstm_peephole.yaml"]:  # a recognised cell and a generic loop
        model = seqdsl.load(SPECS / spec)
        net = to_module(model)
        x = inputs_for(model, 2, 6)[0]
        torch.save(net, tmp_path / f"{spec}.pt")
        np.save(tmp_path / f"{spec}.x.npy", x.numpy())
        np.save(tmp_path / f"{spec}.want.npy", net(x)[0].detach().numpy())
        names.append(type(net).__module__)
    script = textwrap.dedent(f"""
        import numpy as np, torch
        for spec in ["lstm.yaml", "lstm_peephole.yaml"]:
            net = torch.load({str(tmp_path)!r} + f"/{{spec}}.pt", weights_only=False)
            got = net(torch.from_numpy(np.load({str(tmp_path)!r} + f"/{{spec}}.x.npy")))[0].detach().numpy()
            assert np.array_equal(got, np.load({str(tmp_path)!r} + f"/{{spec}}.want.npy")), spec
            print(type(net).__module__)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == names and all(n.startswith("seqdsl.compilers.generated.") for n in names)


def test_a_changed_cache_file_is_not_imported(tmp_path: Path):
    source = "X = 1\n"
    name = generated.module_name("tamper", source)
    file = generated.cache_dir() / f"{name}.py"
    file.write_text("import os\nX = 2\n")  # planted under the digest of other text
    try:
        with pytest.raises(ImportError, match="does not hold the source"):
            __import__(f"seqdsl.compilers.generated.{name}")
    finally:
        file.unlink()
    assert generated.load("tamper", source).X == 1


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["file", "dangling", "dir"]), value=st.integers(), tag=st.uuids())
def test_a_link_planted_at_a_cache_file_is_replaced_never_written_through(tmp_path_factory, kind: str, value: int,
                                                                          tag):
    """The cache file is written by `seqdsl.files` (one atomic writer): a link at its name is replaced by the file,
    and what it pointed at stays as it was."""
    source = f"X = {value}  # {tag}\n"
    name = generated.module_name("planted", source)
    file = generated.cache_dir() / f"{name}.py"
    outside = tmp_path_factory.mktemp("outside")
    target = outside / ("missing.py" if kind == "dangling" else "folder" if kind == "dir" else "target.py")
    if kind == "file":
        target.write_bytes(b"SECRET = 1\n")
    elif kind == "dir":
        target.mkdir()
        (target / file.name).write_bytes(b"SECRET = 1\n")
    file.symlink_to(target)
    sys.modules.pop(f"{generated.__name__}.{name}", None)  # an earlier example may have imported the same source
    try:
        assert generated.load("planted", source).X == value
        assert not file.is_symlink() and file.read_text() == source
    finally:
        file.unlink(missing_ok=True)
    left = {p.name: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    assert left == ({} if kind == "dangling" else {target.name if kind == "file" else file.name: b"SECRET = 1\n"})


def test_deepcopy_is_an_independent_module_computing_the_same():
    model = seqdsl.load(SPECS / "classifier.yaml")
    net = to_module(model)
    twin = copy.deepcopy(net)
    args = inputs_for(model, 3, 7)
    for a, b in zip(outputs(net, args), outputs(twin, args)):
        assert torch.equal(a, b)
    with torch.no_grad():
        next(twin.parameters()).add_(1.0)
    assert not torch.equal(next(twin.parameters()), next(net.parameters()))


class GraphCounter:
    """A torch.compile backend that records each graph dynamo hands it, and runs it as is."""

    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):
        self.graphs.append(gm)
        return gm.forward


@pytest.mark.parametrize("spec", SPECS_UNDER_TEST)
def test_compile_once_for_every_batch_and_length(spec: str):
    torch._dynamo.reset()
    model = seqdsl.load(SPECS / spec)
    net = to_module(model)
    counter = GraphCounter()
    compiled = torch.compile(net, backend=counter)
    after_first = None
    for batch, steps in [(3, 5), (4, 9), (2, 13), (5, 20)]:  # B and T above 1: torch specialises sizes 0 and 1
        args = inputs_for(model, batch, steps, seed=steps)
        for got, want in zip(outputs(compiled, args), outputs(net, args)):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
        after_first = len(counter.graphs) if after_first is None else after_first
    assert len(counter.graphs) == after_first, f"recompiled: {len(counter.graphs)} graphs, {after_first} at first"
    # nothing unrolled: every graph is small whatever T is, and torch's fused kernel is not traced into them
    ops = [str(n.target) for g in counter.graphs for n in g.graph.nodes if n.op in ("call_function", "call_method")]
    assert not any("lstm" in op or "gru" in op or "rnn" in op for op in ops)
    assert all(len(g.graph.nodes) < 60 for g in counter.graphs)


def test_compiled_gradients_equal_eager():
    torch._dynamo.reset()
    model = seqdsl.load(SPECS / "lstm.yaml")
    net = to_module(model)
    compiled = torch.compile(net, backend=GraphCounter())
    x = inputs_for(model, 3, 8)[0]
    outputs(compiled, [x])[0].square().sum().backward()
    grads = {k: p.grad.clone() for k, p in net.named_parameters()}
    net.zero_grad()
    outputs(net, [x])[0].square().sum().backward()
    for k, p in net.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, atol=1e-6, rtol=1e-6)


# -- a declared parameter nothing uses: a warning at validate, a buffer in the module, DDP works -----------------

UNUSED = """\
name: unused
sizes: {d: 4, h: 3}
inputs:
  x: [B, T, d]
params:
  W, U: [h, d]
  V: [h, h]
  Z: [h]
  b: [h]
recurrent:
  state: {h: [B, h]}
  step:
    dead: U @ x
    h: tanh(W @ x + V @ h[t-1] + b)
outputs:
  y: h
"""


def test_unused_parameter_is_a_located_warning_and_a_buffer(tmp_path: Path):
    spec = tmp_path / "unused.yaml"
    spec.write_text(UNUSED)
    model = seqdsl.load(spec)
    unused = {w.message: w for w in model.warnings if w.code == "W0402"}
    assert set(unused) == {"parameter `Z` is never used by any output", "parameter `U` is never used by any output"}
    assert unused["parameter `Z` is never used by any output"].loc.line == 8
    for optimize in (True, False):
        net = to_module(model, optimize=optimize, native_cells=optimize)
        assert "Z" not in dict(net.named_parameters()) and "Z" in net.state_dict()
        assert set(net.state_dict()) == set(model.params)  # the weights file still holds every declared name
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "validate", str(spec)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and f"{spec}:8:3: warning[W0402]: parameter `Z` is never used" in r.stderr


def _ddp_worker(rank: int, spec: str, init_file: str, out: str) -> None:
    import gc

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        for optimize in (True, False):  # with the passes, and the equations as written
            torch.manual_seed(0)  # the same initial weights on both ranks (DDP also broadcasts rank 0's)
            net = DistributedDataParallel(to_module(seqdsl.load(spec), optimize=optimize, native_cells=optimize))
            opt = torch.optim.SGD(net.parameters(), lr=0.1)
            gen = torch.Generator().manual_seed(rank)  # each rank its own data
            for _ in range(3):
                opt.zero_grad()
                net(torch.randn(4, 5, 4, generator=gen))[0].square().mean().backward()
                opt.step()
            torch.save({k: v.detach().clone() for k, v in net.module.state_dict().items()}, f"{out}.{optimize}.{rank}")
            del net, opt  # DDP's reducer holds the process group: freed here, not during the interpreter's exit
        gc.collect()
        dist.barrier()  # no rank closes its connections while the other still uses them
    finally:
        dist.destroy_process_group()


def test_ddp_with_an_unused_parameter(tmp_path: Path, monkeypatch):
    import torch.multiprocessing as mp

    spec = tmp_path / "unused.yaml"
    spec.write_text(UNUSED)
    out = str(tmp_path / "state")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the workers inherit it; the suite's process keeps its own
    workers = mp.spawn(_ddp_worker, args=(str(spec), str(tmp_path / "init"), out), nprocs=2, join=False)
    deadline = time.monotonic() + 240
    while not workers.join(timeout=5):  # raises if a worker failed
        if time.monotonic() > deadline:
            for p in workers.processes:
                p.kill()
            raise AssertionError("the DDP workers did not finish in 240 s")
    torch.manual_seed(0)
    start = to_module(seqdsl.load(spec)).state_dict()
    for optimize in (True, False):
        a, b = (torch.load(f"{out}.{optimize}.{r}", weights_only=True) for r in (0, 1))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)  # the replicas hold identical weights
        assert not torch.equal(a["W"], start["W"]) and torch.equal(a["Z"], start["Z"])  # trained; Z untouched
