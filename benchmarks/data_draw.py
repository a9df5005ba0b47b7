"""The data phase of a large shard: host draw then copy, against the staged draw to the device.

``python -m benchmarks data-draw [--n 10000000] [--reps 20] [--d 32] [--block 3] [--json PATH |
--save]`` (needs a CUDA GPU) draws the replications of one shard, ``--block`` at a time as the
n = 10^7 point of ``certified-figure`` does, once through host memory (numpy's fill on threads,
then a copy from pageable memory: the path before the staged draw) and once through
``moe_theory.data``'s staged draw (pieces of rows on every core through pinned chunks, copied
on side streams), checks that both give the same numbers bit for bit, and reports each one's
seconds and GB/s (docs/kernels.md#streaming-over-n).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from benchmarks.output import add_output_arguments, output_path, write_json
from moe_theory import data
from moe_theory.provenance import provenance
from moe_theory.threads import usable_cores


def _timed(draw) -> tuple[float, tuple[torch.Tensor, torch.Tensor]]:
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = draw()
    torch.cuda.synchronize()
    return time.perf_counter() - start, out


def run(args: argparse.Namespace) -> int:
    """Draw the shard both ways, block by block, compare and write the JSON."""
    if not torch.cuda.is_available():
        print("data-draw needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    cores = usable_cores()
    out = {"provenance": provenance("cuda"), "n": args.n, "reps": args.reps, "d": args.d,
           "block": args.block, "cores": cores, "stage_rows": data.STAGE_ROWS,
           "bytes": args.reps * args.n * (args.d + 1) * 8, "blocks": []}
    path = output_path(args, "data_draw", out["provenance"])
    common = dict(d=args.d, n=args.n, seed=7, noise_var=0.01, x_dist="uniform")
    for first in range(0, args.reps, args.block):
        reps = min(args.block, args.reps - first)

        def host(reps=reps, first=first):
            xs, eps = data._draw_host(reps=reps, first_rep=first, workers=min(reps, cores),
                                      **common)
            return torch.as_tensor(xs, device=device), torch.as_tensor(eps, device=device)

        def staged(reps=reps, first=first):
            return data._draw_staged(reps=reps, first_rep=first, device=device, workers=cores,
                                     **common)

        host_s, (hx, he) = _timed(host)
        staged_s, (sx, se) = _timed(staged)
        same = bool(torch.equal(hx, sx) and torch.equal(he, se))
        del hx, he, sx, se
        out["blocks"].append({"first_rep": first, "reps": reps, "host_s": host_s,
                              "staged_s": staged_s, "bit_identical": same})
        print(f"reps {first}..{first + reps - 1}: host {host_s:.2f} s, staged {staged_s:.2f} s, "
              f"identical {same}", flush=True)
        write_json(path, out)
    for key in ("host_s", "staged_s"):
        out[key] = sum(b[key] for b in out["blocks"])
        out[key.replace("_s", "_gb_per_s")] = out["bytes"] / out[key] / 1e9
    out["all_bit_identical"] = all(b["bit_identical"] for b in out["blocks"])
    out["speedup"] = out["host_s"] / out["staged_s"]
    print(f"host {out['host_s']:.1f} s ({out['host_gb_per_s']:.2f} GB/s), staged "
          f"{out['staged_s']:.1f} s ({out['staged_gb_per_s']:.2f} GB/s), "
          f"{out['speedup']:.2f}x; identical: {out['all_bit_identical']}")
    write_json(path, out)
    return 0 if out["all_bit_identical"] else 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``data-draw`` subcommand."""
    p = subparsers.add_parser("data-draw", help="a large shard's data phase, host vs staged draw",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10**7)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--d", type=int, default=32)
    p.add_argument("--block", type=int, default=3, help="replications per draw (certified-figure"
                   "'s n = 10^7 point draws 3 at a time)")
    add_output_arguments(p)
    p.set_defaults(run=run)
