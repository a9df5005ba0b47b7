"""How many CPU threads torch uses in a process that imports ``moe_theory``.

The fits make many small tensor operations (a batched Levenberg-Marquardt step on (R, n, d) data
with n of a few thousand), where OpenMP workers mostly wait for each other; on a busy machine they
spin against other processes. Importing ``moe_theory`` therefore sets torch's intra-op threads
once, with :func:`apply_thread_default`:

- ``MOE_THEORY_THREADS=N`` (a positive integer) sets N threads;
- otherwise an explicit ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` is left to torch, which has
  already read it;
- otherwise :data:`DEFAULT_THREADS`.

``torch.set_num_threads(N)`` called after the import overrides all of these. The processes and
Dask executors run one process per core, each with the count of the process that hands out the
shards, as it is when it hands them out (:func:`use_threads`, called by ``moe_theory.executors``
in every worker before each shard; so a ``torch.set_num_threads`` there reaches them too):
processes, not threads, are the way to use more cores. A worker does not apply the rule again
in its own environment: a CPU's reductions split by thread count, so rows computed with another
count differ in the last bits, and Dask's nannies rewrite their workers' environment (its
``distributed.nanny.pre-spawn-environ`` sets ``MKL_NUM_THREADS=1`` where it is unset, which torch
reads before ``OMP_NUM_THREADS``: a user's ``OMP_NUM_THREADS=2`` gave the Dask workers one
thread and the other executors two; the nanny of a local cluster also writes them into the
environment of the process that starts it, which its later spawned workers inherited). One
exception, :func:`usable_cores`: numpy's random fills of a large draw
(``moe_theory.data.sample``) run one replication per thread on every core the process may use;
they neither spin nor wait for each other, and at n = 10^7 the draw is the host's whole work.
"""

from __future__ import annotations

import os

import torch

#: Environment variable that sets the thread count of every process importing ``moe_theory``.
ENV_VAR = "MOE_THEORY_THREADS"
#: The variables torch reads its intra-op thread count from (MKL's wins over OpenMP's).
TORCH_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: One thread, measured 2026-12-02 with the README's ``fit_lse`` example (R = 8, n = 2000, d = 2,
#: k = 3): on a 2-core machine shared with other jobs it took 1.25 s with one thread and 21.6 s
#: with two (OpenMP workers spin against the other processes). On two idle cores (an H200 host's
#: CPU pinned with taskset) two threads gain at most 1.7x: 0.43 s -> 0.38 s, and 14.8 s -> 8.9 s
#: for nguyen2024-dense-relu (d = 32, k = 9) at R = 4, n = 2000, which 16 idle cores fit in 4.8 s.
#: On an idle machine of many cores, large CPU fits gain from ``MOE_THEORY_THREADS``.
DEFAULT_THREADS = 1


def default_threads() -> int | None:
    """The thread count :func:`apply_thread_default` sets, or None to leave torch's own.

    Raises ValueError naming ``MOE_THEORY_THREADS`` if it is set to anything but a positive
    integer.
    """
    value = os.environ.get(ENV_VAR)
    if value is not None:
        try:
            threads = int(value)
        except ValueError:
            threads = 0
        if threads < 1:
            raise ValueError(f"{ENV_VAR}: must be a positive integer, got {value!r}")
        return threads
    if any(name in os.environ for name in TORCH_ENV_VARS):
        return None
    return DEFAULT_THREADS


def apply_thread_default() -> int:
    """Set torch's intra-op thread count to :func:`default_threads`; return the count in use."""
    threads = default_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def use_threads(threads: int) -> None:
    """Set torch's intra-op thread count to ``threads`` in this process (a worker, before it
    computes a shard: the count of the process that handed it out), unless it is that already."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
