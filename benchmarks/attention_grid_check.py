"""Sigmoid attention past CUDA's grid limit: more (batch, head) pairs than 65535 in one call.

``PYTHONPATH=. python benchmarks/attention_grid_check.py`` (needs a CUDA GPU): B H = 76800 pairs
(the teacher-student shape that once failed with "invalid argument"), bf16, forward and backward,
checked against the float64 reference on the first and last pairs.
"""

from __future__ import annotations

import torch

from kernels.attention import sigmoid_attention, sigmoid_attention_reference


def main() -> int:
    g = torch.Generator(device="cuda").manual_seed(0)
    B, H, N, D = 38400, 2, 16, 16
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, generator=g)
               .requires_grad_() for _ in range(3))
    out = sigmoid_attention(q, k, v)
    out.float().square().sum().backward()
    worst = 0.0
    for b in (0, B - 1):
        leaves = [t[b : b + 1].detach().double().requires_grad_() for t in (q, k, v)]
        ref = sigmoid_attention_reference(*leaves)
        ref.square().sum().backward()
        for got, want in ((out[b : b + 1], ref), (q.grad[b : b + 1], leaves[0].grad),
                          (k.grad[b : b + 1], leaves[1].grad), (v.grad[b : b + 1], leaves[2].grad)):
            worst = max(worst, float((got.double() - want).norm() / want.norm()))
    print(f"B H = {B * H}: forward and backward ran; largest relative error {worst:.2e}")
    return 0 if worst < 5e-2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
