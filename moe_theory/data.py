"""Data from a mixture-of-experts regression model (docs/theory.md#regression-model).

Seeds depend only on the coordinates ``(seed, n, rep)``: the same replication gets the same data
whichever gate is fitted to it (common random numbers), in whatever order or on whichever worker
the replications are drawn.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib

import numpy as np
import torch

from moe_theory.measure import MixingMeasure
from moe_theory.threads import usable_cores
from moe_theory.validation import (
    check_choice,
    check_device,
    check_positive_float,
    check_positive_int,
)

X_DISTRIBUTIONS = ("uniform", "normal")
#: Default noise variance nu (docs/theory.md#regression-model).
DEFAULT_NOISE_VAR = 0.01
#: Numbers per draw past which replications are drawn on threads (numpy's generators fill
#: without the GIL): an n = 10^7, d = 32 shard of 20 replications is 6.6e9 numbers, a minute on
#: one core. Below it a thread pool costs more than it saves.
THREADED_DRAW = 2**22


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
    noise_var = check_positive_float("noise_var", noise_var)
    check_choice("x_dist", x_dist, X_DISTRIBUTIONS)
    if device is not None:
        device = check_device("device", device)
    if truth.R != 1:
        raise ValueError(f"truth: must be a single measure (R = 1), got R = {truth.R}")
    if isinstance(first_rep, bool) or not isinstance(first_rep, int) or first_rep < 0:
        raise ValueError(f"first_rep: must be a non-negative integer, got {first_rep!r}")
    # filled in place: at n = 10^6, d = 32, R = 20 a stacked copy would double the 5 GB peak
    xs = np.empty((reps, n, truth.d))
    noises = np.empty((reps, n))

    def draw(i: int) -> None:
        # each replication's own generator: the numbers do not depend on the threads
        rng = np.random.default_rng([int(seed) & (2**63 - 1), n, first_rep + i])
        sample_inputs(n, truth.d, rng, x_dist, out=xs[i])
        rng.standard_normal(out=noises[i])  # then scaled in place: rng.standard_normal(n) * sd
        noises[i] *= np.sqrt(noise_var)

    workers = min(reps, usable_cores())
    if workers > 1 and reps * n * (truth.d + 1) >= THREADED_DRAW:
        with cf.ThreadPoolExecutor(workers, thread_name_prefix="draw") as pool:
            list(pool.map(draw, range(reps)))
    else:
        for i in range(reps):
            draw(i)
    X = torch.as_tensor(xs, dtype=dtype, device=device)
    eps = torch.as_tensor(noises, dtype=dtype, device=device)
    with torch.no_grad():
        Y = truth.to(device=X.device, dtype=dtype)(X) + eps
    return X, Y
