"""Shared memory of the MoE pass kernels, predicted before launch (docs/kernels.md#resource-model).

Triton allocates shared memory for the operands of ``tl.dot`` (a tile computed in registers is
written to shared memory in the dot-operand layout before the product), for the layout
conversions and cross-warp reductions of register tiles (without dots, at ``k < 16``, the
``(QP, BN)`` quadratic-feature tile of the Gauss-Newton kernel is staged so, twice), and, with
``num_stages >= 2``, for the loop pipeliner's second copies. The kernel's allocation is the most
bytes live at one time over all of its programs (branches of one kernel). Counting these buffers
by hand missed the conversions (the Gauss-Newton kernel at d = 17, k = 1: 82944 bytes predicted,
573440 allocated, an H200 launch refused), so the model is a bound instead: a sum of the sizes
that drive the allocation (:func:`features`: per sample of a tile, the x, quadratic-feature and
per-atom tiles, the dot operands, the blocks of ``J^T``; per program, the dots' weights), with
coefficients fitted by linear programming to the least total overestimate subject to the bound
holding on every kernel of the calibration grid. The launcher multiplies the elements by the item
size and compares with the device's limit, leaving :data:`HEADROOM`.

Calibration: ``python -m benchmarks shared-memory`` (``metadata.shared`` of Triton 3.6 and of
3.9 compiling both kernels for sm_90 on a CPU, over every score and gate, d in {1, 3, 8, 17, 32},
k in {1, 2, 9}, float32 and float64, the default configuration and the one chosen at the H200
limit; committed under ``benchmarks/results/shared_memory/``), and the earlier hand measurements
outside that grid (gradient kernel at d = 128, k = 64; Gauss-Newton kernel at d = 3 and 8, k = 9,
at several block sizes). The model is at or above every one of them (``tests/kernels/
test_resources.py`` checks it row by row), by at most :data:`MAX_OVERESTIMATE` times the larger
of the two versions' allocations above 16 KiB (median 1.4x; the most, 8.3x, for the gradient
kernel's quadratic scores at d = 32, k <= 2, where the ``BN*QP >= 1`` floor of
:data:`GRADIENT` holds a whole quadratic-feature tile that neither version stages there). The
cost of an overestimate is a smaller configuration than needed, never a failed launch. Registers
are not modelled: they cannot stop a launch at the kernels' <= 8 warps (255 registers x 256
threads fit the 64K register file; ptxas spills instead), only slow it.
"""

from __future__ import annotations

import functools
import math

import torch
import triton

#: Shared memory one block may opt in to on sm_90 (H100, H200), bytes.
HOPPER_SHARED_MEMORY = 232448

#: A configuration is launched only if its prediction is at most this fraction of the device's
#: limit: the model bounds its calibration points, and the margin covers what they do not (other
#: Triton versions, shapes between and beyond them).
HEADROOM = 0.9

#: The model overestimates no kernel above 16 KiB compiled by both Triton versions by more than
#: this factor over the larger allocation (checked by the tests).
MAX_OVERESTIMATE = 8.5


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


def features(kernel: str, *, block_n: int, kp: int, dp: int, qp: int, tile: int, bias_tile: int,
             dot_x: bool, dot_q: bool, tf32x3: bool, num_stages: int = 1) -> dict[str, int]:
    """The sizes the kernels' shared memory is bounded by a combination of (elements).

    ``qp`` is 0 for scores without quadratic features. Per sample of a tile (``BN x``): the
    register tiles Triton converts between layouts through shared memory (x ``DP``, quadratic
    features ``QP``, per-atom scores and coefficients ``KP``; with or without ``tl.dot``), the
    ``tl.dot`` operands (staged twice by tf32x3), and for the Gauss-Newton kernel the blocks of
    ``J^T`` (``TILE``) and the bias tile (``TB``); once per program: the loop-invariant score
    weights of the dots (``KP x DP``, ``KP x QP``). The Gauss-Newton kernel's sizes per sample
    count again with two pipeline stages (one stage, the failing shape of issue 19 allocates
    32768 bytes with Triton 3.6 and 262144 with 3.9 at 128 samples, 573440 with two).
    """
    dot = dot_x or dot_q
    f = {
        "1": 1,  # reductions' scratch
        "BN": block_n,
        "BN*DP": block_n * dp,
        "BN*KP": block_n * kp,
        "BN*QP": block_n * qp,
        "BN*DP dot": block_n * dp * dot_x,
        "BN*QP dot": block_n * qp * dot_q,
        "BN*KP dot": block_n * kp * dot,
        "BN*DP tf32x3": block_n * dp * (dot_x and tf32x3),
        "BN*QP tf32x3": block_n * qp * (dot_q and tf32x3),
        "BN*KP tf32x3": block_n * kp * (dot and tf32x3),
        "KP*DP dot": kp * dp * dot_x,
        "KP*QP dot": kp * qp * dot_q,
    }
    if kernel == "gauss_newton":
        f.update({"BN*TILE": block_n * tile, "BN*TB": block_n * bias_tile,
                  "BN*TILE tf32": block_n * tile * tf32x3})
        # the J^T J accumulators, converted to a storable layout once per program
        f.update({"TILE*TILE": tile * tile, "TILE*TB": tile * bias_tile})
        # the loop pipeliner's second copies
        two = num_stages >= 2
        f.update({f"{name} 2 stages": v * two for name, v in list(f.items()) if "BN" in name})
    return f


#: Coefficients of :func:`features` (``metadata.shared`` in elements is at most their sum),
#: fitted by linear programming on the calibration grid (see the module's docstring): the least
#: sum of overestimates (relative above 16384 elements, absolute below) over the largest
#: allocation of Triton 3.6 and 3.9 per kernel, rounded up to sixteenths. The ``BN*QP``
#: coefficients are held at >= 1: Triton 3.9 stages the whole ``(QP, BN)`` quadratic-feature tile
#: (measured at d = 17: exactly ``QP x BN`` elements at 32, 64 and 128 samples), which the grid
#: does not pin down at every d. The gradient kernel's ``KP*QP dot`` was raised from the fitted
#: 1.4375 after the fit, to bound a later 3.9 measurement (d = 17, k = 9, float64, 128 samples:
#: 397312 bytes; no choice of ``pick_config`` changed).
GAUSS_NEWTON: dict[str, float] = {"BN*QP": 1.0, "KP*DP dot": 5.5, "BN*TILE": 1.9375,
    "BN*DP 2 stages": 1.0, "BN*QP 2 stages": 1.0, "BN*DP dot 2 stages": 4.5,
    "BN*DP tf32x3 2 stages": 2.75, "BN*TILE 2 stages": 4.0625}
GRADIENT: dict[str, float] = {"BN*DP": 1.0, "BN*KP": 1.0, "BN*QP": 1.0, "BN*KP dot": 1.75,
    "BN*DP tf32x3": 1.5, "BN*QP tf32x3": 0.25, "BN*KP tf32x3": 1.1875, "KP*DP dot": 0.4375,
    "KP*QP dot": 1.75}


def _bound(coefficients: dict[str, float], f: dict[str, int]) -> int:
    return math.ceil(sum(c * f[name] for name, c in coefficients.items()))


def gradient_kernel(*, block_n: int, kp: int, dp: int, qp: int, dot_x: bool, dot_q: bool,
                    tf32x3: bool) -> int:
    """Elements of ``_moe_grad_kernel`` (:data:`GRADIENT` of :func:`features`)."""
    return _bound(GRADIENT, features("gradient", block_n=block_n, kp=kp, dp=dp, qp=qp, tile=0,
                                     bias_tile=0, dot_x=dot_x, dot_q=dot_q, tf32x3=tf32x3))


def gauss_newton_kernel(*, block_n: int, tile: int, bias_tile: int, kp: int, dp: int, qp: int,
                        dot_x: bool, dot_q: bool, num_stages: int, tf32x3: bool) -> int:
    """Elements of ``_moe_gn_kernel`` (:data:`GAUSS_NEWTON` of :func:`features`), with 1 or 2
    pipeline stages (the calibrated ones)."""
    if num_stages > 2:
        raise ValueError(f"num_stages: the model covers 1 or 2 pipeline stages, got {num_stages}")
    return _bound(GAUSS_NEWTON, features("gauss_newton", block_n=block_n, kp=kp, dp=dp, qp=qp,
                                         tile=tile, bias_tile=bias_tile, dot_x=dot_x,
                                         dot_q=dot_q, tf32x3=tf32x3, num_stages=num_stages))


def gram_kernel(*, block_a: int, block_n: int, width: int, num_stages: int) -> int:
    """Elements of the Gram kernels (``kernels/moe/triton_gram.py``): per pipeline stage the
    role-pair tile ``W^T (BA, BN)`` and the loaded feature tile ``(BN, width)`` (``width`` = DP
    per feature, BQ for feature pairs), one more ``W^T`` for its layout conversion, and the
    ``(BA,)`` row sums.

    Calibration (per-feature layout, BA 64, BN 32, d = 128): f64, 3 stages: 18496 (model 20544);
    float32 (tf32), 1 stage: 8192 (model 8256)."""
    return num_stages * (block_a * block_n + block_n * width) + block_a * block_n + block_a


__all__ = ["GAUSS_NEWTON", "GRADIENT", "HEADROOM", "HOPPER_SHARED_MEMORY", "MAX_OVERESTIMATE",
           "device_limit", "features", "fits", "gauss_newton_kernel", "gradient_kernel",
           "gram_kernel"]
