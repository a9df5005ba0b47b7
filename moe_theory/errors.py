"""The errors the command line turns into exit codes (docs/design.md#exit-codes).

Exit codes of ``moe-theory``:

- :data:`EXIT_OK` (0): success;
- :data:`EXIT_DIFFERENT` (1): ``moe-theory compare`` found values that are not the same (as
  ``cmp`` and ``diff`` say it);
- :data:`EXIT_BAD_INPUT` (2): bad input, a ``ValueError``: a config key, a flag, a file's
  content; the message names the field and the allowed values;
- :data:`EXIT_ENVIRONMENT` (3): the machine refused, a :class:`ResourceError` or an ``OSError``:
  a folder that is read-only or full, ``--out`` naming a file, no permission, a device that is not
  there, a GPU whose context was lost more often than a shard is run again
  (:class:`DeviceLost`), a worker process killed mid-shard at every retry, one replication too
  large for the memory; the message names the path, the device or the shard. Every finished
  shard is kept and no partial file is left under its final name, so a rerun after the cause is
  fixed finishes the sweep;
- :data:`EXIT_INTERRUPTED` (130): interrupted (Ctrl-C); finished shards are kept;
- :data:`EXIT_BROKEN_PIPE` (141): the reader of the output stopped early (``moe-theory theory |
  head``), as a shell reports a command its pipe's reader left (128 + SIGPIPE).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_DIFFERENT = 1
EXIT_BAD_INPUT = 2
EXIT_ENVIRONMENT = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


class ResourceError(Exception):
    """The file system or the device refused what a run needs (exit code 3)."""


class StorageError(ResourceError):
    """A path of the results store that cannot be written or read.

    ``args`` is ``(path, reason)`` so that the error survives pickling from a worker process.
    """

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(str(path), reason)
        self.path, self.reason = str(path), reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class DeviceError(ResourceError, ValueError):
    """A device that this machine does not have. Also a ``ValueError``: to a caller of the Python
    API it is a bad argument like any other."""


class DeviceLost(ResourceError):
    """A process's GPU context was lost: a CUDA error other than a lack of memory (an illegal
    address, a device-side assert, CUDA's "unknown error"), after which CUDA fails every later
    call in that process. The message carries the error that lost it."""


#: What a CUDA library says when it cannot create its handle, which allocates device memory on
#: first use in each process: with the GPU full (several sweeps sharing it, each planning its
#: blocks against the same free memory) cuSOLVER fails ``cusolverDnCreate`` with
#: CUSOLVER_STATUS_INTERNAL_ERROR, not "out of memory" (an H100, 2026-12-06: three sweeps of
#: 4-6 processes, every one stopped by it at its first Cholesky solve).
_HANDLE_CREATION = ("cusolverDnCreate(", "cublasCreate(", "cublasLtCreate(", "STATUS_ALLOC_FAILED")

#: How CUDA's errors read, through torch ("CUDA error: an illegal memory access was
#: encountered", torch.AcceleratorError since torch 2.8), Triton's launcher ("Triton Error
#: [CUDA]: ...") and the CUDA libraries ("CUBLAS_STATUS_EXECUTION_FAILED").
_CUDA_ERROR = ("CUDA error", "Triton Error [CUDA]", "CUDA driver error", "_STATUS_EXECUTION_FAILED")


def is_out_of_memory(err: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError is a RuntimeError saying "out of memory", as is the CPU
    allocator's failure inside some torch kernels; Python's own is MemoryError; a CUDA library
    that cannot allocate its handle says so in its own words (:data:`_HANDLE_CREATION`)."""
    if isinstance(err, MemoryError):
        return True
    message = str(err)
    # the CPU allocator's own words ("DefaultCPUAllocator: can't allocate memory")
    return isinstance(err, RuntimeError) and (
        "out of memory" in message or "can't allocate memory" in message
        or any(word in message for word in _HANDLE_CREATION))


def is_device_lost(err: BaseException) -> bool:
    """Whether ``err`` is a CUDA error that leaves its process's context unusable: any CUDA
    error but a lack of memory (:func:`is_out_of_memory`: the sweep waits for memory and tries
    again in the same process). CUDA reports a sticky error again at every later call, so the
    process cannot tell a passing fault from a lasting one: only a fresh process can."""
    if isinstance(err, DeviceLost):
        return True
    return (isinstance(err, RuntimeError) and not is_out_of_memory(err)
            and any(word in str(err) for word in _CUDA_ERROR))
