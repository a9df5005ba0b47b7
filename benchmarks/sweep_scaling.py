"""Wall time of one sweep, or of ``reproduce all``, on 1 GPU vs several (``benchmarks/README.md``).

``python -m benchmarks sweep-scaling --out DIR [--gpus 0,1] [--save]`` (needs CUDA GPUs and
``.[distributed]``) runs the same config with ``--executor dask --gpus 0`` and
``--gpus 0,1,...`` into fresh folders, checks that the two merged tables agree, and writes
``DIR/sweep_scaling.json``. The many-GPU run goes first so that a run cut short by a time limit
still leaves the scaling number's harder half.

``--reproduce-all --counts 4,2,1`` instead times ``reproduce all`` under the certified protocol
(``--certify``: every figure's sweep, reference certificates, optimiser check and report) on one
Dask cluster of the first 4, 2 and 1 GPUs (``--workers`` processes per GPU), start-up included,
each run into a fresh folder with a fresh G_bar cache, and writes ``DIR/reproduce_all_scaling.json``
after each run: wall times, speed-ups against 1 GPU and the issue's targets, and per figure the
SHA-256 of its tables (results, rates, optimiser check; timings left out) with whether they are
identical across the runs. A later call with the same ``--out`` adds the counts it runs to the
runs already there (one count per call when a call has a time limit), if they were made on the
same device: each run records the type and model of the devices it ran on, and runs of another
device type or model are never merged into one record (a call finding them refuses, naming
both; the speed-ups would compare devices, not GPU counts). Nor are GPUs of different models
used in one call.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from benchmarks.output import gpu_label, result_path, write_json
from moe_theory.config import load_config, named_configs, parse_config
from moe_theory.executors import device_workers
from moe_theory.provenance import provenance
from moe_theory.reproduce import EXPERIMENTS, reproduce_figures
from moe_theory.store import read_csv
from moe_theory.sweep import run_sweep

# N24's dense settings (d = 32, k* = 8, k = 9) at the large end of its n grid. The softmax fit is
# measured against G* itself, so no G_bar has to be computed first: the wall time is the fits'.
CONFIG = {
    "name": "sweep-scaling", "settings": ["nguyen2024-dense-relu", "nguyen2024-dense-linear"],
    "fit_gates": ["softmax"], "n": {"min": 10_000, "max": 100_000, "num": 3}, "reps": 20,
    "rep_block": 5, "seed": 0, "algorithm": "lm", "max_iter": 200,
}


def _dask_versions() -> dict:
    # dask is an optional dependency (.[distributed]): imported only where this benchmark runs
    import dask
    import distributed

    return {"dask": dask.__version__, "distributed": distributed.__version__}


def device_names(device: str, gpus: list[int], prov: dict) -> list[str]:
    """The names of the devices a run computes on: each of ``gpus`` (CUDA ordinals), or the
    CPU's model for ``device="cpu"`` (``prov["device_name"]``)."""
    if device == "cuda":
        return [torch.cuda.get_device_name(g) for g in gpus]
    return [prov["device_name"]]


def mixed_models(names: list[str], gpus: list[int]) -> str | None:
    """Why GPUs of several models may not serve one scaling run (None when they are one model):
    its speed-up would mix the models' speeds with the count's."""
    if len(set(names)) <= 1:
        return None
    return (f"GPUs {','.join(map(str, gpus))} are not all one model "
            f"({', '.join(f'{g}: {n}' for g, n in zip(gpus, names, strict=True))}): a scaling "
            "run compares counts of one model; choose GPUs of one model (--gpus)")


def _describe(device: str, names: list[str]) -> str:
    return f"{device} ({', '.join(sorted(set(names)))})"


def recorded_devices(record: dict, run: dict) -> tuple[str, list[str]]:
    """The device type and names a recorded run computed on. A run recorded before runs held
    their own: the record's ``setup.device``, and for CUDA its first ``count`` GPUs of the
    record's ``devices`` (GPUs 0..count-1 ran it), for the CPU the provenance's model."""
    device = run.get("device") or record.get("setup", {}).get("device", "cuda")
    names = run.get("device_names")
    if names is None:
        names = (record.get("devices", [])[: run.get("count", 1)] if device == "cuda"
                 else [record.get("provenance", {}).get("device_name", "cpu")])
    return device, list(names)


def merge_refusal(record: dict, device: str, names: list[str], path: Path) -> str | None:
    """Why this call's runs may not join the runs ``record`` holds (None when they may): runs
    made on another device type or model. Their wall times measure other devices, so a speed-up
    between them would compare devices rather than GPU counts; they are neither merged nor
    overwritten."""
    ours = (device, sorted(set(names)))
    others: dict[str, list[str]] = {}
    for label, run in record.get("runs", {}).items():
        theirs = recorded_devices(record, run)
        if (theirs[0], sorted(set(theirs[1]))) != ours:
            others.setdefault(_describe(*theirs), []).append(label)
    if not others:
        return None
    held = "; ".join(f"{', '.join(labels)} on {desc}" for desc, labels in others.items())
    return (f"{path} holds runs made on another device ({held}); this call runs on "
            f"{_describe(device, names)}. Runs of different devices are not merged into one "
            f"record: their speed-ups would compare devices, not GPU counts. Give another "
            f"--out, or move {path} aside.")


def run(args: argparse.Namespace) -> int:
    """Run the sweep on many GPUs, then on one, and write the JSON after each."""
    if not torch.cuda.is_available():
        print("sweep-scaling needs CUDA GPUs", file=sys.stderr)
        return 2
    out = Path(args.out)
    config = parse_config(CONFIG)
    gpus = args.gpus.split(",") if args.gpus else [str(g) for g in range(torch.cuda.device_count())]
    prov = provenance("cuda")
    names = device_names("cuda", [int(g) for g in gpus], prov)
    why = mixed_models(names, [int(g) for g in gpus])
    if why:
        print(f"sweep-scaling: {why}", file=sys.stderr)
        return 2
    paths = [out / "sweep_scaling.json"]
    if args.save:
        paths.append(result_path("sweep_scaling", prov, gpu=f"{gpu_label(prov)}x{len(gpus)}"))
    record = {
        "provenance": prov,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "versions": _dask_versions(), "config": config.to_dict(), "config_hash": config.hash,
        "shards": len(config.n) * len(config.settings) * -(-config.reps // config.rep_block),
        "executor": "dask, one worker per GPU (CUDA_VISIBLE_DEVICES), threads_per_worker=1",
        "backend": "torch", "runs": {},
    }
    tables = {}
    for label in (f"{len(gpus)}_gpus", "1_gpu"):
        chosen = gpus if label != "1_gpu" else gpus[:1]
        folder = out / label
        if folder.exists():
            # a sweep resumes the shards its folder holds: a folder of an earlier call would
            # merge that call's shards, perhaps of another device (the rows name the device type
            # only), into this run's table and leave its wall time only the remainder's
            print(f"sweep-scaling: removing {folder}, an earlier run's folder: each run is timed "
                  "from nothing on this call's GPUs", file=sys.stderr)
            shutil.rmtree(folder)
        start = time.perf_counter()
        df = run_sweep(config, folder, device="cuda", backend="torch", executor="dask",
                       gpus=",".join(chosen))
        wall = time.perf_counter() - start
        tables[label] = df
        record["runs"][label] = {
            "gpus": chosen, "device": "cuda", "device_names": names[: len(chosen)],
            "wall_s": round(wall, 2), "rows": len(df),
            # busy time of the fits, summed over workers (each row carries its share)
            "fit_s": round(float(df.drop_duplicates(["setting", "n", "rep"]).wall_s.sum()), 2),
        }
        for path in paths:
            write_json(path, record)
        print(json.dumps(record["runs"][label]), flush=True)
    if len(tables) == 2:
        a, b = (t.drop(columns="wall_s") for t in tables.values())
        record["tables_equal"] = bool(a.equals(b))
        rel = ((a.loss_value - b.loss_value).abs() / b.loss_value.abs().clip(lower=1e-300)).max()
        record["loss_value_max_rel_diff"] = float(rel)
        one, many = record["runs"]["1_gpu"]["wall_s"], record["runs"][f"{len(gpus)}_gpus"]["wall_s"]
        record["speedup"] = round(one / many, 2)
        for path in paths:
            write_json(path, record)
    print(json.dumps(record, indent=2))
    return 0


# ---- reproduce all on 1, 2, 4 GPUs --------------------------------------------------------------

#: The issue's targets: speed-up of ``reproduce all --certify`` against 1 GPU, start-up included.
TARGETS = {2: 1.8, 4: 3.4}
#: Columns that are timings: left out of the tables' hashes.
TIMINGS = ("wall_s",)


def table_hash(df: pd.DataFrame) -> str:
    """SHA-256 of a table's values without its timings, row order and column names included:
    equal hashes, tables identical bit for bit."""
    df = df.drop(columns=[c for c in TIMINGS if c in df.columns]).reset_index(drop=True)
    digest = hashlib.sha256(json.dumps(list(df.columns)).encode())
    digest.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def figure_hashes(folder: Path) -> dict:
    """The hashes of the tables a figure's folder holds (a sweep's results, rates and optimiser
    check; a study's summary and results), and the row count of its results."""
    out = {}
    for name, path in (("results", folder / "results.parquet"), ("check", folder / "check.parquet")):
        if path.exists():
            df = pd.read_parquet(path)
            out[f"{name}_sha256"] = table_hash(df)
            if name == "results":
                out["rows"] = len(df)
    for path in sorted(folder.glob("*.csv")):
        if path.name != "results.csv" or "results_sha256" not in out:
            out[f"{path.stem}_sha256"] = table_hash(read_csv(path))
    return out


def summarise(record: dict) -> None:
    """Speed-ups against the 1-GPU run, the targets, and whether every figure's tables are the
    same in every run (written into ``record``)."""
    runs = record["runs"]
    walls = {run["count"]: run["wall_s"] for run in runs.values()}
    if 1 in walls:
        record["speedup"] = {str(k): round(walls[1] / w, 2) for k, w in sorted(walls.items())}
        record["targets_met"] = {str(k): record["speedup"][str(k)] >= t
                                 for k, t in TARGETS.items() if k in walls}
    figures = sorted({f for run in runs.values() for f in run["figures"]})
    record["tables_equal"] = {
        figure: len({json.dumps(run["figures"].get(figure), sort_keys=True)
                     for run in runs.values()}) == 1
        for figure in figures} if len(runs) > 1 else {}
    record["all_tables_equal"] = all(record["tables_equal"].values()) if len(runs) > 1 else None


def run_reproduce_all(args: argparse.Namespace) -> int:
    """``reproduce all --certify`` on one Dask cluster of the first k GPUs for each count k."""
    counts = [int(c) for c in args.counts.split(",")]
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("sweep-scaling needs CUDA GPUs (or --device cpu for a check of the code path)",
              file=sys.stderr)
        return 2
    if cuda and max(counts) > torch.cuda.device_count():
        print(f"--counts: {max(counts)} GPUs asked, {torch.cuda.device_count()} visible",
              file=sys.stderr)
        return 2
    names = args.figures.split(",") if args.figures else named_configs() + list(EXPERIMENTS)
    workers = device_workers(args.workers, args.device)
    out = Path(args.out)
    json_path = out / "reproduce_all_scaling.json"
    prov = provenance(args.device)
    # every run of this call computes on GPUs 0..k-1 (or the CPU): one model, and the model of
    # the runs already recorded at --out, or nothing is run
    used = list(range(max(counts))) if cuda else []
    models = device_names(args.device, used, prov)
    why = mixed_models(models, used) if cuda else None
    previous = json.loads(json_path.read_text()) if json_path.exists() else {}
    why = why or merge_refusal(previous, args.device, models, json_path)
    if why:
        print(f"sweep-scaling: {why}", file=sys.stderr)
        return 2
    setup = {"figures": names, "fast": args.fast, "certify": args.certify, "device": args.device,
             "backend": args.backend, "workers_per_gpu": workers,
             "config_hashes": {n: load_config(n, fast=args.fast).hash
                               for n in names if n not in EXPERIMENTS}}
    record = previous
    if record.get("runs") and (record.get("setup") != setup or record.get(
            "provenance", {}).get("git_commit") != prov["git_commit"]):
        print(f"sweep-scaling: {json_path}: dropping the runs of another setup or commit "
              f"({', '.join(record['runs'])}); this call's runs start a new record",
              file=sys.stderr)
        record = {}  # runs of another setup or commit are not compared with these
    record = {
        "provenance": prov,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda else ["cpu"],
        "versions": _dask_versions(), "setup": setup,
        "executor": ("dask: one cluster for every figure, started in the background; "
                     f"{workers} worker process(es) per GPU pinned by CUDA_VISIBLE_DEVICES"
                     if cuda else "dask: one LocalCluster of k processes (a CPU check of the "
                     "code path, not a scaling measurement)"),
        "protocol": "reproduce_figures(all figures, certify) from the call to its return: "
                    "cluster start-up, G_bar references (fresh cache per run), certificates, "
                    "sweeps, optimiser checks, reports and the studies",
        "targets": {str(k): t for k, t in TARGETS.items()},
        "runs": record.get("runs", {}),
    }
    paths = [json_path]
    if args.save:
        label = gpu_label(prov) if cuda else "cpu"
        paths.append(result_path("sweep_scaling", prov, label="reproduce_all",
                                 gpu=f"{label}x{max(counts)}"))
    for k in counts:
        label = f"{k}_gpus" if cuda else f"{k}_workers"
        folder = out / label
        shutil.rmtree(folder, ignore_errors=True)  # a fresh run: nothing to resume
        figures = [(n, folder / Path(n).stem) for n in names]
        cluster = {"gpus": ",".join(map(str, range(k)))} if cuda else {"local_workers": k}
        saved_cache = os.environ.get("MOE_THEORY_CACHE")
        # a cold G_bar cache for every run: each pays for its references, as a first run would
        os.environ["MOE_THEORY_CACHE"] = str(folder / "gbar-cache")
        try:
            start = time.perf_counter()
            reproduce_figures(figures, fast=args.fast, device=args.device, backend=args.backend,
                              workers=workers, certify=args.certify, **cluster)
            wall = time.perf_counter() - start
        finally:
            if saved_cache is None:
                os.environ.pop("MOE_THEORY_CACHE", None)
            else:
                os.environ["MOE_THEORY_CACHE"] = saved_cache
        record["runs"][label] = {
            "count": k, **cluster, "device": args.device,
            "device_names": models[:k] if cuda else models, "wall_s": round(wall, 2),
            "figures": {n: figure_hashes(folder / Path(n).stem) for n in names},
        }
        summarise(record)
        for path in paths:
            write_json(path, record)
        print(json.dumps({label: record["runs"][label]["wall_s"],
                          "speedup": record.get("speedup"),
                          "all_tables_equal": record["all_tables_equal"]}), flush=True)
    print(json.dumps({key: record.get(key) for key in (
        "speedup", "targets_met", "all_tables_equal", "tables_equal")}, indent=2))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``sweep-scaling`` subcommand."""
    p = subparsers.add_parser("sweep-scaling",
                              help="one sweep, or reproduce all (--reproduce-all), on 1 GPU vs "
                                   "several Dask workers",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the sweeps and the JSON")
    p.add_argument("--gpus", default=None, help="GPUs of the many-GPU run (default: all)")
    p.add_argument("--save", action="store_true",
                   help="also write benchmarks/results/sweep_scaling/<date>_<gpu>x<count>_<commit7>"
                        "[_reproduce_all].json")
    p.add_argument("--reproduce-all", action="store_true",
                   help="time reproduce all (every figure) on 1, 2, 4 GPUs instead of one sweep")
    p.add_argument("--counts", default="4,2,1",
                   help="with --reproduce-all: GPU counts, run in this order (default 4,2,1)")
    p.add_argument("--figures", default=None,
                   help="with --reproduce-all: configs (names or paths) and studies to run "
                        "(default: all, as reproduce all)")
    p.add_argument("--fast", action="store_true", help="with --reproduce-all: the fast presets")
    p.add_argument("--certify", action=argparse.BooleanOptionalAction, default=True,
                   help="with --reproduce-all: the certified protocol (default; --no-certify "
                        "skips the optimiser check)")
    p.add_argument("--workers", type=int, default=None,
                   help="with --reproduce-all: worker processes per GPU (default "
                        "moe_theory.executors.GPU_PROCESSES)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="with --reproduce-all: cpu runs k LocalCluster processes instead of k "
                        "GPUs (a check of the code path)")
    p.add_argument("--backend", default="auto", help="with --reproduce-all: the fits' backend")
    p.set_defaults(run=lambda args: run_reproduce_all(args) if args.reproduce_all else run(args))
