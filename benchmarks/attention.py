"""Sigmoid attention benchmark: ``python -m benchmarks attention [--quick] [--json PATH]``.

Times, in one process on the same random bf16 inputs, forward and backward separately:
ours (precise sigmoid), ours (fast tanh sigmoid), SDPA with the FLASH and the CUDNN back-ends, and
naive PyTorch sigmoid attention where its N x N weights fit. The sweep
(docs/kernels.md#sigmoid-attention) holds B * N = 16k tokens and H * D = 2048: N in
{512, ..., 16384}, D in {64, 128}, causal and not. Every provider's output and gradients are
checked against the dense reference on one (batch, head) slice before timing
(:func:`benchmarks.checks.attention_slice_errors`, which ``tests/gpu`` runs too). FLOPs: forward
``4 B H N^2 D`` (half when causal), backward 2.5x that. Inputs (>= 64 MB each) exceed the 50 MB
L2, so no buffer rotation is needed.

``--tune`` instead sweeps tile configurations of our kernels at N = 16384 (the numbers behind
``default_configs``; see kernels/attention/NOTES.md).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import multiprocessing as mp
import sys
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from benchmarks.checks import ATTENTION_RTOL, attention_slice_errors, gate_error
from benchmarks.output import add_output_arguments, output_path, write_json
from kernels.attention.args import check_attention_args
from kernels.attention.sigmoid_attention import (
    KernelConfigs,
    TileConfig,
    attention_backward,
    attention_forward,
    default_configs,
    sigmoid_attention,
)
from moe_theory.provenance import provenance

TOKENS = 16384
WIDTH = 2048
SEQ_LENS = (512, 1024, 2048, 4096, 8192, 16384)
QUICK_SEQ_LENS = (2048, 16384)
HEAD_DIMS = (64, 128)
DTYPE = torch.bfloat16
DEVICE = "cuda"
# Naive attention materialises B*H*N^2 weights several times over: keep one copy under 4 GB.
NAIVE_MAX_WEIGHTS = 2**31
PROVIDERS = ("ours-precise", "ours-fast", "sdpa-flash", "sdpa-cudnn", "naive-sigmoid")
PEERS = ("sdpa-flash", "sdpa-cudnn", "naive-sigmoid")


@dataclass(frozen=True)
class Point:
    """One benchmark point: sequence length, head dimension, causal flag."""

    n: int
    d: int
    causal: bool

    @property
    def batch(self) -> int:
        return TOKENS // self.n

    @property
    def heads(self) -> int:
        return WIDTH // self.d

    def flops(self, direction: str) -> float:
        fwd = 4.0 * self.batch * self.heads * self.n**2 * self.d * (0.5 if self.causal else 1.0)
        return fwd if direction == "fwd" else 2.5 * fwd

    def seed(self) -> int:
        return zlib.crc32(f"{self.n}-{self.d}-{self.causal}".encode())


def _inputs(point: Point) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator(device=DEVICE).manual_seed(point.seed())
    shape = (point.batch, point.heads, point.n, point.d)
    return tuple(torch.randn(shape, generator=gen, device=DEVICE, dtype=DTYPE) for _ in range(4))


def _naive_sigmoid(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    n = k.shape[2]
    logits = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1])) - math.log(n)
    if causal:
        mask = torch.ones(q.shape[2], n, dtype=torch.bool, device=q.device).triu(1)
        logits = logits.masked_fill(mask, float("-inf"))
    return torch.matmul(torch.sigmoid(logits), v)


def _provider_fn(name: str, causal: bool) -> Callable[..., torch.Tensor]:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention

    if name.startswith("ours"):
        precise = name == "ours-precise"
        return lambda q, k, v: sigmoid_attention(q, k, v, causal=causal, precise=precise)
    if name.startswith("sdpa"):
        backend = {
            "sdpa-flash": SDPBackend.FLASH_ATTENTION,
            "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
        }

        def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            with sdpa_kernel(backend[name]):
                return scaled_dot_product_attention(q, k, v, is_causal=causal)

        return sdpa
    return lambda q, k, v: _naive_sigmoid(q, k, v, causal)


def _gate(provider: str) -> str:
    """The gate a provider computes: SDPA is softmax attention."""
    return "softmax" if provider.startswith("sdpa") else "sigmoid"


def _bench(fn: Callable[[], object]) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def _run_point(point: Point, providers: tuple[str, ...]) -> list[dict]:
    q, k, v, do = _inputs(point)
    rows = []
    for name in providers:
        if name == "naive-sigmoid" and point.batch * point.heads * point.n**2 > NAIVE_MAX_WEIGHTS:
            continue
        fn = _provider_fn(name, point.causal)
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        try:
            out = fn(*leaves)
            grads = torch.autograd.grad(out, leaves, do, retain_graph=True)
        except RuntimeError as err:  # a back-end PyTorch lacks on this device
            print(f"  {name}: unavailable ({str(err).splitlines()[0][:80]})", file=sys.stderr)
            torch.cuda.empty_cache()
            continue
        errors = attention_slice_errors(q, k, v, do, out, grads, causal=point.causal,
                                        gate=_gate(name))
        ok = all(e <= ATTENTION_RTOL for e in errors.values())
        if not ok:
            print(f"  CHECK FAILED {name} {point}: {errors}", file=sys.stderr)
        fwd_ms = _bench(lambda fn=fn, leaves=leaves: fn(*leaves))
        bwd_ms = _bench(
            lambda out=out, leaves=leaves: torch.autograd.grad(out, leaves, do, retain_graph=True)
        )
        for direction, ms in (("fwd", fwd_ms), ("bwd", bwd_ms)):
            rows.append({
                **asdict(point), "batch": point.batch, "heads": point.heads,
                "direction": direction, "provider": name, "ms": ms,
                "tflops": point.flops(direction) / ms * 1e-9, "check": errors, "check_ok": ok,
            })
        del out, grads, leaves
        torch.cuda.empty_cache()
    return rows


def _ratios(rows: list[dict]) -> list[dict]:
    table = {}
    for r in rows:
        # a provider that failed the reference check has no ratio: a fast wrong kernel is never
        # reported (its row keeps check_ok False); its ratios used to be listed as any other's
        if r.get("check_ok", True):
            table[(r["n"], r["d"], r["causal"], r["direction"], r["provider"])] = r["tflops"]
    ratios = []
    for (n, d, causal, direction, provider), tflops in table.items():
        if not provider.startswith("ours"):
            continue
        for peer in PEERS:
            other = table.get((n, d, causal, direction, peer))
            if other:
                ratios.append({"n": n, "d": d, "causal": causal, "direction": direction,
                               "ours": provider, "peer": peer, "ratio": tflops / other})
    return ratios


RATIO_COLUMNS = (
    ("prec/fl", "ours-precise", "sdpa-flash"),
    ("fast/fl", "ours-fast", "sdpa-flash"),
    ("prec/cu", "ours-precise", "sdpa-cudnn"),
    ("fast/cu", "ours-fast", "sdpa-cudnn"),
)
SHORT = {"ours-precise": "precise", "ours-fast": "fast", "sdpa-flash": "flash",
         "sdpa-cudnn": "cudnn", "naive-sigmoid": "naive"}


def _ratio_cell(tflops: dict, ours: str, peer: str) -> str:
    if tflops.get(ours) and tflops.get(peer):
        return f"{tflops[ours] / tflops[peer]:8.2f}"
    return f"{'-':>8}"


def _print_table(rows: list[dict]) -> None:
    keys = sorted({(r["d"], r["causal"], r["n"], r["direction"]) for r in rows})
    lookup = {(r["d"], r["causal"], r["n"], r["direction"], r["provider"]): r for r in rows}
    print("TFLOP/s, bf16 ('!' = failed the reference check); ratios = ours / peer")
    print(f"{'D':>4} {'causal':>6} {'N':>6} {'dir':>4} "
          + " ".join(f"{SHORT[p]:>8}" for p in PROVIDERS)
          + " " + " ".join(f"{c[0]:>8}" for c in RATIO_COLUMNS))
    for key in keys:
        found = {p: lookup[(*key, p)] for p in PROVIDERS if (*key, p) in lookup}
        cells = " ".join(
            f"{found[p]['tflops']:8.1f}{'' if found[p]['check_ok'] else '!'}"
            if p in found else f"{'-':>8}"
            for p in PROVIDERS
        )
        tflops = {p: r["tflops"] for p, r in found.items()}
        ratios = " ".join(_ratio_cell(tflops, ours, peer) for _, ours, peer in RATIO_COLUMNS)
        print(f"{key[0]:>4} {key[1]!s:>6} {key[2]:>6} {key[3]:>4} {cells} {ratios}")


def _compile_job(job: tuple) -> str:
    # Runs in a worker process: compiles one kernel variant into Triton's on-disk cache with the
    # same specialisations (H = 2, N a multiple of 16) as the timed runs, which then load it.
    d, causal, gate, precise, configs = job
    q, k, v, do = (torch.randn(1, 2, 256, d, device=DEVICE, dtype=DTYPE) for _ in range(4))
    args = check_attention_args(q, k, v, bias=None, scale=None, causal=causal, alibi_slopes=None,
                                precise=precise, gate=gate)
    out, lse = attention_forward(q, k, v, args, configs=configs)
    attention_backward(do, q, k, v, out, lse, args, configs=configs)
    torch.cuda.synchronize()
    return str(job)


def _precompile(jobs: list[tuple], workers: int = 12, timeout: float = 240.0) -> set[tuple]:
    # Triton compiles serially in-process; a pool of spawned processes fills the cache in parallel.
    # Returns the jobs that compiled and ran; a failing or hanging variant is reported and dropped.
    ctx = mp.get_context("spawn")
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    futures = {pool.submit(_compile_job, job): job for job in jobs}
    done, pending = cf.wait(futures, timeout=timeout)
    ok = set()
    for fut in done:
        try:
            fut.result()
            ok.add(futures[fut])
        except Exception as err:
            print(f"  precompile failed {futures[fut]}: {str(err).splitlines()[0][:120]}",
                  file=sys.stderr)
    for fut in pending:
        print(f"  precompile timed out: {futures[fut]}", file=sys.stderr)
    pool.shutdown(wait=not pending, cancel_futures=True)
    return ok


def host_overhead(calls: int = 300) -> dict[str, float]:
    """Host time per call (microseconds) on a problem too small to keep the GPU busy.

    Where a call's GPU time is below this, the host, not the kernel, sets its latency.

    Parameters
    ----------
    calls : int
        Calls per measurement, after as many warm-up calls.

    Returns
    -------
    dict
        Microseconds per call for our public function (forward with autograd, forward and
        backward), our launcher alone, and SDPA's FLASH back-end, at B = H = 1, N = 128, D = 128.
    """
    import time

    q, k, v, do = (torch.randn(1, 1, 128, 128, device=DEVICE, dtype=DTYPE) for _ in range(4))
    leaves = [t.requires_grad_() for t in (q.clone(), k.clone(), v.clone())]
    args = check_attention_args(q, k, v, bias=None, scale=None, causal=False, alibi_slopes=None,
                                precise=True, gate="sigmoid")
    flash = _provider_fn("sdpa-flash", False)

    def fwd_bwd() -> None:
        torch.autograd.grad(sigmoid_attention(*leaves), leaves, do)

    cases = {
        "ours_public_fwd": lambda: sigmoid_attention(*leaves),
        "ours_public_fwd_bwd": fwd_bwd,
        "ours_launcher_fwd": lambda: attention_forward(q, k, v, args),
        "sdpa_flash_fwd": lambda: flash(*leaves),
    }
    result = {}
    for name, fn in cases.items():
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        result[name] = (time.perf_counter() - start) / calls * 1e6
    return result


def _sweep(points: list[Point]) -> list[dict]:
    jobs = [(p.d, p.causal, "sigmoid", precise, None) for p in points for precise in (True, False)]
    _precompile(sorted(set(jobs)))
    rows = []
    for point in points:
        print(f"N={point.n} D={point.d} causal={point.causal}", file=sys.stderr, flush=True)
        rows += _run_point(point, PROVIDERS)
    return rows


# Candidate tiles: TileConfig(block_m, block_n, num_warps, num_stages, tma); block_m tiles
# queries. The rounds before (and what they taught) are in kernels/attention/NOTES.md.
FWD_CANDIDATES = [(64, 64, 4, 3, False), (128, 64, 8, 3, False), (128, 128, 8, 3, False),
                  (64, 64, 4, 3, True), (128, 64, 8, 3, True), (64, 32, 4, 4, True)]
DKDV_CANDIDATES = [(64, 128, 8, 3, False), (64, 64, 4, 3, False), (64, 128, 8, 3, True),
                   (64, 64, 4, 3, True)]
DQ_CANDIDATES = [(128, 64, 8, 3, False), (128, 64, 8, 3, True), (64, 64, 4, 3, False)]


def _time_variant(
    point: Point, tensors: tuple, kind: str, precise: bool, cfg: KernelConfigs
) -> dict | None:
    q, k, v, do = tensors
    args = check_attention_args(q, k, v, bias=None, scale=None, causal=point.causal,
                                alibi_slopes=None, precise=precise, gate="sigmoid")
    try:
        out, lse = attention_forward(q, k, v, args, configs=cfg)
        grads = attention_backward(do, q, k, v, out, lse, args, configs=cfg)
    except Exception as err:  # out of shared memory or registers: skip the config
        print(f"  {kind} {cfg}: {str(err).splitlines()[0][:100]}", file=sys.stderr)
        return None
    errors = attention_slice_errors(q, k, v, do, out, grads, causal=point.causal)
    if kind == "fwd":
        ms = _bench(lambda: attention_forward(q, k, v, args, configs=cfg))
    else:
        ms = _bench(lambda: attention_backward(do, q, k, v, out, lse, args, configs=cfg))
    tile = getattr(cfg, kind)
    tflops = point.flops("fwd" if kind == "fwd" else "bwd") / ms * 1e-9
    print(f"D={point.d} causal={point.causal} {kind:4} precise={precise!s:5} "
          f"{tuple(asdict(tile).values())} {ms:7.3f} ms {tflops:6.1f} TFLOP/s "
          f"err {max(errors.values()):.1e}", flush=True)
    return {**asdict(point), "kernel": kind, "precise": precise, "tile": asdict(tile), "ms": ms,
            "tflops": tflops, "check": errors}


def _tune(points: list[Point]) -> list[dict]:
    variants = []
    for p in points:
        base = default_configs(p.d, DTYPE)
        for c in FWD_CANDIDATES:
            variants += [(p, "fwd", precise, KernelConfigs(TileConfig(*c), base.dkdv, base.dq))
                         for precise in (True, False)]
        variants += [(p, "dkdv", True, KernelConfigs(base.fwd, TileConfig(*c), base.dq))
                     for c in DKDV_CANDIDATES]
        variants += [(p, "dq", True, KernelConfigs(base.fwd, base.dkdv, TileConfig(*c)))
                     for c in DQ_CANDIDATES]
    compiled = _precompile(sorted({(p.d, p.causal, "sigmoid", pr, cfg)
                                   for p, _, pr, cfg in variants}, key=str))
    rows = []
    for point in points:
        tensors = _inputs(point)
        for p, kind, precise, cfg in variants:
            if p == point and (p.d, p.causal, "sigmoid", precise, cfg) in compiled:
                row = _time_variant(point, tensors, kind, precise, cfg)
                rows += [row] if row else []
    return rows


def plot(results: dict, path: str) -> None:
    """Draw TFLOP/s against N for each provider, one panel per (direction, D, causal).

    Parameters
    ----------
    results : dict
        The JSON written by this benchmark.
    path : str
        PNG file to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    panels = sorted({(r["direction"], r["d"], r["causal"]) for r in rows})
    fig, axes = plt.subplots(2, len(panels) // 2 or 1, figsize=(4 * max(len(panels) // 2, 1), 7),
                             squeeze=False)
    for ax, (direction, d, causal) in zip(axes.flat, panels, strict=False):
        for provider in PROVIDERS:
            pts = sorted((r["n"], r["tflops"]) for r in rows if r["provider"] == provider
                         and (r["direction"], r["d"], r["causal"]) == (direction, d, causal))
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=provider)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{direction} D={d}{' causal' if causal else ''}")
        ax.set_xlabel("N")
        ax.set_ylabel("TFLOP/s")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    # results of older runs carry "environment" where newer ones carry "provenance"
    info = results.get("provenance") or results["environment"]
    fig.suptitle(f"{info.get('device_name', info.get('device'))}, bf16, B*N = 16k, H*D = 2048")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run(args: argparse.Namespace) -> int:
    """Run the sweep (or the tile tuning) and write the JSON and plot if asked."""
    if args.replot:
        if not args.plot:
            print("--replot needs --plot PNG", file=sys.stderr)
            return 2
        with open(args.replot) as f:
            plot(json.load(f), args.plot)
        return 0
    if not torch.cuda.is_available():
        print("the attention benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    prov = provenance(DEVICE)
    label = "tune" if args.tune else "quick" if args.quick else None
    path = output_path(args, "attention", prov, label=label)
    lens = QUICK_SEQ_LENS if args.quick else SEQ_LENS
    points = [Point(n, d, causal) for d in HEAD_DIMS for causal in (False, True) for n in lens]
    if args.tune:
        points = [Point(16384, 128, False), Point(16384, 64, False), Point(16384, 128, True)]
        errors = [gate_error(n, precise) for n in (1024, 16384) for precise in (True, False)]
        for e in errors:
            print(f"gate error {e}")
        results = {"provenance": prov, "gate_error": errors, "tuning": _tune(points)}
    else:
        overhead = host_overhead()
        print("host microseconds per call: "
              + ", ".join(f"{k} {v:.0f}" for k, v in overhead.items()), flush=True)
        rows = _sweep(points)
        results = {"provenance": prov, "host_overhead_us": overhead, "rows": rows,
                   "ratios": _ratios(rows)}
        _print_table(rows)
    write_json(path, results)
    if args.plot and "rows" in results:
        plot(results, args.plot)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``attention`` subcommand."""
    p = subparsers.add_parser("attention", help="sigmoid attention vs SDPA and naive PyTorch",
                              description=__doc__.split("\n\n")[0])
    add_output_arguments(p)
    p.add_argument("--plot", metavar="PNG", help="write TFLOP/s against N as a PNG")
    p.add_argument("--quick", action="store_true", help=f"N in {QUICK_SEQ_LENS} only")
    p.add_argument("--tune", action="store_true", help="sweep our tile configurations instead")
    p.add_argument("--replot", metavar="JSON", help="only redraw --plot from a results JSON")
    p.set_defaults(run=run)

