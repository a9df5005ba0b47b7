"""Shared test set-up.

Without a GPU, Triton kernels run through Triton's interpreter; it must be switched on before
``triton`` is first imported, hence here, at collection time.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

if "OMP_NUM_THREADS" not in os.environ:
    # many small tensor ops: one thread is as fast on an idle machine and avoids a 10-50x
    # slow-down from spin-waiting workers on a loaded one (see moe_theory.threads)
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` (tests/gpu: the benchmarks' checks on tensor-core paths and large
    shapes) need a CUDA GPU: skipped without one."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
