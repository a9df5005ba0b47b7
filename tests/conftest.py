"""Shared test set-up.

Without a GPU, Triton kernels run through Triton's interpreter; it must be switched on before
``triton`` is first imported, hence here, at collection time.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

if "OMP_NUM_THREADS" not in os.environ:
    # many small tensor ops: one thread is as fast on an idle machine and avoids a 10-50x
    # slow-down from spin-waiting workers on a loaded one (see moe_theory.cli.limit_cpu_threads)
    torch.set_num_threads(1)
