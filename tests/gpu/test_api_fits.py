"""The public API fits every score x gate x expert on a GPU without a kernel resource error.

On a CPU nothing here runs (the ``gpu`` marker skips it): Triton's interpreter has no shared-memory
limit, so only a real device can show a configuration that does not fit (docs/kernels.md#resource-model).
"""

import itertools

import pytest
import torch

import moe_theory as mt

pytestmark = pytest.mark.gpu

SCORES = ("linear", "quadratic", "monomial")
GATES = ("sigmoid", "softmax")
EXPERTS = ("linear", "relu", "gelu", "tanh", "constant", "poly2", "poly3")
#: the largest d and k the issue names (d <= 8, k <= 9: the tiles grow with both), and d = 3, whose
#: padding gave the first resource failure seen on an H200 (each case compiles its own kernels, so
#: the grid is kept to these corners)
SHAPES = ((3, 9), (8, 9))
DTYPES = (torch.float32, torch.float64)


@pytest.mark.parametrize("score,gate,expert,shape,dtype",
                         list(itertools.product(SCORES, GATES, EXPERTS, SHAPES, DTYPES)),
                         ids=lambda v: f"d{v[0]}k{v[1]}" if isinstance(v, tuple)
                         else str(v).removeprefix("torch.") if isinstance(v, torch.dtype) else v)
def test_fit_lse_runs(score, gate, expert, shape, dtype):
    d, k = shape
    g = torch.Generator(device="cuda").manual_seed(d * 100 + k)
    X = torch.rand(3, 257, d, device="cuda", dtype=dtype, generator=g) * 2 - 1
    Y = torch.randn(3, 257, device="cuda", dtype=dtype, generator=g)
    fit = mt.fit_lse(X, Y, k=k, gate=gate, expert=expert, score=score, max_iter=2,
                     init=mt.random_init(n_starts=1, seed=0))
    assert torch.isfinite(fit.fit_loss).all()
    if dtype == torch.float64:
        # the PyTorch reference from the same start: two LM iterations amplify the kernels'
        # different summation order by far less than this
        ref = mt.fit_lse(X, Y, k=k, gate=gate, expert=expert, score=score, max_iter=2,
                         init=mt.random_init(n_starts=1, seed=0), backend="torch")
        assert torch.allclose(fit.fit_loss, ref.fit_loss, rtol=1e-6, atol=0)
