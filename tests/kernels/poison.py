"""NaN-filled output buffers for kernel tests: every cell a kernel should write starts as NaN."""

from __future__ import annotations

import torch


def nan_buffers(monkeypatch, *modules) -> list[torch.Tensor]:
    """Make each module's ``_empty`` allocator return NaN-filled tensors; returns the list of
    buffers handed out, for the test to check that the kernels filled them."""
    buffers: list[torch.Tensor] = []

    def nan_empty(shape, *, dtype, device):
        out = torch.full(shape, float("nan"), dtype=dtype, device=device)
        buffers.append(out)
        return out

    for module in modules:
        monkeypatch.setattr(module, "_empty", nan_empty)
    return buffers
