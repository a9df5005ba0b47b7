"""Triton device code of the batched MoE least-squares pass (docs/kernels.md#moe-pass).

The host side (column-block layout, launch configurations, checks, launchers) is
:mod:`kernels.moe.triton_pass`; the outputs are those of
:func:`kernels.moe.torch_pass.moe_pass`.

Per sample tile, in registers, the kernels compute the gating scores between the tile's samples and
the k atoms -- an attention between n queries and k keys, ``S = F_g(X) @ gate_params^T`` -- the gate
(sigmoid, or softmax over the k atoms with the last atom's score pinned at 0), the expert outputs
``h(F_e(X) @ expert_params^T)``, the prediction, the residual, and the Jacobian's per-atom
coefficients ``df/ds`` (``DS``) and ``df/dz`` (``DZ``). Every column of ``J`` is one such
coefficient times one feature (1, ``x_u`` or ``c_uv x_u x_v``), so ``J`` is never stored:

- ``J^T r`` is ``(r DS)^T F_g`` and ``(r DZ)^T F_e``: two small products per tile.
- ``J^T J``, linear scores: the gradient kernel also writes the coefficients ``U`` and ``J^T J``
  is multiplied out in its Gram form (``kernels/moe/gram.py``). Other scores:
- ``J^T J`` is tiled over pairs of column blocks. A block holds ``M`` atoms times ``FW`` features
  (``J_block = (A[:, :, None] * F[:, None, :]).reshape(BN, M * FW)`` with ``A`` the selected
  coefficient columns); the atoms' constant features (the ``beta0`` and ``b`` columns) form one
  narrow "bias" block. Each program owns one upper-triangle pair of blocks (a diagonal pair also
  owns its block's product with the bias block) and accumulates ``tl.dot(J_1^T, J_2)`` over its
  sample range; the host mirrors the triangle and permutes to the reference layout.

Launch layout: grid ``(programs, T, R)``, each program streaming one contiguous ``1/T`` of the
samples of problem ``r``. Program 0 computes the loss and ``J^T r`` (and the bias-bias block of
``J^T J``); the others, if any, one pair of ``J^T J`` blocks each. Partial sums go to an
``(R, T, ...)`` buffer reduced on the host in float64 (deterministic, no atomics).

Quadratic features ``c_uv x_u x_v`` are formed in-kernel from X (gathered loads that hit L1), so
every score type reads only X: no ``(R, n, d(d+1)/2)`` feature tensor exists anywhere. The hot path
(linear scores) loads each X tile once per program.
"""

from __future__ import annotations

import triton
import triton.language as tl

#: Expert activation codes of :func:`_expert_act` (``EXPERT``, a tl.constexpr); poly{p} is
#: ``POLY_CODE`` with ``POWER = p``.
EXPERT_CODES = {"linear": 0, "relu": 1, "gelu": 2, "tanh": 3, "constant": 5}
POLY_CODE = 4


# --------------------------------------------------------------------------------------------- #
# Device helpers. Samples run along the LAST axis of every tile (x^T is (DP, BN), the Jacobian
# coefficients (KP, BN), J^T blocks (TILE, BN)): Triton's default layouts spread the last axis over
# the lanes, so each thread owns whole samples and the sums over atoms and features stay in
# registers. With samples first, the lanes took the atom and feature axes instead and every tile
# paid shuffles and 17 layout conversions (TTGIR of the d = 8, k = 4 gradient kernel).
# --------------------------------------------------------------------------------------------- #


@triton.jit
def _mm(w, xt, USE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """Per-atom contraction ``w @ x^T``: ``w (KPS, F, 1, S)``, ``x^T (F, BN)`` -> ``(KPS, BN, S)``.

    USE_DOT (S = 1): a dot in PRECISION; otherwise a broadcast product summed in registers.
    """
    KPS: tl.constexpr = w.shape[0]
    if USE_DOT:
        w2 = tl.reshape(w, (KPS, w.shape[1]))
        out = tl.reshape(tl.dot(w2, xt, input_precision=PRECISION), (KPS, xt.shape[1], 1))
    else:
        out = tl.sum(w * xt[None, :, :, None], axis=1)
    return out


@triton.jit
def _acc_wx(acc, wt, xt, USE_DOT: tl.constexpr, ACC3: tl.constexpr, PRECISION: tl.constexpr):
    """Accumulate ``sum_n w[:, n] x[:, n]^T`` for ``w^T (KPS, BN, S)``, ``x^T (F, BN)``.

    USE_DOT (S = 1): a (KP, F) float64 sum of per-tile dots. ACC3: a (KPS, F, BN, S) sum in the
    compute dtype, reduced over samples once at the end (no per-tile shuffles; KPS * F registers
    per thread). Otherwise: a (KPS, F, S) float64 sum of per-tile reductions.
    """
    if USE_DOT:
        w2 = tl.reshape(wt, (wt.shape[0], wt.shape[1]))
        out = acc + tl.dot(w2, tl.trans(xt), input_precision=PRECISION).to(tl.float64)
    elif ACC3:
        out = acc + wt[:, None, :, :] * xt[None, :, :, None]
    else:
        out = acc + tl.sum(wt[:, None, :, :] * xt[None, :, :, None], axis=2).to(tl.float64)
    return out


@triton.jit
def _acc_init(KPS: tl.constexpr, F: tl.constexpr, BN: tl.constexpr, S: tl.constexpr,
              dtype: tl.constexpr, USE_DOT: tl.constexpr, ACC3: tl.constexpr):
    if USE_DOT:
        out = tl.zeros((KPS, F), tl.float64)
    elif ACC3:
        out = tl.zeros((KPS, F, BN, S), dtype)
    else:
        out = tl.zeros((KPS, F, S), tl.float64)
    return out


@triton.jit
def _unsplit(t):
    """``(KPS, M, S) -> (KPS * S, M)``: atom ``j * S + a`` from its lane group ``a``."""
    return tl.reshape(tl.permute(t, (0, 2, 1)), (t.shape[0] * t.shape[2], t.shape[1]))


@triton.jit
def _acc_finish(acc, USE_DOT: tl.constexpr, ACC3: tl.constexpr):
    """The accumulated ``(KP, F)`` float64 sum."""
    if USE_DOT:
        out = acc
    elif ACC3:
        out = _unsplit(tl.sum(acc.to(tl.float64), axis=2))
    else:
        out = _unsplit(acc)
    return out


@triton.jit
def _expert_act(z, EXPERT: tl.constexpr, POWER: tl.constexpr):
    """``h(z)`` and ``h'(z)``, elementwise."""
    if EXPERT == 1:  # relu
        h = tl.maximum(z, 0.0)
        dh = (z > 0).to(z.dtype)
    elif EXPERT == 2:  # exact gelu: z Phi(z), Phi(z) + z phi(z)
        cdf = 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476))
        h = z * cdf
        dh = cdf + z * tl.exp(-0.5 * z * z) * 0.3989422804014327
    elif EXPERT == 3:  # tanh from exp(-2|z|): no overflow, absolute error ~ 1 ulp
        e = tl.exp(-2.0 * tl.abs(z))
        t = (1.0 - e) / (1.0 + e)
        h = tl.where(z < 0, -t, t)
        dh = 1.0 - t * t
    elif EXPERT == 4:  # poly{POWER}
        zp = tl.full(z.shape, 1.0, z.dtype)
        for _ in tl.static_range(POWER - 1):
            zp = zp * z
        h = zp * z
        dh = POWER * zp
    else:  # linear, constant (z is b)
        h = z
        dh = tl.full(z.shape, 1.0, z.dtype)
    return h, dh


@triton.jit
def _load_params(GP, EP, r, d, k, pg, pe, qoff, nq,
                 DP: tl.constexpr, KP: tl.constexpr, QP: tl.constexpr, S: tl.constexpr,
                 HAS_LIN: tl.constexpr, HAS_QUAD: tl.constexpr, SLOPE: tl.constexpr):
    """One problem's atoms, atom ``j * S + a`` at ``[j, ..., a]``.

    Returns biases ``(KPS, 1, S)`` and weights ``(KPS, DP, 1, S)``, ``(KPS, QP, 1, S)``.
    """
    KPS: tl.constexpr = KP // S
    atoms = (tl.arange(0, KPS)[:, None, None, None] * S + tl.arange(0, S)[None, None, None, :])
    feats = tl.arange(0, DP)[None, :, None, None]
    gp = GP + r * k * pg
    ep = EP + r * k * pe
    # Like the reference, the pinned softmax atom's score row is used as given (callers pin it
    # at zero); only its Jacobian columns are dropped (DS masked to atoms < kf).
    am = atoms < k
    bg = tl.reshape(tl.load(gp + atoms * pg, mask=am, other=0.0), (KPS, 1, S))
    be = tl.reshape(tl.load(ep + atoms * pe + pe - 1, mask=am, other=0.0), (KPS, 1, S))
    wg = tl.zeros((KPS, DP, 1, S), bg.dtype)
    wq = tl.zeros((KPS, QP, 1, S), bg.dtype)
    we = tl.zeros((KPS, DP, 1, S), bg.dtype)
    if HAS_LIN:
        wg = tl.load(gp + atoms * pg + 1 + feats, mask=am & (feats < d), other=0.0)
    if HAS_QUAD:
        tq = tl.arange(0, QP)[None, :, None, None]
        wq = tl.load(gp + atoms * pg + qoff + tq, mask=am & (tq < nq), other=0.0)
    if SLOPE:
        we = tl.load(ep + atoms * pe + feats, mask=am & (feats < d), other=0.0)
    return bg, wg, wq, we, be


@triton.jit
def _quad_features(Xr, rows, rmask, d, iu, iv, qc, tmask):
    """``c_uv x_u x_v`` for the feature indices ``(iu, iv) (F,)``: (F, BN); rows hit L1."""
    m = tmask[:, None] & rmask[None, :]
    xa = tl.load(Xr + rows[None, :] * d + iu[:, None], mask=m, other=0.0)
    xb = tl.load(Xr + rows[None, :] * d + iv[:, None], mask=m, other=0.0)
    return xa * xb * qc[:, None]


@triton.jit
def _load_tile(Xr, Yr, n0, hi, d, BN: tl.constexpr, DP: tl.constexpr, NEED_Y: tl.constexpr):
    """``x^T (DP, BN)``, ``y (BN,)`` (zeros unless NEED_Y), rows and their mask (rows < hi)."""
    rows = n0 + tl.arange(0, BN)
    rmask = rows < hi
    feats = tl.arange(0, DP)[:, None]
    if d == DP:  # d is a compile-time constant: no feature mask when it is a power of two
        xt = tl.load(Xr + rows[None, :] * d + feats, mask=rmask[None, :], other=0.0)
    else:
        xt = tl.load(Xr + rows[None, :] * d + feats, mask=(feats < d) & rmask[None, :],
                     other=0.0)
    y = tl.zeros((BN,), xt.dtype)
    if NEED_Y:
        y = tl.load(Yr + rows, mask=rmask, other=0.0)
    return xt, y, rows, rmask


@triton.jit
def _tile_terms(xt, y, rows, rmask, Xr, d, k, kf, bg, wg, wq, we, be, iu, iv, qc, tmask,
                SOFTMAX: tl.constexpr, HAS_LIN: tl.constexpr, HAS_QUAD: tl.constexpr,
                SLOPE: tl.constexpr, EXPERT: tl.constexpr, POWER: tl.constexpr,
                DOT_X: tl.constexpr, DOT_Q: tl.constexpr, MASK_ROWS: tl.constexpr,
                PRECISION: tl.constexpr):
    """Forward pass of one tile of samples ``x^T (DP, BN)``, atoms split over S lanes.

    Returns the quadratic features ``q^T (QP, BN)`` (``x^T`` if none), the Jacobian coefficients
    ``DS, DZ (KPS, BN, S)`` (atom ``j * S + a`` at ``[j, :, a]``; zero on padded atoms and the
    pinned softmax atom's gate, and with MASK_ROWS on masked samples) and the residual
    ``r = y - f (BN,)`` (zero on masked samples).
    """
    BN: tl.constexpr = xt.shape[1]
    KPS: tl.constexpr = bg.shape[0]
    S: tl.constexpr = bg.shape[2]
    KP: tl.constexpr = KPS * S
    atoms = tl.arange(0, KPS)[:, None, None] * S + tl.arange(0, S)[None, None, :]
    # Scores: attention logits between the atoms (keys) and the tile's samples (queries).
    s = tl.zeros((KPS, BN, S), xt.dtype) + bg
    if HAS_LIN:
        s += _mm(wg, xt, DOT_X, PRECISION)
    qt = xt
    if HAS_QUAD:
        qt = _quad_features(Xr, rows, rmask, d, iu, iv, qc, tmask)
        s += _mm(wq, qt, DOT_Q, PRECISION)
    z = tl.zeros((KPS, BN, S), xt.dtype) + be
    if SLOPE:
        z += _mm(we, xt, DOT_X, PRECISION)
    # k, kf are compile-time: the masks below vanish when k is a power of two (and for sigmoid).
    valid = atoms < k
    if SOFTMAX:
        if k < KP:
            s = tl.where(valid, s, float("-inf"))
        e = tl.exp(s - tl.max(tl.max(s, axis=0), axis=1)[None, :, None])
        pi = e / tl.sum(tl.sum(e, axis=0), axis=1)[None, :, None]
    else:
        pi = 1.0 / (1.0 + tl.exp(-s))
        if k < KP:
            pi = tl.where(valid, pi, 0.0)
    h, dh = _expert_act(z, EXPERT, POWER)
    # Padded atoms have pi = 0 and finite h (z = 0). Sum over the atoms in-thread first, then
    # over the S lanes.
    f = tl.sum(tl.sum(pi * h, axis=0), axis=1)
    if SOFTMAX:  # d pi_i / d s_j = pi_i (delta_ij - pi_j)  =>  df/ds_i = pi_i (h_i - f)
        ds = pi * (h - f[None, :, None])
    else:
        ds = pi * (1.0 - pi) * h
    if kf < k:
        ds = tl.where(atoms < kf, ds, 0.0)
    dz = pi * dh
    if MASK_ROWS:  # J^T J needs zero rows past n; J^T r and the loss only need r = 0 there
        ds = tl.where(rmask[None, :, None], ds, 0.0)
        dz = tl.where(rmask[None, :, None], dz, 0.0)
    r = tl.where(rmask, y - f, 0.0)
    return qt, ds, dz, r


@triton.jit
def _select(ds, dz, sel_s, sel_z):
    """Rows of ``[DS^T; DZ^T]`` picked by one-hot masks ``sel_s, sel_z (M, KP)``: (M, BN)."""
    a = tl.sum(tl.where(sel_s[:, :, None], ds[None, :, :], 0.0), axis=1)
    return a + tl.sum(tl.where(sel_z[:, :, None], dz[None, :, :], 0.0), axis=1)


@triton.jit
def _select_gate(ds, sel):
    """Rows of ``DS^T`` picked by a one-hot mask ``sel (M, KP)``: (M, BN)."""
    return tl.sum(tl.where(sel[:, :, None], ds[None, :, :], 0.0), axis=1)


@triton.jit
def _bias_tile(ds, dz, KP: tl.constexpr, TB: tl.constexpr):
    """The constant-feature rows of J^T, ``[DS^T; DZ^T; 0...]``: (TB, BN)."""
    if TB == 2 * KP:
        out = tl.reshape(tl.permute(tl.join(ds, dz), (2, 0, 1)), (TB, ds.shape[1]))
    else:  # KP < 8: pad to the 16 rows a dot needs
        c = tl.arange(0, TB)[:, None]
        i = tl.arange(0, KP)[None, :]
        out = _select(ds, dz, c == i, c == i + KP)
    return out


@triton.jit
def _block_tile(xt, ds, dz, sx_s, sx_z, sq, Xr, rows, rmask, d, iu, iv, qc, tmask,
                TILE: tl.constexpr, KIND: tl.constexpr):
    """One block of J^T: ``(A[:, None, :] * F[None, :, :]).reshape(TILE, BN)``.

    KIND 0: the linear features ``x`` of MX atoms; 1: a chunk of FWQ quadratic features of MQ
    gate atoms (gathered again; the rows are in L1).
    """
    BN: tl.constexpr = xt.shape[1]
    if KIND == 0:
        a = _select(ds, dz, sx_s, sx_z)
        j = tl.reshape(a[:, None, :] * xt[None, :, :], (TILE, BN))
    else:
        a = _select_gate(ds, sq)
        qf = _quad_features(Xr, rows, rmask, d, iu, iv, qc, tmask)
        j = tl.reshape(a[:, None, :] * qf[None, :, :], (TILE, BN))
    return j


# --------------------------------------------------------------------------------------------- #
# Programs
# --------------------------------------------------------------------------------------------- #


@triton.jit
def _grad_program(X, Y, GP, EP, IU, IV, QC, OUT_G, OUT_T, U, r, rx, t, n_split, n, d, k, kf, pg,
                  pe, p, qoff, nq, tiles_per_prog, s_tiles,
                  BN: tl.constexpr, DP: tl.constexpr, KP: tl.constexpr, QP: tl.constexpr,
                  TB: tl.constexpr, SOFTMAX: tl.constexpr, HAS_LIN: tl.constexpr,
                  HAS_QUAD: tl.constexpr, SLOPE: tl.constexpr, EXPERT: tl.constexpr,
                  POWER: tl.constexpr, DOT_X: tl.constexpr, DOT_Q: tl.constexpr,
                  ACC3: tl.constexpr, S: tl.constexpr, WITH_GRAD: tl.constexpr,
                  WITH_JTJ: tl.constexpr, PRECISION: tl.constexpr, JTJ_PRECISION: tl.constexpr,
                  WITH_U: tl.constexpr):
    """Loss and ``J^T r`` (and the bias-bias block of ``J^T J``) over one sample range.

    Each sample's atoms are split over S adjacent lanes (atom ``j * S + a`` on lane ``a``): each
    thread then holds 1/S of the weights and gradient accumulators. WITH_U also stores the
    Jacobian coefficients ``U (R, kf + k, n)`` = ``[DS^T of the free gates; DZ^T]`` for the Gram
    kernel (``kernels/moe/triton_gram.py``). Problem ``r`` (parameters, outputs) reads the
    samples of problem ``rx`` (X, Y).
    """
    KPS: tl.constexpr = KP // S
    Xr = X + rx.to(tl.int64) * n * d
    Yr = Y + rx.to(tl.int64) * n
    bg, wg, wq, we, be = _load_params(GP, EP, r, d, k, pg, pe, qoff, nq, DP, KP, QP, S,
                                      HAS_LIN, HAS_QUAD, SLOPE)
    tq = tl.arange(0, QP)
    tmask = tq < nq
    iu = tl.load(IU + tq, mask=tmask, other=0)
    iv = tl.load(IV + tq, mask=tmask, other=0)
    qc = tl.load(QC + tq, mask=tmask, other=0.0).to(bg.dtype)
    dt: tl.constexpr = bg.dtype
    loss = tl.zeros((BN,), dt)
    gb = tl.zeros((KPS, BN, S), dt)
    eb = tl.zeros((KPS, BN, S), dt)
    gx = _acc_init(KPS, DP, BN, S, dt, DOT_X, ACC3)
    ex = _acc_init(KPS, DP, BN, S, dt, DOT_X, ACC3)
    gq = _acc_init(KPS, QP, BN, S, dt, DOT_Q, ACC3)
    bb = tl.zeros((TB, TB), dt)
    tile0 = t * tiles_per_prog
    # Software prefetch: the next tile's loads are issued before this tile's arithmetic (Triton
    # does not pipeline loads that feed no dot).
    hi = tl.minimum(n, (tile0 + tiles_per_prog) * BN)
    xn, yn, rn, mn = _load_tile(Xr, Yr, tile0 * BN, hi, d, BN, DP, True)
    for it in range(tiles_per_prog):
        xt, y, rows, rmask = xn, yn, rn, mn
        xn, yn, rn, mn = _load_tile(Xr, Yr, (tile0 + it + 1) * BN, hi, d, BN, DP, True)
        qt, ds, dz, res = _tile_terms(
            xt, y, rows, rmask, Xr, d, k, kf, bg, wg, wq, we, be, iu, iv, qc, tmask,
            SOFTMAX, HAS_LIN, HAS_QUAD, SLOPE, EXPERT, POWER, DOT_X, DOT_Q, WITH_JTJ, PRECISION)
        loss += res * res
        if WITH_U:
            atoms = tl.arange(0, KPS)[:, None, None] * S + tl.arange(0, S)[None, None, :]
            ur = U + r.to(tl.int64) * (kf + k) * n + rows[None, :, None]
            tl.store(ur + atoms * n, ds, mask=(atoms < kf) & rmask[None, :, None])
            tl.store(ur + (kf + atoms) * n, dz, mask=(atoms < k) & rmask[None, :, None])
        if WITH_GRAD:
            ws = ds * res[None, :, None]
            wz = dz * res[None, :, None]
            gb += ws
            eb += wz
            if HAS_LIN:
                gx = _acc_wx(gx, ws, xt, DOT_X, ACC3, PRECISION)
            if HAS_QUAD:
                gq = _acc_wx(gq, ws, qt, DOT_Q, ACC3, PRECISION)
            if SLOPE:
                ex = _acc_wx(ex, wz, xt, DOT_X, ACC3, PRECISION)
        if WITH_JTJ:
            jb = _bias_tile(_unsplit(ds), _unsplit(dz), KP, TB)
            bb = tl.dot(jb, tl.trans(jb), bb, input_precision=JTJ_PRECISION, out_dtype=dt)
    out = OUT_G + (r * n_split + t).to(tl.int64) * (p + 1)
    tl.store(out + p, tl.sum(loss.to(tl.float64), axis=0))
    if WITH_GRAD:
        atoms = tl.arange(0, KP)
        feats = tl.arange(0, DP)
        gm = atoms < kf
        em = atoms < k
        fm = feats[None, :] < d
        tl.store(out + atoms * pg, tl.reshape(tl.sum(gb.to(tl.float64), axis=1), (KP,)), mask=gm)
        eoff = kf * pg + atoms * pe
        tl.store(out + eoff + pe - 1, tl.reshape(tl.sum(eb.to(tl.float64), axis=1), (KP,)),
                 mask=em)
        if HAS_LIN:
            tl.store(out + atoms[:, None] * pg + 1 + feats[None, :], _acc_finish(gx, DOT_X, ACC3),
                     mask=gm[:, None] & fm)
        if HAS_QUAD:
            tl.store(out + atoms[:, None] * pg + qoff + tq[None, :], _acc_finish(gq, DOT_Q, ACC3),
                     mask=gm[:, None] & tmask[None, :])
        if SLOPE:
            tl.store(out + eoff[:, None] + feats[None, :], _acc_finish(ex, DOT_X, ACC3),
                     mask=em[:, None] & fm)
    if WITH_JTJ:
        c = tl.arange(0, TB)
        tl.store(OUT_T + (r * n_split + t).to(tl.int64) * s_tiles + (s_tiles - TB * TB)
                 + c[:, None] * TB + c[None, :], bb)


@triton.jit
def _pair_program(X, GP, EP, IU, IV, QC, BLOCKS, OUT_T, r, t, n_split, n, d, k, kf, pg, pe,
                  qoff, nq, tiles_per_prog, s_tiles, pair, b1, b2, n_pairs, kfl, ngx,
                  BN: tl.constexpr, DP: tl.constexpr, KP: tl.constexpr, QP: tl.constexpr,
                  TILE: tl.constexpr, TB: tl.constexpr, MX: tl.constexpr, MQ: tl.constexpr,
                  FWQ: tl.constexpr, SOFTMAX: tl.constexpr, HAS_LIN: tl.constexpr,
                  HAS_QUAD: tl.constexpr, SLOPE: tl.constexpr, EXPERT: tl.constexpr,
                  POWER: tl.constexpr, DOT_X: tl.constexpr, DOT_Q: tl.constexpr,
                  KIND1: tl.constexpr, KIND2: tl.constexpr, DIAGONAL: tl.constexpr,
                  PRECISION: tl.constexpr, JTJ_PRECISION: tl.constexpr):
    """``J_b1^T J_b2`` over one sample range (a diagonal pair also does ``J_b1^T J_bias``).

    The block kinds are compile-time: with a run-time kind inside the sample loop, ptxas spilled
    ~10 KB per thread (quadratic scores, d = 3, k = 4).
    """
    Xr = X + r.to(tl.int64) * n * d
    bg, wg, wq, we, be = _load_params(GP, EP, r, d, k, pg, pe, qoff, nq, DP, KP, QP, 1,
                                      HAS_LIN, HAS_QUAD, SLOPE)
    tq = tl.arange(0, QP)
    tmask = tq < nq
    iu = tl.load(IU + tq, mask=tmask, other=0)
    iv = tl.load(IV + tq, mask=tmask, other=0)
    qc = tl.load(QC + tq, mask=tmask, other=0.0).to(bg.dtype)
    atoms = tl.arange(0, KP)[None, :]
    # Block descriptors: kind (KIND1, KIND2), first atom group, first quadratic feature.
    g1 = tl.load(BLOCKS + 3 * b1 + 1)
    f1 = tl.load(BLOCKS + 3 * b1 + 2)
    g2 = tl.load(BLOCKS + 3 * b2 + 1)
    f2 = tl.load(BLOCKS + 3 * b2 + 2)
    # Linear-feature groups: gate atoms 0..kfl-1 (DS rows), then experts (DZ rows).
    j1 = g1 + tl.arange(0, MX)[:, None]
    sx1_s = (atoms == j1) & (j1 < kfl)
    sx1_z = (atoms == j1 - kfl) & (j1 >= kfl) & (j1 < ngx)
    j2 = g2 + tl.arange(0, MX)[:, None]
    sx2_s = (atoms == j2) & (j2 < kfl)
    sx2_z = (atoms == j2 - kfl) & (j2 >= kfl) & (j2 < ngx)
    # Quadratic-feature groups: gate atoms only; features f .. f + FWQ - 1.
    i1 = g1 + tl.arange(0, MQ)[:, None]
    sq1 = (atoms == i1) & (i1 < kf)
    i2 = g2 + tl.arange(0, MQ)[:, None]
    sq2 = (atoms == i2) & (i2 < kf)
    tc = tl.arange(0, FWQ)
    tm1 = (f1 + tc) < nq
    iu1 = tl.load(IU + f1 + tc, mask=tm1, other=0)
    iv1 = tl.load(IV + f1 + tc, mask=tm1, other=0)
    qc1 = tl.load(QC + f1 + tc, mask=tm1, other=0.0).to(bg.dtype)
    tm2 = (f2 + tc) < nq
    iu2 = tl.load(IU + f2 + tc, mask=tm2, other=0)
    iv2 = tl.load(IV + f2 + tc, mask=tm2, other=0)
    qc2 = tl.load(QC + f2 + tc, mask=tm2, other=0.0).to(bg.dtype)
    dt: tl.constexpr = bg.dtype
    acc = tl.zeros((TILE, TILE), dt)
    acc_b = tl.zeros((TILE, TB), dt)
    tile0 = t * tiles_per_prog
    for it in range(tiles_per_prog):
        xt, y, rows, rmask = _load_tile(Xr, Xr, (tile0 + it) * BN, n, d, BN, DP, False)
        qt, ds3, dz3, res = _tile_terms(
            xt, y, rows, rmask, Xr, d, k, kf, bg, wg, wq, we, be, iu, iv, qc, tmask,
            SOFTMAX, HAS_LIN, HAS_QUAD, SLOPE, EXPERT, POWER, DOT_X, DOT_Q, True, PRECISION)
        ds = _unsplit(ds3)
        dz = _unsplit(dz3)
        ja = _block_tile(xt, ds, dz, sx1_s, sx1_z, sq1, Xr, rows, rmask, d, iu1, iv1, qc1, tm1,
                         TILE, KIND1)
        if DIAGONAL:
            acc = tl.dot(ja, tl.trans(ja), acc, input_precision=JTJ_PRECISION, out_dtype=dt)
            jb = _bias_tile(ds, dz, KP, TB)
            acc_b = tl.dot(ja, tl.trans(jb), acc_b, input_precision=JTJ_PRECISION,
                           out_dtype=dt)
        else:
            jc = _block_tile(xt, ds, dz, sx2_s, sx2_z, sq2, Xr, rows, rmask, d, iu2, iv2, qc2,
                             tm2, TILE, KIND2)
            acc = tl.dot(ja, tl.trans(jc), acc, input_precision=JTJ_PRECISION, out_dtype=dt)
    base = OUT_T + (r * n_split + t).to(tl.int64) * s_tiles
    c = tl.arange(0, TILE)
    tl.store(base + pair * (TILE * TILE) + c[:, None] * TILE + c[None, :], acc)
    if DIAGONAL:
        cb = tl.arange(0, TB)
        tl.store(base + n_pairs * (TILE * TILE) + b1 * (TILE * TB) + c[:, None] * TB + cb[None, :],
                 acc_b)


# --------------------------------------------------------------------------------------------- #
# Kernels
# --------------------------------------------------------------------------------------------- #


@triton.jit(do_not_specialize=["n", "tiles_per_prog", "n_split"])
def _moe_grad_kernel(
    X,  # (R, n, d) samples
    Y,  # (R, n) responses
    GP,  # (R, k, pg) gate parameters
    EP,  # (R, k, pe) expert parameters
    IU, IV, QC,  # (nq,) quadratic features: row, column, coefficient c_uv
    OUT_G,  # (R, T, p + 1) float64 partial [J^T r, loss]
    U,  # (R, kf + k, n) Jacobian coefficients, written when WITH_U
    ROWS,  # (R,) int64: problem r's samples are X[ROWS[r]], Y[ROWS[r]] when WITH_ROWS
    n, tiles_per_prog, n_split,
    d: tl.constexpr, k: tl.constexpr, kf: tl.constexpr, pg: tl.constexpr, pe: tl.constexpr,
    p: tl.constexpr, qoff: tl.constexpr, nq: tl.constexpr,
    BN: tl.constexpr, DP: tl.constexpr, KP: tl.constexpr, QP: tl.constexpr,
    SOFTMAX: tl.constexpr, HAS_LIN: tl.constexpr, HAS_QUAD: tl.constexpr, SLOPE: tl.constexpr,
    EXPERT: tl.constexpr, POWER: tl.constexpr, DOT_X: tl.constexpr, DOT_Q: tl.constexpr,
    ACC3: tl.constexpr, SPLIT: tl.constexpr, WITH_GRAD: tl.constexpr, PRECISION: tl.constexpr,
    WITH_U: tl.constexpr, WITH_ROWS: tl.constexpr,
):
    """Loss and ``J^T r`` (and the coefficients U): grid ``(1, T, R)``; each X tile is loaded
    once."""
    r = tl.program_id(2)
    rx = r
    if WITH_ROWS:
        rx = tl.load(ROWS + r)
    _grad_program(X, Y, GP, EP, IU, IV, QC, OUT_G, OUT_G, U, r, rx, tl.program_id(1),
                  n_split, n, d, k, kf, pg, pe, p, qoff, nq, tiles_per_prog, 0,
                  BN, DP, KP, QP, 16, SOFTMAX, HAS_LIN, HAS_QUAD, SLOPE, EXPERT, POWER,
                  DOT_X, DOT_Q, ACC3, SPLIT, WITH_GRAD, False, PRECISION, "ieee", WITH_U)


@triton.jit(do_not_specialize=["n", "tiles_per_prog", "n_split"])
def _moe_gn_kernel(
    X,  # (R, n, d) samples
    Y,  # (R, n) responses
    GP,  # (R, k, pg) gate parameters
    EP,  # (R, k, pe) expert parameters
    IU, IV, QC,  # (nq,) quadratic features: row, column, coefficient c_uv
    BLOCKS,  # (n_blocks, 3) int32 column blocks of J: kind, first atom group, first feature
    PAIRS,  # (n_pairs, 2) int32 upper-triangle block pairs
    OUT_G,  # (R, T, p + 1) float64 partial [J^T r, loss]
    OUT_T,  # (R, T, s_tiles) partial J^T J tiles
    n, tiles_per_prog, n_split,
    d: tl.constexpr, k: tl.constexpr, kf: tl.constexpr, pg: tl.constexpr, pe: tl.constexpr,
    p: tl.constexpr, qoff: tl.constexpr, nq: tl.constexpr, s_tiles: tl.constexpr,
    n_pairs: tl.constexpr, kfl: tl.constexpr, ngx: tl.constexpr,
    BN: tl.constexpr, DP: tl.constexpr, KP: tl.constexpr, QP: tl.constexpr,
    TILE: tl.constexpr, TB: tl.constexpr, MX: tl.constexpr, MQ: tl.constexpr, FWQ: tl.constexpr,
    SOFTMAX: tl.constexpr, HAS_LIN: tl.constexpr, HAS_QUAD: tl.constexpr, SLOPE: tl.constexpr,
    EXPERT: tl.constexpr, POWER: tl.constexpr, DOT_X: tl.constexpr, DOT_Q: tl.constexpr,
    ACC3: tl.constexpr, PRECISION: tl.constexpr, JTJ_PRECISION: tl.constexpr,
):
    """Loss, ``J^T r`` and ``J^T J``: grid ``(1 + n_pairs, T, R)``."""
    pid = tl.program_id(0)
    t = tl.program_id(1)
    r = tl.program_id(2)
    if pid == 0:
        _grad_program(X, Y, GP, EP, IU, IV, QC, OUT_G, OUT_T, OUT_T, r, r, t, n_split, n, d, k,
                      kf, pg, pe, p, qoff, nq, tiles_per_prog, s_tiles, BN, DP, KP, QP, TB, SOFTMAX,
                      HAS_LIN, HAS_QUAD, SLOPE, EXPERT, POWER, DOT_X, DOT_Q, ACC3, 1, True, True,
                      PRECISION, JTJ_PRECISION, False)
    else:
        pair = pid - 1
        b1 = tl.load(PAIRS + 2 * pair)
        b2 = tl.load(PAIRS + 2 * pair + 1)
        # Linear-feature blocks come first, so kind1 <= kind2.
        quad1 = HAS_QUAD and tl.load(BLOCKS + 3 * b1) == 1
        quad2 = HAS_QUAD and tl.load(BLOCKS + 3 * b2) == 1
        if ngx == 0 and HAS_QUAD:
            # Every block is quadratic. The branches below would also compile the linear-block
            # programs, whose (MX * DP, BN) tiles need not match TILE when no atom has linear
            # features (d = 17, k = 1 softmax, monomial score: 32 vs 16; an H200 refused it).
            if b1 == b2:
                _pair_program(X, GP, EP, IU, IV, QC, BLOCKS, OUT_T, r, t, n_split, n, d, k, kf,
                              pg, pe, qoff, nq, tiles_per_prog, s_tiles, pair, b1, b2, n_pairs,
                              kfl, ngx, BN, DP, KP, QP, TILE, TB, MX, MQ, FWQ, SOFTMAX, HAS_LIN,
                              HAS_QUAD, SLOPE, EXPERT, POWER, DOT_X, DOT_Q, 1, 1, True,
                              PRECISION, JTJ_PRECISION)
            else:
                _pair_program(X, GP, EP, IU, IV, QC, BLOCKS, OUT_T, r, t, n_split, n, d, k, kf,
                              pg, pe, qoff, nq, tiles_per_prog, s_tiles, pair, b1, b2, n_pairs,
                              kfl, ngx, BN, DP, KP, QP, TILE, TB, MX, MQ, FWQ, SOFTMAX, HAS_LIN,
                              HAS_QUAD, SLOPE, EXPERT, POWER, DOT_X, DOT_Q, 1, 1, False,
                              PRECISION, JTJ_PRECISION)
        elif b1 == b2:
            if quad1:
                _pair_program(X, GP, EP, IU, IV, QC, BLOCKS, OUT_T, r, t, n_split, n, d, k, kf,
                              pg, pe, qoff, nq, tiles_per_prog, s_tiles, pair, b1, b2, n_pairs,
                              kfl, ngx, BN, DP, KP, QP, TILE, TB, MX, MQ, FWQ, SOFTMAX, HAS_LIN,
                              HAS_QUAD, SLOPE, EXPERT, POWER, DOT_X, DOT_Q, 1, 1, True,
                              PRECISION, JTJ_PRECISION)
            else:
                _pair_program(X, GP, EP, IU, IV, QC, BLOCKS, OUT_T, r, t, n_split, n, d, k, kf,
                              pg, pe, qoff, nq, tiles_per_prog, s_tiles, pair, b1, b2, n_pairs,
                              kfl, ngx, BN, DP, KP, QP, TILE, TB, MX, MQ, FWQ, SOFTMAX, HAS_LIN,
                              HAS_QUAD, SLOPE, EXPERT, POWER, DOT_X, DOT_Q, 0, 0, True,
                              PRECISION, JTJ_PRECISION)
        elif quad1:
            _pair_program(X, GP, EP, IU, IV, QC, BLOCKS, OUT_T, r, t, n_split, n, d, k, kf, pg, pe,
                          qoff, nq, tiles_per_prog, s_tiles, pair, b1, b2, n_pairs, kfl, ngx,
                          BN, DP, KP, QP, TILE, TB, MX, MQ, FWQ, SOFTMAX, HAS_LIN, HAS_QUAD, SLOPE,
                          EXPERT, POWER, DOT_X, DOT_Q, 1, 1, False, PRECISION, JTJ_PRECISION)
        elif quad2:
            _pair_program(X, GP, EP, IU, IV, QC, BLOCKS, OUT_T, r, t, n_split, n, d, k, kf, pg, pe,
                          qoff, nq, tiles_per_prog, s_tiles, pair, b1, b2, n_pairs, kfl, ngx,
                          BN, DP, KP, QP, TILE, TB, MX, MQ, FWQ, SOFTMAX, HAS_LIN, HAS_QUAD, SLOPE,
                          EXPERT, POWER, DOT_X, DOT_Q, 0, 1, False, PRECISION, JTJ_PRECISION)
        else:
            _pair_program(X, GP, EP, IU, IV, QC, BLOCKS, OUT_T, r, t, n_split, n, d, k, kf, pg, pe,
                          qoff, nq, tiles_per_prog, s_tiles, pair, b1, b2, n_pairs, kfl, ngx,
                          BN, DP, KP, QP, TILE, TB, MX, MQ, FWQ, SOFTMAX, HAS_LIN, HAS_QUAD, SLOPE,
                          EXPERT, POWER, DOT_X, DOT_Q, 0, 0, False, PRECISION, JTJ_PRECISION)


@triton.jit
def _fp64_dot_probe(A):
    # The kernels' two forms: a plain product and one into an accumulator, B transposed.
    offs = tl.arange(0, 32)[:, None] * 64 + tl.arange(0, 64)[None, :]
    a = tl.load(A + offs)
    acc = tl.zeros((32, 32), tl.float64)
    acc = tl.dot(a, tl.trans(a), acc, input_precision="ieee", out_dtype=tl.float64)
    acc += tl.dot(a, tl.trans(a), input_precision="ieee")
    tl.store(A + tl.arange(0, 32)[:, None] * 32 + tl.arange(0, 32)[None, :], acc)
