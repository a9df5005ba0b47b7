"""Correctness checks run before timing (docs/kernels.md#measuring-speed) and by ``tests/gpu``.

One copy of each check and of its tolerance: the benchmarks call these on their own inputs
right before timing them, the GPU tests call them on the same kinds of inputs and assert the
tolerances. Every error is the relative Frobenius error against a float64 PyTorch reference on
the same data.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import numpy as np
import torch

from kernels.attention import sigmoid_attention, sigmoid_attention_reference
from kernels.moe.gram import gram_jtj as torch_gram_jtj
from kernels.moe.torch_pass import MoEPass, moe_pass, n_free_gates
from kernels.moe.triton_gram import gram_jtj
from kernels.moe.triton_pass import LaunchConfig, triton_moe_pass
from moe_theory import models

#: Triton MoE pass on float32 data against the float64 reference: float32 arithmetic with
#: float64 reductions (the CPU tests hold 1e-5 at n <= 130; sums over n = 1e6 add rounding);
#: ``J^T J`` in tf32 rounds its operands to 11 bits (observed 7-9e-4 on the H100 at n = 1e5).
MOE_RTOL = {"loss": 1e-5, "jtr": 1e-4, "jtj": 3e-3}
#: float64 data: both sides float64, only the summation order differs (observed ~1e-15).
MOE_RTOL_F64 = 1e-12
#: Triton Gram kernel (``J^T J`` from the coefficients) per ``tl.dot`` precision on float32 data:
#: tf32 as above; tf32x3 and ieee are float32-accurate products accumulated in float32 per
#: program (observed on the H100 at (20, 1e5, 32, 9): tf32 8.8e-4, tf32x3 7.1e-7, ieee 1.5e-5).
GRAM_RTOL = {"tf32": 3e-3, "tf32x3": 1e-4, "ieee": 1e-4}
#: bf16 attention against the float32 dense reference: P and dS are rounded to 8 bits before the
#: second products (observed up to 3.3e-3 for our kernels, 1.3e-2 for naive bf16 PyTorch).
ATTENTION_RTOL = 3e-2
#: Precise sigmoid weights near 1/N: float32 rounding of the logits (observed 3.1e-6 at N = 16384).
PRECISE_GATE_RTOL = 1e-5
#: Fits of the same data and starts on another device or path agree to this relative difference
#: in every Voronoi loss (docs/theory.md#estimator).
AGREEMENT_RTOL = 1e-3


def relative_differences(values, base) -> np.ndarray:
    """Per replication ``|value - base| / |base|``, the agreement rule of every benchmark that
    compares fits: equal values agree (both infinite, or both NaN: a per-parameter error of a
    cell neither fit has), and a NaN on one side is NaN, never within a tolerance."""
    a, b = np.asarray(base, dtype=float), np.asarray(values, dtype=float)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return np.where((a == b) | (np.isnan(a) & np.isnan(b)), 0.0,
                        np.abs(b - a) / np.maximum(np.abs(a), np.finfo(float).tiny))


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``||got - want|| / ||want||`` in float64 (inf where ``got`` has non-finite entries)."""
    got, want = got.detach().double(), want.detach().double()
    if not torch.isfinite(got).all():
        return math.inf
    return float((got - want).norm() / want.norm().clamp_min(1e-300))


# --------------------------------------------------------------------------------------------- #
# MoE least-squares pass
# --------------------------------------------------------------------------------------------- #


def moe_problem(R: int, n: int, d: int, k: int, dtype: torch.dtype, gate: str = "sigmoid",
                score: str = "linear", expert: str = "relu", device: str = "cuda"
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random inputs in ``[-1, 1]^d``, responses N(0, 1), atoms N(0, 1/d), seeded by the shape.

    Returns ``X (R, n, d), Y (R, n), gate_params (R, k, pg), expert_params (R, k, pe)``; a
    softmax gate's pinned rows are zero.
    """
    g = torch.Generator(device=device).manual_seed(zlib.crc32(f"{R}-{n}-{d}-{k}".encode()))
    X = torch.rand(R, n, d, generator=g, device=device, dtype=dtype) * 2 - 1
    Y = torch.randn(R, n, generator=g, device=device, dtype=dtype)
    gp = torch.randn(R, k, models.gate_dim(score, d), generator=g, device=device, dtype=dtype)
    ep = torch.randn(R, k, models.get_expert(expert).dim(d), generator=g, device=device,
                     dtype=dtype) / d**0.5
    gp[:, n_free_gates(gate, k):] = 0
    return X, Y, gp, ep


def pass_errors(got: MoEPass, want: MoEPass) -> dict[str, float]:
    """Relative error of each output the reference has: ``loss``, ``jtr``, ``jtj``."""
    return {name: relative_error(g, w) for name, g, w in zip(want._fields, got, want, strict=True)
            if w is not None}


def reference_pass(X, Y, gp, ep, *, gate: str, score: str, expert: str,
                   gauss_newton: bool = True) -> MoEPass:
    """The PyTorch reference pass in float64 on the same data."""
    return moe_pass(X.double(), Y.double(), gp.double(), ep.double(), gate=gate, score=score,
                    expert=models.get_expert(expert), gauss_newton=gauss_newton)


def moe_pass_errors(X, Y, gp, ep, *, gate: str, score: str, expert: str,
                    gauss_newton: bool = True, config: LaunchConfig | None = None,
                    reference: MoEPass | None = None) -> dict[str, float]:
    """Errors of the Triton pass against the float64 reference (``reference`` if the caller
    already has it for this data)."""
    want = reference if reference is not None else reference_pass(
        X, Y, gp, ep, gate=gate, score=score, expert=expert, gauss_newton=gauss_newton)
    got = triton_moe_pass(X, Y, gp, ep, gate=gate, score=score, expert=models.get_expert(expert),
                          gauss_newton=gauss_newton, config=config)
    return pass_errors(got, want)


def moe_tolerance(name: str, dtype: torch.dtype) -> float:
    """The tolerance of output ``name`` (``loss``, ``jtr``, ``jtj``) of a MoE pass on ``dtype``
    data (:data:`MOE_RTOL`, :data:`MOE_RTOL_F64`)."""
    return MOE_RTOL_F64 if dtype == torch.float64 else MOE_RTOL[name]


def moe_failures(errors: dict[str, float], dtype: torch.dtype) -> dict[str, float]:
    """The errors above their tolerance (:func:`moe_tolerance`)."""
    return {name: e for name, e in errors.items() if not e <= moe_tolerance(name, dtype)}


def gram_errors(U: torch.Tensor, X: torch.Tensor, *, gate: str, expert: str, k: int,
                precisions: tuple[str, ...], config=None) -> dict[str, float]:
    """Errors of the Triton Gram kernel's ``J^T J`` (one per ``tl.dot`` precision) against the
    float64 Gram product of the same coefficients ``U (R, m, n)`` and samples ``X (R, n, d)``;
    ``config``: the kernel's block sizes (:class:`kernels.moe.triton_gram.GramConfig`)."""
    kw = dict(gate=gate, expert=expert, k=k)
    want = torch_gram_jtj(U.double(), X.double(), **kw)
    return {prec: relative_error(gram_jtj(U, X, precision=prec, config=config, **kw), want)
            for prec in precisions}


def gram_tolerance(dtype: torch.dtype, precision: str) -> float:
    return MOE_RTOL_F64 if dtype == torch.float64 else GRAM_RTOL[precision]


# --------------------------------------------------------------------------------------------- #
# Sigmoid attention
# --------------------------------------------------------------------------------------------- #


def attention_slice_errors(q, k, v, do, out, grads, *, causal: bool, gate: str = "sigmoid"
                           ) -> dict[str, float]:
    """Errors of an attention output and its gradients ``(dq, dk, dv)`` (for upstream gradient
    ``do``) on the last (batch, head) slice, against the float32 dense reference: the last slice
    exercises the batch and head offsets. ``gate="softmax"`` checks a softmax provider (SDPA)."""
    sl = (slice(-1, None), slice(-1, None))
    leaves = [t[sl].float().requires_grad_() for t in (q, k, v)]
    ref = sigmoid_attention_reference(*leaves, causal=causal, gate=gate)
    ref_grads = torch.autograd.grad(ref, leaves, do[sl].float())
    return {label: relative_error(got[sl].detach(), want)
            for label, got, want in zip(("out", "dq", "dk", "dv"), (out, *grads),
                                        (ref, *ref_grads), strict=True)}


def attention_errors(fn: Callable[..., torch.Tensor], q, k, v, do, *, causal: bool,
                     gate: str = "sigmoid") -> dict[str, float]:
    """Run ``fn(q, k, v)`` forward and backward and check it (:func:`attention_slice_errors`)."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, do)
    return attention_slice_errors(q, k, v, do, out, grads, causal=causal, gate=gate)


def grid_fold_error(B: int = 38400, H: int = 2, N: int = 16, D: int = 16) -> float:
    """Largest error of forward and gradients over the first and last batch of a call with more
    (batch, head) pairs than CUDA's 65535 grid limit (default B H = 76800, the teacher-student
    shape that once failed with "invalid argument"), bf16 against the float64 reference."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, generator=g)
               .requires_grad_() for _ in range(3))
    out = sigmoid_attention(q, k, v)
    out.float().square().sum().backward()
    worst = 0.0
    for b in (0, B - 1):
        leaves = [t[b : b + 1].detach().double().requires_grad_() for t in (q, k, v)]
        ref = sigmoid_attention_reference(*leaves)
        ref.square().sum().backward()
        for got, want in ((out[b : b + 1], ref), (q.grad[b : b + 1], leaves[0].grad),
                          (k.grad[b : b + 1], leaves[1].grad), (v.grad[b : b + 1], leaves[2].grad)):
            worst = max(worst, relative_error(got, want))
    return worst


def gate_error(n_keys: int = 16384, precise: bool = True) -> dict[str, float]:
    """Elementwise relative error of the kernel's sigmoid weights near ``1/N`` (bias ``-log N``).

    With float32 inputs, IEEE dots and ``V = I`` (128 keys, D = 128) the output is the weight
    matrix itself, so ``O`` against float64 ``sigmoid(Q K^T / sqrt(D) - log N)`` isolates the
    gate's error. Returns ``n_keys``, ``precise``, ``max`` and ``median`` error, and the median
    weight.
    """
    gen = torch.Generator(device="cuda").manual_seed(n_keys)
    q = torch.randn(1, 1, 4096, 128, generator=gen, device="cuda")
    k = torch.randn(1, 1, 128, 128, generator=gen, device="cuda")
    eye = torch.eye(128, device="cuda").view(1, 1, 128, 128)
    bias = -math.log(n_keys)
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        got = sigmoid_attention(q, k, eye, bias=bias, precise=precise).double()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    want = torch.sigmoid(q.double() @ k.double().transpose(-1, -2) / math.sqrt(128) + bias)
    rel = ((got - want).abs() / want).flatten()
    return {"n_keys": n_keys, "precise": precise, "max": rel.max().item(),
            "median": rel.median().item(), "median_weight": want.median().item()}
