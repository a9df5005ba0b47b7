"""Batched Cholesky solve ``L L^T x = b`` in Triton: the damped Levenberg-Marquardt step.

Replaces ``torch.cholesky_solve(b[..., None], L)[..., 0]`` for ``L (R, p, p)`` lower triangular
(``torch.linalg.cholesky_ex``; only its lower triangle is read, as LAPACK ``potrs`` does). Motivation,
measured on an H100 at R = 20, p = 594, float64: ``torch.cholesky_solve`` takes 0.75 ms of GPU time
in two MAGMA batched trsv kernels (0.45 + 0.30 ms) for ~56 MB of reads, far from bandwidth bound.

Two launches:

- ``_diag_inverse_kernel``, grid ``(blocks, R)``: the inverse of every ``BS x BS`` diagonal block
  of L (identity on the diagonal past p), so that no step of the solve runs a scalar sequential
  substitution;
- ``_solve_kernel``, grid ``(R,)``: block forward substitution ``y_b = D_b^{-1} (b_b - sum_{j<b}
  L_bj y_j)`` then backward ``x_b = D_b^{-T} (y_b - sum_{j>b} L_jb^T x_j)``, each step matrix-vector
  products only. The solution blocks go through the output in global memory (a block step reads
  every earlier one), hence a barrier after each store.

L is read in place through its strides (``cholesky_ex`` returns column-major matrices; a padded or
transposed copy would cost as much as the solve).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

#: ``triton.jit`` picks the interpreter when the module is imported, so this is what runs CPU tensors.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@dataclass(frozen=True)
class SolveConfig:
    """Block sizes of :func:`cholesky_solve`. The GPU defaults are not tuned (no GPU when written):
    32-row steps (19 sequential steps per pass at p = 594); 128-wide loads of L so a step issues
    few, large loads; a 3-stage pipelined column loop (cp.async) so up to two such tiles are in
    flight, since one program per problem (20 SMs of 132) is latency bound, not bandwidth bound.
    8 warps keep the float64 ``(32, 128)`` tile in registers (ptxas, sm_90a: 238 registers, no
    spills; 70 KB shared memory)."""

    block: int = 32  # rows of a substitution step (diagonal block); a power of two
    chunk: int = 128  # columns (forward) / rows (backward) of L per load; a power of two
    num_warps: int = 8
    num_stages: int = 3  # pipelining depth of the loop over L's tiles; 1: none


#: Under the interpreter: small blocks so that the tests cross block and chunk boundaries.
INTERPRETER_CONFIG = SolveConfig(block=16, chunk=32, num_warps=1, num_stages=1)


@triton.jit
def _diag_inverse_kernel(
    L,  # (R, p, p) lower triangular, any strides
    DINV,  # (R, nb, BS, BS) out: inverses of the diagonal blocks, row-major
    p, s_lr, s_li, s_lj,
    BS: tl.constexpr,
):
    b = tl.program_id(0)
    r = tl.program_id(1).to(tl.int64)
    nb = tl.cdiv(p, BS)
    i = tl.arange(0, BS)
    g = b * BS + i
    inside = g < p
    Lb = L + r * s_lr + b * BS * (s_li + s_lj)
    # The strictly upper triangle is not read (LAPACK potrs does not read it either); the padded
    # diagonal is 1 so the padded block inverts to the identity and adds nothing.
    lower = (i[:, None] >= i[None, :]) & inside[:, None] & inside[None, :]
    t = tl.load(Lb + i[:, None] * s_li + i[None, :] * s_lj, mask=lower, other=0.0)
    diag = i[:, None] == i[None, :]
    t = tl.where(diag & (g >= p)[:, None], 1.0, t)
    # Transposed copy (the same cache lines): column k of it is row k of the block, already laid
    # out along axis 0 where the row-combination below needs it.
    tt = tl.load(Lb + i[:, None] * s_lj + i[None, :] * s_li,
                 mask=(i[:, None] <= i[None, :]) & inside[:, None] & inside[None, :], other=0.0)
    tt = tl.where(diag & (g >= p)[:, None], 1.0, tt)
    d = tl.sum(tl.where(diag, t, 0.0), axis=1)
    x = tl.zeros((BS, BS), dtype=t.dtype)
    # Row k of T^{-1}: (e_k - sum_{j<k} T[k, j] X[j, :]) / T[k, k]. Rows >= k of X are still zero,
    # so the sum may run over all j. A zero or NaN diagonal gives non-finite rows, no error.
    for k in tl.static_range(BS):
        tk = tl.sum(tl.where(i[None, :] == k, tt, 0.0), axis=1)
        s = tl.sum(tk[:, None] * x, axis=0)
        dk = tl.sum(tl.where(i == k, d, 0.0), axis=0)
        row = (tl.where(i == k, 1.0, 0.0) - s) / dk
        x = tl.where(i[:, None] == k, row[None, :], x)
    out = DINV + (r * nb + b) * BS * BS
    tl.store(out + i[:, None] * BS + i[None, :], x)


@triton.jit
def _solve_kernel(
    L,  # (R, p, p) lower triangular, any strides
    DINV,  # (R, nb, BS, BS) inverses of L's diagonal blocks
    B,  # (R, p) right-hand sides, any strides
    X,  # (R, p) out, contiguous: y after the forward pass, then x
    p, s_lr, s_li, s_lj, s_br, s_bi,
    BS: tl.constexpr, BK: tl.constexpr, STAGES: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    nb = tl.cdiv(p, BS)
    Lr = L + r * s_lr
    Br = B + r * s_br
    Xr = X + r * p
    Dr = DINV + r * nb * BS * BS
    i = tl.arange(0, BS)
    kk = tl.arange(0, BK)
    dinv_offs = i[:, None] * BS + i[None, :]

    # Forward, L y = b: row block b against the solved columns 0 .. b*BS.
    for b in range(nb):
        rows = b * BS + i
        rmask = rows < p
        # Independent of earlier steps: issued before the loop so their latency overlaps it.
        rhs = tl.load(Br + rows * s_bi, mask=rmask, other=0.0)
        dinv = tl.load(Dr + b * BS * BS + dinv_offs)
        acc = tl.zeros((BS,), dtype=rhs.dtype)
        for c0 in tl.range(0, b * BS, BK, num_stages=STAGES):
            cols = c0 + kk
            cmask = cols < b * BS
            tile = tl.load(Lr + rows[:, None] * s_li + cols[None, :] * s_lj,
                           mask=rmask[:, None] & cmask[None, :], other=0.0)
            y = tl.load(Xr + cols, mask=cmask, other=0.0)
            acc += tl.sum(tile * y[None, :], axis=1)
        v = rhs - acc
        tl.store(Xr + rows, tl.sum(dinv * v[None, :], axis=1), mask=rmask)
        # __syncthreads: later steps read this block from other threads of the program.
        tl.debug_barrier()

    # Backward, L^T x = y: block b against the solved rows (b+1)*BS .. p of column block b.
    for bb in range(nb):
        b = nb - 1 - bb
        rows = b * BS + i
        rmask = rows < p
        y = tl.load(Xr + rows, mask=rmask, other=0.0)
        dinv = tl.load(Dr + b * BS * BS + dinv_offs)
        acc = tl.zeros((BS,), dtype=y.dtype)
        for c0 in tl.range((b + 1) * BS, p, BK, num_stages=STAGES):
            ks = c0 + kk
            kmask = ks < p
            tile = tl.load(Lr + ks[:, None] * s_li + rows[None, :] * s_lj,
                           mask=kmask[:, None] & rmask[None, :], other=0.0)
            xk = tl.load(Xr + ks, mask=kmask, other=0.0)
            acc += tl.sum(tile * xk[:, None], axis=0)
        w = y - acc
        # x_b overwrites y_b in place, and y_b may be loaded by several threads (replicated
        # layouts): all of them must have read it before any thread stores.
        tl.debug_barrier()
        tl.store(Xr + rows, tl.sum(dinv * w[:, None], axis=0), mask=rmask)
        tl.debug_barrier()


def _empty(shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocate an output (tests swap in a NaN-filled one to catch unwritten cells)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _validate(chol: torch.Tensor, rhs: torch.Tensor) -> None:
    if not isinstance(chol, torch.Tensor) or chol.ndim != 3 or chol.shape[1] != chol.shape[2]:
        shape = tuple(chol.shape) if isinstance(chol, torch.Tensor) else type(chol).__name__
        raise ValueError(f"chol: must be a tensor of shape (R, p, p), got {shape}")
    if chol.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"chol: must be float32 or float64, got {chol.dtype}")
    R, p, _ = chol.shape
    if not isinstance(rhs, torch.Tensor) or tuple(rhs.shape) != (R, p):
        shape = tuple(rhs.shape) if isinstance(rhs, torch.Tensor) else type(rhs).__name__
        raise ValueError(f"rhs: must have shape (R, p) = {(R, p)} to match chol, got {shape}")
    if rhs.dtype != chol.dtype:
        raise ValueError(f"rhs: dtype {rhs.dtype} differs from chol's {chol.dtype}")
    if rhs.device != chol.device:
        raise ValueError(f"rhs: device {rhs.device} differs from chol's {chol.device}")
    if chol.device.type != "cuda" and not (chol.device.type == "cpu" and _INTERPRETED):
        raise ValueError(f"chol: must be a CUDA tensor, or a CPU tensor with TRITON_INTERPRET=1 "
                         f"set before triton is imported; got device {chol.device}")


def cholesky_solve(chol: torch.Tensor, rhs: torch.Tensor, *,
                   config: SolveConfig | None = None) -> torch.Tensor:
    """x (R, p) with L L^T x = rhs, L = chol (R, p, p) lower triangular (what
    torch.linalg.cholesky_ex returns); same result as torch.cholesky_solve(rhs[..., None],
    chol)[..., 0].

    Only the lower triangle of ``chol`` is read, in place (any strides). Computes in the input
    dtype. A problem whose factor has a NaN/inf or a zero diagonal gets a non-finite solution and
    leaves the others unaffected. ``config``: block sizes (default :class:`SolveConfig` on a GPU,
    :data:`INTERPRETER_CONFIG` under the interpreter).
    """
    _validate(chol, rhs)
    R, p, _ = chol.shape
    cfg = config or (SolveConfig() if chol.is_cuda else INTERPRETER_CONFIG)
    out = _empty((R, p), dtype=chol.dtype, device=chol.device)
    if R == 0 or p == 0:
        return out
    # In-problem offsets are int32 in the kernels (the problem offset is int64).
    if (p - 1) * (chol.stride(1) + chol.stride(2)) >= 2**31:
        chol = chol.contiguous()
        if (p - 1) * (p + 1) >= 2**31:
            raise ValueError(f"chol: p = {p} is too large (p^2 must stay below 2^31)")
    if (p - 1) * rhs.stride(1) >= 2**31:
        rhs = rhs.contiguous()
    bs = cfg.block
    nb = triton.cdiv(p, bs)
    strides = (chol.stride(0), chol.stride(1), chol.stride(2))
    dinv = _empty((R, nb, bs, bs), dtype=chol.dtype, device=chol.device)
    _diag_inverse_kernel[(nb, R)](chol, dinv, p, *strides, BS=bs,
                                  num_warps=4 if chol.is_cuda else 1)
    _solve_kernel[(R,)](chol, dinv, rhs, out, p, *strides, rhs.stride(0), rhs.stride(1),
                        BS=bs, BK=cfg.chunk, STAGES=cfg.num_stages, num_warps=cfg.num_warps)
    return out


__all__ = ["INTERPRETER_CONFIG", "SolveConfig", "cholesky_solve"]
