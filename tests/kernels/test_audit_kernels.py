"""Regression tests for kernel bugs found in an audit: each failed before its fix. Outputs are
compared with the PyTorch reference in float64, partial-sum buffers poisoned with NaN (CPU:
Triton's interpreter)."""

from __future__ import annotations

import os

import pytest
import torch

from kernels.moe import triton_gram
from kernels.moe import triton_pass as tp
from kernels.moe.torch_pass import moe_pass as reference_moe_pass
from moe_theory import models
from tests.kernels.poison import nan_buffers

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs a GPU or TRITON_INTERPRET=1",
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def poisoned(monkeypatch):
    return nan_buffers(monkeypatch, tp, triton_gram)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.parametrize("score", ["linear", "quadratic"])
@pytest.mark.parametrize("jacobian,gauss_newton", [(False, False), (True, False), (True, True)])
def test_strided_rows_read_the_rows_they_name(score, jacobian, gauss_newton, poisoned):
    # The gradient kernel read ROWS[r] at unit stride: rows[::2] named [3, 0, 2] but the kernel
    # read [3, 9, 0] (9 past the last problem: inf and NaN, or other problems' data)
    g = torch.Generator().manual_seed(11)
    ex = models.get_expert("relu")
    R, n, d, k = 4, 21, 2, 2
    X = (torch.rand(R, n, d, generator=g, dtype=torch.float64) * 2 - 1).to(DEVICE)
    Y = torch.randn(R, n, generator=g, dtype=torch.float64).to(DEVICE)
    rows = torch.tensor([3, 9, 0, 9, 2, 9], device=DEVICE)[::2]
    assert rows.stride() == (2,)
    gp = torch.randn(3, k, models.gate_dim(score, d), generator=g, dtype=torch.float64).to(DEVICE)
    ep = torch.randn(3, k, d + 1, generator=g, dtype=torch.float64).to(DEVICE)
    out = tp.triton_moe_pass(X, Y, gp, ep, gate="sigmoid", score=score, expert=ex, rows=rows,
                             jacobian=jacobian, gauss_newton=gauss_newton)
    want = reference_moe_pass(X[rows], Y[rows], gp, ep, gate="sigmoid", score=score, expert=ex,
                              jacobian=jacobian, gauss_newton=gauss_newton, structured=False)
    assert poisoned and all(not buf.isnan().any() for buf in poisoned), "unwritten partial sums"
    for name, got, ref in zip(want._fields, out, want, strict=True):
        if ref is None:
            assert got is None, name
            continue
        assert got.shape == ref.shape, name
        assert _rel(got, ref) <= 1e-12, (name, _rel(got, ref))
