"""The Triton batched Cholesky solve against ``torch.cholesky_solve`` (CPU: Triton's interpreter).

Test matrices ``A = B B^T + p I`` (B standard normal) have eigenvalues in ``[p, ~5p]``: condition
number <= ~5, and ~2.3 for their Cholesky factors. Tolerances (normwise relative error):
- float64: 1e-10. Both sides compute in float64 and differ only in summation order (and the
  diagonal blocks being applied as explicit inverses); the backward error of either is ~p * 1e-16,
  times the condition number, far below 1e-10 (observed ~4e-16).
- float32: 1e-4, against ``torch.cholesky_solve`` in float64 on the same float32 factor: the kernel
  computes in float32, ~6e-8 rounding per operation over sums of <= 70 terms, times the condition
  number (observed ~1e-7).
"""

from __future__ import annotations

import os

import pytest
import torch

from kernels.moe import triton_solve as ts
from tests.kernels.poison import nan_buffers

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs a GPU or TRITON_INTERPRET=1",
)

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def poisoned(monkeypatch):
    """Outputs and scratch start as NaN; returns the list of buffers the kernels had to fill."""
    return nan_buffers(monkeypatch, ts)


def _problem(R: int, p: int, dtype: torch.dtype, seed: int = 0):
    """Cholesky factors (as ``cholesky_ex`` lays them out: column-major) and right-hand sides."""
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(R, p, p, generator=g, dtype=torch.float64)
    A = B @ B.mT + p * torch.eye(p, dtype=torch.float64)
    L = torch.linalg.cholesky_ex(A.to(DEVICE))[0].to(dtype)
    b = torch.randn(R, p, generator=g, dtype=torch.float64).to(DEVICE, dtype)
    return L, b


def _reference(L: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cholesky_solve(b.double()[..., None], L.double())[..., 0]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


# p = 1, 5, 37, 70 are no multiple of the block (16 under the interpreter, 32 on a GPU); 16 is one
# under the interpreter; 70 takes 5 steps and crosses the 32-wide load chunks.
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("p", [1, 5, 16, 37, 70])
@pytest.mark.parametrize("R", [1, 3])
def test_matches_torch(R, p, dtype, poisoned):
    L, b = _problem(R, p, dtype, seed=1000 * R + p)
    x = ts.cholesky_solve(L, b)
    assert poisoned and all(not buf.isnan().any() for buf in poisoned), "unwritten cells"
    assert x.shape == (R, p) and x.dtype == dtype and x.device == L.device
    assert _rel(x, _reference(L, b)) <= TOLERANCE[dtype]


def test_layouts_and_upper_triangle():
    """Row-major factor with garbage above the diagonal (not read, as by ``potrs``), a strided
    right-hand side, and explicit configs (multi-chunk steps; the GPU's 32-row blocks)."""
    L, b = _problem(2, 45, torch.float64, seed=7)
    want = _reference(L, b)
    garbage = torch.triu(torch.full_like(L, 1e30), diagonal=1)
    Lr = (L + garbage).contiguous()
    bs = torch.stack([b, b], dim=-1)[..., 0]  # stride (2p, 2)
    assert not bs.is_contiguous() and Lr.stride(2) == 1
    configs = (None, ts.SolveConfig(block=16, chunk=16, num_warps=1, num_stages=1),
               ts.SolveConfig(block=32, chunk=64, num_warps=4, num_stages=3))  # GPU-like blocks
    for cfg in configs:
        assert _rel(ts.cholesky_solve(Lr, bs, config=cfg), want) <= 1e-10
        assert _rel(ts.cholesky_solve(L, bs, config=cfg), want) <= 1e-10


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy on inf / NaN
@pytest.mark.parametrize("fault", ["nan", "inf", "zero_diagonal"])
def test_failed_factor_isolated(fault):
    """A failed factorisation spoils its own problem only; nothing raises."""
    L, b = _problem(3, 37, torch.float64, seed=3)
    want = _reference(L, b)
    L = L.clone()
    if fault == "zero_diagonal":
        L[1, 20, 20] = 0.0
    else:
        L[1, 25, 3] = float(fault)
    x = ts.cholesky_solve(L, b)
    assert not x[1].isfinite().all()
    for r in (0, 2):
        assert _rel(x[r], want[r]) <= 1e-10


def test_empty_batch():
    L, b = _problem(1, 5, torch.float64)
    assert ts.cholesky_solve(L[:0], b[:0]).shape == (0, 5)


def test_bad_inputs():
    L, b = _problem(2, 5, torch.float64)
    cases = [
        (L[0], b, "chol"),  # not batched
        (L[:, :, :4], b, "chol"),  # not square
        (L.int(), b.int(), "chol"),  # not floating
        (L.half(), b.half(), "chol"),  # unsupported float
        (L, b[:, :4], "rhs"),  # wrong p
        (L, b[:1], "rhs"),  # wrong R
        (L, b[..., None], "rhs"),  # (R, p, 1), torch.cholesky_solve's layout
        (L, b.float(), "rhs"),  # dtype mismatch
        (L, torch.empty(2, 5, dtype=torch.float64, device="meta"), "rhs"),  # device mismatch
    ]
    for chol, rhs, name in cases:
        with pytest.raises(ValueError, match=rf"^{name}:"):
            ts.cholesky_solve(chol, rhs)
