"""The stacked-dot benchmark's kernel against the PyTorch reference (CPU: Triton's interpreter).

Tolerances, normwise relative to the reference evaluated in float64 on the same data: float64
inputs 1e-12 (both sides in float64, differing in summation order only; observed ~1e-15);
float32 inputs 1e-5 (float32 arithmetic, ~6e-8 per operation, over sums of a few hundred
samples; observed ~1e-7; the interpreter multiplies in ieee where the GPU runs tf32x3).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from benchmarks.checks import moe_problem, reference_pass
from benchmarks.stacked_dot import stacked_dot_pass

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs a GPU or TRITON_INTERPRET=1",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("gate,expert,R,n,d,k", [
    ("sigmoid", "relu", 3, 517, 8, 8),
    ("softmax", "relu", 2, 301, 5, 3),
    ("sigmoid", "linear", 2, 203, 15, 7),
    ("softmax", "linear", 2, 97, 1, 2),
])
def test_stacked_dot_pass_matches_the_reference(gate, expert, R, n, d, k, dtype):
    X, Y, gp, ep = moe_problem(R, n, d, k, dtype, gate, "linear", expert, device=DEVICE)
    ref = reference_pass(X, Y, gp, ep, gate=gate, score="linear", expert=expert,
                         gauss_newton=False)
    # the pass starts from NaN partials: a cell the kernel did not write would show here
    loss, jtr = stacked_dot_pass(X, Y, gp, ep, gate=gate, expert=expert, block_n=32,
                                 programs=3)
    assert jtr.shape == ref.jtr.shape
    assert torch.isfinite(loss).all() and torch.isfinite(jtr).all()
    for got, want in ((loss, ref.loss), (jtr, ref.jtr)):
        err = float(torch.linalg.norm(got.cpu() - want.cpu()) / torch.linalg.norm(want.cpu()))
        assert err < TOLERANCE[dtype], err


def test_stacked_dot_pass_refuses_shapes_it_does_not_cover():
    X, Y, gp, ep = moe_problem(1, 40, 3, 9, torch.float64, "sigmoid", "linear", "relu",
                               device="cpu")
    with pytest.raises(ValueError, match="k <= 8"):
        stacked_dot_pass(X, Y, gp, ep)


def test_stacked_dot_sass_counts_without_a_gpu(tmp_path):
    """``--sass`` compiles the kernel for sm_90 on this machine and counts its sample loop."""
    out = tmp_path / "sass.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "benchmarks", "stacked-dot", "--sass",
                           "--json", str(out)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    rows = json.loads(out.read_text())["sass"]
    assert len(rows) == len({(r["block_n"], r["num_warps"]) for r in rows}) >= 4
    for row in rows:
        # two dots per tile: the loop must hold tensor-core instructions
        assert row["loop_mix"].get("HMMA", 0) > 0
        assert row["loop_instructions_per_sample"] > 0
