"""The MoE gradient kernel's machine code, without a GPU: compile the loss + gradient pass's
launch of ``_moe_grad_kernel`` for sm_90 with Triton's bundled ptxas and count the instructions
of its sample loop.

    python -m benchmarks sass [--d 8] [--k 8] [--gate sigmoid] [--score linear]
        [--expert relu] [--dtype float32] [--block-n 64 --num-warps 4 --split 2] [--json PATH]

The loss + gradient pass at d = 8 is bound by instruction issue (kernels/moe/NOTES.md, the
profile of the pass): the loop's instructions per sample, times the samples, over the
schedulers' issue rate is its time at full issue. This counts them from the SASS, so a change
to the kernel's arithmetic can be judged before any GPU time is spent; the GPU still decides
the speed (``python -m benchmarks moe``).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import re
import subprocess
import sys
import tempfile

from benchmarks import shared_memory
from benchmarks.output import add_output_arguments, output_path, write_json
from kernels.moe.triton_pass import default_config
from moe_theory.provenance import provenance

_LINE = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", re.M)


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def compile_sass(gate: str, score: str, expert: str, d: int, k: int, dtype: str, *,
                 block_n: int | None = None, num_warps: int | None = None,
                 split: int | None = None) -> tuple[str, dict]:
    """SASS of the loss + ``J^T r`` pass's kernel for sm_90 and the arguments it was compiled
    with: ``triton_moe_pass``'s own launch, captured on the CPU and bound as on a GPU
    (``benchmarks/shared_memory.py``), with ``default_config`` unless a block size is given."""
    cfg = default_config(gate, score, expert, d, k, gauss_newton=False)
    cfg = dataclasses.replace(cfg, **{name: value for name, value in
                                      (("block_n", block_n), ("num_warps", num_warps),
                                       ("split", split)) if value is not None})
    point = dict(gate=gate, score=score, expert=expert, d=d, k=k, dtype=dtype, kernel="gradient",
                 config=dataclasses.asdict(cfg))
    launch = shared_memory.capture(point, gauss_newton=False)
    sass, registers = disassemble(shared_memory.compile_launch(launch))
    return sass, dict(launch["kwargs"], registers=registers)


def disassemble(compiled) -> tuple[str, int | None]:
    """The SASS of a kernel compiled by ``triton.compile`` and its registers per thread, read by
    the ``cuobjdump`` bundled with Triton."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "kernel.cubin")
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        sass = subprocess.run([_tool("cuobjdump"), "--dump-sass", cubin], check=True,
                              capture_output=True, text=True).stdout
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", cubin], check=True,
                               capture_output=True, text=True).stdout
    registers = re.search(r"REG:(\d+)", usage)
    return sass, int(registers.group(1)) if registers else None


def loop_mix(sass: str) -> collections.Counter:
    """Opcode counts (without modifiers) of the longest loop: the instructions between a
    backward branch and its target (the kernel's sample loop; the trap at the end, a branch to
    itself, is not a loop)."""
    lines = [(int(a, 16), text) for a, text in _LINE.findall(sass)]
    best: list[str] = []
    for address, text in lines:
        hit = re.search(r"\bBRA\b.*?(0x[0-9a-f]+)", text)
        if hit and int(hit.group(1), 16) < address:
            body = [t for a, t in lines if int(hit.group(1), 16) <= a <= address]
            best = max(best, body, key=len)
    opcodes = [re.sub(r"^@!?U?P[T0-9]+\s+", "", t).split()[0].split(".")[0] for t in best]
    return collections.Counter(opcodes)


def run(args: argparse.Namespace) -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("sass: TRITON_INTERPRET=1 runs kernels in the interpreter, which compiles nothing; "
              "run without it", file=sys.stderr)
        return 2
    sass, launch = compile_sass(args.gate, args.score, args.expert, args.d, args.k, args.dtype,
                                block_n=args.block_n, num_warps=args.num_warps, split=args.split)
    mix = loop_mix(sass)
    per_thread = sum(mix.values())
    if per_thread == 0:
        print("no loop found in the kernel's SASS")
        return 1
    # each tile of block_n samples spreads over the program's threads, SPLIT lanes per sample
    threads = 32 * launch["num_warps"]
    per_sample = per_thread * threads / launch["BN"]
    results = {"shape": dict(gate=args.gate, score=args.score, expert=args.expert, d=args.d,
                             k=args.k, dtype=args.dtype, arch=shared_memory.TARGET[1]),
               "launch": launch,
               "loop_instructions_per_thread": per_thread,
               "loop_instructions_per_sample": per_sample, "loop_mix": dict(mix.most_common())}
    print(f"{args.gate} {args.score} {args.expert}, d = {args.d}, k = {args.k}, {args.dtype}, "
          f"sm_{shared_memory.TARGET[1]}: BN {launch['BN']}, {launch['num_warps']} warps, split "
          f"{launch['SPLIT']}, {launch['registers']} registers")
    print(f"sample loop: {per_thread} instructions per thread per tile = {per_sample:.0f} per "
          f"sample")
    print("  " + ", ".join(f"{op} {count}" for op, count in mix.most_common()))
    prov = provenance("cpu")
    write_json(output_path(args, "sass", prov), dict(results, provenance=prov))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``sass`` subcommand."""
    p = subparsers.add_parser("sass", help="instructions of the MoE gradient kernel's sample "
                              "loop, compiled for a GPU without one",
                              description=__doc__.split("\n\n")[0])
    add_output_arguments(p)
    p.add_argument("--gate", default="sigmoid")
    p.add_argument("--score", default="linear")
    p.add_argument("--expert", default="relu")
    p.add_argument("--d", type=int, default=8)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--block-n", type=int)
    p.add_argument("--num-warps", type=int)
    p.add_argument("--split", type=int)
    p.set_defaults(run=run)
