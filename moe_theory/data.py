"""Data from a mixture-of-experts regression model (docs/theory.md#regression-model).

Seeds depend only on the coordinates ``(seed, n, rep)``: the same replication gets the same data
whichever gate is fitted to it (common random numbers), in whatever order or on whichever worker
the replications are drawn.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import hashlib
import threading

import numpy as np
import torch

from moe_theory.measure import MixingMeasure, check_measure
from moe_theory.threads import usable_cores
from moe_theory.validation import (
    check_choice,
    check_device,
    check_positive_float,
    check_positive_int,
    check_seed,
)

X_DISTRIBUTIONS = ("uniform", "normal")
#: Default noise variance nu (docs/theory.md#regression-model).
DEFAULT_NOISE_VAR = 0.01
#: Numbers per draw past which replications are drawn on threads (numpy's generators fill
#: without the GIL): an n = 10^7, d = 32 shard of 20 replications is 6.6e9 numbers, a minute on
#: one core. Below it a thread pool costs more than it saves.
THREADED_DRAW = 2**22
#: Rows of one staging chunk when a large draw goes to a CUDA device (:func:`_draw_staged`):
#: 2^18 rows of d = 32 are 69 MB, so each drawing thread holds two pinned chunks of X and two of
#: the noise, ~150 MB, however large the draw.
STAGE_ROWS = 2**18
#: Numbers per draw from which a CUDA draw is staged: 2^27 float64 are 1 GB, the size from which
#: faulting fresh host memory in costs seconds (measured at 8 GB per 3 replications: 3.7 s host,
#: 0.65 s staged). Smaller draws, every shard of a sweep up to n = 10^5, keep the host path: the
#: staged one would allocate pinned chunks on every core for a draw of a fraction of a second.
STAGED_DRAW = 2**27

#: Samples past which no machine holds the data (one replication, or all drawn at once): at
#: d = 1, 2^40 samples are 16 TiB of inputs and noise in float64 (numpy refused n = 10^20 with
#: "Maximum allowed dimension exceeded", which names no key, and reps = 10^12 ended in a
#: MemoryError). A config's sample sizes and G_bar designs have the same bound.
MAX_N = 2**40


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any printable coordinates, identical across processes and platforms."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sample_inputs(
    n: int, d: int, rng: np.random.Generator, x_dist: str = "uniform",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``x ~ Uniform[-1, 1]^d`` or ``N(0, I_d)``: (n, d), written into ``out`` when given.

    Filled in place: the generator's doubles ``u`` become ``2 u - 1``, the very numbers of
    ``rng.uniform(-1, 1)`` (which computes ``-1 + 2 u``), without a temporary the size of the
    draw (at n = 10^7, d = 32 that is 2.6 GB per replication, and a second pass over it).
    """
    x = np.empty((n, d)) if out is None else out
    if x_dist == "uniform":
        rng.random(out=x)
        x *= 2.0
        x -= 1.0
    else:
        rng.standard_normal(out=x)
    return x


def sample(
    truth: MixingMeasure,
    n: int,
    reps: int,
    seed: int = 0,
    *,
    first_rep: int = 0,
    noise_var: float = DEFAULT_NOISE_VAR,
    x_dist: str = "uniform",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``reps`` independent data sets of ``n`` pairs from ``y = f_{G*}(x) + eps``.

    Replication ``r`` (numbered from ``first_rep``) uses a generator seeded with
    ``(seed, n, r)`` only.

    Returns
    -------
    X : (reps, n, d)
    Y : (reps, n)
    """
    n = check_positive_int("n", n)
    reps = check_positive_int("reps", reps)
    if n > MAX_N:
        raise ValueError(f"n: must be at most {MAX_N} (2**40: no machine holds more), got {n}")
    if reps * n > MAX_N:
        raise ValueError(f"reps: {reps} data sets of n = {n} are {reps * n} samples, more than "
                         f"{MAX_N} (2**40: no machine holds them)")
    seed = check_seed("seed", seed)
    noise_var = check_positive_float("noise_var", noise_var)
    check_choice("x_dist", x_dist, X_DISTRIBUTIONS)
    if device is not None:
        device = check_device("device", device)
    check_measure("truth", truth)
    if truth.R != 1:
        raise ValueError(f"truth: must be a single measure (R = 1), got R = {truth.R}")
    if isinstance(first_rep, bool) or not isinstance(first_rep, int) or first_rep < 0:
        raise ValueError(f"first_rep: must be a non-negative integer, got {first_rep!r}")
    numbers = reps * n * (truth.d + 1)
    # a large float64 draw for a GPU skips host memory (the same numbers, bit for bit)
    if (device is not None and device.type == "cuda" and dtype == torch.float64
            and numbers >= STAGED_DRAW):
        X, eps = _draw_staged(truth.d, n, reps, seed, first_rep, noise_var, x_dist, device,
                              usable_cores())
    else:
        workers = min(reps, usable_cores()) if numbers >= THREADED_DRAW else 1
        X, eps = _draw_host(truth.d, n, reps, seed, first_rep, noise_var, x_dist, workers)
        X = torch.as_tensor(X, dtype=dtype, device=device)
        eps = torch.as_tensor(eps, dtype=dtype, device=device)
    with torch.no_grad():
        Y = truth.to(device=X.device, dtype=dtype)(X) + eps
    return X, Y


def _generator(seed: int, n: int, rep: int) -> np.random.Generator:
    """Replication ``rep``'s own generator: the numbers do not depend on threads or chunks."""
    return np.random.default_rng([int(seed) & (2**63 - 1), n, rep])


def _draw_host(d: int, n: int, reps: int, seed: int, first_rep: int, noise_var: float,
               x_dist: str, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``(reps, n, d)`` and noise ``(reps, n)`` in host memory, a replication per thread."""
    # filled in place: at n = 10^6, d = 32, R = 20 a stacked copy would double the 5 GB peak
    xs = np.empty((reps, n, d))
    noises = np.empty((reps, n))

    def draw(i: int) -> None:
        rng = _generator(seed, n, first_rep + i)
        sample_inputs(n, d, rng, x_dist, out=xs[i])
        rng.standard_normal(out=noises[i])  # then scaled in place: rng.standard_normal(n) * sd
        noises[i] *= np.sqrt(noise_var)

    if workers > 1:
        with cf.ThreadPoolExecutor(workers, thread_name_prefix="draw") as pool:
            list(pool.map(draw, range(reps)))
    else:
        for i in range(reps):
            draw(i)
    return xs, noises


def _draw_staged(d: int, n: int, reps: int, seed: int, first_rep: int, noise_var: float,
                 x_dist: str, device: torch.device, workers: int, rows: int = STAGE_ROWS,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The numbers of :func:`_draw_host`, bit for bit, drawn straight into device tensors.

    The work is split into pieces of ``rows`` samples: a generator fills an array in pieces as
    in one call, and uniform inputs take one 64-bit output per number, so a piece of X starting
    at sample ``a`` is drawn by the replication's generator advanced by ``a d`` outputs, and its
    noise by one advanced past all of X. Pieces of every replication thus run on all ``workers``
    threads (a shard block of 3 replications is not held to 3 cores); normal inputs, whose
    sampler takes a varying number of outputs, are drawn a replication per task. Each thread
    fills two pinned host chunks in turn, each copied to the device on the thread's own stream
    while the other is filled. A draw into fresh host memory spends its time faulting pages in
    (concurrent faults of one process serialise on its memory map: 16 threads drew the n = 10^7
    point's 52.8 GB in 40 s, one thread in 62 s) and then copies from pageable memory; pinned
    chunks are faulted once. On a CPU ``device`` (tests) the same code runs without pinning or
    streams."""
    X = torch.empty((reps, n, d), dtype=torch.float64, device=device)
    eps = torch.empty((reps, n), dtype=torch.float64, device=device)
    cuda = device.type == "cuda"
    rows = max(1, min(rows, n))
    sd = np.sqrt(noise_var)
    local = threading.local()

    def stage(out: torch.Tensor, start: int, fill, which: int) -> None:
        """Fill ``out[start:start + rows]`` (or to its end) through this thread's next chunk."""
        if not hasattr(local, "chunks"):
            local.stream = torch.cuda.Stream(device) if cuda else None
            local.chunks = [(torch.empty((rows, d), dtype=torch.float64, pin_memory=cuda),
                             torch.empty(rows, dtype=torch.float64, pin_memory=cuda))
                            for _ in range(2)]
            local.copied, local.turn = [None, None], 0  # a chunk's copy ends before its refill
        turn = local.turn
        stop = min(out.shape[0], start + rows)
        if local.copied[turn] is not None:
            local.copied[turn].synchronize()
        host = local.chunks[turn][which][:stop - start]
        fill(host.numpy())
        if cuda:
            with torch.cuda.stream(local.stream):
                out[start:stop].copy_(host, non_blocking=True)
                local.copied[turn] = torch.cuda.Event()
                local.copied[turn].record(local.stream)
        else:
            out[start:stop].copy_(host)
        local.turn = 1 - turn

    def generator(i: int, skip: int) -> np.random.Generator:
        rng = _generator(seed, n, first_rep + i)
        if skip:
            rng.bit_generator.advance(skip)
        return rng

    def x_piece(i: int, start: int) -> None:
        rng = generator(i, start * d)
        stage(X[i], start, lambda a: sample_inputs(a.shape[0], d, rng, x_dist, out=a), 0)

    def noise(i: int, rng: np.random.Generator | None = None) -> None:
        rng = rng or generator(i, n * d)
        for start in range(0, n, rows):
            stage(eps[i], start, lambda a: (rng.standard_normal(out=a),
                                            np.multiply(a, sd, out=a)), 1)

    def replication(i: int) -> None:  # normal inputs: X then its noise, one generator
        rng = generator(i, 0)
        for start in range(0, n, rows):
            stage(X[i], start, lambda a: sample_inputs(a.shape[0], d, rng, x_dist, out=a), 0)
        noise(i, rng)

    if x_dist == "uniform":
        tasks = [functools.partial(x_piece, i, start) for i in range(reps)
                 for start in range(0, n, rows)] + [functools.partial(noise, i)
                                                    for i in range(reps)]
    else:
        tasks = [functools.partial(replication, i) for i in range(reps)]

    def run(task) -> None:
        task()
        if cuda:  # each task's copies end before the pool reports it done
            local.stream.synchronize()

    with cf.ThreadPoolExecutor(workers, thread_name_prefix="draw") as pool:
        list(pool.map(run, tasks))
    return X, eps
