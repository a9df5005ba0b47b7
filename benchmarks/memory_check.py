"""Largest issue-3 shape on one GPU: R = 20, n = 10^6, d = 32, k = 9 (sigmoid gate, ReLU experts).

``PYTHONPATH=. python benchmarks/memory_check.py [--iters 5] [--json PATH]`` (needs a CUDA GPU)
runs a few Levenberg-Marquardt iterations through ``fit_lse`` (float64, ``backend="auto"``) and
reports the peak GPU memory against the size an ``(R, n, p)`` Jacobian would take.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from kernels.bench import environment, write_json
from moe_theory import settings
from moe_theory.data import sample
from moe_theory.estimators import fit_lse
from moe_theory.initialization import near_truth


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10**6)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
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
        "environment": environment(), "R": args.reps, "n": args.n, "d": 32, "k": 9, "p": p,
        "iterations": fit.n_iter.tolist(), "backend": fit.backend, "wall_s": wall,
        "data_bytes": base, "peak_bytes_above_data": torch.cuda.max_memory_allocated() - base,
        "jacobian_bytes_if_stored": args.reps * args.n * p * 8,
        "gpu_total_bytes": torch.cuda.get_device_properties(0).total_memory,
    }
    print(json.dumps(out, indent=1, default=str))
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
