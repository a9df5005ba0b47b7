"""Wall time of one sweep on 1 GPU vs one Dask worker per GPU (``benchmarks/README.md``).

``python -m benchmarks sweep-scaling --out DIR [--gpus 0,1] [--save]`` (needs CUDA GPUs and
``.[distributed]``) runs the same config with ``--executor dask --gpus 0`` and
``--gpus 0,1,...`` into fresh folders, checks that the two merged tables agree, and writes
``DIR/sweep_scaling.json``. The many-GPU run goes first so that a run cut short by a time limit
still leaves the scaling number's harder half.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.output import gpu_label, result_path, write_json
from moe_theory.config import parse_config
from moe_theory.provenance import provenance
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


def run(args: argparse.Namespace) -> int:
    """Run the sweep on many GPUs, then on one, and write the JSON after each."""
    if not torch.cuda.is_available():
        print("sweep-scaling needs CUDA GPUs", file=sys.stderr)
        return 2
    out = Path(args.out)
    config = parse_config(CONFIG)
    gpus = args.gpus.split(",") if args.gpus else [str(g) for g in range(torch.cuda.device_count())]
    prov = provenance("cuda")
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
        start = time.perf_counter()
        df = run_sweep(config, out / label, device="cuda", backend="torch", executor="dask",
                       gpus=",".join(chosen))
        wall = time.perf_counter() - start
        tables[label] = df
        record["runs"][label] = {
            "gpus": chosen, "wall_s": round(wall, 2), "rows": len(df),
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


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``sweep-scaling`` subcommand."""
    p = subparsers.add_parser("sweep-scaling", help="one sweep on 1 GPU vs one Dask worker per GPU",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the sweeps and the JSON")
    p.add_argument("--gpus", default=None, help="GPUs of the many-GPU run (default: all)")
    p.add_argument("--save", action="store_true",
                   help="also write benchmarks/results/sweep_scaling/<date>_<gpu>x<count>_<commit7>.json")
    p.set_defaults(run=run)
