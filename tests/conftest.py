"""Shared test set-up.

Without a GPU, Triton kernels run through Triton's interpreter; it must be switched on before
``triton`` is first imported, hence here, at collection time.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
