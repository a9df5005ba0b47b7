"""Where a sweep shard's Levenberg-Marquardt time goes on the GPU.

``python -m benchmarks fit-profile [--config nguyen2024] [--n 1000 100000] [--iters 30]
[--json PATH]`` (needs a CUDA GPU). For the config's first setting and each fitted
gate, at each sample size: the first fit of the process (compilation, handles) and a second one
timed by wall clock, then ``--iters`` iterations under ``torch.profiler``: GPU kernel time by
kernel (top 12), GPU busy time against wall time (the rest is the host: launches, waits), and
how many passes evaluated all replications or a subset (the accepted or still active ones).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time

import torch

from benchmarks.output import add_output_arguments, output_path, write_json
from moe_theory.config import load_config
from moe_theory.estimators import fit_lse
from moe_theory.estimators.problem import LeastSquaresProblem
from moe_theory.population import reference_measure
from moe_theory.provenance import provenance
from moe_theory.sweep import shard_data, shard_init


def _timed_fit(X, Y, setting, gate, init, ref, iters):
    torch.cuda.synchronize()
    start = time.perf_counter()
    fit = fit_lse(X, Y, setting.k_fit, gate, setting.expert, setting.score, init=init,
                  reference=ref, max_iter=iters)
    torch.cuda.synchronize()
    return time.perf_counter() - start, fit


def _rows_seen(iters_fn):
    """Run ``iters_fn`` counting the replications of every pass (full batch or subset)."""
    seen = {"full": 0, "subset": 0, "subset_rows": 0}
    original = LeastSquaresProblem.evaluate

    def counting(self, theta, rows=None, **kw):
        if rows is None:
            seen["full"] += 1
        else:
            seen["subset"] += 1
            seen["subset_rows"] += int(rows.numel())
        return original(self, theta, rows, **kw)

    LeastSquaresProblem.evaluate = counting
    try:
        iters_fn()
    finally:
        LeastSquaresProblem.evaluate = original
    return seen


def run(args: argparse.Namespace) -> int:
    """Profile the fits of one setting at each sample size and write the JSON."""
    if not torch.cuda.is_available():
        print("fit-profile needs a CUDA GPU", file=sys.stderr)
        return 2
    config = load_config(args.config)
    setting = config.setting(args.setting or config.settings[0])
    prov = provenance("cuda")
    path = output_path(args, "fit_profile", prov)
    out = {"provenance": prov, "config": args.config, "setting": setting.name,
           "iters": args.iters, "runs": []}
    for n in args.n:
        X, Y = shard_data(config, setting, n, 0, config.rep_block, "cuda")
        for gate in config.gates_for(setting):
            _, ref = reference_measure(setting, gate, device="cuda")
            init = shard_init(config, setting, n, gate, ref)
            first, _ = _timed_fit(X, Y, setting, gate, init, ref, args.iters)
            second, fit = _timed_fit(X, Y, setting, gate, init, ref, args.iters)
            seen = _rows_seen(functools.partial(_timed_fit, X, Y, setting, gate, init, ref,
                                                args.iters))
            acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            with torch.profiler.profile(activities=acts) as prof:
                wall, _ = _timed_fit(X, Y, setting, gate, init, ref, args.iters)
            events = [e for e in prof.key_averages() if e.device_time_total > 0]
            kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
            gpu_us = sum(e.device_time_total for e in kernels)
            top = sorted(kernels, key=lambda e: -e.device_time_total)[:12]
            # the batch runs as long as its longest start: that many iterations, which is
            # --iters only when some start reaches the cap (dividing by --iters understated the
            # time per iteration of fits that stopped on a tolerance)
            batch_iterations = max(1, int(fit.start_n_iter.max()))
            row = {"n": n, "gate": gate, "R": X.shape[0], "first_fit_s": first,
                   "second_fit_s": second, "batch_iterations": batch_iterations,
                   "ms_per_iter": 1e3 * second / batch_iterations,
                   "profiled_wall_s": wall, "gpu_kernel_s": gpu_us / 1e6,
                   "gpu_busy_fraction": gpu_us / 1e6 / wall, "passes": seen,
                   "mean_iterations": float(fit.n_iter.double().mean()),
                   "top_kernels": [{"name": e.key[:90], "calls": e.count,
                                    "ms_total": e.device_time_total / 1e3} for e in top]}
            out["runs"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "top_kernels"}), flush=True)
            for e in row["top_kernels"]:
                print(f"    {e['ms_total']:9.2f} ms  {e['calls']:5d}x  {e['name']}", flush=True)
        del X, Y
        torch.cuda.empty_cache()
        write_json(path, out)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``fit-profile`` subcommand."""
    p = subparsers.add_parser("fit-profile", help="where a shard's LM time goes on the GPU",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="nguyen2024")
    p.add_argument("--setting", default=None, help="default: the config's first")
    p.add_argument("--n", type=int, nargs="+", default=[1000, 100_000])
    p.add_argument("--iters", type=int, default=30)
    add_output_arguments(p)
    p.set_defaults(run=run)
