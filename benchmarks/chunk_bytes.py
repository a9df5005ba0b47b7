"""The CPU chunk size of the PyTorch pass: one Gauss-Newton pass and one whole fit at several
chunk budgets, the rule used before (256 MiB for all problems together) in the same run.

``python -m benchmarks chunk-bytes [--budgets old,512,128,32] [--fit-budgets old,128] [--json PATH
| --save]`` (CPU; a budget is KiB per problem, or ``old``). The pass of
``kernels/moe/torch_pass.py`` streams the samples in chunks of ``JACOBIAN_CHUNK_BYTES`` (and
``gram.CHUNK_BYTES`` inside each), per problem on a CPU, at least ``gram.MIN_CHUNK_SAMPLES``
samples; a chunk's gathers and products are memory-bound there, so the budget decides whether
they run from cache. Each shape is a model the toolkit fits on a CPU
(the measurable truths at d = 4 and 8, N24's d = 32 with few and with many problems, the d = 2
presets), timed per pass as the median of repeated calls; the fit is the d = 4 GELU truth's
sigmoid fit of 20 replications at n = 1.6 * 10^4 from 2 starts each, the iterations and the
fitted SSRs reported so that the budgets are seen to change the time only.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.output import add_output_arguments, output_path, write_json
from kernels.moe import gram, moe_pass, torch_pass
from moe_theory import models
from moe_theory.provenance import provenance

#: (gate, expert, d, k, problems, n): the measurable truths (d = 4 and 8), N24's dense model
#: (d = 32, k = 9) with 20 and with 200 problems (the floor of samples matters there), the
#: d = 2 presets' size, and the d = 4 truth's largest n with few problems.
SHAPES = (("sigmoid", "gelu", 4, 4, 40, 16_000), ("softmax", "relu", 8, 4, 12, 20_000),
          ("sigmoid", "relu", 32, 9, 20, 2_000), ("softmax", "relu", 32, 9, 200, 1_000),
          ("sigmoid", "relu", 2, 3, 40, 1_000), ("sigmoid", "gelu", 4, 4, 4, 64_000),
          ("sigmoid", "gelu", 4, 4, 400, 4_000))


_NOW = (gram.CHUNK_BYTES["cpu"], torch_pass.JACOBIAN_CHUNK_BYTES["cpu"],
        gram.MIN_CHUNK_SAMPLES["cpu"], gram.PER_PROBLEM)


def _set_budget(budget: str) -> None:
    """``old``: 256 MiB for all problems together, no floor (the rule before 2026-12-04);
    else KiB per problem with the floor; ``now``: the committed constants."""
    if budget == "now":
        (gram.CHUNK_BYTES["cpu"], torch_pass.JACOBIAN_CHUNK_BYTES["cpu"],
         gram.MIN_CHUNK_SAMPLES["cpu"], gram.PER_PROBLEM) = _NOW
    elif budget == "old":
        gram.CHUNK_BYTES["cpu"] = torch_pass.JACOBIAN_CHUNK_BYTES["cpu"] = 256 * 2**20
        gram.MIN_CHUNK_SAMPLES["cpu"], gram.PER_PROBLEM = 1, frozenset()
    else:
        gram.CHUNK_BYTES["cpu"] = torch_pass.JACOBIAN_CHUNK_BYTES["cpu"] = int(float(budget) * 2**10)
        gram.MIN_CHUNK_SAMPLES["cpu"], gram.PER_PROBLEM = _NOW[2], _NOW[3]


def _pass_ms(gate, expert, d, k, R, n, seconds: float) -> float:
    g = torch.Generator().manual_seed(0)
    ex = models.get_expert(expert)
    X = torch.rand(R, n, d, dtype=torch.float64, generator=g) * 2 - 1
    Y = torch.randn(R, n, dtype=torch.float64, generator=g)
    gp = torch.randn(R, k, d + 1, dtype=torch.float64, generator=g)
    ep = torch.randn(R, k, ex.dim(d), dtype=torch.float64, generator=g)

    def one():
        moe_pass(X, Y, gp, ep, gate=gate, score="linear", expert=ex, backend="torch")

    one()  # warm-up
    times = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop or len(times) < 3:
        t = time.perf_counter()
        one()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def _fit(n: int = 16_000, reps: int = 20) -> dict:
    """The d = 4 GELU truth's sigmoid fit of one shard (the sweep's data, box and 2 starts)."""
    import dataclasses

    from moe_theory.config import load_config
    from moe_theory.estimators import fit_lse, starting_measures
    from moe_theory.population import reference_measure
    from moe_theory.sweep import shard_box, shard_data, shard_init

    config = dataclasses.replace(
        load_config("paper_figures/nguyen2024-measurable/gelu_d4_sigmoid_40.toml"), starts=1)
    setting = config.setting("nguyen2024-measurable-gelu-d4")
    _, ref = reference_measure(setting, "sigmoid", device="cpu")
    X, Y = shard_data(config, setting, n, 0, reps, "cpu")
    start = starting_measures(shard_init(config, setting, n, "sigmoid", ref), reps, "sigmoid",
                              setting.score, setting.expert, setting.k_fit, setting.d,
                              list(range(reps)), "cpu")
    t = time.perf_counter()
    fit = fit_lse(X, Y, setting.k_fit, "sigmoid", setting.expert, setting.score, init=start,
                  reference=ref, bounds=shard_box(config, setting, "sigmoid", ref),
                  noise_var=setting.noise_var, max_iter=config.max_iter)
    return {"s": time.perf_counter() - t, "iterations": int(fit.start_n_iter.sum()),
            "ssr_sum": float(fit.fit_loss.sum()) * n}


def run(args: argparse.Namespace) -> int:
    budgets = args.budgets.split(",")
    fit_budgets = args.fit_budgets.split(",") if args.fit_budgets else []
    out = {"provenance": provenance("cpu"), "threads": torch.get_num_threads(),
           "default_kib_per_problem": gram.CHUNK_BYTES["cpu"] / 2**10,
           "min_chunk_samples": gram.MIN_CHUNK_SAMPLES["cpu"],
           "passes": [], "fits": []}
    path = output_path(args, "chunk_bytes", out["provenance"])
    try:
        for gate, expert, d, k, R, n in SHAPES:
            row = {"gate": gate, "expert": expert, "d": d, "k": k, "problems": R, "n": n,
                   "ms": {}}
            for budget in budgets:
                _set_budget(budget)
                row["ms"][budget] = _pass_ms(gate, expert, d, k, R, n, args.seconds)
            out["passes"].append(row)
            print(f"{gate} {expert} d={d} k={k} R={R} n={n}: " + ", ".join(
                f"{b} {ms:.1f} ms" for b, ms in row["ms"].items()), flush=True)
            write_json(path, out)
        for budget in fit_budgets:
            _set_budget(budget)
            fit = {"budget": budget, **_fit()}
            out["fits"].append(fit)
            print(f"fit at {budget}: {fit['s']:.1f} s, {fit['iterations']} iterations, "
                  f"SSR sum {fit['ssr_sum']:.12e}", flush=True)
            write_json(path, out)
    finally:
        _set_budget("now")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``chunk-bytes`` subcommand."""
    p = subparsers.add_parser("chunk-bytes", help="the CPU pass's chunk budget: passes and a fit",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--budgets", default="old,1024,512,256,128,64,32",
                   help="KiB per problem per chunk, or old (256 MiB for all), comma-separated")
    p.add_argument("--fit-budgets", default="old,now",
                   help="the same for the whole fit, or now (the committed; empty: no fit)")
    p.add_argument("--seconds", type=float, default=1.5, help="time per pass measurement")
    add_output_arguments(p)
    p.set_defaults(run=run)
