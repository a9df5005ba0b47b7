"""Shared memory of the MoE pass kernels, predicted before launch (docs/kernels.md#resource-model).

Triton allocates shared memory for the operands of ``tl.dot``: a tile computed in registers is
written to shared memory in the dot-operand layout before the product (``ttg.local_alloc`` in the
TTGIR; one buffer serves both sides of ``tl.dot(a, tl.trans(a))``). The kernel's allocation is
the most bytes of such buffers live at one time over all of its programs (the programs are
branches of one kernel and share it). The functions below count those elements per configuration;
the launcher multiplies by the item size and compares with the device's limit, leaving
:data:`HEADROOM`.

Calibration: ``metadata.shared`` of Triton 3.9 compiling the kernels for sm_90, listed in
``tests/kernels/test_resources.py`` (the Gauss-Newton kernel of the two shapes that failed on an
H200, 315392 bytes at 128 samples and 128-wide blocks, included). The model reproduces every
one of them exactly or from above. Registers are not modelled: they cannot stop a launch at the
kernels' <= 8 warps (255 registers x 256 threads fit the 64K register file; ptxas spills
instead), only slow it.
"""

from __future__ import annotations

import functools

import torch
import triton

#: Shared memory one block may opt in to on sm_90 (H100, H200), bytes.
HOPPER_SHARED_MEMORY = 232448

#: A configuration is launched only if its prediction is at most this fraction of the device's
#: limit: the model is exact on its calibration points, and the margin covers what they do not
#: (other Triton versions, shapes between them).
HEADROOM = 0.9


@functools.lru_cache(maxsize=16)
def device_limit(device: torch.device) -> int | None:
    """Shared memory one block may use on ``device``, the number Triton's launcher checks against
    (the opt-in maximum), or None off CUDA (the interpreter has no limit)."""
    if device.type != "cuda":
        return None
    index = torch.cuda.current_device() if device.index is None else device.index
    return triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"]


def fits(elements: int, itemsize: int, limit: int | None) -> bool:
    """Whether ``elements`` staged items leave :data:`HEADROOM` of ``limit`` bytes."""
    return limit is None or elements * itemsize <= HEADROOM * limit


def _score_operands(*, block_n: int, kp: int, dp: int, qp: int, dot_x: bool, dot_q: bool,
                    tf32x3: bool) -> tuple[int, int]:
    """Staged elements of the score (and gradient) dots: the loop-invariant weights ``W`` (gate
    and expert ``(KP, DP)``, quadratic gate ``(KP, QP)``) and the per-tile operands ``T`` (``x^T
    (DP, BN)``; the two gathered factors of the quadratic features, ``2 x (QP, BN)``). tf32x3
    stages the per-tile operands twice (measured: gradient kernel, d = 128, k = 64)."""
    w = (2 * kp * dp if dot_x else 0) + (kp * qp if dot_q else 0)
    t = (dp * block_n if dot_x else 0) + (2 * qp * block_n if dot_q else 0)
    return w, 2 * t if tf32x3 else t


def gradient_kernel(*, block_n: int, kp: int, dp: int, qp: int, dot_x: bool, dot_q: bool,
                    tf32x3: bool) -> int:
    """Elements of ``_moe_grad_kernel``: the score dots' ``W + T`` and the gradient dot's
    coefficient tile ``(KP, BN)``. Without dots (small d or k) it stages nothing that grows.

    Calibration (f64 unless noted; elements): d = 32, k = 9: 7168; d = 128, k = 64: 40960;
    float32 (tf32x3) d = 128, k = 64: 65536."""
    if not (dot_x or dot_q):
        return 0
    w, t = _score_operands(block_n=block_n, kp=kp, dp=dp, qp=qp, dot_x=dot_x, dot_q=dot_q,
                           tf32x3=tf32x3)
    coefficients = kp * block_n * (2 if tf32x3 else 1)
    return w + t + coefficients


def gauss_newton_kernel(*, block_n: int, tile: int, bias_tile: int, kp: int, dp: int, qp: int,
                        dot_x: bool, dot_q: bool, num_stages: int, tf32x3: bool) -> int:
    """Elements of ``_moe_gn_kernel``, the larger of its two kinds of program.

    Pair program: the two ``(TILE, BN)`` blocks of ``J^T`` of an off-diagonal pair, live together
    (a diagonal pair stages one, and its ``(TB, BN)`` bias tile), beside the loop-invariant score
    weights ``W``; or, if larger, the per-tile score operands ``T``. With ``num_stages >= 2``
    Triton's loop pipelining keeps more alive: measured ``BN (TB + KP + DP)`` more without score
    dots, a second copy of every buffer of the pair program (``2 TILE BN + W + T``) with them.
    Program 0 (loss, ``J^T r``, the bias-bias block): ``W + T`` and the ``(TB, BN)`` bias tile.

    Calibration (f64 unless noted; elements): d = 3, k = 9 (TILE 128, TB 32, KP 16, DP 4):
    39424 at BN 128 and 2 stages (315392 bytes: the H200 failure), 32768 at 1 stage, 19712 at
    BN 64, 9856 at BN 32, 23040 at TILE 64, 11520 at BN 64 and TILE 64; float32: 39424.
    d = 8, k = 9 (QP 64, quadratic dots): 83968 at 2 stages, 33792 at 1; float32 84992 (model
    100352).
    """
    w, t = _score_operands(block_n=block_n, kp=kp, dp=dp, qp=qp, dot_x=dot_x, dot_q=dot_q,
                           tf32x3=tf32x3)
    blocks = 2 * tile * block_n
    pair = w + max(blocks, t)
    if num_stages >= 2:
        pair += blocks + w + t if (dot_x or dot_q) else block_n * (bias_tile + kp + dp)
    coefficients = kp * block_n * (2 if tf32x3 else 1) if (dot_x or dot_q) else 0
    first = w + t + coefficients + bias_tile * block_n
    return max(pair, first)


def gram_kernel(*, block_a: int, block_n: int, width: int, num_stages: int) -> int:
    """Elements of the Gram kernels (``kernels/moe/triton_gram.py``): per pipeline stage the
    role-pair tile ``W^T (BA, BN)`` and the loaded feature tile ``(BN, width)`` (``width`` = DP
    per feature, BQ for feature pairs), one more ``W^T`` for its layout conversion, and the
    ``(BA,)`` row sums.

    Calibration (per-feature layout, BA 64, BN 32, d = 128): f64, 3 stages: 18496 (model 20544);
    float32 (tf32), 1 stage: 8192 (model 8256)."""
    return num_stages * (block_a * block_n + block_n * width) + block_a * block_n + block_a


__all__ = ["HEADROOM", "HOPPER_SHARED_MEMORY", "device_limit", "fits", "gauss_newton_kernel",
           "gradient_kernel", "gram_kernel"]
