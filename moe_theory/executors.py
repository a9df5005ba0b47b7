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

Scheduling (docs/design.md#scheduling): given a cost model (:func:`shard_cost`), the shards go
out largest first, so that the last to finish are small and no worker waits long for another at
the end; Dask gets the cost as each task's priority and hands the queued tasks to whichever
worker frees up (or steals them back from a busy one). :func:`shared_cluster` keeps one Dask
cluster, started in the background, for every sweep run inside it (``reproduce all``).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing as mp
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from moe_theory.certificates import free_parameters
from moe_theory.config import SweepConfig
from moe_theory.console import log_stderr
from moe_theory.errors import DeviceLost, ResourceError, is_device_lost
from moe_theory.store import Shard
from moe_theory.threads import usable_cores, use_threads

if TYPE_CHECKING:
    from distributed import Client

EXECUTORS = ("local", "processes", "dask")
#: Processes that share one GPU under the ``processes`` executor unless told otherwise: a single
#: process leaves the GPU idle ~70% of a small shard (host work between kernels,
#: ``benchmarks/fit_profile.py``). On an H100, N24's warm sweep took 70 s in three processes and
#: 66 s in four (100 s in one, measured before a first-shard fix; ``kernels/moe/NOTES.md``); each
#: process holds its own caches, so three.
GPU_PROCESSES = 3


def device_workers(workers: int | None, device: str) -> int:
    """Processes that share ``device`` (``--workers``): the count given, checked, or by default
    :data:`GPU_PROCESSES` on a GPU and 1 on the CPU: worker processes know only the settings
    registered at import, so a setting registered at run time (a notebook's, a test's) is seen
    by one process alone. The CLI's default preset, whose settings are all built in, asks for
    one per core (``moe_theory.cli``)."""
    if workers is None:
        return GPU_PROCESSES if device.startswith("cuda") else 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"--workers: must be a positive integer, got {workers!r}")
    return workers


def process_options(workers: int) -> dict:
    """:func:`map_shards`' options for ``workers`` processes on this machine (none for one:
    in this process)."""
    return {"executor": "processes", "local_workers": workers} if workers > 1 else {}


#: Set in the environment of workers started for a GPU: their start-up also creates the CUDA
#: context (:func:`dask_setup`), so that the first shard does not pay for it.
WARM_CUDA_ENV = "MOE_THEORY_WARM_CUDA"
T = TypeVar("T")
S = TypeVar("S")  # a unit of work: a Shard, or another picklable item (the check's refits)

#: How many times a shard whose process lost its GPU context (:func:`is_device_lost`), or was
#: killed mid-shard, runs again, each time in another process. A shard's rows do not depend on
#: the process that computes them, so a retry costs time, never bits; a shard lost more often
#: than this ends the run (:class:`DeviceLost` or :class:`ResourceError`, exit code 3; the
#: finished shards are kept).
DEVICE_LOST_RETRIES = 2
#: Seconds the ``processes`` executor waits, once a worker's death broke its pool, for this
#: process's own interrupt before it runs the pool's shards again: Ctrl-C reaches the whole
#: process group, and idle workers that die of it break the pool as a killed one does. The
#: interrupt is seen within milliseconds wherever this process runs Python code or waits.
KILLED_GRACE_S = 1.0
#: Seconds at most that the ``processes`` executor waits for a broken pool's processes to be
#: reaped (a few milliseconds as a rule): some Python versions' pools could hang there.
REAP_TIMEOUT_S = 30.0
#: Exit status of a Dask worker that lost its GPU context (its nanny starts a fresh one).
DEVICE_LOST_EXIT = 75
#: Seconds between the ``processes`` executor's looks for a shard handed back to the queue.
REQUEUE_POLL_S = 0.2

#: The error that lost this process's GPU context, once one has (None until then). CUDA fails
#: every later call of a process whose context a fault ended, so such a process computes no
#: more shards: a spawned worker answers each with :class:`DeviceLost` at once, and this
#: process leaves them to its workers in every later :func:`map_shards` call.
_lost: str | None = None


def _run(fn: Callable[[S], T], shard: S) -> T:
    """``fn(shard)``; a CUDA fault that loses this process's GPU context
    (:func:`is_device_lost`) marks it lost and is raised as :class:`DeviceLost`, the one place
    where the executors tell a lost context from any other error."""
    global _lost
    try:
        return fn(shard)
    except DeviceLost:  # a lost context that ``fn``'s own executor reports: said already
        raise
    except Exception as err:
        if not is_device_lost(err):
            raise
        # the first line: torch adds lines of advice (CUDA_LAUNCH_BLOCKING) to the message
        _lost = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
        raise DeviceLost(f"process {os.getpid()} lost its GPU context ({_lost})") from err


def _in_worker(fn: Callable[[S], T], shard: S) -> T:
    """``fn(shard)`` in a spawned worker process; a worker whose GPU context is lost answers
    :class:`DeviceLost` (at once, for every later shard), and the parent gives the shard to a
    new process (:func:`_map_processes`)."""
    if _lost is not None:
        raise DeviceLost(f"process {os.getpid()} lost its GPU context earlier ({_lost})")
    return _run(fn, shard)


def _in_dask_worker(fn: Callable[[S], T], shard: S, threads: int) -> T:
    """``fn(shard)`` on a Dask worker, with torch's ``threads`` (the count of the process that
    submitted it, :func:`moe_theory.threads.use_threads`: a nanny's worker applied the thread
    rule to an environment Dask had rewritten); a worker whose GPU context is lost ends its
    process: its nanny starts a fresh one, and the scheduler runs the task again (up to its
    allowed failures), as for a worker killed mid-shard. The shard's claim was released on the
    way out of ``fn``, and an unfinished shard leaves no file."""
    use_threads(threads)
    try:
        return _run(fn, shard)
    except DeviceLost as lost:
        logging.getLogger(__name__).error("%s; this worker exits, its task runs again", lost)
        logging.shutdown()
        os._exit(DEVICE_LOST_EXIT)


def _shard_name(shard: object) -> str:
    """A shard's key; the check's jobs are tuples that hold one."""
    if isinstance(shard, tuple):
        return " ".join(_shard_name(part) for part in shard)
    return getattr(shard, "key", None) or str(shard)


#: Why a shard's run was lost when its worker process died (the pool cannot say which signal).
_KILLED = "a worker process died mid-shard (a signal: the host's out-of-memory killer, say)"


def _given_up(why: object, shard: object, runs: int, error: type[ResourceError] = DeviceLost,
              hint: str = "") -> ResourceError:
    """The error that ends a run: ``shard`` lost its process ``runs`` times (``why``: its GPU
    context, or the process itself)."""
    return error(f"{why}, computing {_shard_name(shard)} ({runs} time(s) in all, each in another "
                 f"process); the finished shards are kept: run the same command again to "
                 f"finish{hint}")


# ---- scheduling -------------------------------------------------------------------------------

#: One Levenberg-Marquardt iteration of one batched fit, measured with N24's shapes (twenty
#: problems of p = 594 parameters, n = 10^5, an H100/H200; kernels/moe/NOTES.md): ~2.1 ms that
#: do not grow with n, of which 0.8 + 0.75 ms are the batched Cholesky factorisation and
#: triangular solves (~p^3 per problem) and the rest launches and synchronisations, plus 8.9 ms
#: per 10^5 samples (the passes over the data, ~n p^2 per problem).
LM_ITERATION_FIXED_S = 0.55e-3
LM_SOLVE_S = 1.55e-3 / 20  # per problem, at LM_REFERENCE_P
LM_SAMPLE_S = 8.9e-3 / (20 * 10**5)  # per problem and sample, at LM_REFERENCE_P
LM_REFERENCE_P = 594


def shard_cost(config: SweepConfig, shard: Shard, gates: Sequence[str] | None = None) -> float:
    """A shard's GPU seconds at its iteration cap, by the model of :data:`LM_ITERATION_FIXED_S`:
    the order in which shards are handed out and, across the sweeps of one cluster, the Dask
    priority; only the order matters, not the seconds themselves.

    Every start of every replication is one problem of the shard's batched fit (one fit per
    fitted gate). An iteration costs a fixed part, the solves (``p^3`` per problem) and the
    passes over the samples (``n p^2`` per problem; ``n p`` for first-order algorithms, which
    solve nothing). The number of iterations is not known before the fit: it is taken as its
    cap, ``max_iter`` (so the optimiser check's 10x ``max_iter`` refits, small batches, weigh
    by their fixed cost, which dominates them). ``gates``: the fitted gates the job runs
    (default every gate of the setting; the optimiser check runs one per job).
    """
    setting = config.setting(shard.setting)
    problems = (shard.rep_stop - shard.rep_start) * (1 + config.starts)
    per_iteration = 0.0
    for gate in config.gates_in(setting, shard.rep_start) if gates is None else gates:
        scale = free_parameters(gate, setting.score, setting.expert, setting.d,
                                setting.k_fit) / LM_REFERENCE_P
        if config.algorithm == "lm":
            per_problem = LM_SOLVE_S * scale**3 + LM_SAMPLE_S * shard.n * scale**2
        else:
            per_problem = LM_SAMPLE_S * shard.n * scale
        per_iteration += LM_ITERATION_FIXED_S + problems * per_problem
    return per_iteration * config.max_iter


def largest_first(shards: Sequence[S], cost: Callable[[S], float]) -> list[S]:
    """``shards`` by decreasing cost; shards of equal cost keep their plan order (a stable sort),
    so the order is the same on every run."""
    return sorted(shards, key=lambda shard: -cost(shard))


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
            # --local-workers is a count of either; a scheduler or GPUs only Dask's
            also = " or processes" if chosen[0] == "--local-workers" else ""
            raise ValueError(f"{chosen[0]}: only with --executor dask{also}")
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


def dask_setup(worker: Any) -> None:
    """Dask's hook for a preloaded module (the workers this module starts preload it): the
    package is imported, and on a worker started for a GPU the CUDA context is created, while
    the cluster starts, before any shard is handed to the worker."""
    # the shards' heavy imports (seconds), not moe_theory.sweep itself: that module imports
    # this one, and a worker unpickles it with its first shard in any case
    import pandas  # noqa: F401

    import kernels.moe  # noqa: F401
    import moe_theory.estimators  # noqa: F401

    if os.environ.get(WARM_CUDA_ENV) == "1" and torch.cuda.is_available():
        torch.zeros(1, device="cuda")


def _start_cluster(*, local_workers: int | None, gpus: tuple[int, ...] | None,
                   processes_per_gpu: int):
    """A new cluster: ``processes_per_gpu`` workers per GPU, each pinned to it, or a
    ``LocalCluster`` of ``local_workers`` processes."""
    # Dask is an optional dependency (the ``distributed`` extra): imported where it is used
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    if gpus is not None:
        # CUDA_VISIBLE_DEVICES set before the worker process starts: each worker sees its GPU as
        # "cuda", so the rows' device column (and the table) is the same for any number of GPUs
        workers = {
            (f"gpu{g}" if processes_per_gpu == 1 else f"gpu{g}-{i}"): {"cls": Nanny, "options": {
                "nthreads": 1, "env": {"CUDA_VISIBLE_DEVICES": str(g), WARM_CUDA_ENV: "1"},
                "preload": [__name__], "silence_logs": logging.WARNING}}
            for g in gpus for i in range(processes_per_gpu)}
        return SpecCluster(
            workers=workers,
            scheduler={"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": None}},
            silence_logs=logging.WARNING)
    return LocalCluster(n_workers=local_workers or usable_cores(), threads_per_worker=1,
                        processes=True, host="127.0.0.1", dashboard_address=None,
                        preload=[__name__])


class _SharedCluster:
    """A cluster started in a background thread, the client to it once it is up, and its
    closing in that same thread (a Dask client is closed in the context it was opened in)."""

    def __init__(self, key: tuple, options: dict) -> None:
        self.key = key
        self._ready: cf.Future = cf.Future()
        self._done = threading.Event()
        self._closed: cf.Future = cf.Future()
        self._thread = threading.Thread(target=self._serve, args=(options,), daemon=True,
                                        name="shared-cluster")
        self._thread.start()

    def _serve(self, options: dict) -> None:
        try:
            with ExitStack() as stack:
                try:
                    client = stack.enter_context(_new_client(**options))
                except BaseException as err:  # handed to the first sweep that needs the cluster
                    self._ready.set_exception(err)
                    return
                self._ready.set_result(client)
                self._done.wait()
        except BaseException as err:  # closing failed: the caller of close() raises it
            self._closed.set_exception(err)
        else:
            self._closed.set_result(None)

    def client(self) -> Client:
        return self._ready.result()

    def ready(self) -> bool:
        return self._ready.done()

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        self._closed.result()


_shared: list[_SharedCluster] = []  # the sessions of shared_cluster, innermost last
_shared_lock = threading.Lock()


def _cluster_key(scheduler: str | None, local_workers: int | None,
                 gpus: tuple[int, ...] | None) -> tuple:
    return scheduler, local_workers, None if gpus is None else tuple(gpus)


@contextmanager
def shared_cluster(*, scheduler: str | None = None, local_workers: int | None = None,
                   gpus: tuple[int, ...] | None = None, processes_per_gpu: int = 1
                   ) -> Iterator[None]:
    """One Dask cluster for every ``dask`` :func:`map_shards` call with these options made
    inside (from any thread): started here in a background thread, so that its start-up (worker
    processes importing PyTorch, CUDA contexts: ~7 s for two H200s) overlaps what the caller
    does meanwhile (:func:`shared_cluster_ready` says when it is up), and closed on exit. Calls
    with other options start their own cluster as before.

    ``processes_per_gpu``: workers per GPU with ``gpus`` (the ``processes`` executor's reason:
    one process leaves a GPU idle between its kernels, :data:`GPU_PROCESSES`).
    """
    check_executor("dask", scheduler=scheduler, local_workers=local_workers, gpus=gpus)
    if isinstance(processes_per_gpu, bool) or not isinstance(processes_per_gpu, int) or (
            processes_per_gpu < 1):
        raise ValueError(f"--workers: must be a positive integer, got {processes_per_gpu!r}")
    session = _SharedCluster(_cluster_key(scheduler, local_workers, gpus), {
        "scheduler": scheduler, "local_workers": local_workers, "gpus": gpus,
        "processes_per_gpu": processes_per_gpu})
    with _shared_lock:
        _shared.append(session)
    try:
        yield
    finally:
        with _shared_lock:
            _shared.remove(session)
        session.close()


def shared_cluster_ready(*, scheduler: str | None = None, local_workers: int | None = None,
                         gpus: tuple[int, ...] | None = None) -> bool:
    """Whether the :func:`shared_cluster` of these options is up (False while it starts, or
    when there is none)."""
    key = _cluster_key(scheduler, local_workers, gpus)
    with _shared_lock:
        return any(s.key == key and s.ready() for s in _shared)


@contextmanager
def _new_client(*, scheduler: str | None, local_workers: int | None,
                gpus: tuple[int, ...] | None, processes_per_gpu: int = 1) -> Iterator[Client]:
    from distributed import Client  # optional dependency, as in _start_cluster

    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
        return
    cluster = _start_cluster(local_workers=local_workers, gpus=gpus,
                             processes_per_gpu=processes_per_gpu)
    with cluster, Client(cluster) as client:
        yield client


@contextmanager
def dask_client(*, scheduler: str | None = None, local_workers: int | None = None,
                gpus: tuple[int, ...] | None = None) -> Iterator[Client]:
    """A client of an existing scheduler, of the :func:`shared_cluster` started for these
    options, or of a cluster started (and closed) here.

    Local workers are processes with one thread each: a fit already uses the whole device it is
    given, and a process per worker keeps a crash (or ``kill -9``) to one shard.
    """
    key = _cluster_key(scheduler, local_workers, gpus)
    with _shared_lock:
        session = next((s for s in reversed(_shared) if s.key == key), None)
    if session is not None:
        yield session.client()
        return
    with _new_client(scheduler=scheduler, local_workers=local_workers, gpus=gpus) as client:
        yield client


def map_shards(fn: Callable[[S], T], shards: Sequence[S], *, executor: str = "local",
               scheduler: str | None = None, local_workers: int | None = None,
               gpus: tuple[int, ...] | None = None, device: str = "cpu",
               cost: Callable[[S], float] | None = None,
               log: Callable[[str], None] | None = None) -> Iterator[T]:
    """Run ``fn(shard)`` for every shard and yield the results as the shards finish.

    Parameters
    ----------
    fn : a picklable function (module level, or a ``functools.partial`` of one) that stores its
        shard's rows itself and returns small metadata
    shards : the shards still to compute (or other picklable units of work ``fn`` takes)
    executor : ``local``, ``processes`` or ``dask``
    scheduler, local_workers, gpus : where the ``dask`` executor runs (see :func:`dask_client`);
        ``local_workers`` is also the ``processes`` executor's count (default: one per core on
        the CPU, :data:`GPU_PROCESSES` on a GPU, whose ``device`` the shards run on)
    cost : the shards' relative work (:func:`shard_cost`); given, they are started largest
        first (:func:`largest_first`), and Dask receives it as their priority (higher first, also
        against the tasks of other sweeps on the same cluster); otherwise in the given order
    log : receives a line for each shard run again (below); default stderr

    Every worker computes with this process's torch thread count at the call
    (:mod:`moe_theory.threads`), whatever its own environment: a CPU's rows are then the same
    bit for bit under every executor and number of workers.

    Under ``processes`` and ``dask`` a shard whose process lost its GPU context
    (:func:`moe_theory.errors.is_device_lost`) or died mid-shard (``kill -9``, the host's
    out-of-memory killer) is run again, up to :data:`DEVICE_LOST_RETRIES` times (Dask: its allowed
    failures), never in that process again; a shard lost more often ends the run as an
    environment error (exit code 3; the finished shards are kept). Any other error raised by
    ``fn`` stops the sweep, as does a lost context with no other process to take over
    (``local``, one process).
    """
    check_executor(executor, scheduler=scheduler, local_workers=local_workers, gpus=gpus)
    if cost is not None:
        shards = largest_first(shards, cost)
    if executor == "local":
        for shard in shards:
            yield _here(fn, shard)
        return
    threads = torch.get_num_threads()
    if executor == "processes":
        default = GPU_PROCESSES if device.startswith("cuda") else usable_cores()
        yield from _map_processes(fn, shards, local_workers or default,
                                  log or log_stderr, threads)
        return
    from distributed import as_completed  # optional dependency, as in dask_client

    with dask_client(scheduler=scheduler, local_workers=local_workers, gpus=gpus) as client:
        # pure=False: a shard's task is a side effect (its file), never to be shared by key with
        # another sweep's task on the same scheduler. The scheduler queues tasks beyond what the
        # workers hold and hands out the highest priority first as a worker frees up; tasks it
        # placed on a worker early are stolen back by idle ones: largest first, to the end
        futures = [client.submit(_in_dask_worker, fn, shard, threads, pure=False,
                                 priority=0 if cost is None else cost(shard))
                   for shard in shards]
        try:
            for future in as_completed(futures):
                result: Any = future.result()
                future.release()
                yield result
        finally:
            client.cancel(futures)


def _here(fn: Callable[[S], T], shard: S) -> T:
    """``fn(shard)`` in this process, with no other to take over: a lost GPU context ends the
    run (:class:`DeviceLost`)."""
    try:
        return _run(fn, shard)
    except DeviceLost as lost:
        raise _given_up(lost, shard, 1) from lost


#: How often a spawned worker looks whether the process that spawned it is still there.
PARENT_POLL_S = 1.0


def _start_worker(parent: int, threads: int) -> None:
    """A spawned worker's start: torch's ``threads`` (the spawning process's count), and a
    watch on the process that spawned it.
    A sweep killed with ``kill -9`` cannot stop its pool: its workers finished the shards they
    held and wrote them on (into a folder that a ``--force`` may have given to another config
    meanwhile), then blocked on their queue for ever. Re-parented (``getppid`` changes), the
    worker ends at once; its shard's writes are atomic, so nothing partial stays under a final
    name, and its claim reads as stale."""
    use_threads(threads)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _map_processes(fn: Callable[[S], T], shards: Sequence[S], workers: int,
                   log: Callable[[str], None], threads: int) -> Iterator[T]:
    """``workers`` processes in all: this one and ``workers - 1`` spawned ones (with torch's
    ``threads``: :func:`_start_worker`), taking shards from one queue in the order given. This
    process needs no start-up (its modules are loaded, its CUDA context may exist), so it
    computes shards while the others import (~9 s on an H100 host); a thread keeps one shard in
    flight per spawned worker.

    A process that loses its GPU context computes no more shards; the one it was computing goes
    back to the front of the queue (at most :data:`DEVICE_LOST_RETRIES` times). A spawned
    worker's pool is then retired (its other workers finish their shards; its lost worker answers
    any shard it still takes at once, which goes back too) and a new pool takes the queue. This
    process, once lost, leaves the shards to the workers, in this call and every later one.

    A spawned worker that dies mid-shard breaks its pool, which ends its other workers and fails
    every shard the pool held: once the pool's processes are gone (their shards' claims then
    read as stale) and this process has not been interrupted meanwhile
    (:data:`KILLED_GRACE_S`), those shards go back to the front of the queue, each counted as a
    run lost, and a new pool takes the queue."""
    todo = deque(enumerate(shards))
    tries = [0] * len(shards)  # runs of each shard lost with its process (GPU context or kill)
    lock = threading.Lock()
    here = _lost is None  # whether this process takes shards
    helpers = min(workers - 1, len(shards) - 1) if here else min(max(workers - 1, 1), len(shards))
    if helpers < 1:
        for shard in shards:
            yield _here(fn, shard)
        return

    def take() -> tuple[int, S] | None:
        with lock:
            return todo.popleft() if todo else None

    def again(item: tuple[int, S], why: object) -> bool:
        """Hand a shard whose process was lost (its GPU context, or the process itself: ``why``)
        back to the queue, unless it has been lost :data:`DEVICE_LOST_RETRIES` times already."""
        i, shard = item
        with lock:
            if tries[i] >= DEVICE_LOST_RETRIES:
                return False
            tries[i] += 1
            retry = tries[i]  # once queued, another process may lose it and count again
            todo.appendleft(item)
        log(f"{why}; {_shard_name(shard)} runs again in another process (retry {retry} of "
            f"{DEVICE_LOST_RETRIES}); its rows do not depend on the process")
        return True

    def new_pool() -> cf.ProcessPoolExecutor:
        # spawn: a fork would copy this process's CUDA state, which CUDA does not allow
        return cf.ProcessPoolExecutor(max_workers=helpers, mp_context=mp.get_context("spawn"),
                                      initializer=_start_worker, initargs=(os.getpid(), threads))

    pools = [new_pool()]  # the last takes new shards; the others finish what they hold
    finished: queue.Queue = queue.Queue()
    busy_here = threading.Event()  # this process may still hand a shard back
    if here:
        busy_here.set()
    stopping = threading.Event()  # this process is interrupted or failed: hand out no more
    broken: dict[cf.ProcessPoolExecutor, bool] = {}  # a broken pool: do its shards run again?

    def rerun_broken(pool: cf.ProcessPoolExecutor) -> bool:
        """Whether the shards of ``pool``, which a worker's death broke, run again; decided once
        per pool, after its processes are reaped (a dead worker's claim is then stale to the
        next writer) and a moment for this process's own interrupt (:data:`KILLED_GRACE_S`).
        A new pool takes the queue."""
        if pool not in broken:
            reaper = threading.Thread(target=pool.shutdown, name="pool-reaper", daemon=True)
            reaper.start()  # shutdown(wait=True) by default
            reaper.join(REAP_TIMEOUT_S)
            broken[pool] = not stopping.wait(KILLED_GRACE_S)
            if broken[pool] and pool is pools[-1]:
                pools.append(new_pool())
        return broken[pool]

    def feed() -> None:
        in_flight: dict[cf.Future, tuple[tuple[int, S], cf.ProcessPoolExecutor]] = {}
        try:
            while not stopping.is_set():  # told to stop: the consumer ends the pools' work
                while len(in_flight) < helpers and (item := take()) is not None:
                    try:
                        in_flight[pools[-1].submit(_in_worker, fn, item[1])] = (item, pools[-1])
                    except BrokenProcessPool:  # a worker died, idle or before its shard ended
                        with lock:
                            todo.appendleft(item)  # not run: no retry counted
                        if not rerun_broken(pools[-1]):
                            raise
                if not in_flight:
                    # the queue again after busy_here: this process clears it once its lost
                    # shard is back in the queue, which may be after take() above found the
                    # queue empty (ended there, the feeder left that shard unrun, unsaid)
                    if not busy_here.is_set():
                        with lock:
                            if not todo:
                                return
                        continue
                    time.sleep(REQUEUE_POLL_S)
                    continue
                done, _ = cf.wait(in_flight, timeout=REQUEUE_POLL_S,
                                  return_when=cf.FIRST_COMPLETED)
                for future in done:
                    item, pool = in_flight.pop(future)
                    lost = future.exception()
                    if isinstance(lost, DeviceLost):
                        if again(item, lost):
                            if pool is pools[-1]:  # its lost worker would take shards again
                                pool.shutdown(wait=False)
                                pools.append(new_pool())
                            continue
                        future = cf.Future()
                        future.set_exception(_given_up(lost, item[1], tries[item[0]] + 1))
                    elif isinstance(lost, BrokenProcessPool):
                        if rerun_broken(pool) and again(item, _KILLED):
                            continue
                        future = cf.Future()
                        future.set_exception(_given_up(
                            f"{_KILLED} ({lost})", item[1], tries[item[0]] + 1, ResourceError,
                            " (with fewer worker processes if memory ran out)"))
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
        while busy_here.is_set() and (item := take()) is not None:
            try:
                result = _run(fn, item[1])
            except DeviceLost as lost:
                if not again(item, lost):
                    raise _given_up(lost, item[1], tries[item[0]] + 1) from lost
                busy_here.clear()  # after the shard is back in the queue: the feeder takes it
                continue
            yield result
            # the spawned workers' shards that ended meanwhile
            while not ended and not finished.empty():
                future = finished.get()
                ended = future is None
                if not ended:
                    yield future.result()
        busy_here.clear()
        while not ended and (future := finished.get()) is not None:
            yield future.result()
    except BaseException:
        # an error or an interrupt: drop the shards not started and do not wait for the running
        # ones (an unfinished shard leaves no file; the interrupt reaches the workers too); the
        # feeder, told first, starts no pool after the loop below
        stopping.set()
        busy_here.clear()
        with lock:
            todo.clear()
        feeder.join(timeout=KILLED_GRACE_S + 2 * REQUEUE_POLL_S)
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)
        raise
    for pool in pools:
        pool.shutdown(wait=True)
