"""The attention benchmark's checks as tests, on a GPU: what ``python -m benchmarks attention``
verifies before it times (docs/kernels.md#measuring-speed).

Shapes are the benchmark's kind (bf16, H * D = 2048) at a smaller N; odd shapes are the
interpreter tests' job (tests/kernels/test_attention.py). Tolerances: see
:mod:`benchmarks.checks`.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.checks import ATTENTION_RTOL, PRECISE_GATE_RTOL, attention_errors, gate_error
from kernels.attention import sigmoid_attention

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("precise", [True, False], ids=["precise", "fast"])
@pytest.mark.parametrize("d", [64, 128])
def test_sweep_point(d: int, precise: bool, causal: bool):
    n, heads, batch = 1024, 2048 // d, 2
    g = torch.Generator(device="cuda").manual_seed(d + 2 * precise + causal)
    q, k, v, do = (torch.randn(batch, heads, n, d, generator=g, device="cuda",
                               dtype=torch.bfloat16) for _ in range(4))
    errors = attention_errors(lambda q, k, v: sigmoid_attention(q, k, v, causal=causal,
                                                                precise=precise),
                              q, k, v, do, causal=causal)
    assert max(errors.values()) <= ATTENTION_RTOL, errors


@pytest.mark.parametrize("n_keys", [1024, 16384])
def test_precise_gate_near_one_over_n(n_keys: int):
    got = gate_error(n_keys, precise=True)
    assert got["max"] <= PRECISE_GATE_RTOL, got
