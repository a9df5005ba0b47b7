"""The CPU scipy baseline, timed beside a sweep on a reduced grid: the ratio the batched GPU
estimator is judged by (one problem at a time, ``scipy.optimize.least_squares``, one CPU thread).

The baseline runs in a separate process while the sweep runs, so it adds little wall time. It
fits the first setting's smallest sample size with the truth's own gate (reference ``G*``: no
population LSE needed), on the same data and starts as the sweep, for a fixed number of
evaluations (residual and Jacobian; one per scipy iteration, as one Gauss-Newton pass per
Levenberg-Marquardt iteration here). Its time per evaluation then prices a whole fit and,
assuming a cost linear in n, the whole grid, at the iteration counts the sweep actually used.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import time

import pandas as pd
import torch

from moe_theory.config import SweepConfig
from moe_theory.estimators import fit_lse
from moe_theory.sweep import shard_data, shard_init

#: Replications and scipy function evaluations of the reduced grid (scipy's iterations each
#: evaluate the residual and the Jacobian once).
BASELINE_REPS = 2
BASELINE_EVALS = 30
#: Thread-count variables of the BLAS and OpenMP runtimes numpy, scipy and torch may load.
SINGLE_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                     "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def _run(config: SweepConfig, setting_name: str, gate: str, n: int) -> dict:
    torch.set_num_threads(1)
    setting = config.setting(setting_name)
    X, Y = shard_data(config, setting, n, 0, BASELINE_REPS)
    # the near-reference start alone: the price per evaluation is that of one start
    init = shard_init(config, setting, n, gate, setting.truth())[0]
    start = time.perf_counter()
    fit = fit_lse(X, Y, setting.k_fit, gate, setting.expert, setting.score, init=init,
                  backend="scipy", max_iter=max(1, BASELINE_EVALS // 10))
    wall = time.perf_counter() - start
    evals = int(fit.n_iter.sum())
    return {"setting": setting_name, "fit_gate": gate, "n": n, "reps": BASELINE_REPS,
            "scipy_wall_s": round(wall, 3), "scipy_evaluations": evals,
            "scipy_s_per_evaluation": wall / max(evals, 1), "threads": 1,
            "blas_threads_env": os.environ.get("OPENBLAS_NUM_THREADS")}


def start(config: SweepConfig) -> cf.Future | None:
    """Start the baseline in a worker process; None when the config has no LM fits to compare."""
    if config.algorithm != "lm":
        return None
    setting = config.setting(config.settings[0])
    pool = cf.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
    # One BLAS thread too, set before the child loads numpy (the child inherits the environment
    # when the submit spawns it): one thread is what the baseline claims, and a BLAS pool of a
    # thread per core beside the sweep's busy workers is the likely reason it measured 1.24-1.65 s
    # per evaluation next to three GPU workers against 0.50 s next to one (H100 host, 16 cores).
    saved = {var: os.environ.get(var) for var in SINGLE_THREAD_ENV}
    os.environ.update(dict.fromkeys(SINGLE_THREAD_ENV, "1"))
    try:
        # the config itself, not its name: a config read from a file outside
        # simulations/configs has no name to load it by
        future = pool.submit(_run, config, setting.name, setting.truth_gate, min(config.n))
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
    pool.shutdown(wait=False)
    return future


def summarise(future: cf.Future | None, df: pd.DataFrame) -> dict | None:
    """Wait for the baseline and compare it with the sweep's own fits of the same shard."""
    if future is None:
        return None
    try:
        out = future.result()
    except Exception as err:  # the figure stands without its baseline; say why it is missing
        return {"error": f"{type(err).__name__}: {err}"}
    fits = df.drop_duplicates(["setting", "fit_gate", "n", "rep"])
    ours = fits[(fits.setting == out["setting"]) & (fits.fit_gate == out["fit_gate"])
                & (fits.n == out["n"])]
    if ours.empty:
        return {**out, "error": "the sweep has no fits of the baseline's shard"}
    per_iter = out["scipy_s_per_evaluation"]  # priced per iteration of ours
    scipy_fit = per_iter * float(ours.n_iter.mean())
    ours_fit = float(ours.wall_s.mean())
    # linear in n: the Jacobian is n x p and scipy's trust-region step costs O(n p^2)
    grid = float((per_iter * fits.n / out["n"] * fits.n_iter).sum())
    return {
        **out, "ours_s_per_fit": ours_fit, "ours_mean_iterations": float(ours.n_iter.mean()),
        "scipy_s_per_fit_estimate": scipy_fit, "speedup_per_fit": scipy_fit / ours_fit,
        "scipy_full_grid_estimate_s": grid, "ours_full_grid_fit_s": float(fits.wall_s.sum()),
    }
