"""Sigmoid attention past CUDA's grid limit: more (batch, head) pairs than 65535 in one call.

The kernels fold the pairs over two grid axes (kernels/attention/sigmoid_attention.py); B H =
76800 once failed with "invalid argument". bf16 forward and backward against the float64
reference on the first and last batch; tolerance as every bf16 check
(:data:`benchmarks.checks.ATTENTION_RTOL`: P and dS rounded to 8 bits; observed 3.2e-3 on an
H100).
"""

from __future__ import annotations

import pytest

from benchmarks.checks import ATTENTION_RTOL, grid_fold_error

pytestmark = pytest.mark.gpu


def test_more_pairs_than_the_grid_limit():
    assert grid_fold_error(B=38400, H=2) <= ATTENTION_RTOL
