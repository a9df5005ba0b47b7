"""The tensor-core lead for the loss + ``J^T r`` pass at small d, measured: a kernel whose two
contractions per tile are ``tl.dot``s, timed against the committed pass in the same process.

    python -m benchmarks stacked-dot [--json PATH | --save]     (a GPU)
    python -m benchmarks stacked-dot --sass                     (no GPU: sm_90 instruction counts)

At d = 8 the committed pass (``kernels/moe/triton_kernels.py``) contracts in registers, one
sample per thread pair, and is bound by the latency of its instruction stream at 198 registers
(kernels/moe/NOTES.md, the profile of the pass). Here the tile's samples are the rows of an MMA
instead: one ``(BN, 16) x (16, 16)`` dot gives every atom's gate score and expert input at once
(gate and expert weights stacked as the 16 columns, the intercepts as a ones column of x), and
one ``(16, BN) x (BN, 16)`` dot accumulates every gradient. Linear scores, k <= 8, d + 1 <= 16.
Kept as a benchmark, not a kernel of the fits: it is correct (the tests hold it to the float64
reference) and slower (the README of this folder gives the numbers).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import torch
import triton
import triton.language as tl

from benchmarks.output import add_output_arguments, output_path, write_json
from kernels.moe.triton_kernels import _expert_act
from moe_theory.provenance import provenance

#: Atoms per half of the stacked weight matrix: 2 * KH = 16 columns, the least a tl.dot takes.
KH = 8
#: Expert codes of ``kernels.moe.triton_kernels._expert_act`` this benchmark runs.
EXPERT_CODES = {"linear": 0, "relu": 1}
#: (R, n, d, k) of the committed pass's benchmark (benchmarks/README.md, MoE least squares).
SHAPES = ((256, 100_000, 8, 8), (64, 100_000, 8, 4), (16, 1_000_000, 8, 4))
#: (block_n, num_warps, programs per problem) tried on the GPU; the best is reported.
VARIANTS = ((64, 4, 4), (64, 4, 8), (64, 4, 16), (128, 4, 8), (128, 8, 8), (32, 4, 8))


@triton.jit(do_not_specialize=["n", "tiles_per_prog", "n_split"])
def stacked_dot_kernel(X, Y, GP, EP, OUT_G, n, tiles_per_prog, n_split,
                       d: tl.constexpr, k: tl.constexpr, kf: tl.constexpr,
                       pg: tl.constexpr, pe: tl.constexpr, p: tl.constexpr,
                       BN: tl.constexpr, DA: tl.constexpr, KH: tl.constexpr,
                       SOFTMAX: tl.constexpr, EXPERT: tl.constexpr,
                       PRECISION: tl.constexpr):
    t = tl.program_id(1)
    r = tl.program_id(2)
    Xr = X + r.to(tl.int64) * n * d
    Yr = Y + r.to(tl.int64) * n
    # W (DA, 2 KH): column c < KH is gate atom c (beta1, then beta0 in row d), column
    # KH + j expert atom j (a, then b in row d)
    f = tl.arange(0, DA)[:, None]
    c = tl.arange(0, 2 * KH)[None, :]
    atom = c % KH
    live = (atom < k) & (f <= d)
    wg = tl.load(GP + r * k * pg + atom * pg + tl.where(f < d, 1 + f, 0),
                 mask=live & (c < KH), other=0.0)
    we = tl.load(EP + r * k * pe + atom * pe + tl.where(f < d, f, pe - 1),
                 mask=live & (c >= KH), other=0.0)
    w = wg + we
    dt: tl.constexpr = w.dtype
    acc = tl.zeros((2 * KH, DA), dt)
    loss = tl.zeros((BN,), dt)
    tile0 = t * tiles_per_prog
    hi = tl.minimum(n, (tile0 + tiles_per_prog) * BN)
    cols = tl.arange(0, DA)[None, :]
    atoms = tl.arange(0, KH)[None, :]
    for it in range(tiles_per_prog):
        rows = (tile0 + it) * BN + tl.arange(0, BN)
        rm = rows < hi
        x = tl.load(Xr + rows[:, None] * d + cols, mask=rm[:, None] & (cols < d), other=0.0)
        x = tl.where(cols == d, 1.0, x)  # the intercepts' column (rows past n have r = 0)
        y = tl.load(Yr + rows, mask=rm, other=0.0)
        sz = tl.dot(x, w, input_precision=PRECISION, out_dtype=dt)
        s, z = tl.split(tl.permute(tl.reshape(sz, (BN, 2, KH)), (0, 2, 1)))
        if SOFTMAX:
            if k < KH:
                s = tl.where(atoms < k, s, float("-inf"))
            e = tl.exp(s - tl.max(s, axis=1)[:, None])
            pi = e / tl.sum(e, axis=1)[:, None]
        else:
            pi = 1.0 / (1.0 + tl.exp(-s))
            if k < KH:
                pi = tl.where(atoms < k, pi, 0.0)
        h, dh = _expert_act(z, EXPERT, 1)
        fx = tl.sum(pi * h, axis=1)
        if SOFTMAX:
            ds = pi * (h - fx[:, None])
        else:
            ds = pi * (1.0 - pi) * h
        if kf < KH:
            ds = tl.where(atoms < kf, ds, 0.0)
        res = tl.where(rm, y - fx, 0.0)
        loss += res * res
        wsz = tl.reshape(tl.permute(tl.join(ds * res[:, None], pi * dh * res[:, None]),
                                    (0, 2, 1)), (BN, 2 * KH))
        acc = tl.dot(tl.trans(wsz), x, acc, input_precision=PRECISION, out_dtype=dt)
    out = OUT_G + (r * n_split + t).to(tl.int64) * (p + 1)
    tl.store(out + p, tl.sum(loss.to(tl.float64), axis=0))
    # row c of acc is column c of w: gate atom c's (beta1, beta0) or expert atom c - KH's
    cr = tl.arange(0, 2 * KH)[:, None]
    ar = cr % KH
    gate_row = cr < KH
    ff = tl.arange(0, DA)[None, :]
    off = tl.where(gate_row, ar * pg + tl.where(ff < d, 1 + ff, 0),
                   kf * pg + ar * pe + tl.where(ff < d, ff, pe - 1))
    keep = (ff <= d) & tl.where(gate_row, ar < kf, ar < k)
    tl.store(out + off, acc.to(tl.float64), mask=keep)


def _launch(X, gp, *, gate, expert, block_n, programs, num_warps, precision):
    """``(grid, run-time arguments, keyword arguments, p)`` of one pass; checks the shapes this
    kernel covers."""
    R, n, d = X.shape
    k = gp.shape[1]
    if k > KH or d + 1 > 16 or gate not in ("sigmoid", "softmax") or expert not in EXPERT_CODES:
        raise ValueError(f"stacked-dot covers k <= {KH}, d <= 15, sigmoid or softmax gates and "
                         f"{sorted(EXPERT_CODES)} experts; got d = {d}, k = {k}, {gate}, {expert}")
    kf = k - 1 if gate == "softmax" else k
    pg, pe = d + 1, d + 1
    p = kf * pg + k * pe
    tiles = triton.cdiv(n, block_n)
    per_prog = triton.cdiv(tiles, min(programs, tiles))
    T = triton.cdiv(tiles, per_prog)
    if precision is None:
        precision = "tf32x3" if X.dtype == torch.float32 else "ieee"
    kwargs = dict(d=d, k=k, kf=kf, pg=pg, pe=pe, p=p, BN=block_n,
                  DA=max(16, triton.next_power_of_2(d + 1)), KH=KH, SOFTMAX=gate == "softmax",
                  EXPERT=EXPERT_CODES[expert], PRECISION=precision, num_warps=num_warps)
    return (1, T, R), [n, per_prog, T], kwargs, p


def stacked_dot_pass(X, Y, gp, ep, *, gate: str = "sigmoid", expert: str = "relu",
                     block_n: int = 64, programs: int = 8, num_warps: int = 4,
                     precision: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss (R,), J^T r (R, p))`` in float64, as ``kernels.moe.moe_pass`` returns them for a
    linear score; ``programs`` per problem split its samples (partials reduced here)."""
    grid, ints, kwargs, p = _launch(X, gp, gate=gate, expert=expert, block_n=block_n,
                                    programs=programs, num_warps=num_warps, precision=precision)
    # NaN: every cell the kernel owns must be written (the tests check that none is left)
    out = torch.full((X.shape[0], grid[1], p + 1), float("nan"), dtype=torch.float64,
                     device=X.device)
    stacked_dot_kernel[grid](X, Y, gp, ep, out, *ints, **kwargs)
    total = out.sum(1)
    return total[:, p], total[:, :p]


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def _time_shapes() -> dict:
    from benchmarks.checks import moe_problem, reference_pass
    from benchmarks.moe import _bench, _copy_bandwidth
    from kernels.moe.triton_pass import triton_moe_pass
    from moe_theory import models

    bandwidth = _copy_bandwidth()
    relu = models.get_expert("relu")
    shapes = []
    for R, n, d, k in SHAPES:
        X, Y, gp, ep = moe_problem(R, n, d, k, torch.float32, "sigmoid", "linear", "relu",
                                   device="cuda")
        ref = reference_pass(X, Y, gp, ep, gate="sigmoid", score="linear", expert="relu",
                             gauss_newton=False)
        committed = functools.partial(triton_moe_pass, X, Y, gp, ep, gate="sigmoid",
                                      score="linear", expert=relu, gauss_newton=False)
        row = dict(R=R, n=n, d=d, k=k, floor_ms=R * n * (d + 1) * 4 / bandwidth / 1e6,
                   committed_err_jtr=_relative(committed().jtr, ref.jtr),
                   committed_ms=_bench(committed), variants=[])
        # tf32 (one pass, ~1e-3 relative) only as a bound on what the route could give
        for precision, variants in (("tf32x3", VARIANTS), ("tf32", VARIANTS[1:2])):
            for block_n, num_warps, programs in variants:
                fn = functools.partial(stacked_dot_pass, X, Y, gp, ep, block_n=block_n,
                                       programs=programs, num_warps=num_warps,
                                       precision=precision)
                loss, jtr = fn()
                row["variants"].append(dict(precision=precision, block_n=block_n,
                                            num_warps=num_warps, programs=programs,
                                            ms=_bench(fn), err_jtr=_relative(jtr, ref.jtr),
                                            err_loss=_relative(loss, ref.loss)))
        best = min((v for v in row["variants"] if v["precision"] == "tf32x3"),
                   key=lambda v: v["ms"])
        row["best_tf32x3_ms"] = best["ms"]
        row["best_over_committed"] = best["ms"] / row["committed_ms"]
        print(f"(R, n, d, k) = {(R, n, d, k)}: committed {row['committed_ms']:.4f} ms, "
              f"stacked dots {best['ms']:.4f} ms (tf32x3, best of {len(VARIANTS)}), "
              f"floor {row['floor_ms']:.4f} ms", flush=True)
        shapes.append(row)
        del X, Y, gp, ep, ref
    return {"copy_bandwidth_GBps": bandwidth, "shapes": shapes}


def _sass_counts() -> dict:
    """Instructions of the sample loop per sample, compiled for sm_90 without a GPU."""
    from benchmarks.sass import disassemble, loop_mix
    from benchmarks.shared_memory import bind

    counts = []
    for block_n, num_warps in dict.fromkeys((b, w) for b, w, _ in VARIANTS):
        _, _, kwargs, _ = _launch(torch.empty(1, 64, 8), torch.empty(1, 8, 9),
                                  gate="sigmoid", expert="relu", block_n=block_n,
                                  programs=8, num_warps=num_warps, precision="tf32x3")
        args = [torch.empty(64)] * 4 + [torch.empty(64, dtype=torch.float64), 100_000, 5, 8]
        _, target, src, options = bind(stacked_dot_kernel, args, kwargs)
        compiled = triton.compile(src, target=target, options=options.__dict__)
        sass, registers = disassemble(compiled)
        mix = loop_mix(sass)
        row = dict(block_n=block_n, num_warps=num_warps, registers=registers,
                   shared_bytes=compiled.metadata.shared,
                   loop_instructions_per_thread=sum(mix.values()),
                   loop_instructions_per_sample=sum(mix.values()) * 32 * num_warps / block_n,
                   loop_mix=dict(mix.most_common()))
        print(f"BN {block_n}, {num_warps} warps: {row['registers']} registers, "
              f"{row['loop_instructions_per_sample']:.0f} instructions per sample "
              f"({', '.join(f'{op} {c}' for op, c in mix.most_common(4))} per thread)")
        counts.append(row)
    return {"sass": counts}


def run(args: argparse.Namespace) -> int:
    if args.sass:
        if os.environ.get("TRITON_INTERPRET") == "1":
            print("stacked-dot --sass: run without TRITON_INTERPRET=1", file=sys.stderr)
            return 2
        results, device = _sass_counts(), "cpu"
    else:
        if not torch.cuda.is_available():
            print("stacked-dot: needs a CUDA GPU (--sass counts instructions without one)",
                  file=sys.stderr)
            return 2
        results, device = _time_shapes(), "cuda"
    prov = provenance(device)
    write_json(output_path(args, "stacked_dot", prov), dict(results, provenance=prov))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``stacked-dot`` subcommand."""
    p = subparsers.add_parser("stacked-dot", help="the loss + gradient pass with its "
                              "contractions on tensor cores, against the committed pass",
                              description=__doc__.split("\n\n")[0])
    add_output_arguments(p)
    p.add_argument("--sass", action="store_true",
                   help="count the sample loop's sm_90 instructions instead (no GPU)")
    p.set_defaults(run=run)
