"""How much memory a device has left: the one place the kernels and the sweep ask."""

from __future__ import annotations

import os

import torch


def available_cuda_memory(device: torch.device | str) -> int:
    """Bytes this process can still allocate: the driver's free count plus what PyTorch's caching
    allocator holds in reserve (freed blocks it keeps; the driver counts them as used)."""
    reserve = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return torch.cuda.mem_get_info(device)[0] + reserve


def free_memory(device: str | torch.device) -> int | None:
    """Free bytes on ``device`` (CUDA: :func:`available_cuda_memory`; CPU: available physical
    pages), or None where the platform does not say."""
    device = torch.device(device)
    if device.type == "cuda":
        return available_cuda_memory(device)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine (a fixed number, unlike the free count), or None
    where the platform does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


__all__ = ["available_cuda_memory", "free_memory", "physical_memory"]
