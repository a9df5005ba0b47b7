"""Triton kernels for the Gram form of ``J^T J`` (linear scores; the mathematics, the pair tables
and the PyTorch version are in ``kernels/moe/gram.py``).

From the coefficients ``U (R, m, n)`` the gradient kernel writes (``kernels/moe/triton_pass.py``,
``WITH_U``) and ``X``, each program forms a tile of role-pair products ``W^T (BA, BN)`` in registers
and multiplies it with ``tl.dot``: neither ``J`` nor ``W`` nor ``V`` exists in device memory. Each
program streams a contiguous ``1/T`` of one problem's samples and writes a partial tile to an
``(R, T, ...)`` buffer that the host reduces in float64 and gathers into the reference layout with
one precomputed index. Two layouts (``GramConfig.layout``):

- ``per_feature`` (default), ``_gram_feature_kernel``: grid ``(role-pair tiles x (d + 1) features,
  T, R)``; program ``(a, f)`` accumulates ``M[a, f, :] = (W^T * x_f) [X, 1]`` from plain 2-D loads of
  the X tile, so no feature gathers; it forms both ``(f, g)`` and ``(g, f)``, twice the unique
  feature pairs. Partials ``(R, T, AP, d + 1, d + 1)``.
- ``pairs``, ``_gram_kernel``: grid ``(role-pair tiles x feature-pair tiles, T, R)``; the feature
  pair products ``V (BN, BQ)`` are gathered from the tile's rows of X by the pair tables (loads
  Triton cannot vectorise). Partials ``(R, T, AP, QP)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.moe import resources
from kernels.moe.gram import applies, pair_positions, role_pairs, tables

#: Partial sums may take at most this many bytes; the sample splits ``T`` shrink to fit.
PARTIAL_BYTES = 2 * 2**30


@dataclass(frozen=True)
class GramConfig:
    """Block sizes of the Gram kernels. Defaults: H100, (20, 1e5, 32, 9), run 7 of NOTES.md:
    ``per_feature`` 16.3 ms tf32 with one stage (22.2 with two), 35.6 ms float64 with three
    (41.0 with two); 8 warps, 128 role pairs or 64 samples per tile were slower; ``pairs`` 46 ms
    at best."""

    block_a: int = 64  # role pairs per program
    block_q: int = 64  # feature pairs per program
    block_n: int = 32  # samples per tile
    num_warps: int = 4
    num_stages: int = 2
    waves: int = 4  # programs per SM the sample splits aim for
    #: ``per_feature`` (one feature of [x, 1] per program, plain X loads) or ``pairs`` (feature-pair
    #: tiles gathered from X; block_q applies to it only)
    layout: str = "per_feature"


@functools.lru_cache(maxsize=64)
def _device_tables(gate: str, expert: str, d: int, k: int, QP: int, device: torch.device):
    """Pair tables (int32) on the device and the ``(p, p)`` gather into one ``(AP, QP)`` tile."""
    tab = tables(gate, expert, d, k)
    return tuple(torch.tensor(t, dtype=torch.int32, device=device)
                 for t in (tab.ia, tab.ja, tab.fa, tab.ga)) + (tab.index(QP).to(device),)


@functools.lru_cache(maxsize=64)
def _feature_tables(gate: str, expert: str, d: int, k: int, device: torch.device):
    """Role-pair tables (int32) on the device and the ``(p, p)`` offsets of ``J^T J`` into a
    row-major ``(AP, d + 1, d + 1)`` product ``M``: entry ``((i, f), (j, g))`` is
    ``M[pair(i, j), f, g]``, ``pair`` the row-major upper-triangle position as in ``Tables.index``."""
    tab = tables(gate, expert, d, k)
    d1 = d + 1
    role, feature = tab.column_arrays()
    index = torch.from_numpy((pair_positions(role, tab.m) * d1 + feature[:, None]) * d1
                             + feature[None, :]).to(device)
    return tuple(torch.tensor(t, dtype=torch.int32, device=device) for t in (tab.ia, tab.ja)) + (
        index,)


@triton.jit(do_not_specialize=["n", "tiles_per_prog"])
def _gram_feature_kernel(
    U,  # (R, m, n) Jacobian coefficients, contiguous
    X,  # (R, n, d) samples, contiguous
    IA, JA,  # (A,) role pairs
    OUT,  # (R, T, AP, d + 1, d + 1) partial M[a, f, g]; feature d is the constant 1
    n, tiles_per_prog,
    m: tl.constexpr, d: tl.constexpr, A: tl.constexpr, AP: tl.constexpr, DP: tl.constexpr,
    BA: tl.constexpr, BN: tl.constexpr, N_ALIGN: tl.constexpr, F64: tl.constexpr,
    PRECISION: tl.constexpr,
):
    D1: tl.constexpr = d + 1
    if N_ALIGN > 1:
        # n is not specialised (one compile for all n) and tl.multiple_of does not reach a kernel
        # argument: this exact identity (the host checked the divisor) tells the compiler that the
        # rows ia * n of U and the mask rows < n are aligned, so the U loads vectorise.
        n = n // N_ALIGN * N_ALIGN
    pid = tl.program_id(0)
    t = tl.program_id(1)
    r = tl.program_id(2)
    # Neighbouring programs share the role tile (same W^T loads, L1/L2 hits), differ in f.
    f = pid % D1
    ao = (pid // D1) * BA + tl.arange(0, BA)
    amask = ao < A
    ia = tl.load(IA + ao, mask=amask, other=0)
    ja = tl.load(JA + ao, mask=amask, other=0)
    cols = tl.arange(0, DP)
    cmask = cols < d
    Ur = U + r.to(tl.int64) * m * n
    Xr = X + r.to(tl.int64) * n * d
    if F64:
        acc = tl.zeros((BA, DP), tl.float64)
        wsum = tl.zeros((BA, BN), tl.float64)
        out_dtype: tl.constexpr = tl.float64
    else:
        acc = tl.zeros((BA, DP), tl.float32)
        wsum = tl.zeros((BA, BN), tl.float32)
        out_dtype: tl.constexpr = tl.float32
    row0 = t * tiles_per_prog * BN
    for it in range(tiles_per_prog):
        rows = row0 + it * BN + tl.arange(0, BN)
        rows = tl.max_contiguous(tl.multiple_of(rows, BN), BN)
        rmask = rows < n
        # W^T tile (BA, BN), zero on masked rows: samples along the last axis, contiguous in U.
        um = amask[:, None] & rmask[None, :]
        w = tl.load(Ur + ia[:, None] * n + rows[None, :], mask=um, other=0.0)
        w = w * tl.load(Ur + ja[:, None] * n + rows[None, :], mask=um, other=0.0)
        # x_f (L1 hits: the X tile's rows); the constant 1 for f == d. W is zero on masked rows.
        xf = tl.load(Xr + rows * d + tl.minimum(f, d - 1), mask=rmask, other=0.0)
        xf = tl.where(f < d, xf, 1.0)
        x = tl.load(Xr + rows[:, None] * d + cols[None, :], mask=rmask[:, None] & cmask[None, :],
                    other=0.0)
        w = w * xf[None, :]
        acc = tl.dot(w, x, acc, input_precision=PRECISION, out_dtype=out_dtype)
        # The (f, constant) column: summed over samples once after the loop, not per tile
        # (no cross-lane reduction in the loop).
        wsum += w
    base = OUT + (r * tl.num_programs(1) + t).to(tl.int64) * AP * D1 * D1 + f * D1
    tl.store(base + ao[:, None] * (D1 * D1) + cols[None, :], acc, mask=cmask[None, :])
    tl.store(base + ao * (D1 * D1) + d, tl.sum(wsum, axis=1))


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


def _feature_width(d: int) -> int:
    """Columns of the X tile of the per-feature kernel (a dot's side is at least 16)."""
    return max(16, triton.next_power_of_2(d))


def staged_elements(config: GramConfig, d: int) -> int:
    """Elements of shared memory a GPU launch with ``config`` stages (kernels/moe/resources.py)."""
    width = _feature_width(d) if config.layout == "per_feature" else config.block_q
    return resources.gram_kernel(block_a=config.block_a, block_n=config.block_n, width=width,
                                 num_stages=config.num_stages)


@functools.lru_cache(maxsize=64)
def pick_config(d: int, dtype: torch.dtype, shared_memory: int | None) -> GramConfig | None:
    """The measured default (3 stages for float64, 1 for float32), or, where its predicted shared
    memory would not fit ``shared_memory`` bytes, fewer stages, then fewer role pairs and samples
    per tile; None when nothing fits."""
    base = GramConfig(num_stages=3 if dtype == torch.float64 else 1)
    for block_a in (64, 32, 16):
        for block_n in (32, 16):
            for num_stages in range(base.num_stages, 0, -1):
                config = dataclasses.replace(base, block_a=block_a, block_n=block_n,
                                             num_stages=num_stages)
                if resources.fits(staged_elements(config, d), dtype.itemsize, shared_memory):
                    return config
    return None


def gram_jtj(U: torch.Tensor, X: torch.Tensor, *, gate: str, expert: str, k: int,
             precision: str | None = None, config: GramConfig | None = None) -> torch.Tensor:
    """``J^T J (R, p, p)`` in the reference layout from the coefficients ``U (R, kf + k, n)``.

    ``precision``: ``tl.dot`` input precision for float32 (default ``tf32`` on a GPU; ``ieee``
    under the interpreter and for float64). ``config``: block sizes; :func:`pick_config` when
    None. Partial sums are reduced in float64; the result has X's dtype.
    """
    R, n, d = X.shape
    if config is not None:
        cfg = config
    elif X.is_cuda:
        limit = resources.device_limit(X.device)
        cfg = pick_config(d, X.dtype, limit)
        if cfg is None:
            raise ValueError(f"X: no configuration of the Triton Gram kernel fits d = {d}, "
                             f"{X.dtype} in the {limit} bytes of shared memory per block of "
                             f"{X.device}; use LaunchConfig(gram='torch')")
    else:  # interpreter: small tiles so that tests cross tile and split boundaries
        cfg = GramConfig(block_a=16, block_q=16, block_n=16, num_warps=1, waves=1)
    if cfg.layout not in ("per_feature", "pairs"):
        raise ValueError(f"layout: must be 'per_feature' or 'pairs', got {cfg.layout!r}")
    tab = tables(gate, expert, d, k)
    if tuple(U.shape) != (R, tab.m, n):
        raise ValueError(f"U: must have shape {(R, tab.m, n)}, got {tuple(U.shape)}")
    U, X = U.contiguous(), X.contiguous()  # no copies for the gradient kernel's U and usual X
    n_a = triton.cdiv(tab.A, cfg.block_a)
    AP = n_a * cfg.block_a
    if cfg.layout == "pairs":
        n_x = triton.cdiv(tab.Q, cfg.block_q)  # feature-pair tiles per role-pair tile
        QP = n_x * cfg.block_q
        tile = AP * QP
    else:
        n_x = d + 1  # one program per feature of [x, 1]
        tile = AP * (d + 1) ** 2
    f64 = X.dtype == torch.float64
    if precision is None:
        precision = "tf32" if X.is_cuda and not f64 else "ieee"

    n_tiles = triton.cdiv(n, cfg.block_n)
    units = torch.cuda.get_device_properties(X.device).multi_processor_count if X.is_cuda else 1
    n_split = max(1, min(n_tiles, triton.cdiv(cfg.waves * units, R * n_a * n_x)))
    n_split = max(1, min(n_split, PARTIAL_BYTES // (R * tile * X.element_size())))
    tiles_per_prog = triton.cdiv(n_tiles, n_split)
    n_split = triton.cdiv(n_tiles, tiles_per_prog)
    common = dict(m=tab.m, d=d, A=tab.A, AP=AP, BA=cfg.block_a, BN=cfg.block_n, F64=f64,
                  PRECISION=precision, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if cfg.layout == "pairs":
        ia, ja, fa, ga, index = _device_tables(gate, expert, d, k, QP, X.device)
        out = _empty((R, n_split, AP, QP), dtype=X.dtype, device=X.device)
        _gram_kernel[(n_a * n_x, n_split, R)](
            U, X, ia, ja, fa, ga, out, n, tiles_per_prog, Q=tab.Q, QP=QP, BQ=cfg.block_q, **common,
        )
    else:
        ia, ja, index = _feature_tables(gate, expert, d, k, X.device)
        out = _empty((R, n_split, AP, d + 1, d + 1), dtype=X.dtype, device=X.device)
        _gram_feature_kernel[(n_a * n_x, n_split, R)](
            U, X, ia, ja, out, n, tiles_per_prog, DP=_feature_width(d),
            N_ALIGN=math.gcd(n, 16), **common,
        )
    return out.sum(1, dtype=torch.float64).reshape(R, -1)[:, index].to(X.dtype)


#: Roles up to which :func:`role_pair_products` unrolls its pair loop (171 pairs at m = 18; the
#: kernel is straight-line code of m(m+1)/2 stores). Past it the PyTorch gathers form W.
PAIR_KERNEL_MAX_ROLES = 24


@triton.jit(do_not_specialize=["n", "start", "c"])
def _role_pairs_kernel(U, W, n, start, c, m: tl.constexpr, BLOCK: tl.constexpr):
    """``W[r, pair(i, j), t] = U[r, i, start + t] * U[r, j, start + t]``, i <= j row-major: grid
    ``(samples / BLOCK, R)``. Each U row is read from L1 after its first load."""
    r = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < c
    ub = U + r * m * n + start + offs
    wb = W + r * (m * (m + 1) // 2) * c + offs
    for i in tl.static_range(m):
        ui = tl.load(ub + i * n, mask=mask)
        for j in tl.static_range(i, m):
            uj = tl.load(ub + j * n, mask=mask)
            tl.store(wb + (i * m - i * (i - 1) // 2 + j - i) * c, ui * uj, mask=mask)


def role_pair_products(U: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """``W (R, m(m+1)/2, stop - start)``: the role-pair products of ``U (R, m, n)`` on samples
    ``start:stop``, as :func:`kernels.moe.gram.gram_jtj` multiplies them. One launch writes W
    (on an H100 at n = 10^5, R = 20: two index_selects and a product moved ~5x the bytes)."""
    R, m, n = U.shape
    c = stop - start
    if m > PAIR_KERNEL_MAX_ROLES:
        return role_pairs(U[:, :, start:stop])
    U = U.contiguous()
    W = _empty((R, m * (m + 1) // 2, c), dtype=U.dtype, device=U.device)
    block = 256 if U.is_cuda else 32
    _role_pairs_kernel[(triton.cdiv(c, block), R)](U, W, n, start, c, m=m, BLOCK=block,
                                                   num_warps=4 if U.is_cuda else 1)
    return W


__all__ = ["GramConfig", "applies", "gram_jtj", "pick_config", "role_pair_products",
           "staged_elements"]
