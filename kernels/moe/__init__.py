"""Batched MoE least-squares passes: Triton kernels with their PyTorch reference.

:func:`moe_pass` dispatches: Triton on CUDA tensors, Triton's interpreter on CPU tensors when
``TRITON_INTERPRET=1``, otherwise the PyTorch reference.
"""

from __future__ import annotations

import os

import torch

from kernels.moe.reference import MoEPass, n_free_gates
from kernels.moe.reference import moe_pass as reference_moe_pass
from moe_theory.models import Expert

BACKENDS = ("auto", "torch", "triton")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


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
) -> MoEPass:
    """See :func:`kernels.moe.reference.moe_pass`; ``backend`` in ``auto``, ``torch``, ``triton``.

    ``auto`` runs the PyTorch reference for shapes the Triton kernels do not take
    (:func:`kernels.moe.triton_pass.unsupported_reason`); ``triton`` raises for them.
    """
    if resolve_backend(backend, X.device) == "triton":
        from kernels.moe.triton_pass import triton_moe_pass, unsupported_reason

        if backend == "auto" and unsupported_reason(score, X.shape[-1], gate_params.shape[1],
                                                    X.dtype, X.device):
            return reference_moe_pass(X, Y, gate_params, expert_params, gate=gate, score=score,
                                      expert=expert, jacobian=jacobian, gauss_newton=gauss_newton)
        return triton_moe_pass(X, Y, gate_params, expert_params, gate=gate, score=score,
                               expert=expert, jacobian=jacobian, gauss_newton=gauss_newton)
    return reference_moe_pass(X, Y, gate_params, expert_params, gate=gate, score=score,
                              expert=expert, jacobian=jacobian, gauss_newton=gauss_newton)


__all__ = [
    "BACKENDS", "MoEPass", "moe_pass", "n_free_gates", "resolve_backend", "reference_moe_pass",
]
