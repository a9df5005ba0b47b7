"""On a real GPU, a pass whose samples take the kernels' int32 row offsets past 2^31 - 1 (d = 32:
from n = 6.7e7 on) runs in sample chunks and gives the reference's loss and ``J^T r``
(``kernels.moe.triton_pass.INT32_OFFSETS``). tests/kernels/test_moe_pass.py checks the chunking
through the interpreter with the limit shrunk; only a device holds a problem that large (X alone
is 8.7 GB in float32).

On a CPU nothing here runs (the ``gpu`` marker skips it).
"""

import pytest
import torch

from kernels.memory import release_cache
from kernels.moe import triton_pass as tp
from kernels.moe.model import Expert
from kernels.moe.torch_pass import moe_pass as reference_moe_pass

pytestmark = pytest.mark.gpu

#: X (float32) and its float64 copy for the reference, Y, the reference's chunks: with room.
NEEDS_BYTES = 40 * 2**30


def test_a_pass_past_int32_offsets_is_the_references():
    """float32 data, loss and ``J^T r`` reduced in float64 partial sums: against the float64
    reference on the same numbers, 1e-5 relative (float32 products over 6.8e7 samples)."""
    free, _ = torch.cuda.mem_get_info()
    if free < NEEDS_BYTES:
        pytest.skip(f"needs {NEEDS_BYTES / 2**30:.0f} GiB free on the GPU, {free / 2**30:.0f} "
                    "GiB are")
    try:
        loss_rel, jtr_rel = _relative_errors()
    finally:
        # the tests after this one in the process (tests/gpu/test_memory_waits.py) need the GPU
        # back, whatever the outcome: the tensors died with the helper's frame
        release_cache("cuda")
    assert loss_rel <= 1e-5 and jtr_rel <= 1e-5, (loss_rel, jtr_rel)


def _relative_errors() -> tuple[float, float]:
    """The Triton pass's largest relative errors in the loss and ``J^T r`` against the float64
    reference, on a problem past the int32 offsets by a million samples (its 30 GiB of tensors
    are this frame's alone)."""
    R, d, k = 1, 32, 2
    n = tp.INT32_OFFSETS // d + 1_000_000
    g = torch.Generator(device="cuda").manual_seed(0)
    X = torch.rand(R, n, d, device="cuda", generator=g) * 2 - 1
    Y = torch.randn(R, n, device="cuda", generator=g)
    gp = torch.randn(R, k, d + 1, device="cuda", generator=g) * 0.3
    ep = torch.randn(R, k, d + 1, device="cuda", generator=g) * 0.3
    relu = Expert("relu")
    got = tp.triton_moe_pass(X, Y, gp, ep, gate="sigmoid", score="linear", expert=relu,
                             jacobian=True, gauss_newton=False)
    want = reference_moe_pass(X.double(), Y.double(), gp.double(), ep.double(), gate="sigmoid",
                              score="linear", expert=relu, jacobian=True, gauss_newton=False)
    assert got.jtj is None and want.jtj is None
    loss_rel = float(((got.loss.double() - want.loss).abs() / want.loss.abs()).max())
    jtr_rel = float((got.jtr.double() - want.jtr).abs().max() / want.jtr.abs().max())
    return loss_rel, jtr_rel
