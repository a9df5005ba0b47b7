"""Batched MoE least-squares passes: Triton kernels with their PyTorch reference.

:func:`moe_pass` dispatches: Triton on CUDA tensors, Triton's interpreter on CPU tensors when
``TRITON_INTERPRET=1``, otherwise the PyTorch reference.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import itertools
import multiprocessing as mp
import os
import warnings
from types import ModuleType

import torch

from kernels.moe.gram import check_gram_dtype
from kernels.moe.model import Expert, check_expert, gate_dim
from kernels.moe.torch_pass import MoEPass, n_free_gates
from kernels.moe.torch_pass import moe_pass as reference_moe_pass

BACKENDS = ("auto", "torch", "triton")

#: ``(gate, score, expert, d, k, dtype, gauss_newton)`` of launches that ran out of GPU resources
#: although the resource model predicted they fit: ``auto`` sends them to the reference from then
#: on (one warning each).
_OUT_OF_RESOURCES: set[tuple] = set()


@functools.cache
def _triton_pass() -> ModuleType | None:
    """:mod:`kernels.moe.triton_pass`, or None without triton.

    The one place this package imports triton: it is optional (a CPU install runs the PyTorch
    reference only), and its import (~0.7 s) is paid only by a process that launches a kernel.
    """
    try:
        from kernels.moe import triton_pass
    except ImportError as err:
        if err.name != "triton" and not (err.name or "").startswith("triton."):
            raise
        return None
    return triton_pass


def triton_available() -> bool:
    return _triton_pass() is not None


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that actually runs: ``torch`` or ``triton``."""
    if backend == "auto":
        if device.type == "cuda" and triton_available():
            return "triton"
        return "torch"
    if backend == "triton":
        if not triton_available():
            raise ValueError(
                "backend: 'triton' needs the triton package (pip install 'moe-theory[gpu]')"
            )
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("backend: 'triton' on CPU tensors needs TRITON_INTERPRET=1 set before "
                             "triton is imported")
    return backend


def moe_pass(
    X: torch.Tensor,
    Y: torch.Tensor,
    gate_params: torch.Tensor,
    expert_params: torch.Tensor,
    *,
    gate: str,
    score: str,
    expert: Expert,
    jacobian: bool = True,
    gauss_newton: bool = True,
    backend: str = "auto",
    gram_features: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
    gram_dtype: str = "float64",
    check_rows: bool = True,
) -> MoEPass:
    """See :func:`kernels.moe.torch_pass.moe_pass`; ``backend`` in ``auto``, ``torch``, ``triton``.

    ``auto`` runs the PyTorch reference for shapes the Triton kernels do not take
    (:func:`kernels.moe.triton_pass.unsupported_reason`, the shared-memory model included), and
    for a shape whose launch runs out of GPU resources all the same (with a warning, once);
    ``triton`` raises for them.
    ``gram_features``: :func:`kernels.moe.gram.feature_pairs` of X, kept by a caller that makes
    many Gauss-Newton passes over the same data (linear scores; ignored otherwise).
    ``rows``: evaluate only the problems ``X[rows]`` (int64 indices on X's device), whose
    parameters are ``gate_params``, ``expert_params``: the Triton kernels read those rows of X and
    ``gram_features`` in place, the reference gathers them one sample chunk at a time.
    ``gram_dtype``: precision of the Gram products of ``J^T J``
    (docs/kernels.md#mixed-precision-gauss-newton); loss and ``J^T r`` keep X's dtype.
    ``check_rows``: check that every entry of ``rows`` indexes a data set of X (both paths; the
    Triton kernels would read out of bounds). It costs a host synchronisation on a GPU: a caller
    that passes rows in range by construction, as ``LeastSquaresProblem`` does after checking
    its ``data_rows`` once, passes False and saves one per pass of its fit.
    An empty batch raises a ``ValueError`` on both paths
    (:func:`kernels.moe.torch_pass.check_batch`).
    """
    check_gram_dtype(gram_dtype)
    if resolve_backend(backend, X.device) == "triton":
        tp = _triton_pass()
        d, k = X.shape[-1], gate_params.shape[1]
        shape = (gate, score, expert.name, d, k, X.dtype, jacobian and gauss_newton)
        if backend != "auto":
            return tp.triton_moe_pass(X, Y, gate_params, expert_params, gate=gate, score=score,
                                      expert=expert, jacobian=jacobian, gauss_newton=gauss_newton,
                                      gram_features=gram_features, rows=rows,
                                      gram_dtype=gram_dtype, check_rows=check_rows)
        if shape not in _OUT_OF_RESOURCES and not tp.unsupported_reason(
                score, d, k, X.dtype, X.device, gate=gate, expert=expert.name,
                gauss_newton=jacobian and gauss_newton):
            try:
                return tp.triton_moe_pass(X, Y, gate_params, expert_params, gate=gate,
                                          score=score, expert=expert, jacobian=jacobian,
                                          gauss_newton=gauss_newton, gram_features=gram_features,
                                          rows=rows, gram_dtype=gram_dtype,
                                          check_rows=check_rows)
            except tp.OutOfResources as err:
                # the last resort behind the resource model (kernels/moe/resources.py)
                _OUT_OF_RESOURCES.add(shape)
                warnings.warn(
                    f"kernels.moe: the Triton kernels ran out of {err.name} ({err.required} > "
                    f"{err.limit}) for gate={gate!r}, score={score!r}, expert={expert.name!r}, "
                    f"d={d}, k={k}, {X.dtype}, gauss_newton={jacobian and gauss_newton}; "
                    "this shape runs the PyTorch reference from now on", RuntimeWarning,
                    stacklevel=2)
    return reference_moe_pass(X, Y, gate_params, expert_params, gate=gate, score=score,
                              expert=expert, jacobian=jacobian, gauss_newton=gauss_newton,
                              gram_features=gram_features, rows=rows, gram_dtype=gram_dtype,
                              check_rows=check_rows)


def _compile_one(job: tuple[str, str, str, int, int, str]) -> None:
    gate, score, expert, d, k, dtype_name = job
    tp = _triton_pass()
    dtype, device = getattr(torch, dtype_name), torch.device("cuda")
    if tp.unsupported_reason(score, d, k, dtype, device, gate=gate, expert=expert):
        return
    ex = Expert(check_expert(expert))
    X = torch.zeros(1, 64, d, dtype=dtype, device=device)
    gp = torch.zeros(1, k, gate_dim(score, d), dtype=dtype, device=device)
    ep = torch.zeros(1, k, ex.dim(d), dtype=dtype, device=device)
    # the launches a Levenberg-Marquardt iteration makes: Gauss-Newton, loss only, each on all
    # problems or on a subset read in place
    for jacobian, rows in itertools.product((True, False), (None, torch.zeros(1, dtype=torch.long,
                                                                                device=device))):
        tp.triton_moe_pass(X, X[..., 0], gp, ep, gate=gate, score=score, expert=ex,
                           jacobian=jacobian, rows=rows)
    torch.cuda.synchronize()


def precompile(jobs: list[tuple[str, str, str, int, int]], dtype: torch.dtype = torch.float64
               ) -> None:
    """Compile the Triton kernels of these ``(gate, score, expert, d, k)`` models in background
    processes, into Triton's on-disk cache, while the caller goes on (a cold start otherwise
    compiles them one after another inside the first fits: ~18 s for N24's four curves on an
    H100). Failures are left for the real call to report."""
    jobs = sorted(set(jobs))
    if not jobs or not torch.cuda.is_available() or not triton_available():
        return
    pool = cf.ProcessPoolExecutor(max_workers=min(len(jobs), max(1, (os.cpu_count() or 2) // 2)),
                                  mp_context=mp.get_context("spawn"))
    for job in jobs:
        pool.submit(_compile_one, (*job, str(dtype).removeprefix("torch.")))
    pool.shutdown(wait=False)


__all__ = [
    "precompile",
    "BACKENDS", "MoEPass", "moe_pass", "n_free_gates", "resolve_backend", "reference_moe_pass",
]
