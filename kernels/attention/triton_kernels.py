"""Triton kernels of sigmoid attention (and its softmax twin), forward and backward.

All three kernels work in "gate units" ``u = G * (scale * Q K^T + b - slope_h |i - j|)``, with the
constant ``G`` chosen by the host so that the gate costs the fewest special-function calls:

* precise sigmoid, ``G = -log2(e)``: ``p = 1 / (1 + 2^u)`` (one ``ex2`` and one reciprocal);
* fast sigmoid, ``G = 1/2``: ``p = tanh(u) / 2 + 1/2`` with ``tanh.approx.f32`` (one MUFU op);
* softmax, ``G = log2(e)``: ``p = 2^(u - m)`` with the usual running max and sum.

The host folds ``G`` into a per-head coefficient table ``COEF`` of shape ``(H, 4)``:
``[G * scale, G * b_h, -G * slope_h, scale]``, in the compute dtype (float64 for float64 inputs),
so one code path serves scalar and per-head biases and every gate.

Each kernel splits its inner loop into tiles that need no mask (no bounds, no causal test) and the
few that do (the causal diagonal band and the ragged tail); fully masked causal tiles are never
visited. The sigmoid path keeps no row statistics at all.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _sigmoid_weights(u, FAST: tl.constexpr):
    # u is in gate units; see the module docstring for the two formulas.
    if FAST:
        t = tl.inline_asm_elementwise(
            "tanh.approx.f32 $0, $1;", "=f,f", [u], dtype=tl.float32, is_pure=True, pack=1
        )
        p = 0.5 * t + 0.5
    else:
        # 1 / (1 + 2^u) is stable at both ends: 2^u -> inf gives 0, 2^u -> 0 gives 1.
        p = 1.0 / (1.0 + tl.exp2(u))
    return p


@triton.jit
def _load_rows(
    src, b, h, start, stride_b, stride_h, stride_n, n_rows,
    BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, USE_TMA: tl.constexpr,
):
    # Rows [start, start + BLOCK) of head (b, h): through a (B, H, N, D) tensor descriptor (TMA,
    # rows past N read as zeros) or through pointers (rows past N masked to zeros when MASKED).
    if USE_TMA:
        tile = src.load([b.to(tl.int32), h.to(tl.int32), start, 0]).reshape(BLOCK, HEAD_DIM)
    else:
        offs = start + tl.arange(0, BLOCK)
        ptrs = (src + b * stride_b + h * stride_h
                + offs[:, None] * stride_n + tl.arange(0, HEAD_DIM)[None, :])
        if MASKED:
            tile = tl.load(ptrs, mask=offs[:, None] < n_rows, other=0.0)
        else:
            tile = tl.load(ptrs)
    return tile


@triton.jit
def _fwd_weights(
    s, acc, m_i, l_i, offs_m, offs_n, u_scale, u_bias, u_alibi, N_K,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr,
    IS_SOFTMAX: tl.constexpr, FAST: tl.constexpr,
):
    # Gate weights of one score tile; softmax also rescales acc and updates its row statistics.
    u = s * u_scale + u_bias
    if HAS_ALIBI:
        u += u_alibi * tl.abs(offs_m[:, None] - offs_n[None, :]).to(u.dtype)
    if MASKED:
        keep = offs_n[None, :] < N_K
        if CAUSAL:
            keep = keep & (offs_n[None, :] <= offs_m[:, None])
    if IS_SOFTMAX:
        if MASKED:
            u = tl.where(keep, u, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(u, 1))
        # Key 0 is in the first tile visited and every row sees it, so m_new is finite here.
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(u - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        m_i = m_new
    else:
        p = _sigmoid_weights(u, FAST)
        if MASKED:
            p = tl.where(keep, p, 0.0)
    return p, acc, m_i, l_i


@triton.jit
def _fwd_tiles(
    acc, m_i, l_i, q, K, V, b, h, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    offs_m, u_scale, u_bias, u_alibi, lo, hi, N_K,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_ALIBI: tl.constexpr, IS_SOFTMAX: tl.constexpr, FAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr, USE_TMA: tl.constexpr,
):
    for start_n in tl.range(lo, hi, BLOCK_N):
        k = _load_rows(K, b, h, start_n, stride_kb, stride_kh, stride_kn, N_K,
                       BLOCK_N, HEAD_DIM, MASKED, USE_TMA)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        p, acc, m_i, l_i = _fwd_weights(
            s, acc, m_i, l_i, offs_m, start_n + tl.arange(0, BLOCK_N), u_scale, u_bias,
            u_alibi, N_K, MASKED, CAUSAL, HAS_ALIBI, IS_SOFTMAX, FAST,
        )
        v = _load_rows(V, b, h, start_n, stride_vb, stride_vh, stride_vn, N_K,
                       BLOCK_N, HEAD_DIM, MASKED, USE_TMA)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, m_i, l_i


@triton.jit
def _attn_fwd_kernel(
    Q,  # (B, H, N_q, D), unit stride in D
    K,  # (B, H, N_k, D), unit stride in D; a tensor descriptor when USE_TMA
    V,  # (B, H, N_k, D), unit stride in D; a tensor descriptor when USE_TMA
    O,  # (B, H, N_q, D) contiguous, written
    LSE,  # (B * H, N_q) contiguous, written for softmax only: log2-sum-exp2 in gate units
    COEF,  # (H, 4) contiguous: [G * scale, G * b_h, -G * slope_h, scale]
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    H, BH, N_Q, N_K,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr, IS_SOFTMAX: tl.constexpr,
    FAST: tl.constexpr, COMPUTE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    # Under causal masking the last query blocks carry the most key tiles: start them first.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    # (batch, head) pairs fold over grid axes 1 and 2: CUDA caps each at 65535
    bh = tl.program_id(1) + tl.program_id(2) * tl.num_programs(1)
    if bh >= BH:
        return
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)

    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :]
    q = tl.load(q_ptrs, mask=offs_m[:, None] < N_Q, other=0.0)
    u_scale = tl.load(COEF + h * 4)
    u_bias = tl.load(COEF + h * 4 + 1)
    u_alibi = tl.load(COEF + h * 4 + 2)

    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=COMPUTE)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=COMPUTE)
    l_i = tl.zeros([BLOCK_M], dtype=COMPUTE)
    if CAUSAL:
        hi = tl.minimum(m0 + BLOCK_M, N_K)
        # Tiles ending at or before key m0 are visible to every row of this block.
        full = tl.minimum(m0 + 1, N_K)
    else:
        hi = N_K
        full = N_K
    full = (full // BLOCK_N) * BLOCK_N
    acc, m_i, l_i = _fwd_tiles(
        acc, m_i, l_i, q, K, V, b, h, stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn, offs_m, u_scale, u_bias, u_alibi, 0, full, N_K,
        HEAD_DIM, BLOCK_N, False, CAUSAL, HAS_ALIBI, IS_SOFTMAX, FAST, DOT_PRECISION,
        USE_TMA,
    )
    acc, m_i, l_i = _fwd_tiles(
        acc, m_i, l_i, q, K, V, b, h, stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn, offs_m, u_scale, u_bias, u_alibi, full, hi, N_K,
        HEAD_DIM, BLOCK_N, True, CAUSAL, HAS_ALIBI, IS_SOFTMAX, FAST, DOT_PRECISION,
        USE_TMA,
    )
    if IS_SOFTMAX:
        acc = acc / l_i[:, None]
        tl.store(LSE + bh.to(tl.int64) * N_Q + offs_m, m_i + tl.log2(l_i), mask=offs_m < N_Q)
    o_ptrs = O + bh.to(tl.int64) * N_Q * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=offs_m[:, None] < N_Q)


@triton.jit
def _dkdv_tiles(
    dk, dv, k, v, Q, DO, b, h, lse_base, delta_base, stride_qb, stride_qh, stride_qn,
    stride_dob, stride_doh, stride_don, offs_n, u_scale, u_bias, u_alibi, lo, hi, N_Q,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_ALIBI: tl.constexpr, IS_SOFTMAX: tl.constexpr, FAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr, USE_TMA: tl.constexpr,
):
    # Works on transposed tiles (keys x queries) so that dK and dV accumulate without transposes.
    for start_m in tl.range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load_rows(Q, b, h, start_m, stride_qb, stride_qh, stride_qn, N_Q,
                       BLOCK_M, HEAD_DIM, MASKED, USE_TMA)
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)
        do = _load_rows(DO, b, h, start_m, stride_dob, stride_doh, stride_don, N_Q,
                        BLOCK_M, HEAD_DIM, MASKED, USE_TMA)
        u_t = s_t * u_scale + u_bias
        if HAS_ALIBI:
            u_t += u_alibi * tl.abs(offs_n[:, None] - offs_m[None, :]).to(u_t.dtype)
        if IS_SOFTMAX:
            if MASKED:
                lse = tl.load(lse_base + offs_m, mask=offs_m < N_Q, other=0.0)
            else:
                lse = tl.load(lse_base + offs_m)
            p_t = tl.exp2(u_t - lse[None, :])
        else:
            p_t = _sigmoid_weights(u_t, FAST)
        if MASKED:
            # Rows past N_q read zeros, but a softmax weight there could overflow: zero it.
            keep = offs_m[None, :] < N_Q
            if CAUSAL:
                keep = keep & (offs_m[None, :] >= offs_n[:, None])
            p_t = tl.where(keep, p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        if IS_SOFTMAX:
            if MASKED:
                delta = tl.load(delta_base + offs_m, mask=offs_m < N_Q, other=0.0)
            else:
                delta = tl.load(delta_base + offs_m)
            ds_t = p_t * (dp_t - delta[None, :])
        else:
            ds_t = p_t * (1.0 - p_t) * dp_t
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q,  # (B, H, N_q, D), unit stride in D; a tensor descriptor when USE_TMA
    K,  # (B, H, N_k, D), unit stride in D
    V,  # (B, H, N_k, D), unit stride in D
    DO,  # (B, H, N_q, D), unit stride in D; a tensor descriptor when USE_TMA
    LSE,  # (B * H, N_q) contiguous, read for softmax only
    DELTA,  # (B * H, N_q) contiguous rowsum(dO * O), read for softmax only
    DK,  # (B, H, N_k, D) contiguous, written
    DV,  # (B, H, N_k, D) contiguous, written
    COEF,  # (H, 4) contiguous: [G * scale, G * b_h, -G * slope_h, scale]
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don,
    H, BH, N_Q, N_K,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr, IS_SOFTMAX: tl.constexpr,
    FAST: tl.constexpr, COMPUTE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    # One program owns one key block and sweeps the query blocks: dK, dV without atomics.
    pid_n = tl.program_id(0)
    # (batch, head) pairs fold over grid axes 1 and 2: CUDA caps each at 65535
    bh = tl.program_id(1) + tl.program_id(2) * tl.num_programs(1)
    if bh >= BH:
        return
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    key_ok = offs_n[:, None] < N_K
    k = tl.load(
        K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :],
        mask=key_ok, other=0.0,
    )
    v = tl.load(
        V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :],
        mask=key_ok, other=0.0,
    )
    u_scale = tl.load(COEF + h * 4)
    u_bias = tl.load(COEF + h * 4 + 1)
    u_alibi = tl.load(COEF + h * 4 + 2)
    scale = tl.load(COEF + h * 4 + 3)

    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=COMPUTE)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=COMPUTE)
    end = tl.cdiv(N_Q, BLOCK_M) * BLOCK_M
    if CAUSAL:
        # Query blocks before the one holding row n0 see none of these keys: skipped.
        lo = (n0 // BLOCK_M) * BLOCK_M
        # From the first block starting at or after row n0 + BLOCK_N - 1, every row sees every key.
        full_lo = tl.minimum(tl.cdiv(n0 + BLOCK_N - 1, BLOCK_M) * BLOCK_M, end)
    else:
        lo = 0
        full_lo = 0
    full_hi = tl.maximum(full_lo, (N_Q // BLOCK_M) * BLOCK_M)
    lse_base = LSE + bh.to(tl.int64) * N_Q
    delta_base = DELTA + bh.to(tl.int64) * N_Q
    dk, dv = _dkdv_tiles(
        dk, dv, k, v, Q, DO, b, h, lse_base, delta_base, stride_qb, stride_qh, stride_qn,
        stride_dob, stride_doh, stride_don, offs_n, u_scale, u_bias, u_alibi, lo, full_lo, N_Q,
        HEAD_DIM, BLOCK_M, True, CAUSAL, HAS_ALIBI, IS_SOFTMAX, FAST, DOT_PRECISION,
        USE_TMA,
    )
    dk, dv = _dkdv_tiles(
        dk, dv, k, v, Q, DO, b, h, lse_base, delta_base, stride_qb, stride_qh, stride_qn,
        stride_dob, stride_doh, stride_don, offs_n, u_scale, u_bias, u_alibi, full_lo, full_hi,
        N_Q, HEAD_DIM, BLOCK_M, False, CAUSAL, HAS_ALIBI, IS_SOFTMAX, FAST, DOT_PRECISION,
        USE_TMA,
    )
    dk, dv = _dkdv_tiles(
        dk, dv, k, v, Q, DO, b, h, lse_base, delta_base, stride_qb, stride_qh, stride_qn,
        stride_dob, stride_doh, stride_don, offs_n, u_scale, u_bias, u_alibi, full_hi, end, N_Q,
        HEAD_DIM, BLOCK_M, True, CAUSAL, HAS_ALIBI, IS_SOFTMAX, FAST, DOT_PRECISION,
        USE_TMA,
    )
    out_offs = bh.to(tl.int64) * N_K * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(DK + out_offs, (dk * scale).to(DK.dtype.element_ty), mask=key_ok)
    tl.store(DV + out_offs, dv.to(DV.dtype.element_ty), mask=key_ok)


@triton.jit
def _dq_tiles(
    dq, q, do, lse, delta, K, V, b, h, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, offs_m, u_scale, u_bias, u_alibi, lo, hi, N_K,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_ALIBI: tl.constexpr, IS_SOFTMAX: tl.constexpr, FAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr, USE_TMA: tl.constexpr,
):
    for start_n in tl.range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(K, b, h, start_n, stride_kb, stride_kh, stride_kn, N_K,
                       BLOCK_N, HEAD_DIM, MASKED, USE_TMA)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        v = _load_rows(V, b, h, start_n, stride_vb, stride_vh, stride_vn, N_K,
                       BLOCK_N, HEAD_DIM, MASKED, USE_TMA)
        u = s * u_scale + u_bias
        if HAS_ALIBI:
            u += u_alibi * tl.abs(offs_m[:, None] - offs_n[None, :]).to(u.dtype)
        if IS_SOFTMAX:
            p = tl.exp2(u - lse[:, None])
        else:
            p = _sigmoid_weights(u, FAST)
        if MASKED:
            keep = offs_n[None, :] < N_K
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None])
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        if IS_SOFTMAX:
            ds = p * (dp - delta[:, None])
        else:
            ds = p * (1.0 - p) * dp
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def _attn_bwd_dq_kernel(
    Q,  # (B, H, N_q, D), unit stride in D
    K,  # (B, H, N_k, D), unit stride in D; a tensor descriptor when USE_TMA
    V,  # (B, H, N_k, D), unit stride in D; a tensor descriptor when USE_TMA
    DO,  # (B, H, N_q, D), unit stride in D
    LSE,  # (B * H, N_q) contiguous, read for softmax only
    DELTA,  # (B * H, N_q) contiguous rowsum(dO * O), read for softmax only
    DQ,  # (B, H, N_q, D) contiguous, written
    COEF,  # (H, 4) contiguous: [G * scale, G * b_h, -G * slope_h, scale]
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don,
    H, BH, N_Q, N_K,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_ALIBI: tl.constexpr, IS_SOFTMAX: tl.constexpr,
    FAST: tl.constexpr, COMPUTE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    # One program owns one query block and sweeps the key blocks: dQ without atomics.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    # (batch, head) pairs fold over grid axes 1 and 2: CUDA caps each at 65535
    bh = tl.program_id(1) + tl.program_id(2) * tl.num_programs(1)
    if bh >= BH:
        return
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N_Q
    q = tl.load(
        Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :],
        mask=row_ok[:, None], other=0.0,
    )
    do = tl.load(
        DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_don + offs_d[None, :],
        mask=row_ok[:, None], other=0.0,
    )
    if IS_SOFTMAX:
        lse = tl.load(LSE + bh.to(tl.int64) * N_Q + offs_m, mask=row_ok, other=0.0)
        delta = tl.load(DELTA + bh.to(tl.int64) * N_Q + offs_m, mask=row_ok, other=0.0)
    else:
        lse = 0.0
        delta = 0.0
    u_scale = tl.load(COEF + h * 4)
    u_bias = tl.load(COEF + h * 4 + 1)
    u_alibi = tl.load(COEF + h * 4 + 2)
    scale = tl.load(COEF + h * 4 + 3)

    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=COMPUTE)
    if CAUSAL:
        hi = tl.minimum(m0 + BLOCK_M, N_K)
        full = tl.minimum(m0 + 1, N_K)
    else:
        hi = N_K
        full = N_K
    full = (full // BLOCK_N) * BLOCK_N
    dq = _dq_tiles(
        dq, q, do, lse, delta, K, V, b, h, stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn, offs_m, u_scale, u_bias, u_alibi, 0, full, N_K,
        HEAD_DIM, BLOCK_N, False, CAUSAL, HAS_ALIBI, IS_SOFTMAX, FAST, DOT_PRECISION,
        USE_TMA,
    )
    dq = _dq_tiles(
        dq, q, do, lse, delta, K, V, b, h, stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn, offs_m, u_scale, u_bias, u_alibi, full, hi, N_K,
        HEAD_DIM, BLOCK_N, True, CAUSAL, HAS_ALIBI, IS_SOFTMAX, FAST, DOT_PRECISION,
        USE_TMA,
    )
    dq_ptrs = DQ + bh.to(tl.int64) * N_Q * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(dq_ptrs, (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])
