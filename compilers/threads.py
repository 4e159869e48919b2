"""How many CPU threads a run gets when the user does not say (``--threads``): the rule benchmarks/threads.py measures.

A recurrent model runs one small step after another, and every op of a step is a parallel region that waits for
its slowest thread. When another process wants the core, that thread is often descheduled: at load 7 on 2 cores a
training step took 3 to 25 times longer with 2 threads than with 1, at every size measured (up to an LSTM of
h=1024 at B=64, 1 GFLOP per step; BENCHMARKS.md, "Threads"). So a run gets 1 thread when its step is small (below
`SMALL_WORK`) or the machine is busy (load average above cores - 1 + `BUSY_MARGIN`), and one thread per core (of
the cores its processes share) otherwise. The work of a step is counted from what every command knows, spec or
ONNX file: 2 FLOP per parameter per sequence in the batch (`step_work`).
"""

from __future__ import annotations

import os

from .usage import UsageError

#: FLOP per step (2 · parameters · batch) below which 1 thread is faster: measured, see the module's docstring
SMALL_WORK = 50e6
#: a machine is busy when its load average is above (cores - 1 + this): another process would share our cores
BUSY_MARGIN = 0.5
MAX_THREADS = 1024


class ThreadsError(UsageError):
    """A --threads value that is no thread count (exit 2)."""


def step_work(params: int, batch: int) -> float:
    """FLOP of one step, as the rule counts it: each parameter multiplies and adds once per sequence."""
    return 2.0 * max(int(params), 0) * max(int(batch), 1)


def available() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine_load() -> float:
    """Runnable processes, averaged over the last minute (0 where the system does not say)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def choose_threads(work: float, requested: object = None, cores: int | None = None, load: float | None = None,
                   processes: int = 1) -> tuple[int, str]:
    """(threads, why) for a step of ``work`` FLOP; ``requested`` (``--threads``) wins when given.

    1 thread for a small step, or on a busy machine (its load average leaves no core free for a second thread);
    else one per core of the ``cores`` our ``processes`` (DDP ranks on this machine) share."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or not 1 <= requested <= MAX_THREADS:
            raise ThreadsError(f"--threads must be a whole number from 1 to {MAX_THREADS}, got {requested!r:.40}")
        return requested, "--threads"
    cores = cores if cores is not None else available()
    load = machine_load() if load is None else load
    share = max(1, cores // max(1, processes))
    if work < SMALL_WORK:
        return 1, f"small model: {_mflop(work)} MFLOP/step"
    if share == 1:
        return 1, f"{_mflop(work)} MFLOP/step, one core per process"
    if load > cores - 1 + BUSY_MARGIN:
        return 1, f"busy machine: load {load:.1f} on {cores} cores"
    return share, f"{_mflop(work)} MFLOP/step, one thread per core"


def describe(threads: int, why: str) -> str:
    """The one line a command prints: ``threads: 1 (small model: 0.3 MFLOP/step; --threads to change)``."""
    if why == "--threads":
        return f"threads: {threads} (--threads)"
    return f"threads: {threads} ({why}; --threads to change)"


def _mflop(work: float) -> str:
    return f"{work / 1e6:.3g}"
