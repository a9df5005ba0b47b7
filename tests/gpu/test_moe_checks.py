"""The MoE benchmark's checks as tests, on a GPU: what ``python -m benchmarks moe`` verifies
before it times (docs/kernels.md#measuring-speed).

On a GPU the float32 kernels take tf32 / tf32x3 tensor-core paths that the interpreter (CPU CI)
ignores, and the benchmark's shapes sum over 1e5-1e6 samples: these tests hold them to
:data:`benchmarks.checks.MOE_RTOL` (float64: ``MOE_RTOL_F64``) and the Triton Gram kernel to
``GRAM_RTOL``, against the float64 PyTorch reference on the same data.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from benchmarks import moe as bench
from benchmarks.checks import (
    gram_errors,
    gram_tolerance,
    moe_failures,
    moe_pass_errors,
    moe_problem,
    reference_pass,
)
from kernels.moe.torch_pass import jacobian_coefficients
from kernels.moe.triton_pass import fp64_dots, unsupported_reason
from moe_theory import models

pytestmark = pytest.mark.gpu


def _skip_unsupported(score: str, d: int, k: int, dtype: torch.dtype) -> None:
    reason = unsupported_reason(score, d, k, dtype, torch.device("cuda"))
    if reason:
        pytest.skip(reason)


@pytest.mark.parametrize(("model", "run"),
                         list(itertools.product(bench.CHECK_COMBOS, bench.CHECK_RUNS)),
                         ids=lambda v: "-".join(map(str, v)))
def test_every_model(model: tuple[str, str, str], run: tuple[str, bool]):
    gate, score, expert = model
    dtype, gauss_newton = getattr(torch, run[0]), run[1]
    d, k = bench.check_dims(score)
    _skip_unsupported(score, d, k, dtype)
    X, Y, gp, ep = moe_problem(bench.CHECK_R, bench.CHECK_N, d, k, dtype, gate, score, expert)
    errors = moe_pass_errors(X, Y, gp, ep, gate=gate, score=score, expert=expert,
                             gauss_newton=gauss_newton)
    assert not moe_failures(errors, dtype), errors


@pytest.mark.parametrize("shape", bench.GRADIENT_SHAPES, ids=lambda s: "-".join(map(str, s)))
def test_gradient_shapes(shape: tuple[int, int, int, int]):
    X, Y, gp, ep = moe_problem(*shape, torch.float32, **bench.MODEL)
    errors = moe_pass_errors(X, Y, gp, ep, **bench.MODEL, gauss_newton=False)
    assert not moe_failures(errors, torch.float32), errors


@pytest.fixture(scope="module")
def gn_problem():
    """The benchmark's Gauss-Newton shape (20, 1e5, 32, 9) in float32, with its float64
    reference pass."""
    X, Y, gp, ep = moe_problem(*bench.GN_SHAPE, torch.float32, **bench.MODEL)
    return (X, Y, gp, ep), reference_pass(X, Y, gp, ep, **bench.MODEL)


@pytest.mark.parametrize("precision", (None, *bench.PRECISIONS))
def test_gauss_newton_float32(gn_problem, precision: str | None):
    data, ref = gn_problem
    d, k = bench.GN_SHAPE[2:]
    config = None if precision is None else bench.with_precision(d, k, precision)
    errors = moe_pass_errors(*data, **bench.MODEL, config=config, reference=ref)
    assert not moe_failures(errors, torch.float32), errors


def test_gauss_newton_float64(gn_problem):
    data, ref = gn_problem
    if not fp64_dots(torch.device("cuda")):
        pytest.skip("Triton has no float64 dots on this device")
    errors = moe_pass_errors(*(t.double() for t in data), **bench.MODEL, reference=ref)
    assert not moe_failures(errors, torch.float64), errors


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_gram_kernel(gn_problem, dtype: torch.dtype):
    (X, _, gp, ep), _ = gn_problem
    if dtype == torch.float64 and not fp64_dots(X.device):
        pytest.skip("Triton has no float64 dots on this device")
    X, gp, ep = X.to(dtype), gp.to(dtype), ep.to(dtype)
    model = {**bench.MODEL, "expert": models.get_expert(bench.MODEL["expert"])}
    U = jacobian_coefficients(X, gp, ep, **model)
    precisions = bench.PRECISIONS if dtype == torch.float32 else ("ieee",)
    errors = gram_errors(U, X, gate=bench.MODEL["gate"], expert=bench.MODEL["expert"],
                         k=bench.GN_SHAPE[3], precisions=precisions)
    assert all(e <= gram_tolerance(dtype, prec) for prec, e in errors.items()), errors
