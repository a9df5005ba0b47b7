"""Would a warm start from a subsample's fit save full-n iterations?

``python -m benchmarks warm-start [--config nguyen2024] [--setting nguyen2024-dense-relu]
[--gate softmax] [--n 1e6] [--sub 1e5] [--reps 20] [--device cuda] [--json PATH | --save]``
fits one shard three times from the sweep's near-reference start (start 0 of
``moe_theory.sweep.shard_init``), as the certified protocol would: *cold* on all n rows; *sub* on
the first ``--sub`` rows of each replication; *warm* on all n rows from the *sub* fit. It
reports each fit's seconds, iterations and share stopped on a tolerance, and how the warm fit's
SSR and losses compare with the cold one's: a warm start pays only if it cuts the full-n
iterations (the n = 10^7 point's cost, benchmarks/README.md "Certified figure") and lands in
the same minimum.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.output import add_output_arguments, output_path, write_json
from moe_theory.config import load_config
from moe_theory.estimators import fit_lse
from moe_theory.population import reference_measure
from moe_theory.provenance import provenance
from moe_theory.sweep import shard_box, shard_data, shard_init
from moe_theory.voronoi import applicable_losses, voronoi_loss

#: losses compared between the warm and the cold fit, those the sweep measures against the
#: fit's reference (a run before commit 0049323's successor listed D3 against G* too)
LOSSES = ("D1", "D3", "err_eta_over", "err_eta_exact")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(args: argparse.Namespace) -> int:
    """Fit cold, on the subsample and warm; write the JSON after each."""
    config = load_config(args.config)
    setting = config.setting(args.setting)
    n, n_sub, device = int(args.n), int(args.sub), args.device
    if not 0 < n_sub < n:
        raise SystemExit(f"--sub: must be between 0 and --n ({n}), got {n_sub}")
    out = {"provenance": provenance(device), "config": config.name, "setting": setting.name,
           "gate": args.gate, "n": n, "n_sub": n_sub, "reps": args.reps, "d": setting.d,
           "k": setting.k_fit, "max_iter": config.max_iter, "fits": {}}
    path = output_path(args, "warm_start", out["provenance"])
    kind, ref = reference_measure(setting, args.gate, device=device)
    out["reference"] = kind
    _sync(device)
    start = time.perf_counter()
    X, Y = shard_data(config, setting, n, 0, args.reps, device)
    _sync(device)
    out["data_s"] = time.perf_counter() - start
    box = shard_box(config, setting, args.gate, ref)
    options = dict(reference=ref, bounds=box, noise_var=setting.noise_var,
                   max_iter=config.max_iter, rep_ids=list(range(args.reps)))

    def fit(rows: int, init, name: str):
        _sync(device)
        t0 = time.perf_counter()
        result = fit_lse(X[:, :rows], Y[:, :rows], setting.k_fit, args.gate, setting.expert,
                         setting.score, init=init, **options)
        _sync(device)
        wall = time.perf_counter() - t0
        out["fits"][name] = {
            "rows": rows, "wall_s": wall, "n_iter": result.n_iter.tolist(),
            "n_iter_median": float(result.n_iter.double().median()),
            # a batched fit costs about the sum of its problems' iterations (converged ones drop
            # out of each pass)
            "n_iter_sum": int(result.n_iter.sum()),
            "converged_share": float(result.converged.double().mean()),
            "ssr": (result.fit_loss * rows).tolist()}
        print(f"{name}: n = {rows}, {wall:.1f} s, median {out['fits'][name]['n_iter_median']:.0f} "
              f"iterations, {out['fits'][name]['converged_share']:.0%} stopped on a tolerance",
              flush=True)
        write_json(path, out)
        return result

    start = shard_init(config, setting, n, args.gate, ref)[:1]  # the near-reference start
    # compile the kernels and warm the caches first, so no timed fit pays for them
    fit_lse(X[:, :n_sub], Y[:, :n_sub], setting.k_fit, args.gate, setting.expert, setting.score,
            init=start, **{**options, "max_iter": 2})
    cold = fit(n, start, "cold")
    sub = fit(n_sub, start, "sub")
    warm = fit(n, sub.measure, "warm")
    gap = ((warm.fit_loss - cold.fit_loss) * n / setting.noise_var).tolist()
    out["warm_minus_cold_ssr_nu"] = gap
    out["same_minimum_share"] = sum(abs(g) <= 1 for g in gap) / len(gap)
    cpu_ref = ref.to(device="cpu")
    out["losses"] = {}
    for loss in applicable_losses(setting, kind, LOSSES):
        cold_v = voronoi_loss(cold.measure.to(device="cpu"), cpu_ref, loss)
        warm_v = voronoi_loss(warm.measure.to(device="cpu"), cpu_ref, loss)
        out["losses"][loss] = {"cold_median": float(cold_v.median()),
                               "warm_median": float(warm_v.median())}
    fits = out["fits"]
    total_cold = fits["cold"]["wall_s"]
    total_warm = fits["sub"]["wall_s"] + fits["warm"]["wall_s"]
    out["speedup"] = total_cold / total_warm
    out["full_n_iterations_saved"] = 1 - fits["warm"]["n_iter_sum"] / fits["cold"]["n_iter_sum"]
    print(f"cold {total_cold:.1f} s, sub + warm {total_warm:.1f} s ({out['speedup']:.2f}x), "
          f"full-n iterations saved {out['full_n_iterations_saved']:.0%}; "
          f"warm SSR within 1 nu of cold in {out['same_minimum_share']:.0%} of replications "
          f"(warm - cold from {min(gap):+.1f} to {max(gap):+.1f} nu)")
    write_json(path, out)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``warm-start`` subcommand."""
    p = subparsers.add_parser("warm-start", help="full-n fits from a subsample's fit vs cold",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="nguyen2024")
    p.add_argument("--setting", default="nguyen2024-dense-relu")
    p.add_argument("--gate", default="softmax")
    p.add_argument("--n", type=float, default=1e6)
    p.add_argument("--sub", type=float, default=1e5, help="rows of the subsample fit")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_output_arguments(p)
    p.set_defaults(run=run)
