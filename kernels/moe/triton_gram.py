"""Triton kernel for the Gram form of ``J^T J`` (linear scores; the mathematics, the pair tables and
the PyTorch version are in ``kernels/moe/gram.py``).

From the coefficients ``U (R, m, n)`` the gradient kernel writes (``kernels/moe/triton_pass.py``,
``WITH_U``) and ``X``, each program forms a tile of role-pair products ``W^T (BA, BN)`` and of
feature-pair products ``V (BN, BQ)`` in registers and accumulates ``W^T V`` with ``tl.dot``: neither
``J`` nor ``W`` nor ``V`` exists in device memory. Grid ``(role-pair tiles x feature-pair tiles,
T, R)``: each program streams a contiguous ``1/T`` of one problem's samples and writes its
``(BA, BQ)`` partial tile to an ``(R, T, AP, QP)`` buffer that the host reduces in float64 and
gathers into the reference layout with one precomputed index.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.moe.gram import applies, tables

#: Partial sums may take at most this many bytes; the sample splits ``T`` shrink to fit.
PARTIAL_BYTES = 2 * 2**30


@dataclass(frozen=True)
class GramConfig:
    """Block sizes of the Gram kernel (see NOTES.md for the measurements behind the defaults)."""

    block_a: int = 64  # role pairs per program
    block_q: int = 64  # feature pairs per program
    block_n: int = 32  # samples per tile
    num_warps: int = 4
    num_stages: int = 2
    waves: int = 4  # programs per SM the sample splits aim for


@functools.lru_cache(maxsize=64)
def _device_tables(gate: str, expert: str, d: int, k: int, QP: int, device: torch.device):
    """Pair tables (int32) on the device and the ``(p, p)`` gather into one ``(AP, QP)`` tile."""
    tab = tables(gate, expert, d, k)
    return tuple(torch.tensor(t, dtype=torch.int32, device=device)
                 for t in (tab.ia, tab.ja, tab.fa, tab.ga)) + (tab.index(QP).to(device),)


@triton.jit(do_not_specialize=["n", "tiles_per_prog"])
def _gram_kernel(
    U,  # (R, m, n) Jacobian coefficients
    X,  # (R, n, d) samples
    IA, JA,  # (A,) role pairs
    FA, GA,  # (Q,) feature pairs; feature d is the constant 1
    OUT,  # (R, T, AP, QP) partial W^T V
    n, tiles_per_prog,
    m: tl.constexpr, d: tl.constexpr, A: tl.constexpr, Q: tl.constexpr, AP: tl.constexpr,
    QP: tl.constexpr, BA: tl.constexpr, BQ: tl.constexpr, BN: tl.constexpr,
    F64: tl.constexpr, PRECISION: tl.constexpr,
):
    N_Q: tl.constexpr = QP // BQ
    pid = tl.program_id(0)
    t = tl.program_id(1)
    r = tl.program_id(2)
    ao = (pid // N_Q) * BA + tl.arange(0, BA)
    qo = (pid % N_Q) * BQ + tl.arange(0, BQ)
    amask = ao < A
    qmask = qo < Q
    ia = tl.load(IA + ao, mask=amask, other=0)
    ja = tl.load(JA + ao, mask=amask, other=0)
    # Padded feature pairs read the constant feature: finite, and their columns are dropped.
    fa = tl.load(FA + qo, mask=qmask, other=d)
    ga = tl.load(GA + qo, mask=qmask, other=d)
    Ur = U + r.to(tl.int64) * m * n
    Xr = X + r.to(tl.int64) * n * d
    if F64:
        acc = tl.zeros((BA, BQ), tl.float64)
        out_dtype: tl.constexpr = tl.float64
    else:
        acc = tl.zeros((BA, BQ), tl.float32)
        out_dtype: tl.constexpr = tl.float32
    row0 = t * tiles_per_prog * BN
    for it in range(tiles_per_prog):
        rows = row0 + it * BN + tl.arange(0, BN)
        rmask = rows < n
        # W^T tile (BA, BN): samples along the last axis, contiguous in U.
        um = amask[:, None] & rmask[None, :]
        w = tl.load(Ur + ia[:, None] * n + rows[None, :], mask=um, other=0.0)
        w = w * tl.load(Ur + ja[:, None] * n + rows[None, :], mask=um, other=0.0)
        # V tile (BN, BQ): gathered from the tile's rows of X (L1 hits); W is zero on masked rows,
        # so the constant 1 they read there adds nothing.
        xr = Xr + rows[:, None] * d
        v = tl.load(xr + fa[None, :], mask=rmask[:, None] & (fa[None, :] < d), other=1.0)
        v = v * tl.load(xr + ga[None, :], mask=rmask[:, None] & (ga[None, :] < d), other=1.0)
        acc = tl.dot(w, v, acc, input_precision=PRECISION, out_dtype=out_dtype)
    base = (r * tl.num_programs(1) + t).to(tl.int64) * AP * QP
    tl.store(OUT + base + ao[:, None] * QP + qo[None, :], acc)


def _empty(shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocate the partial-sum buffer (tests swap in a NaN-filled one to catch unwritten cells)."""
    return torch.empty(shape, dtype=dtype, device=device)


def gram_jtj(U: torch.Tensor, X: torch.Tensor, *, gate: str, expert: str, k: int,
             precision: str | None = None, config: GramConfig | None = None) -> torch.Tensor:
    """``J^T J (R, p, p)`` in the reference layout from the coefficients ``U (R, kf + k, n)``.

    ``precision``: ``tl.dot`` input precision for float32 (default ``tf32`` on a GPU; ``ieee``
    under the interpreter and for float64). Partial sums are reduced in float64; the result has
    X's dtype.
    """
    R, n, d = X.shape
    cfg = config or GramConfig()
    if not X.is_cuda:  # interpreter: small tiles so that tests cross tile and split boundaries
        cfg = config or GramConfig(block_a=16, block_q=16, block_n=16, num_warps=1, waves=1)
    tab = tables(gate, expert, d, k)
    if tuple(U.shape) != (R, tab.m, n):
        raise ValueError(f"U: must have shape {(R, tab.m, n)}, got {tuple(U.shape)}")
    n_a, n_q = triton.cdiv(tab.A, cfg.block_a), triton.cdiv(tab.Q, cfg.block_q)
    AP, QP = n_a * cfg.block_a, n_q * cfg.block_q
    ia, ja, fa, ga, index = _device_tables(gate, expert, d, k, QP, X.device)
    f64 = X.dtype == torch.float64
    if precision is None:
        precision = "tf32" if X.is_cuda and not f64 else "ieee"

    n_tiles = triton.cdiv(n, cfg.block_n)
    units = torch.cuda.get_device_properties(X.device).multi_processor_count if X.is_cuda else 1
    n_split = max(1, min(n_tiles, triton.cdiv(cfg.waves * units, R * n_a * n_q)))
    n_split = max(1, min(n_split, PARTIAL_BYTES // (R * AP * QP * X.element_size())))
    tiles_per_prog = triton.cdiv(n_tiles, n_split)
    n_split = triton.cdiv(n_tiles, tiles_per_prog)
    out = _empty((R, n_split, AP, QP), dtype=X.dtype, device=X.device)
    _gram_kernel[(n_a * n_q, n_split, R)](
        U, X.contiguous(), ia, ja, fa, ga, out, n, tiles_per_prog,
        m=tab.m, d=d, A=tab.A, Q=tab.Q, AP=AP, QP=QP, BA=cfg.block_a, BQ=cfg.block_q,
        BN=cfg.block_n, F64=f64, PRECISION=precision, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return out.sum(1, dtype=torch.float64).reshape(R, -1)[:, index].to(X.dtype)


__all__ = ["GramConfig", "applies", "gram_jtj"]
