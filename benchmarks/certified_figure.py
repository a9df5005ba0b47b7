"""The certified N24 figure, timed phase by phase, with the float64 and mixed-precision Gram side
by side; and one certified point at large n.

``python -m benchmarks certified-figure [--gram float64,tf32] [--n-num 15] [--n-max 100000]
[--reps 20] [--max-time-s S] [--process] [--solves] [--scipy] [--json PATH | --save]``

Figure mode (the default): the sweep of a config (``nguyen2024``: 4 curves, 15 n in 10^3..10^5,
20 replications, 5 starts, LM stopped on its tolerances, the box) as ``moe_theory.sweep`` runs a
shard, phase by phase: the G_bar references (computed cold, in a fresh cache folder), their
certificates, then per sample size the data, and per fitted gate the fit and the Voronoi losses,
once per Gram precision (docs/kernels.md#mixed-precision-gauss-newton) on the same data, starts
and reference. It reports each phase's time, an estimate of each precision's process wall time
(process start to the end, its own fits and losses only), the iterations, and how far every
Voronoi loss of the mixed run lies from the float64 one (relative difference, the fits that
exceed 1e-3 named). ``--process`` runs each precision in its own process instead and times it
from start to exit (the issue's target), then compares their losses the same way.
``--max-time-s`` stops starting sample sizes past that many seconds (the JSON says which ran).
``--solves``: the damped solve's forms (Cholesky with ``torch.cholesky_solve``, triangular solves,
LU, inverse) at the figure's batch shapes (needs a GPU).
``--scipy``: the CPU scipy baseline beside the run (``moe_theory.baseline``), the ratio per fit.

``--n N``: one certified point instead: ``--setting`` (default ``nguyen2024-dense-relu``: d = 32,
k = 9) at n = N, ``--reps`` replications x the config's starts in one batched fit of ``--gate``
(default softmax, certified against G*); reports data and fit time, iterations, seconds per LM
iteration and the peak GPU memory. ``--max-iter`` caps the iterations (the per-iteration time
then prices a whole fit).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks.checks import AGREEMENT_RTOL, relative_differences
from benchmarks.output import add_output_arguments, output_path, write_json
from kernels.moe.gram import GRAM_DTYPES
from moe_theory import baseline
from moe_theory.config import load_config
from moe_theory.estimators import fit_lse
from moe_theory.estimators.levenberg_marquardt import STOP_TESTS, stop_reason
from moe_theory.population import population_lse
from moe_theory.provenance import provenance
from moe_theory.sweep import certify, shard_box, shard_data, shard_init
from moe_theory.voronoi import applicable_losses, voronoi_loss

#: Stop tests of a converged fit (moe_theory.estimators.levenberg_marquardt.STOP_TESTS).
TOLERANCE_TESTS = tuple(t for t in STOP_TESTS[1:] if stop_reason(t) == "tolerance")


def _process_age() -> float:
    """Seconds since this process started (Linux ``/proc``; else since this module's import)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()


class Phases:
    """Wall time per phase, the device synchronised at both ends of each."""

    def __init__(self, device: str):
        self.device = device
        self.s: dict[str, float] = {}

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    @contextmanager
    def __call__(self, name: str):
        self.sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.s[name] = self.s.get(name, 0.0) + time.perf_counter() - t0


@contextmanager
def _fresh_cache(keep: bool):
    """A fresh G_bar cache folder (a cold run computes every reference), restored after."""
    if keep:
        yield
        return
    old = os.environ.get("MOE_THEORY_CACHE")
    with tempfile.TemporaryDirectory(prefix="moe-theory-cache-") as folder:
        os.environ["MOE_THEORY_CACHE"] = folder
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("MOE_THEORY_CACHE", None)
            else:
                os.environ["MOE_THEORY_CACHE"] = old


def _grid(config_n: tuple[int, ...], n_max: int | None, n_num: int | None) -> list[int]:
    """The config's sample sizes up to ``n_max``, thinned to ``n_num`` spread evenly over them
    (always the two ends), so a shorter run keeps the figure's own n."""
    grid = [n for n in config_n if n_max is None or n <= n_max]
    if not grid:
        raise ValueError(f"--n-max: {n_max} is below the config's smallest n ({min(config_n)})")
    if n_num is not None and n_num < len(grid):
        if n_num < 1:
            raise ValueError(f"--n-num: must be >= 1, got {n_num}")
        picks = np.unique(np.round(np.linspace(0, len(grid) - 1, n_num)).astype(int))
        grid = [grid[i] for i in picks]
    return grid


def _variants(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    for v in names:
        if v not in GRAM_DTYPES:
            raise ValueError(f"--gram: {v!r} is not one of {', '.join(GRAM_DTYPES)}")
    if not names or len(set(names)) != len(names):
        raise ValueError(f"--gram: a comma-separated list of distinct precisions, got {text!r}")
    return names


def _config(args: argparse.Namespace):
    config = load_config(args.config, fast=args.fast)
    reps = args.reps or config.reps
    return replace(config, reps=reps, rep_block=min(config.rep_block, reps),
                   max_iter=args.max_iter or config.max_iter)


def _references(config, device: str, backend: str, phases: Phases, design_size: int | None
                ) -> dict:
    """Every (setting, gate)'s reference; the G_bar ones computed now (timed as ``gbar``)."""
    refs = {}
    for setting in config.setting_objects():
        for gate in config.gates_for(setting):
            kind = setting.reference_kind(gate)
            if kind == "G*":
                refs[setting.name, gate] = (kind, setting.truth())
                continue
            with phases("gbar"):
                refs[setting.name, gate] = (kind, population_lse(
                    setting, gate, design_size=design_size, device=device, backend=backend))
    return refs


def _fit(config, setting, X, Y, n: int, gate: str, ref, gram_dtype: str, backend: str):
    """One shard's fit of ``gate``, as :func:`moe_theory.sweep.run_shard` makes it."""
    return fit_lse(X, Y, setting.k_fit, gate, setting.expert, setting.score,
                   init=shard_init(config, setting, n, gate, ref), algorithm=config.algorithm,
                   backend=backend, reference=ref,
                   bounds=shard_box(config, setting, gate, ref),
                   noise_var=setting.noise_var, max_iter=config.max_iter,
                   sgd=config.sgd_protocol(), rep_ids=list(range(X.shape[0])),
                   gram_dtype=gram_dtype)


def _fit_record(fit, setting: str, gate: str, n: int, variant: str, fit_s: float) -> dict:
    return {"setting": setting, "gate": gate, "n": n, "gram": variant, "fit_s": fit_s,
            # all S x R problems advance together: the batch runs as long as its longest start
            "batch_iterations": int(fit.start_n_iter.max()),
            "iterations_sum": int(fit.start_n_iter.sum()),
            "n_iter": fit.n_iter.tolist(), "stop_test": fit.stop_test,
            "converged": float(fit.converged.double().mean()),
            "certified": float(fit.certified.double().mean()),
            "fit_loss": fit.fit_loss.tolist(), "proj_grad_max": fit.proj_grad_max.tolist()}


def figure(args: argparse.Namespace) -> dict:
    """Figure mode in this process: every precision of ``--gram`` on the same shards."""
    variants = _variants(args.gram)
    config = _config(args)
    grid = _grid(config.n, args.n_max, args.n_num)
    device, backend = args.device, args.backend
    phases = Phases(device)
    started = time.perf_counter()
    out = {"mode": "figure", "config": config.name, "fast": args.fast, "config_hash": config.hash,
           "n": grid, "reps": config.reps, "starts": config.starts + 1,
           "max_iter": config.max_iter, "gram": variants, "device": device,
           "startup_s": _process_age(), "complete": False}
    pending = baseline.start(config) if args.scipy else None
    records, fits = [], []
    with _fresh_cache(args.keep_cache), tempfile.TemporaryDirectory() as folder:
        refs = _references(config, device, backend, phases, args.design_size)
        if not args.no_certificates:
            with phases("certificates"):
                certify(config, folder, device=device, backend=backend)
        for n in grid:
            if args.max_time_s and time.perf_counter() - started > args.max_time_s:
                out["stopped_at_n"] = n
                break
            for setting in config.setting_objects():
                with phases("data"):
                    X, Y = shard_data(config, setting, n, 0, config.reps, device)
                for gate in config.gates_for(setting):
                    kind, ref = refs[setting.name, gate]
                    for variant in variants:
                        t0 = time.perf_counter()
                        with phases(f"fit[{variant}]"):
                            fit = _fit(config, setting, X, Y, n, gate, ref, variant, backend)
                        fits.append(_fit_record(fit, setting.name, gate, n, variant,
                                                time.perf_counter() - t0))
                        with phases(f"losses[{variant}]"):
                            fitted = fit.measure.to(device="cpu")
                            for loss in applicable_losses(setting, kind, config.losses):
                                records.append({
                                    "setting": setting.name, "gate": gate, "n": n, "loss": loss,
                                    "gram": variant,
                                    "values": voronoi_loss(fitted, ref, loss).tolist()})
                del X, Y
            out.update(_summary(out, phases, fits, records, variants))
            write_json(args.out_path, out, device)
        else:
            out["complete"] = True
    out.update(_summary(out, phases, fits, records, variants))
    if pending is not None:
        df = pd.DataFrame([{"setting": f["setting"], "fit_gate": f["gate"], "n": f["n"],
                            "rep": r, "n_iter": it, "wall_s": f["fit_s"] / len(f["n_iter"])}
                           for f in fits if f["gram"] == variants[0]
                           for r, it in enumerate(f["n_iter"])])
        out["scipy_baseline"] = {variants[0]: baseline.summarise(pending, df)}
    if args.solves:
        out["solves"] = _solves(config)
    return out


def _summary(out: dict, phases: Phases, fits: list[dict], records: list[dict],
             variants: list[str]) -> dict:
    shared = sum(v for k, v in phases.s.items() if "[" not in k)
    per_variant = {}
    for v in variants:
        mine = [f for f in fits if f["gram"] == v]
        per_variant[v] = {
            "fit_s": phases.s.get(f"fit[{v}]", 0.0),
            "losses_s": phases.s.get(f"losses[{v}]", 0.0),
            # this precision's run alone: start-up, the shared phases, its own fits and losses
            "estimated_process_wall_s": out["startup_s"] + shared
            + phases.s.get(f"fit[{v}]", 0.0) + phases.s.get(f"losses[{v}]", 0.0),
            "batch_iterations": sum(f["batch_iterations"] for f in mine),
            "iterations_sum": sum(f["iterations_sum"] for f in mine),
            "stop_tests": dict(Counter(t for f in mine for t in f["stop_test"])),
            "converged": float(np.mean([f["converged"] for f in mine])) if mine else None,
            "certified": float(np.mean([f["certified"] for f in mine])) if mine else None,
        }
    return {"phases_s": dict(phases.s), "per_gram": per_variant, "fits": fits,
            "losses": records, "agreement": agreement(records, fits, variants)}


def agreement(records: list[dict], fits: list[dict], variants: list[str]) -> dict:
    """How far each other precision's Voronoi losses (and fit losses) lie from the first's:
    per replication ``|a - b| / |a|``; the max overall and per loss, how many exceed
    :data:`AGREEMENT_RTOL`, and the worst ten with their fits' stop tests."""
    base, result = variants[0], {}
    key = lambda r: (r["setting"], r["gate"], r["n"], r.get("loss"))  # noqa: E731
    ref = {key(r): r for r in records if r["gram"] == base}
    ref_fit = {key(f): f for f in fits if f["gram"] == base}
    for v in variants[1:]:
        rows = []
        for r in records:
            if r["gram"] != v or key(r) not in ref:
                continue
            a = np.asarray(ref[key(r)]["values"])
            rel = relative_differences(r["values"], a)
            fa, fb = ref_fit[key(r)[:3] + (None,)], next(
                f for f in fits if f["gram"] == v and key(f) == key(r)[:3] + (None,))
            for rep, x in enumerate(rel):
                rows.append({"setting": r["setting"], "gate": r["gate"], "n": r["n"],
                             "loss": r["loss"], "rep": rep, "rel_diff": float(x),
                             "value": float(a[rep]), base + "_stop": fa["stop_test"][rep],
                             v + "_stop": fb["stop_test"][rep],
                             base + "_n_iter": fa["n_iter"][rep], v + "_n_iter": fb["n_iter"][rep],
                             # a stop test is no stationarity certificate; the gradient is
                             base + "_grad": fa.get("proj_grad_max", [None] * (rep + 1))[rep],
                             v + "_grad": fb.get("proj_grad_max", [None] * (rep + 1))[rep],
                             base + "_fit_loss": fa["fit_loss"][rep],
                             v + "_fit_loss": fb["fit_loss"][rep]})
        # a run cut short by --max-time-s (in its own process, each precision reaches its own
        # last n) is compared where both have fits; the fits only one of them has are counted
        fit_rel = [abs(fb - fa) / abs(fa) for f in fits if f["gram"] == v and key(f) in ref_fit
                   for fa, fb in zip(ref_fit[key(f)]["fit_loss"], f["fit_loss"], strict=True)]
        mine = {key(f) for f in fits if f["gram"] == v}
        unmatched = {base: len(ref_fit.keys() - mine), v: len(mine - ref_fit.keys())}
        if not rows:
            result[v] = {"compared": 0, "fits_without_peer": unmatched}
            continue
        df = pd.DataFrame(rows)
        both = df[base + "_stop"].isin(TOLERANCE_TESTS) & df[v + "_stop"].isin(TOLERANCE_TESTS)
        worst = df.sort_values("rel_diff", ascending=False, na_position="first").head(10)
        result[v] = {
            "against": base, "compared": len(df), "rtol": AGREEMENT_RTOL,
            "max_rel_diff": float(df.rel_diff.max()),
            "median_rel_diff": float(df.rel_diff.median()),
            "over_rtol": int((~(df.rel_diff <= AGREEMENT_RTOL)).sum()),
            "non_finite": int((~np.isfinite(df.rel_diff)).sum()),
            "holds": bool((df.rel_diff <= AGREEMENT_RTOL).all()),
            # a fit capped by max_iter stops wherever its path is after the last iteration: only
            # fits that both stop on a tolerance test share a fixed point to agree on
            "by_convergence": {
                label: {"compared": int(part.sum()),
                        "max_rel_diff": float(df.rel_diff[part].max()) if part.any() else None,
                        "over_rtol": int((~(df.rel_diff[part] <= AGREEMENT_RTOL)).sum())}
                for label, part in (("both_converged", both), ("not_both", ~both))},
            "max_rel_diff_by_loss": {k: float(g.rel_diff.max()) for k, g in df.groupby("loss")},
            "max_rel_diff_by_curve": {f"{s}/{g}": float(x.rel_diff.max())
                                      for (s, g), x in df.groupby(["setting", "gate"])},
            "fit_loss_max_rel_diff": float(max(fit_rel)) if fit_rel else None,
            "fits_without_peer": unmatched,
            "worst": worst.to_dict(orient="records"),
        }
    return result


def _solves(config) -> dict:
    """The damped solve at the figure's batch shapes: one shard's S x R problems, and every n of
    a curve in one batch (what a ragged batch would solve)."""
    if not torch.cuda.is_available():
        return {"skipped": "needs a CUDA GPU"}
    from benchmarks.lm_parts import _solves as solves

    S, R = config.starts + 1, config.reps
    out = {}
    for label, batch in (("one shard", S * R), ("all n of a curve", S * R * len(config.n))):
        for p in (594,):  # sigmoid, d = 32, k = 9 (softmax: 561)
            out[f"{label}: R={batch}, p={p}"] = solves(R=batch, p=p)
            torch.cuda.empty_cache()
    return out


def point(args: argparse.Namespace) -> dict:
    """One certified point at ``--n``: data, one batched fit per precision, peak memory."""
    variants = _variants(args.gram)
    config = _config(args)
    setting = config.setting(args.setting)
    n, device, backend = int(args.n), args.device, args.backend
    on_gpu = device.startswith("cuda")
    phases = Phases(device)
    out = {"mode": "point", "config": config.name, "setting": setting.name, "gate": args.gate,
           "n": n, "reps": config.reps, "starts": config.starts + 1, "d": setting.d,
           "k": setting.k_fit, "max_iter": config.max_iter, "gram": variants, "device": device,
           "startup_s": _process_age()}
    with _fresh_cache(args.keep_cache):
        kind = setting.reference_kind(args.gate)
        with phases("gbar"):
            ref = setting.truth() if kind == "G*" else population_lse(
                setting, args.gate, design_size=args.design_size, device=device, backend=backend)
        with phases("data"):
            X, Y = _blocked_data(config, setting, n, device)
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        out["data_bytes"] = X.nbytes + Y.nbytes
        out["fits"] = {}
        for v in variants:
            t0 = time.perf_counter()
            with phases(f"fit[{v}]"):
                fit = _fit(config, setting, X, Y, n, args.gate, ref, v, backend)
            rec = _fit_record(fit, setting.name, args.gate, n, v, time.perf_counter() - t0)
            rec["s_per_batch_iteration"] = rec["fit_s"] / max(1, rec["batch_iterations"])
            if on_gpu:
                rec["peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
                rec["peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
                rec["gpu_total_bytes"] = torch.cuda.get_device_properties(0).total_memory
                torch.cuda.reset_peak_memory_stats()
            rec.pop("fit_loss")
            rec["proj_grad_max_max"] = max(rec.pop("proj_grad_max"))
            out["fits"][v] = rec
            write_json(args.out_path, {**out, "phases_s": dict(phases.s)}, device)
    out["phases_s"] = dict(phases.s)
    return out


#: Bytes of X drawn per call at large n: the draw's temporaries (the truth's features of X, as
#: large as X) then take a fraction of the device beside the full X.
DATA_BLOCK_BYTES = 8 * 2**30


def _blocked_data(config, setting, n: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The shard's data drawn a few replications at a time into preallocated tensors: the same
    numbers as one draw (each replication is seeded by its own number), without a second X's
    worth of temporaries (at n = 10^7, d = 32 X alone takes 51 GB)."""
    reps, d = config.reps, setting.d
    block = max(1, min(reps, DATA_BLOCK_BYTES // (n * (d + 1) * 8)))
    if block == reps:
        return shard_data(config, setting, n, 0, reps, device)
    X = torch.empty(reps, n, d, dtype=torch.float64, device=device)
    Y = torch.empty(reps, n, dtype=torch.float64, device=device)
    for first in range(0, reps, block):
        last = min(reps, first + block)
        X[first:last], Y[first:last] = shard_data(config, setting, n, first, last - first, device)
    return X, Y


def _children(args: argparse.Namespace, argv: list[str]) -> dict:
    """``--process``: each precision in its own process, timed from start to exit."""
    variants = _variants(args.gram)
    out = {"mode": "figure-processes", "gram": variants, "runs": {}}
    records, fits = [], []
    with tempfile.TemporaryDirectory() as folder:
        for v in variants:
            path = Path(folder) / f"{v}.json"
            cmd = [sys.executable, "-m", "benchmarks", "certified-figure", *argv, "--gram", v,
                   "--json", str(path)]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            child = json.loads(path.read_text()) if path.exists() else {}
            out["runs"][v] = {"process_wall_s": wall, "returncode": proc.returncode,
                              "stderr_tail": proc.stderr[-2000:],
                              **{k: child.get(k) for k in ("phases_s", "per_gram", "n",
                                                           "complete", "stopped_at_n",
                                                           "startup_s", "scipy_baseline")},
                              # where the fit time goes: per curve and n
                              "fits": [{k: f[k] for k in ("setting", "gate", "n", "fit_s",
                                                          "batch_iterations", "iterations_sum",
                                                          "converged")}
                                       for f in child.get("fits", [])]}
            records += child.get("losses", [])
            fits += child.get("fits", [])
            write_json(args.out_path, out, args.device)
    out["agreement"] = agreement(records, fits, variants)
    return out


def run(args: argparse.Namespace) -> int:
    """Run the chosen mode, print a summary and write the JSON."""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("certified-figure: --device cuda needs a CUDA GPU", file=sys.stderr)
        return 2
    prov = provenance(args.device)
    args.out_path = output_path(args, "certified_figure", prov,
                                label="point" if args.n else None)
    if args.process and not args.n:
        argv = _passthrough(args)
        out = _children(args, argv)
    else:
        out = point(args) if args.n else figure(args)
    out = {"provenance": prov, **out}
    write_json(args.out_path, out)
    long = ("losses", "provenance") + (() if args.n else ("fits",))
    brief = {k: v for k, v in out.items() if k not in long}
    print(json.dumps(brief, indent=1, default=str))
    # --process: a child that failed (a crash, or no JSON) is not a timing to read as a
    # success; the parent used to exit 0 whatever its children did
    failed = [v for v, r in out.get("runs", {}).items() if r.get("returncode") != 0]
    if failed:
        print(f"certified-figure: the process of {', '.join(failed)} failed", file=sys.stderr)
        return 1
    return 0


def _passthrough(args: argparse.Namespace) -> list[str]:
    """The command line a ``--process`` child gets (its own ``--gram`` and ``--json``)."""
    argv = ["--config", args.config, "--device", args.device, "--backend", args.backend]
    for flag, value in (("--n-num", args.n_num), ("--n-max", args.n_max), ("--reps", args.reps),
                        ("--max-iter", args.max_iter), ("--max-time-s", args.max_time_s),
                        ("--design-size", args.design_size)):
        if value is not None:
            argv += [flag, str(value)]
    for flag, on in (("--fast", args.fast), ("--no-certificates", args.no_certificates),
                     ("--keep-cache", args.keep_cache)):
        if on:
            argv.append(flag)
    return argv


def _positive_number(text: str) -> int:
    value = float(text)  # accepts 1e7
    if not math.isfinite(value) or value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(value)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``certified-figure`` subcommand."""
    p = subparsers.add_parser("certified-figure",
                              help="time the certified N24 figure, float64 vs mixed Gram",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="nguyen2024")
    p.add_argument("--fast", action="store_true", help="the config's [fast] preset")
    p.add_argument("--gram", default="float64,tf32",
                   help="comma-separated Gram precisions, the first the reference "
                   f"({', '.join(GRAM_DTYPES)})")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backend", default="auto")
    p.add_argument("--n-num", type=_positive_number, default=None,
                   help="thin the config's n grid to this many sizes (ends kept)")
    p.add_argument("--n-max", type=_positive_number, default=None)
    p.add_argument("--reps", type=_positive_number, default=None)
    p.add_argument("--max-iter", type=_positive_number, default=None)
    p.add_argument("--max-time-s", type=float, default=None,
                   help="start no further sample size after this many seconds")
    p.add_argument("--design-size", type=_positive_number, default=None,
                   help="G_bar's design points (default the library's for the device)")
    p.add_argument("--no-certificates", action="store_true",
                   help="skip the reference certificates")
    p.add_argument("--keep-cache", action="store_true",
                   help="use the G_bar cache (default: a fresh one, so the run is cold)")
    p.add_argument("--process", action="store_true",
                   help="each precision in its own process, timed from start to exit")
    p.add_argument("--solves", action="store_true",
                   help="time the batched damped-solve forms (GPU)")
    p.add_argument("--scipy", action="store_true", help="the scipy baseline beside the run")
    p.add_argument("--n", type=_positive_number, default=None,
                   help="one certified point at this n (e.g. 1e7) instead of the figure")
    p.add_argument("--setting", default="nguyen2024-dense-relu", help="--n mode's setting")
    p.add_argument("--gate", default="softmax", help="--n mode's fitted gate")
    add_output_arguments(p)
    p.set_defaults(run=run)
