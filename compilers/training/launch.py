"""``seqdsl train --nproc N``: the same command on N processes, started by torchrun (no torch imported here)."""

from __future__ import annotations

import os
import subprocess
import sys


def without_nproc(argv: list[str]) -> list[str]:
    """The command line minus ``--nproc N`` / ``--nproc=N`` (what each torchrun worker runs)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``seqdsl <argv>`` on ``nproc`` processes of this machine with torchrun; its exit status."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "seqdsl", *argv]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # N processes share the cores (torchrun would set it, and say so)
    return subprocess.run(command, env=env).returncode
