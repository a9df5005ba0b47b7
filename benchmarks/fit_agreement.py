"""GPU fits against CPU float64 fits on the same data and starts (docs/theory.md#estimator).

``python -m benchmarks fit-agreement [--config nguyen2024] [--n 1000] [--reps 4] [--json PATH]``
(needs a CUDA GPU). For every setting and fitted gate of the config, the sweep's replications
``0..reps-1`` at sample size ``n`` are fitted by Levenberg-Marquardt (the config's stopping rule)
four ways: CPU float64 (the PyTorch reference), and on the GPU the Triton kernels on float64
data, the Triton kernels on float32 data (tf32 ``J^T J``), and the PyTorch reference in float64.
Each GPU fit's Voronoi losses are compared with the CPU fit's, replication by replication: the
largest relative difference per loss is what docs/theory.md#estimator bounds by 1e-3.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from benchmarks.checks import AGREEMENT_RTOL, relative_differences
from benchmarks.output import add_output_arguments, output_path, write_json
from moe_theory.config import load_config
from moe_theory.estimators import fit_lse
from moe_theory.population import reference_measure
from moe_theory.provenance import provenance
from moe_theory.sweep import shard_data, shard_init
from moe_theory.voronoi import applicable_losses, voronoi_loss

VARIANTS = (  # name, device, dtype, backend
    ("cpu-float64-torch", "cpu", torch.float64, "torch"),
    ("cuda-float64-triton", "cuda", torch.float64, "triton"),
    ("cuda-float32-triton", "cuda", torch.float32, "triton"),
    ("cuda-float64-torch", "cuda", torch.float64, "torch"),
)


def max_rel_diff(values: list[float], base: list[float]) -> float:
    """Largest :func:`~benchmarks.checks.relative_differences` over the replications; NaN where
    one side is NaN (Python's ``max`` over a generator had dropped a NaN that was not first, so
    a GPU fit whose loss was NaN in a later replication "agreed")."""
    rel = relative_differences(values, base)
    return float(rel.max()) if rel.size else 0.0


def run(args: argparse.Namespace) -> int:
    """Fit every curve of the config four ways and write the JSON after each curve."""
    if not torch.cuda.is_available():
        print("fit-agreement needs a CUDA GPU", file=sys.stderr)
        return 2
    config = load_config(args.config)
    prov = provenance("cuda")
    path = output_path(args, "fit_agreement", prov)
    results = {"provenance": prov, "config": args.config, "n": args.n, "reps": args.reps,
               "max_iter": config.max_iter, "curves": []}
    for name in config.settings:
        setting = config.setting(name)
        X, Y = shard_data(config, setting, args.n, 0, args.reps)
        for gate in config.gates_for(setting):
            ref_kind, ref = reference_measure(setting, gate, device="cuda")
            ref = ref.to(device="cpu", dtype=torch.float64)
            losses = applicable_losses(setting, ref_kind, config.losses)
            init = shard_init(config, setting, args.n, gate, ref)
            curve = {"setting": name, "fit_gate": gate, "reference": ref_kind, "variants": {}}
            for vname, dev, dtype, backend in VARIANTS:
                start = time.perf_counter()
                fit = fit_lse(X.to(dev, dtype), Y.to(dev, dtype), setting.k_fit, gate,
                              setting.expert, setting.score, init=init, backend=backend,
                              reference=ref.to(device=dev), max_iter=config.max_iter,
                              rep_ids=list(range(args.reps)))
                fitted = fit.measure.to(device="cpu", dtype=torch.float64)
                curve["variants"][vname] = {
                    "wall_s": time.perf_counter() - start,
                    "n_iter": fit.n_iter.tolist(), "converged": fit.converged.tolist(),
                    "certified": fit.certified.tolist(), "fit_loss": fit.fit_loss.tolist(),
                    "losses": {loss: voronoi_loss(fitted, ref, loss).tolist() for loss in losses},
                }
            base = curve["variants"]["cpu-float64-torch"]["losses"]
            for v in curve["variants"].values():
                v["max_rel_diff"] = {loss: max_rel_diff(v["losses"][loss], base[loss])
                                     for loss in losses}
                v["agrees"] = all(d <= AGREEMENT_RTOL for d in v["max_rel_diff"].values())
            print(f"{name} {gate}: " + "; ".join(
                f"{vn} {v['wall_s']:.1f} s max rel {max(v['max_rel_diff'].values()):.1e}"
                for vn, v in curve["variants"].items()), flush=True)
            results["curves"].append(curve)
            write_json(path, results)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``fit-agreement`` subcommand."""
    p = subparsers.add_parser("fit-agreement", help="GPU fits against CPU float64 fits",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="nguyen2024")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--reps", type=int, default=4)
    add_output_arguments(p)
    p.set_defaults(run=run)
