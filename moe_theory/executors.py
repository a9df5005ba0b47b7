"""Where shards run: one function boundary, :func:`map_shards`, in front of every back-end.

``local`` runs the shards one after the other in this process (the default; it needs nothing
beyond the package, and batches the replications of a shard inside one fit). ``processes`` runs
them in ``local_workers`` processes of this machine (this one and a standard-library process
pool), all on the same device: on one GPU, one shard's host work (Python, kernel launches, waits)
then overlaps another's kernels, which a single process leaves idle for most of a small shard.
``dask`` hands them
to a Dask distributed cluster: an existing scheduler (``scheduler="tcp://host:8786"``), a
``LocalCluster`` of ``local_workers`` processes, or one worker per GPU (``gpus``), each pinned to
its device. Whatever the back-end, a shard's task writes its own result file and returns small
metadata, so no table travels back to the driver and the results never depend on which worker
ran what, or in which order.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing as mp
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from moe_theory.store import Shard
from moe_theory.threads import apply_thread_default

if TYPE_CHECKING:
    from distributed import Client

EXECUTORS = ("local", "processes", "dask")
#: Processes that share one GPU under the ``processes`` executor unless told otherwise: a single
#: process leaves the GPU idle ~70% of a small shard (host work between kernels,
#: ``benchmarks/fit_profile.py``). On an H100, N24's warm sweep took 70 s in three processes and
#: 66 s in four (100 s in one, measured before a first-shard fix; ``kernels/moe/NOTES.md``); each
#: process holds its own caches, so three.
GPU_PROCESSES = 3
T = TypeVar("T")


def parse_gpus(gpus: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """GPU ordinals from ``--gpus``: ``"all"`` (every visible GPU), ``"0,1"`` or a sequence.

    Returns
    -------
    The ordinals, or None when ``gpus`` is None.
    """
    if gpus is None:
        return None
    visible = torch.cuda.device_count()
    if gpus == "all":
        if visible == 0:
            raise ValueError("--gpus: no CUDA device is visible on this machine")
        return tuple(range(visible))
    items = gpus.split(",") if isinstance(gpus, str) else list(gpus)
    try:
        ordinals = tuple(int(g) for g in items)
    except (TypeError, ValueError):
        raise ValueError(f"--gpus: expected 'all' or GPU ordinals like '0,1', got {gpus!r}") from None
    if not ordinals or len(set(ordinals)) != len(ordinals) or any(
            g < 0 or g >= visible for g in ordinals):
        raise ValueError(f"--gpus: {gpus!r} must name distinct GPUs among 0..{visible - 1} "
                         f"({visible} visible)")
    return ordinals


def check_executor(executor: str, *, scheduler: str | None = None,
                   local_workers: int | None = None, gpus: tuple[int, ...] | None = None) -> None:
    """Reject inconsistent executor options before any work starts (messages name the flag)."""
    if executor not in EXECUTORS:
        raise ValueError(f"--executor: unknown {executor!r}; allowed: {', '.join(EXECUTORS)}")
    chosen = [flag for flag, value in (("--scheduler", scheduler), ("--local-workers", local_workers),
                                       ("--gpus", gpus)) if value is not None]
    if executor == "local":
        if chosen:
            raise ValueError(f"{chosen[0]}: only with --executor dask or processes")
        return
    if executor == "processes":
        wrong = [flag for flag in chosen if flag != "--local-workers"]
        if wrong:
            raise ValueError(f"{wrong[0]}: only with --executor dask")
    if len(chosen) > 1:
        raise ValueError(f"{chosen[1]}: give one of --scheduler, --local-workers, --gpus")
    if local_workers is not None and (isinstance(local_workers, bool) or not isinstance(
            local_workers, int) or local_workers < 1):
        raise ValueError(f"--local-workers: must be a positive integer, got {local_workers!r}")
    if executor == "processes":
        return
    if scheduler is not None and (not isinstance(scheduler, str) or not scheduler):
        raise ValueError(f"--scheduler: must be an address like tcp://host:8786, got {scheduler!r}")
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ValueError("--executor: 'dask' needs Dask distributed: "
                         "pip install 'moe-theory[distributed]'") from None


@contextmanager
def dask_client(*, scheduler: str | None = None, local_workers: int | None = None,
                gpus: tuple[int, ...] | None = None) -> Iterator[Client]:
    """A client of an existing scheduler, or of a cluster started (and closed) here.

    Local workers are processes with one thread each: a fit already uses the whole device it is
    given, and a process per worker keeps a crash (or ``kill -9``) to one shard.
    """
    # Dask is an optional dependency (the ``distributed`` extra): imported where it is used
    from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster

    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
        return
    if gpus is not None:
        # CUDA_VISIBLE_DEVICES set before the worker process starts: each worker sees its GPU as
        # "cuda", so the rows' device column (and the table) is the same for any number of GPUs
        workers = {f"gpu{g}": {"cls": Nanny, "options": {
            "nthreads": 1, "env": {"CUDA_VISIBLE_DEVICES": str(g)},
            "silence_logs": logging.WARNING}} for g in gpus}
        cluster = SpecCluster(
            workers=workers,
            scheduler={"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": None}},
            silence_logs=logging.WARNING)
    else:
        cluster = LocalCluster(n_workers=local_workers or os.cpu_count() or 1, threads_per_worker=1,
                               processes=True, host="127.0.0.1", dashboard_address=None)
    with cluster, Client(cluster) as client:
        yield client


def map_shards(fn: Callable[[Shard], T], shards: Sequence[Shard], *, executor: str = "local",
               scheduler: str | None = None, local_workers: int | None = None,
               gpus: tuple[int, ...] | None = None, device: str = "cpu") -> Iterator[T]:
    """Run ``fn(shard)`` for every shard and yield the results as the shards finish.

    Parameters
    ----------
    fn : a picklable function (module level, or a ``functools.partial`` of one) that stores its
        shard's rows itself and returns small metadata
    shards : the shards still to compute
    executor : ``local`` or ``dask``
    scheduler, local_workers, gpus : where the ``dask`` executor runs (see :func:`dask_client`);
        ``local_workers`` is also the ``processes`` executor's count (default: one per core on
        the CPU, :data:`GPU_PROCESSES` on a GPU, whose ``device`` the shards run on)

    A worker that dies mid-shard (``kill -9``, out of host memory) is replaced by Dask and its
    shard is run again elsewhere; an error raised by ``fn`` itself stops the sweep.
    """
    check_executor(executor, scheduler=scheduler, local_workers=local_workers, gpus=gpus)
    if executor == "local":
        for shard in shards:
            yield fn(shard)
        return
    if executor == "processes":
        default = GPU_PROCESSES if device.startswith("cuda") else os.cpu_count() or 1
        yield from _map_processes(fn, shards, local_workers or default)
        return
    from distributed import as_completed  # optional dependency, as in dask_client

    with dask_client(scheduler=scheduler, local_workers=local_workers, gpus=gpus) as client:
        # pure=False: a shard's task is a side effect (its file), never to be shared by key with
        # another sweep's task on the same scheduler
        futures = [client.submit(fn, shard, pure=False) for shard in shards]
        try:
            for future in as_completed(futures):
                result: Any = future.result()
                future.release()
                yield result
        finally:
            client.cancel(futures)


def _map_processes(fn: Callable[[Shard], T], shards: Sequence[Shard], workers: int
                   ) -> Iterator[T]:
    """``workers`` processes in all: this one and ``workers - 1`` spawned ones, taking shards
    from one queue in plan order. This process needs no start-up (its modules are loaded, its
    CUDA context may exist), so it computes shards while the others import (~9 s on an H100 host);
    a thread keeps one shard in flight per spawned worker."""
    todo = deque(shards)
    lock = threading.Lock()

    def take() -> Shard | None:
        with lock:
            return todo.popleft() if todo else None

    helpers = min(workers - 1, len(shards) - 1)
    if helpers < 1:
        while (shard := take()) is not None:
            yield fn(shard)
        return
    # spawn: a fork would copy this process's CUDA state, which CUDA does not allow
    pool = cf.ProcessPoolExecutor(max_workers=helpers, mp_context=mp.get_context("spawn"),
                                  initializer=apply_thread_default)
    finished: queue.Queue = queue.Queue()

    def feed() -> None:
        in_flight: set = set()
        try:
            while True:
                while len(in_flight) < helpers and (shard := take()) is not None:
                    in_flight.add(pool.submit(fn, shard))
                if not in_flight:
                    return
                done, in_flight = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    finished.put(future)
        except BaseException as err:  # e.g. the pool broke: hand it to the consumer
            failed: cf.Future = cf.Future()
            failed.set_exception(err)
            finished.put(failed)
        finally:
            finished.put(None)

    feeder = threading.Thread(target=feed, name="shard-feeder", daemon=True)
    feeder.start()
    ended = False  # the feeder's end mark (None) was read
    try:
        while (shard := take()) is not None:
            yield fn(shard)
            # the spawned workers' shards that ended meanwhile
            while not ended and not finished.empty():
                future = finished.get()
                ended = future is None
                if not ended:
                    yield future.result()
        while not ended and (future := finished.get()) is not None:
            yield future.result()
    except BaseException:
        # an error or an interrupt: drop the shards not started and do not wait for the running
        # ones (an unfinished shard leaves no file; the interrupt reaches the workers too)
        with lock:
            todo.clear()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
