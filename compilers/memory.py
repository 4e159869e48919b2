"""Whether a build fits in this machine's memory: refused before anything is allocated when it certainly cannot
(E0601), and an allocation that fails anyway (another process took the memory, `ulimit -v`) said as such."""

from __future__ import annotations

import os
import re

from seqdsl.errors import UNKNOWN, SpecError
from seqdsl.footprint import Footprint
from seqdsl.ir import Model


def physical_memory() -> int | None:
    """Bytes of memory this machine has (None where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def memory_needed(model: Model, fp: Footprint) -> int:
    """A lower estimate of a build's memory: the parameters held three times (the module, the ONNX file's
    initializers, onnxruntime's session) and the check's values twice (PyTorch and onnxruntime)."""
    return 3 * 4 * model.param_count + 2 * fp.activations


def check_memory(model: Model, fp: Footprint, available: int | None = None) -> None:
    """Refuse a build that cannot fit in this machine's memory, whatever the limits say (E0601), before
    anything is allocated: raising --max-params or --max-memory cannot make room that is not there."""
    have = physical_memory() if available is None else available
    need = memory_needed(model, fp)
    if have is None or need <= have:
        return
    biggest = max(model.params.values(), key=lambda p: p.size, default=None)
    by_params = 12 * model.param_count >= 2 * fp.activations or fp.largest is None  # point at what takes most
    where = biggest.loc if biggest is not None and by_params else fp.largest.loc if fp.largest is not None else UNKNOWN
    raise SpecError("E0601", f"building `{model.name}` needs at least {_gib(need)} of memory, more than this "
                             f"machine's {_gib(have)}", where,
                    found=f"{model.param_count:,} parameters ({_gib(4 * model.param_count)}) and "
                          f"{_gib(fp.activations)} of values for the check run",
                    hint="check the sizes: this machine cannot hold the model at these sizes")


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def out_of_memory(exc: BaseException) -> bool:
    """An allocation that failed: Python's, numpy's, torch's (a RuntimeError saying so) or onnxruntime's."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return bool(re.search(r"(can't|cannot|unable to|failed to) allocate|out of memory|bad_alloc", str(exc), re.I))


def memory_message(model: Model, fp: Footprint) -> str:
    have = physical_memory()
    return (f"out of memory building `{model.name}`: {model.param_count:,} parameters ({_gib(4 * model.param_count)}) "
            f"and {_gib(fp.activations)} of values for the check run did not fit"
            + (f" in this machine's {_gib(have)}" if have else "") + "; lower the sizes")
