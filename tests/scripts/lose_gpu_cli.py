"""``moe-theory`` in which the first shard that a process of kind ``$LOSE_WHO`` computes loses its
GPU context, once in the whole run (the process records itself in ``$LOSE_MARKER``):
``worker`` a spawned worker, ``here`` the sweep's own process. ``$LOSE_HOW``: ``raise`` raises
CUDA's message (any device), ``assert`` faults for real on the GPU (an index out of bounds: a
device-side assert, after which CUDA fails every call of that process), ``kill`` ends the process
instead, mid-shard (SIGKILL, as the host's out-of-memory killer does: a worker only).

Run as a script (``python tests/scripts/lose_gpu_cli.py sweep ...``, the repository on
``PYTHONPATH``): the file is then each spawned worker's ``__mp_main__``, so its patch of the sweep
runs in the workers too. It has a folder of its own because a script's folder heads the path,
where ``tests/moe_theory`` would shadow the package.
"""

import os
import signal
import sys

from moe_theory import sweep

_fit = sweep.fit_in_blocks


def _claim_the_fault() -> bool:
    """Whether this process is the one to fault: the first of its kind, in the whole run."""
    if (__name__ == "__main__") != (os.environ["LOSE_WHO"] == "here"):
        return False
    try:
        fd = os.open(os.environ["LOSE_MARKER"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def _lose_once(*args, **kwargs):
    if _claim_the_fault():
        if os.environ["LOSE_HOW"] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if os.environ["LOSE_HOW"] == "raise":
            raise RuntimeError("CUDA error: unspecified launch failure")
        import torch

        x = torch.zeros(2, device="cuda")
        x[torch.tensor([5], device="cuda")] += 1.0
        torch.cuda.synchronize()
    return _fit(*args, **kwargs)


sweep.fit_in_blocks = _lose_once
if __name__ == "__main__":
    from moe_theory.cli import main

    sys.exit(main(sys.argv[1:]))
