"""Host side of the batched MoE least-squares pass: the column blocks of ``J``, launch
configurations, input checks and the launcher (docs/kernels.md#moe-pass).

Same outputs as :func:`kernels.moe.torch_pass.moe_pass`: per problem the sum of squared residuals,
``J^T r`` and ``J^T J`` in the free-parameter layout documented there. The device code, and how
it tiles the samples and the blocks of ``J^T J``, is in :mod:`kernels.moe.triton_kernels`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import triton
from triton.runtime.errors import OutOfResources

from kernels.moe import resources
from kernels.moe.gram import applies as gram_applies
from kernels.moe.gram import gram_jtj as torch_gram_jtj
from kernels.moe.model import (
    Expert,
    check_expert,
    check_gate,
    check_score,
    gate_dim,
    n_free_gates,
    n_triu,
    score_has_linear,
    score_has_quadratic,
    triu_indices,
)
from kernels.moe.torch_pass import MoEPass, check_batch
from kernels.moe.triton_gram import GramConfig, role_pair_products
from kernels.moe.triton_gram import gram_jtj as triton_gram_jtj
from kernels.moe.triton_kernels import (
    EXPERT_CODES,
    POLY_CODE,
    _fp64_dot_probe,
    _moe_gn_kernel,
    _moe_grad_kernel,
)

#: Largest ``d`` the kernels take: an X tile row and one Jacobian block live in registers.
MAX_D = 128
#: Largest number of atoms.
MAX_K = 64
#: Quadratic scores keep ``(k, d(d+1)/2)`` gradient accumulators in registers; beyond this many
#: elements (padded to powers of two) use the PyTorch reference.
MAX_QUAD_ELEMENTS = 4096

#: The Gram route's coefficients ``U (R, k_free + k, n)`` may take at most this many bytes; a pass
#: over more samples runs in sample chunks (float64 at n = 10^7 with 100 problems: 144 GB).
U_BYTES = 4 * 2**30

#: The kernels index a problem's samples in int32 (a row times ``d`` into X, an atom's row
#: times ``n`` into U): a pass whose ``n * max(d, k_free + k)`` would pass this runs in sample
#: chunks that stay below it, rather than wrapping into other rows' memory (at d = 32, from
#: n = 6.7e7 on).
INT32_OFFSETS = 2**31 - 1
#: More rows than any tile of the kernels spans (their block sizes are at most a few hundred).
MAX_TILE_ROWS = 2**16

#: Partial ``J^T J`` sums may take at most this many bytes; the number of sample splits ``T``
#: shrinks to fit (it never drops below 1, where the buffer is about the size of the output).
PARTIAL_BYTES = 2 * 2**30


def _empty(shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocate a partial-sum buffer (tests swap in a NaN-filled one to catch unwritten cells)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _pow2(v: int) -> int:
    """Smallest power of two >= v."""
    return 1 << max(0, v - 1).bit_length()


@dataclass(frozen=True)
class _Layout:
    """Sizes, compile-time flags and the column blocks of ``J`` for one model shape."""

    softmax: bool
    has_lin: bool
    has_quad: bool
    slope: bool
    expert_code: int
    power: int
    d: int
    k: int
    kf: int
    pg: int
    pe: int
    p: int
    nq: int
    qoff: int
    DP: int
    KP: int
    QP: int
    TILE: int
    TB: int
    MX: int
    MQ: int
    FWQ: int
    kfl: int  # gate atoms with linear features (the first x-groups)
    ngx: int  # atoms with linear features: gate (kfl) then experts
    blocks: tuple[tuple[int, int, int], ...]
    pairs: tuple[tuple[int, int], ...]

    @property
    def s_tiles(self) -> int:
        """Elements of one problem's partial ``J^T J`` tiles."""
        nb, npairs = len(self.blocks), len(self.pairs)
        return npairs * self.TILE**2 + nb * self.TILE * self.TB + self.TB**2

    def column(self, a: int) -> tuple[int, int]:
        """Where reference column ``a`` lives: (block, column in block); block -1 is the bias."""
        kf, pg, pe, d = self.kf, self.pg, self.pe, self.d
        if a < kf * pg:
            i, f = divmod(a, pg)
            if f == 0:
                return -1, i
            if self.has_lin and f <= d:
                return divmod(i, self.MX)[0], (i % self.MX) * self.DP + f - 1
            t = f - self.qoff
            n_x = -(-self.ngx // self.MX)
            n_chunks = -(-self.nq // self.FWQ)
            block = n_x + (i // self.MQ) * n_chunks + t // self.FWQ
            return block, (i % self.MQ) * self.FWQ + t % self.FWQ
        i, f = divmod(a - kf * pg, pe)
        if f == pe - 1:
            return -1, self.KP + i
        j = self.kfl + i
        return j // self.MX, (j % self.MX) * self.DP + f


@functools.lru_cache(maxsize=64)
def _layout(gate: str, score: str, expert: str, d: int, k: int, tile_max: int) -> _Layout:
    ex = Expert(check_expert(expert))
    has_lin, has_quad = score_has_linear(score), score_has_quadratic(score)
    kf = n_free_gates(gate, k)
    pg, pe = gate_dim(score, d), ex.dim(d)
    nq = n_triu(d) if has_quad else 0
    DP, KP = _pow2(d), _pow2(k)
    QP = _pow2(nq) if has_quad else 1
    kfl = kf if has_lin else 0
    ngx = kfl + (k if ex.has_slope else 0)
    want = max(16, _pow2(ngx) * DP if ngx else 0, _pow2(kf) * QP if has_quad and kf else 0)
    TILE = min(tile_max, want)
    MX = max(1, TILE // DP)  # 0 only when no atom has linear features (ngx = 0)
    FWQ = min(QP, TILE)
    MQ = TILE // FWQ
    blocks = [(0, g0, 0) for g0 in range(0, ngx, MX)]
    if has_quad:
        blocks += [(1, g0, f0) for g0 in range(0, kf, MQ) for f0 in range(0, nq, FWQ)]
    nb = len(blocks)
    pairs = tuple((a, b) for a in range(nb) for b in range(a, nb))
    return _Layout(
        softmax=gate == "softmax", has_lin=has_lin, has_quad=has_quad, slope=ex.has_slope,
        expert_code=POLY_CODE if ex.power else EXPERT_CODES[expert], power=ex.power or 1,
        d=d, k=k, kf=kf, pg=pg, pe=pe, p=kf * pg + k * pe, nq=nq, qoff=1 + (d if has_lin else 0),
        DP=DP, KP=KP, QP=QP, TILE=TILE, TB=max(16, 2 * KP), MX=MX, MQ=MQ, FWQ=FWQ, kfl=kfl,
        ngx=ngx, blocks=tuple(blocks), pairs=pairs,
    )


@functools.lru_cache(maxsize=64)
def _jtj_index(lay: _Layout, device: torch.device) -> torch.Tensor:
    """``(p, p)`` offsets into one problem's partial tiles giving ``J^T J`` in reference layout
    (pair-program route only; vectorised: a Python double loop over p^2 entries took 5 s per model
    at p = 594, on every first call)."""
    T2, TILE, TB, nb = lay.TILE**2, lay.TILE, lay.TB, len(lay.blocks)
    pair_of = np.full((max(nb, 1), max(nb, 1)), -1, dtype=np.int64)
    for i, (a, b) in enumerate(lay.pairs):
        pair_of[a, b] = i
    bias_base = len(lay.pairs) * T2
    bb_base = bias_base + nb * TILE * TB
    block, col = np.array([lay.column(a) for a in range(lay.p)], dtype=np.int64).reshape(-1, 2).T
    A, CA, B, CB = block[:, None], col[:, None], block[None, :], col[None, :]
    lo, hi = np.maximum(np.minimum(A, B), 0), np.maximum(np.maximum(A, B), 0)
    # a column of the bias block (block < 0) pairs with the bias tile of the other's block
    idx = np.where(
        (A < 0) & (B < 0), bb_base + CA * TB + CB,
        np.where(B < 0, bias_base + A * TILE * TB + CA * TB + CB,
                 np.where(A < 0, bias_base + B * TILE * TB + CB * TB + CA,
                          np.where(A <= B, pair_of[lo, hi] * T2 + CA * TILE + CB,
                                   pair_of[lo, hi] * T2 + CB * TILE + CA))))
    return torch.from_numpy(idx).to(device)


@functools.lru_cache(maxsize=64)
def _device_tables(lay: _Layout, device: torch.device, dtype: torch.dtype):
    """Quadratic feature tables, block descriptors and pairs on the device."""
    if lay.has_quad:
        iu, iv = triu_indices(lay.d)
        qc = torch.where(iu == iv, 1.0, 2.0)
    else:  # never read (masked), but the pointers must be valid
        iu = iv = torch.zeros(1, dtype=torch.long)
        qc = torch.zeros(1)
    blocks = torch.tensor(lay.blocks or [(0, 0, 0)], dtype=torch.int32).reshape(-1, 3)
    pairs = torch.tensor(lay.pairs or [(0, 0)], dtype=torch.int32).reshape(-1, 2)
    return (iu.to(device, torch.int32), iv.to(device, torch.int32), qc.to(device, dtype),
            blocks.to(device), pairs.to(device))


@dataclass(frozen=True)
class LaunchConfig:
    """Block sizes of one launch (see NOTES.md for the measurements behind the defaults)."""

    block_n: int
    num_warps: int
    num_stages: int
    tile_max: int = 128
    waves: int = 8
    #: ``tl.dot`` input precision of the J^T J products; None: tf32 for float32 on a GPU, else ieee
    jtj_precision: str | None = None
    #: keep per-thread gradient accumulators (KP x DP / split registers) instead of reducing
    #: across threads every tile
    acc3: bool = True
    #: lanes sharing one sample's atoms in the gradient kernel (small d, k only; 1 with dots)
    split: int = 1
    #: linear scores: who multiplies the Gram form of J^T J out of the coefficients U,
    #: ``torch`` (one batched matrix product per sample chunk, cuBLAS) or the ``triton`` kernel.
    #: H100, (20, 1e5, 32, 9): cuBLAS 33.8 ms float64 (17.2 ms with the feature pairs kept by
    #: the fit), 19.5 ms tf32; Triton (per-feature layout) 35.6 / 16.3 ms (NOTES.md, run 7)
    gram: str = "torch"
    #: cap on registers per thread (ptxas ``maxnreg``; None: the compiler's choice). The d = 8,
    #: k = 8 gradient kernel takes 198 registers, which leaves 2 warps per scheduler (NOTES.md,
    #: the profile of the pass)
    maxnreg: int | None = None


def default_config(gate: str, score: str, expert: str, d: int, k: int, *, gauss_newton: bool,
                   on_gpu: bool = True) -> LaunchConfig:
    """The launch configuration :func:`triton_moe_pass` uses when given none."""
    if not on_gpu:  # interpreter: small tiles so that tests cross many tile and split boundaries
        return LaunchConfig(block_n=16, num_warps=1, num_stages=1, waves=2)
    if gauss_newton:
        # H100, (R, n, d, k) = (20, 1e5, 32, 9) (run 4 of NOTES.md): 24.8 ms; 64 samples or 8 warps
        # 26.8-35.3 ms (8 warps spill), 64-wide tiles 46.8 ms, 2 programs per SM-wave 50.3 ms.
        return LaunchConfig(block_n=128, num_warps=4, num_stages=2, tile_max=128, waves=4)
    # Spread each sample's atoms over >= 2 lanes, keeping the per-thread weights and gradient
    # accumulators near KP * DP / split <= 32 registers each. H100, d = 8 (ms, run 2 of NOTES.md):
    # k = 4: split 1: 0.179, 2: 0.176, 4: 0.207; k = 8: split 1 (spills): 1.32, 2: 0.82, 4: 0.94.
    # 16 programs per SM-wave: 0.153 ms vs 0.176 at 8 for (R, n) = (64, 1e5); 5% slower at 1e6.
    lay = _layout(gate, score, expert, d, k, 128)
    split = 1 if _uses_dot(lay)[0] else min(lay.KP, 8, max(2, lay.KP * lay.DP // 32))
    return LaunchConfig(block_n=128 // split, num_warps=4, num_stages=1, split=split, waves=16)


def _uses_dot(lay: _Layout) -> tuple[bool, bool]:
    """Whether the score and gradient products use tl.dot (all sides >= 16) or broadcast sums."""
    return lay.DP >= 16 and lay.KP >= 16, lay.QP >= 16 and lay.KP >= 16


def staged_elements(gate: str, score: str, expert: str, d: int, k: int, dtype: torch.dtype,
                    config: LaunchConfig, *, gauss_newton: bool) -> int:
    """Elements of shared memory a GPU launch with ``config`` stages, by the model of
    ``kernels/moe/resources.py`` (docs/kernels.md#resource-model); ``gauss_newton``: the pass
    runs the ``J^T J`` pair programs (scores with quadratic features)."""
    lay = _layout(gate, score, expert, d, k, config.tile_max)
    dot_x, dot_q = _uses_dot(lay)
    sizes = dict(block_n=config.block_n, kp=lay.KP, dp=lay.DP, qp=lay.QP if lay.has_quad else 0,
                 dot_x=dot_x, dot_q=dot_q, tf32x3=dtype == torch.float32)
    if gauss_newton:
        return resources.gauss_newton_kernel(tile=lay.TILE, bias_tile=lay.TB,
                                             num_stages=config.num_stages, **sizes)
    return resources.gradient_kernel(**sizes)


def _halvings(v: int) -> list[int]:
    """``v, v/2, ...`` down to 16, the smallest side of a ``tl.dot``."""
    return [v >> i for i in range(max(1, v.bit_length() - 4))] if v > 16 else [v]


def _candidates(base: LaunchConfig) -> Iterator[LaunchConfig]:
    """``base``, then fewer pipeline stages, then fewer samples per tile (each with the stages
    from ``base``'s down), and only then narrower blocks of ``J`` (``tile_max``): on the H100, 64
    samples cost 8% and 64-wide blocks 89% more than the default Gauss-Newton pass (NOTES.md,
    run 4)."""
    for tile_max in _halvings(base.tile_max):
        for block_n in _halvings(base.block_n):
            for num_stages in range(base.num_stages, 0, -1):
                yield dataclasses.replace(base, tile_max=tile_max, block_n=block_n,
                                          num_stages=num_stages)


@functools.lru_cache(maxsize=256)
def pick_config(gate: str, score: str, expert: str, d: int, k: int, dtype: torch.dtype, *,
                gauss_newton: bool, shared_memory: int | None) -> LaunchConfig | None:
    """The GPU launch configuration :func:`triton_moe_pass` uses when given none: the measured
    :func:`default_config` if its predicted shared memory fits ``shared_memory`` bytes per block
    (with :data:`kernels.moe.resources.HEADROOM`), else the first of :func:`_candidates` that
    does; None when none does. ``shared_memory`` None: no limit."""
    base = default_config(gate, score, expert, d, k, gauss_newton=gauss_newton)
    for config in _candidates(base):
        elements = staged_elements(gate, score, expert, d, k, dtype, config,
                                   gauss_newton=gauss_newton)
        if resources.fits(elements, dtype.itemsize, shared_memory):
            return config
    return None


def _check(X, Y, gate_params, expert_params, gate: str, score: str, expert: Expert,
           rows: torch.Tensor | None = None, gauss_newton: bool = True,
           check_rows: bool = True) -> None:
    check_gate(gate)
    check_score(score)
    # the reference's checks (one message for both paths): an empty batch, and rows that are
    # not indices of X's data sets, which the kernels would read out of bounds
    check_batch(X, rows, check_rows=check_rows)
    R, n, d = X.shape
    if rows is not None:
        R = rows.numel()
    if X.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"X: dtype must be float32 or float64, got {X.dtype}")
    for name, t in (("Y", Y), ("gate_params", gate_params), ("expert_params", expert_params)):
        if t.dtype != X.dtype or t.device != X.device:
            raise ValueError(f"{name}: must have X's dtype and device ({X.dtype}, {X.device}), "
                             f"got ({t.dtype}, {t.device})")
    k = gate_params.shape[1] if gate_params.dim() == 3 else -1
    want = {"Y": (X.shape[0], n), "gate_params": (R, k, gate_dim(score, d)),
            "expert_params": (R, k, expert.dim(d))}
    for name, t in (("Y", Y), ("gate_params", gate_params), ("expert_params", expert_params)):
        if tuple(t.shape) != want[name]:
            raise ValueError(f"{name}: must have shape {want[name]}, got {tuple(t.shape)}")
    reason = unsupported_reason(score, d, k, X.dtype, X.device, gate=gate, expert=expert.name,
                                gauss_newton=gauss_newton)
    if reason:
        raise ValueError(reason)


@functools.lru_cache(maxsize=8)
def fp64_dots(device: torch.device) -> bool:
    """Whether Triton compiles float64 ``tl.dot`` for this device (Triton 3.6 does not on sm_90;
    3.9 does)."""
    if device.type != "cuda":
        return True  # the interpreter multiplies with numpy
    try:
        _fp64_dot_probe[(1,)](torch.ones(32, 64, dtype=torch.float64, device=device))
    except Exception:  # a CompilationError, whose class moved between Triton versions
        return False
    return True


def unsupported_reason(score: str, d: int, k: int, dtype: torch.dtype = torch.float32,
                       device: torch.device | None = None, *, gate: str | None = None,
                       expert: str | None = None, gauss_newton: bool = True) -> str | None:
    """Why the Triton kernels cannot take this problem (None when they can).

    Given ``gate``, ``expert`` and a CUDA ``device``, also whether some launch configuration fits
    the device's shared memory (:func:`pick_config`); ``gauss_newton``: the pass computes
    ``J^T J`` (jacobian and gauss_newton).
    """
    if dtype == torch.float64 and device is not None and not fp64_dots(device):
        return (f"X: float64 needs float64 tl.dot, which Triton {triton.__version__} lacks on "
                f"{device}; use float32 or backend='torch'")
    if d > MAX_D:
        return f"X: d = {d} exceeds the Triton kernels' limit {MAX_D}; use backend='torch'"
    if k > MAX_K:
        return (f"gate_params: k = {k} exceeds the Triton kernels' limit {MAX_K}; "
                "use backend='torch'")
    if score_has_quadratic(score) and _pow2(k) * _pow2(n_triu(d)) > MAX_QUAD_ELEMENTS:
        return (f"score: {score!r} with d = {d}, k = {k} needs more than {MAX_QUAD_ELEMENTS} "
                "gradient accumulators per program in the Triton kernels; use backend='torch'")
    limit = None if device is None else resources.device_limit(device)
    if gate is not None and expert is not None and limit is not None:
        pairs = gauss_newton and not gram_applies(score)
        if pick_config(gate, score, expert, d, k, dtype, gauss_newton=pairs,
                       shared_memory=limit) is None:
            return (f"X: no launch configuration of the Triton kernels fits gate={gate!r}, "
                    f"score={score!r}, expert={expert!r}, d={d}, k={k}, {dtype} in the {limit} "
                    f"bytes of shared memory per block of {device}; use backend='torch'")
    return None


def triton_moe_pass(
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
    config: LaunchConfig | None = None,
    gram_config: GramConfig | None = None,
    gram_features: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
    gram_dtype: str = "float64",
    check_rows: bool = True,
) -> MoEPass:
    """One pass over the data with the Triton kernels; see :func:`kernels.moe.torch_pass.moe_pass`.

    Parameters
    ----------
    X : (R, n, d), float32 or float64
    Y : (R, n)
    gate_params : (R, k, pg), the pinned atom's row ignored for softmax
    expert_params : (R, k, pe)
    jacobian : also return ``J^T r`` (hence the gradient ``-2 J^T r``)
    gauss_newton : also return ``J^T J`` (needs ``jacobian``)
    config : block sizes; when None, :func:`pick_config`: the measured defaults, or smaller
        blocks where their shared memory would not fit the device
    gram_config : block sizes of the Gram kernel that computes ``J^T J`` for linear scores
        (``kernels/moe/triton_gram.py``); the defaults when None
    gram_features : :func:`kernels.moe.gram.feature_pairs` of X, if the caller keeps it (used by
        the ``torch`` Gram product)
    rows : (R',) int64 on X's device: evaluate the problems ``X[rows], Y[rows]`` (the parameters
        then have R' rows); the kernels index X and the kept feature pairs instead of copying
    gram_dtype : precision of the ``torch`` Gram product (:data:`kernels.moe.gram.GRAM_DTYPES`);
        the ``triton`` Gram kernel takes its precision from ``config.jtj_precision``
    check_rows : check that every entry of ``rows`` indexes a data set of X (the kernels would
        read out of bounds otherwise). The check reads two numbers back to the host, a
        synchronisation on a GPU, so it is made here, once per call, not in the kernels' host
        loop; a caller whose rows are in range by construction passes False
        (``LeastSquaresProblem`` checks its ``data_rows`` once, so a fit does not pay it per pass)

    Returns
    -------
    MoEPass
        ``loss (R,)``, ``jtr (R, p)`` or None, ``jtj (R, p, p)`` or None, in X's dtype. Partial
        sums are reduced in float64; with float32 inputs on a GPU, ``J^T J`` products use tf32
        (NOTES.md: measured effect on the Gauss-Newton step).
    """
    gn = jacobian and gauss_newton
    _check(X, Y, gate_params, expert_params, gate, score, expert, rows, gn, check_rows)
    n, d = X.shape[1:]
    R, k = gate_params.shape[:2]
    # Linear scores: the gradient kernel also writes the Jacobian coefficients U and the Gram
    # kernel forms J^T J from them; otherwise one launch with J^T J pair programs.
    gram = gn and gram_applies(score)
    gn_pairs = gn and not gram
    m = n_free_gates(gate, k) + k
    step = n
    if gram and R * m * n * X.element_size() > U_BYTES:
        # the Gram route writes U for every sample before its product: cut the samples so that
        # U stays bounded (each part re-reads its chunk of X, a copy; only past U_BYTES)
        step = max(1, U_BYTES // (R * m * X.element_size()))
    if n * max(d, m) > INT32_OFFSETS:
        # a tile past the last sample still forms its (masked) offsets: keep one tile's margin
        step = min(step, max(1, (INT32_OFFSETS - MAX_TILE_ROWS * max(d, m)) // max(d, m)))
    if n > 1 and step < n:
        parts = [triton_moe_pass(
            X[:, s : s + step], Y[:, s : s + step], gate_params, expert_params, gate=gate,
            score=score, expert=expert, jacobian=jacobian, gauss_newton=gauss_newton,
            config=config, gram_config=gram_config, rows=rows,
            gram_features=None if gram_features is None else gram_features[:, s : s + step],
            gram_dtype=gram_dtype, check_rows=False)  # checked above, once
            for s in range(0, n, step)]
        return MoEPass(*(None if ts[0] is None else sum(t.double() for t in ts).to(X.dtype)
                         for ts in zip(*parts, strict=True)))
    if config is not None:
        cfg = config
    elif X.is_cuda:  # _check found one that fits
        cfg = pick_config(gate, score, expert.name, d, k, X.dtype, gauss_newton=gn_pairs,
                          shared_memory=resources.device_limit(X.device))
    else:
        cfg = default_config(gate, score, expert.name, d, k, gauss_newton=gn_pairs, on_gpu=False)
    if rows is not None and (gn_pairs or (gram and cfg.gram == "triton")):
        # these routes read X by problem number: give them their rows (a copy)
        X, Y = X[rows], Y[rows]
        gram_features = None if gram_features is None else gram_features[rows]
        rows = None
    on_gpu = X.is_cuda
    lay = _layout(gate, score, expert.name, d, k, cfg.tile_max)
    iu, iv, qc, blocks, pairs = _device_tables(lay, X.device, X.dtype)
    X, Y = X.contiguous(), Y.contiguous()
    gp, ep = gate_params.contiguous(), expert_params.contiguous()
    if rows is not None:
        # the kernel reads ROWS[r] at unit stride: a strided view (rows[::2]) read other rows
        rows = rows.contiguous()
    dot_x, dot_q = _uses_dot(lay)
    fp32_gpu = on_gpu and X.dtype == torch.float32

    n_tiles = triton.cdiv(n, cfg.block_n)
    per_split = 1 + len(lay.pairs) if gn_pairs else 1
    units = torch.cuda.get_device_properties(X.device).multi_processor_count if on_gpu else 1
    n_split = max(1, min(n_tiles, triton.cdiv(cfg.waves * units, R * per_split)))
    if gn_pairs:
        most = PARTIAL_BYTES // (R * lay.s_tiles * X.element_size())
        n_split = max(1, min(n_split, most))
    tiles_per_prog = triton.cdiv(n_tiles, n_split)
    n_split = triton.cdiv(n_tiles, tiles_per_prog)

    # [J^T r, loss] per problem and split; the loss alone without the Jacobian.
    p_out = lay.p if jacobian else 0
    out_g = _empty((R, n_split, p_out + 1), dtype=torch.float64, device=X.device)
    common = dict(
        SOFTMAX=lay.softmax, HAS_LIN=lay.has_lin, HAS_QUAD=lay.has_quad, SLOPE=lay.slope,
        EXPERT=lay.expert_code, POWER=lay.power, DOT_X=dot_x, DOT_Q=dot_q, ACC3=cfg.acc3,
        # Score and gradient dots (d, k >= 16) on tensor cores in three tf32 passes (~fp32
        # accuracy): an ieee float32 tl.dot runs on FMA units, where ptxas spilled 4.8 KB per
        # thread and the d = 32, k = 9 gradient pass took 11.2 ms on an H100 (NOTES.md).
        PRECISION="tf32x3" if fp32_gpu else "ieee",
        BN=cfg.block_n, DP=lay.DP, KP=lay.KP, QP=lay.QP,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        **({"maxnreg": cfg.maxnreg} if cfg.maxnreg else {}),
    )
    sizes = (n, tiles_per_prog, n_split)
    common.update(d=d, k=k, kf=lay.kf, pg=lay.pg, pe=lay.pe, p=p_out, qoff=lay.qoff, nq=lay.nq)
    U = None
    if gn_pairs:
        out_t = _empty((R, n_split, lay.s_tiles), dtype=X.dtype, device=X.device)
        precision = cfg.jtj_precision or ("tf32" if fp32_gpu else "ieee")
        _moe_gn_kernel[(1 + len(lay.pairs), n_split, R)](
            X, Y, gp, ep, iu, iv, qc, blocks, pairs, out_g, out_t, *sizes,
            s_tiles=lay.s_tiles, n_pairs=len(lay.pairs), kfl=lay.kfl, ngx=lay.ngx, TILE=lay.TILE,
            TB=lay.TB, MX=lay.MX, MQ=lay.MQ, FWQ=lay.FWQ, JTJ_PRECISION=precision, **common,
        )
    else:
        U = (_empty((R, lay.kf + k, n), dtype=X.dtype, device=X.device) if gram
             else torch.empty(1, dtype=X.dtype, device=X.device))
        _moe_grad_kernel[(1, n_split, R)](
            X, Y, gp, ep, iu, iv, qc, out_g, U, U if rows is None else rows, *sizes,
            WITH_GRAD=jacobian, WITH_U=gram, WITH_ROWS=rows is not None,
            SPLIT=1 if dot_x or dot_q else min(cfg.split, lay.KP), **common,
        )
    sums = out_g.sum(1)
    loss = sums[:, p_out].to(X.dtype)
    jtr = sums[:, : lay.p].to(X.dtype) if jacobian else None
    jtj = None
    if gn_pairs:
        jtj = out_t.sum(1, dtype=torch.float64)[:, _jtj_index(lay, X.device)].to(X.dtype)
    elif gram and cfg.gram == "triton":
        jtj = triton_gram_jtj(U, X, gate=gate, expert=expert.name, k=k,
                              precision=cfg.jtj_precision, config=gram_config)
    elif gram:
        jtj = torch_gram_jtj(U, X, gate=gate, expert=expert.name, k=k, V=gram_features,
                             rows=rows, pair_products=role_pair_products, gram_dtype=gram_dtype)
    return MoEPass(loss, jtr, jtj)


__all__ = ["LaunchConfig", "MAX_D", "MAX_K", "OutOfResources", "U_BYTES", "default_config", "fp64_dots",
           "pick_config", "staged_elements", "triton_moe_pass", "unsupported_reason"]
