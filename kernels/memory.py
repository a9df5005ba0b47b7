"""How much memory a device has left: the one place the kernels and the sweep ask."""

from __future__ import annotations

import os

import torch


def free_bytes(device: torch.device | str) -> int:
    """Bytes the driver counts free on the GPU ``device``: what a wait for other processes'
    memory watches (this process's own cached reserve, which :func:`available_cuda_memory`
    adds, does not change while it waits)."""
    return torch.cuda.mem_get_info(device)[0]


def available_cuda_memory(device: torch.device | str) -> int:
    """Bytes this process can still allocate: the driver's free count plus what PyTorch's caching
    allocator holds in reserve (freed blocks it keeps; the driver counts them as used)."""
    reserve = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return free_bytes(device) + reserve


def total_memory(device: str | torch.device) -> int | None:
    """Bytes ``device`` has in all, a fixed number (a GPU's, or the machine's physical memory),
    or None where the platform does not say: a plan made against it is the same whatever other
    processes hold when it is made."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return physical_memory()


#: Bytes of a GPU that one process takes outside PyTorch's caching allocator: its CUDA context,
#: the libraries' handles and the loaded kernels (about 0.5-1 GB on an H100 with torch 2.11).
#: Used memory beyond this and the allocator's reserve is other processes'.
CONTEXT_BYTES = 2 * 2**30


def held_by_others(device: str | torch.device) -> bool:
    """Whether other processes hold memory on the GPU ``device``: what the driver counts as used,
    less this process's allocator reserve and :data:`CONTEXT_BYTES`, is still above zero. The
    reserve is this process's whatever it holds, so the answer does not depend on the tensors a
    failed batch still pins."""
    free, total = torch.cuda.mem_get_info(device)
    return total - free - torch.cuda.memory_reserved(device) > CONTEXT_BYTES


def release_cache(device: str | torch.device) -> None:
    """Give this process's cached GPU memory back to the driver, for other processes: cuBLAS's
    workspaces first, then PyTorch's cached blocks. A block still in use pins its whole segment
    through ``empty_cache``, and a live cuBLAS workspace (32 MiB) is one: after a pass over
    30 GiB it kept an 8 GiB segment reserved (H100, 2026-12-07). PyTorch makes the workspaces
    again, of the same size, at the next product. No-op off a GPU."""
    if torch.device(device).type != "cuda":
        return
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)  # private: absent, skipped
    if clear is not None:
        clear()
    torch.cuda.empty_cache()


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine (a fixed number, unlike the free count), or None
    where the platform does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


__all__ = ["CONTEXT_BYTES", "available_cuda_memory", "free_bytes", "held_by_others",
           "physical_memory", "release_cache", "total_memory"]
