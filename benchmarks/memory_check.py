"""The largest fit shape on one GPU: R = 20, n = 10^6, d = 32, k = 9 (softmax fit, ReLU experts).

``python -m benchmarks memory-check [--iters 5] [--json PATH]`` (needs a CUDA GPU)
runs a few Levenberg-Marquardt iterations through ``fit_lse`` (float64, ``backend="auto"``) and
reports the peak GPU memory against the size an ``(R, n, p)`` Jacobian would take.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from benchmarks.output import add_output_arguments, output_path, write_json
from moe_theory import settings
from moe_theory.data import sample
from moe_theory.estimators import fit_lse
from moe_theory.initialization import near_truth
from moe_theory.provenance import provenance


def run(args: argparse.Namespace) -> int:
    """Fit, measure the peak memory and write the JSON."""
    if not torch.cuda.is_available():
        print("memory-check needs a CUDA GPU", file=sys.stderr)
        return 2
    setting = settings.get_setting("nguyen2024-dense-relu")  # d = 32, k_fit = 9
    truth = setting.truth()
    X, Y = sample(truth, args.n, args.reps, seed=0, device="cuda")
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    fit = fit_lse(X, Y, setting.k_fit, "softmax", "relu", init=near_truth(truth, setting.k_fit),
                  max_iter=args.iters)
    wall = time.perf_counter() - start
    p = 8 * 33 + 9 * 33
    out = {
        "provenance": provenance("cuda"), "R": args.reps, "n": args.n, "d": 32, "k": 9, "p": p,
        "iterations": fit.n_iter.tolist(), "backend": fit.backend, "wall_s": wall,
        "data_bytes": base, "peak_bytes_above_data": torch.cuda.max_memory_allocated() - base,
        "jacobian_bytes_if_stored": args.reps * args.n * p * 8,
        "gpu_total_bytes": torch.cuda.get_device_properties(0).total_memory,
    }
    print(json.dumps(out, indent=1, default=str))
    write_json(output_path(args, "memory_check", out["provenance"]), out)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``memory-check`` subcommand."""
    p = subparsers.add_parser("memory-check", help="peak GPU memory of the largest fit shape",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10**6)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--iters", type=int, default=5)
    add_output_arguments(p)
    p.set_defaults(run=run)
