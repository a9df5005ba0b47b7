"""Shared memory of the MoE pass kernels: the resource model's prediction against the compiler's
(``python -m benchmarks shared-memory``, CPU only; docs/kernels.md#resource-model).

``kernels/moe/resources.py`` predicts the shared memory of ``_moe_gn_kernel`` and
``_moe_grad_kernel`` before launch, so that ``pick_config`` chooses a configuration that fits the
device. The interpreter has no shared memory, so the prediction is checked here against
``metadata.shared`` of the real compiler: each launch is captured on the host (the launcher runs on
CPU tensors up to the kernel call, which a stand-in records instead of running), then compiled for
sm_90 by the Triton backend (ptxas included; no GPU needed) with the argument specialisation a
launch would get. Launches that compile to the same kernel are compiled once.

``--triton-path DIR`` compiles with the Triton found in DIR (an unpacked wheel, e.g. the GPU
machine's version) instead of the installed one; the compiles run in worker processes
(``--procs``) whose ``PYTHONPATH`` starts with DIR.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from benchmarks.output import add_output_arguments, output_path, write_json

ROOT = Path(__file__).resolve().parent.parent

#: The grid: every score, with each gate paired with an expert (one with a slope, one without: the
#: expert's slope decides whether its weights join the x-dots; the gate, whether the atoms' scores
#: are normalised across atoms), d and k across the kernels' thresholds (DP, QP and KP below and
#: above the 16 a ``tl.dot`` needs), both dtypes: ~330 kernels, ~15 minutes on one core. Every
#: pairing of gate and expert would be ~970 kernels, as many as the time allows.
GATE_EXPERTS = (("sigmoid", "relu"), ("softmax", "constant"))
#: Shapes added to the grid: the two whose Gauss-Newton kernel failed on an H200 (issue 19).
EXTRA = (("sigmoid", "monomial", "poly3", 3, 9), ("softmax", "quadratic", "gelu", 3, 9))
DS = (1, 3, 8, 17, 32)
KS = (1, 2, 9)
DTYPES = (torch.float32, torch.float64)
#: Samples and problems of the captured launches: n a multiple of 16 as in real fits (Triton
#: specialises integer arguments on divisibility by 16).
N_SAMPLES, N_PROBLEMS = 4000, 2
#: The H100/H200 limit the chosen configuration is picked for.
TARGET = ("cuda", 90, 32)


class _Captured(Exception):
    """Raised by the stand-in kernel: the launch's arguments, not run."""

    def __init__(self, kernel: str, args: tuple, kwargs: dict):
        super().__init__(kernel)
        self.kernel, self.args, self.kwargs = kernel, args, kwargs


class _StandIn:
    def __init__(self, name: str):
        self.name = name

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            raise _Captured(self.name, args, kwargs)
        return launch


def _encode(v):
    if isinstance(v, torch.Tensor):
        return {"tensor": str(v.dtype).removeprefix("torch.")}
    if hasattr(v, "value"):  # tl.constexpr
        v = v.value
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    raise TypeError(f"launch argument of type {type(v).__name__} cannot be recorded")


def points() -> list[dict]:
    """The grid's launches: per shape and kernel, the default configuration and the one
    ``pick_config`` chooses at the H100/H200 limit (once when they agree). The Gauss-Newton kernel
    (pair programs) runs for scores with quadratic features; the gradient kernel for every score,
    as the Gauss-Newton step calls it (with the Gram coefficients ``U`` for linear scores,
    ``J^T r`` alone otherwise)."""
    from kernels.moe import model, resources
    from kernels.moe import triton_pass as tp

    out = []
    shapes = [(gate, score, expert, d, k) for (gate, expert), score, d, k
              in itertools.product(GATE_EXPERTS, model.SCORES, DS, KS)]
    for (gate, score, expert, d, k), dtype in itertools.product([*shapes, *EXTRA], DTYPES):
        if tp.unsupported_reason(score, d, k, dtype):
            continue
        for kernel in ("gauss_newton", "gradient"):
            gn = kernel == "gauss_newton"
            if gn and not model.score_has_quadratic(score):
                continue
            default = tp.default_config(gate, score, expert, d, k, gauss_newton=gn)
            chosen = tp.pick_config(gate, score, expert, d, k, dtype, gauss_newton=gn,
                                    shared_memory=resources.HOPPER_SHARED_MEMORY)
            configs = {"default": default}
            if chosen is not None and chosen != default:
                configs["chosen"] = chosen
            for role, config in configs.items():
                out.append(dict(gate=gate, score=score, expert=expert, d=d, k=k,
                                dtype=str(dtype).removeprefix("torch."), kernel=kernel,
                                role=role, chosen=role == "chosen" or chosen == default,
                                config=dataclasses.asdict(config)))
    return out


def capture(point: dict, gauss_newton: bool | None = None) -> dict:
    """The arguments of ``point``'s launch on a GPU, JSON-ready: the launcher runs on CPU tensors
    and a stand-in for the kernel records its call. The dtype-dependent precisions a GPU launch
    picks (the launcher picks ieee off the GPU) are set as on an H100/H200. ``gauss_newton``:
    the pass asked for (default: as a Gauss-Newton step calls the point's kernel; False: the
    loss + ``J^T r`` pass alone)."""
    from kernels.moe import model
    from kernels.moe import triton_pass as tp

    dtype = getattr(torch, point["dtype"])
    gate, score, d, k = point["gate"], point["score"], point["d"], point["k"]
    ex = model.Expert(point["expert"])
    R, n = N_PROBLEMS, N_SAMPLES
    X = torch.zeros(R, n, d, dtype=dtype)
    Y = torch.zeros(R, n, dtype=dtype)
    gp = torch.zeros(R, k, model.gate_dim(score, d), dtype=dtype)
    ep = torch.zeros(R, k, ex.dim(d), dtype=dtype)
    config = tp.LaunchConfig(**point["config"])
    gn = point["kernel"] == "gauss_newton"
    saved = tp._moe_gn_kernel, tp._moe_grad_kernel
    tp._moe_gn_kernel, tp._moe_grad_kernel = _StandIn("_moe_gn_kernel"), _StandIn("_moe_grad_kernel")
    try:
        # the gradient kernel: with U (Gram route) for linear scores, J^T r alone otherwise
        if gauss_newton is None:
            gauss_newton = gn or not model.score_has_quadratic(score)
        tp.triton_moe_pass(X, Y, gp, ep, gate=gate, score=score, expert=ex, config=config,
                           gauss_newton=gauss_newton)
    except _Captured as launch:
        kwargs = {name: _encode(v) for name, v in launch.kwargs.items()}
        if dtype == torch.float32:  # as triton_moe_pass on a GPU (fp32_gpu)
            kwargs["PRECISION"] = "tf32x3"
            if "JTJ_PRECISION" in kwargs:
                kwargs["JTJ_PRECISION"] = config.jtj_precision or "tf32"
        return {"kernel": launch.kernel, "args": [_encode(a) for a in launch.args],
                "kwargs": kwargs}
    finally:
        tp._moe_gn_kernel, tp._moe_grad_kernel = saved
    raise RuntimeError(f"no kernel launch captured for {point}")


def compile_key(launch: dict) -> str:
    """What the compiled kernel depends on: the kernel, its keyword arguments (compile-time
    constants, warps, stages) and, of the integer arguments, what Triton specialises on (== 1,
    divisible by 16)."""
    args = [a if not isinstance(a, int) or isinstance(a, bool) else ("one" if a == 1 else a % 16 == 0)
            for a in launch["args"]]
    return json.dumps([launch["kernel"], args, sorted(launch["kwargs"].items())])


def _bound(launch: dict):
    """``launch``'s kernel, bound as a GPU launch binds it: ``(backend, target, source,
    options)`` (:func:`bind`)."""
    import kernels.moe.triton_kernels as tk

    args = [torch.empty(64, dtype=getattr(torch, a["tensor"])) if isinstance(a, dict) else a
            for a in launch["args"]]
    return bind(getattr(tk, launch["kernel"]), args, dict(launch["kwargs"]))


def bind(jit, args: list, kwargs: dict):
    """The jit function ``jit`` bound for sm_90 as a launch with ``args`` and ``kwargs`` binds
    it: ``(backend, target, source, options)``. The kernel's own argument binder specialises the
    arguments (tensors are 16-byte aligned CPU stand-ins)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget(*TARGET)
    backend = make_backend(target)
    binder = create_function_from_signature(jit.signature, jit.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = jit._pack_args(backend, kwargs, bound, specialization,
                                                           options)
    return backend, target, ASTSource(jit, signature, constexprs, attrs), options


def compile_launch(launch: dict):
    """``launch`` compiled for sm_90 to the end (cubin included) by the Triton first on
    ``sys.path``, as :func:`compile_shared` binds it (``benchmarks/sass.py`` reads its code)."""
    import triton

    _, target, src, options = _bound(launch)
    return triton.compile(src, target=target, options=options.__dict__)


def compile_shared(launch: dict, full: bool = False) -> int:
    """``metadata.shared`` of ``launch`` compiled for sm_90 by the Triton first on ``sys.path``:
    the kernel's own argument binder specialises the arguments as a launch would (tensors are
    16-byte aligned CPU stand-ins), and the compiler's stages run up to Triton's shared-memory
    allocation (``ttg.shared``, what the launcher checks against the device): the lowering to
    LLVM, PTX and ptxas, most of the time of a large kernel, would not change it (``full``: run
    the lowering too, the check of :func:`_allocated`)."""
    from triton._C.libtriton import ir

    backend, target, src, options = _bound(launch)
    # triton.compile's pipeline (triton/compiler/compiler.py), without its cache and last stages
    options = backend.parse_options(options.__dict__)
    metadata = {"target": target, **options.__dict__}
    stages: dict = {}
    backend.add_stages(stages, options, src.language)
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    module = src.make_ir(target, options, backend.get_codegen_implementation(options),
                         backend.get_module_map(), context)
    for name in ("ttir", "ttgir"):
        module = stages[name](module, metadata)
    return _allocated(stages["llir"], module, metadata, full)


class _Allocated(Exception):
    def __init__(self, shared: int):
        super().__init__(shared)
        self.shared = shared


def _allocated(llir, module, metadata: dict, full: bool) -> int:
    """``ttg.shared`` of ``module`` (TTGIR) after the llir stage's passes up to the allocation.

    The stage builds one pass list, allocation first, then the lowering to LLVM (two thirds of
    the time of a large kernel), then runs it; its builder is intercepted where it adds the
    lowering: the passes so far run there and report the allocation. ``full``: the whole stage
    (but LLVM's -O3), as a check of the shortcut."""
    from triton.backends.nvidia import compiler as nv

    optimize = nv.llvm.optimize_module
    lower = nv.nvidia.passes.ttgpuir.add_to_llvmir

    def allocate_then_stop(pm, *args):
        pm.run(module, "shared-memory")
        raise _Allocated(module.get_int_attr("ttg.shared"))

    nv.llvm.optimize_module = lambda *a, **kw: None
    if not full:
        nv.nvidia.passes.ttgpuir.add_to_llvmir = allocate_then_stop
    try:
        llir(module, metadata)
    except _Allocated as done:
        return int(done.shared)
    finally:
        nv.llvm.optimize_module = optimize
        nv.nvidia.passes.ttgpuir.add_to_llvmir = lower
    return int(metadata["shared"])


def _worker() -> int:
    """Compile the launches read as JSON from stdin; print one JSON line per launch."""
    import triton

    jobs = json.load(sys.stdin)
    print(json.dumps({"triton": triton.__version__, "triton_path": triton.__file__}), flush=True)
    for key, launch in jobs:
        t0 = time.perf_counter()
        try:
            row = {"key": key, "shared": compile_shared(launch)}
        except Exception as e:  # a compile error is a result (Triton 3.6 has no float64 tl.dot)
            row = {"key": key, "shared": None, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        row["compile_s"] = round(time.perf_counter() - t0, 2)
        print(json.dumps(row), flush=True)
    return 0


def worker_env(triton_path: str | None = None) -> dict:
    """Environment of a compiling process: the compiler, not the interpreter, with
    ``triton_path`` (a directory holding a ``triton`` package) ahead of the installed Triton."""
    env = {name: v for name, v in os.environ.items() if name != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([*(p for p in [triton_path] if p), str(ROOT)])
    env.setdefault("MOE_THEORY_THREADS", "1")
    return env


WORKER = [sys.executable, "-c", "from benchmarks.shared_memory import _worker; "
          "raise SystemExit(_worker())"]


def compile_all(launches: list[dict], triton_path: str | None = None,
                timeout: float | None = None) -> list[int | None]:
    """``metadata.shared`` of each launch (None where it does not compile), in one process
    (the caller may run under the interpreter, which has no compiler)."""
    jobs = [(str(i), launch) for i, launch in enumerate(launches)]
    out = subprocess.run(WORKER, input=json.dumps(jobs), capture_output=True, text=True,
                         cwd=ROOT, env=worker_env(triton_path), timeout=timeout, check=True)
    shared = {}
    for line in out.stdout.splitlines():
        msg = json.loads(line)
        if "key" in msg:
            shared[msg["key"]] = msg["shared"]
    return [shared.get(key) for key, _ in jobs]


def predicted_bytes(point: dict) -> int:
    """The model's shared memory for ``point`` (bytes), as the launcher computes it."""
    from kernels.moe import triton_pass as tp

    dtype = getattr(torch, point["dtype"])
    return tp.staged_elements(point["gate"], point["score"], point["expert"], point["d"],
                              point["k"], dtype, tp.LaunchConfig(**point["config"]),
                              gauss_newton=point["kernel"] == "gauss_newton") * dtype.itemsize


def summarize(rows: list[dict]) -> dict:
    """Counts, and the largest under- and over-estimates (predicted / actual) over the compiled
    rows: all of them, and those above 16 KiB (below, a few KiB cannot change a choice)."""
    done = [r for r in rows if r.get("actual")]
    errors = sum(1 for r in rows if r.get("error"))
    out = {"launches": len(rows), "compiled": len(done), "errors": errors,
           "complete": len(done) + errors == len(rows)}
    if not done:
        return out
    ratio = [r["predicted"] / r["actual"] for r in done]
    large = [r["predicted"] / r["actual"] for r in done if r["actual"] > 16384]
    out.update(under=sum(1 for r in done if r["predicted"] < r["actual"]),
               min_ratio=round(min(ratio), 4), max_ratio=round(max(ratio), 4),
               max_ratio_above_16k=round(max(large), 4) if large else None,
               chosen_over_limit=sum(1 for r in done if r["chosen"] and r["actual"] > LIMIT()))
    return out


def LIMIT() -> int:  # noqa: N802 (the constant, read lazily)
    from kernels.moe import resources

    return resources.HOPPER_SHARED_MEMORY


def run(args: argparse.Namespace) -> int:
    from moe_theory.provenance import provenance

    grid = points()
    if args.limit:
        grid = grid[: args.limit]
    launches = {}
    for point in grid:
        launch = capture(point)
        point["key"] = compile_key(launch)
        launches.setdefault(point["key"], launch)
    known, extra = {}, {}
    for path in args.reuse or ():
        for row in json.loads(Path(path).read_text())["rows"]:
            if row.get("actual") is not None:
                row.setdefault("key", compile_key(capture(row)))
                known[row["key"]] = row["actual"]
                if row["key"] not in launches:  # measured earlier at another configuration
                    extra[row["key"]] = {name: row[name] for name in (
                        "gate", "score", "expert", "d", "k", "dtype", "kernel", "config", "key")}
    grid += [dict(point, role="earlier", chosen=False) for point in extra.values()]
    wanted = {point["key"] for point in grid if point["chosen"] or not args.chosen_only}
    todo = [(key, launch) for key, launch in launches.items()
            if key not in known and key in wanted]
    print(f"{len(grid)} launches, {len(launches)} distinct kernels, {len(todo)} to compile "
          f"on {args.procs} processes", flush=True)
    env = worker_env(args.triton_path)
    # the configurations the launcher chooses first, then the rest; small shapes first in each
    # (a run cut short covers the grid's breadth; large kernels take up to a minute each)
    order = {}
    for point in grid:
        rank = (not point["chosen"], point["d"], point["k"], point["config"]["block_n"])
        order[point["key"]] = min(order.get(point["key"], rank), rank)
    todo.sort(key=lambda job: order[job[0]])
    results: queue.Queue = queue.Queue()
    procs = []
    for part in range(args.procs):
        jobs = todo[part :: args.procs]
        if not jobs:
            continue
        p = subprocess.Popen(WORKER, cwd=ROOT, env=env, text=True, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
        p.stdin.write(json.dumps(jobs))
        p.stdin.close()
        threading.Thread(target=lambda p=p: [results.put(json.loads(line)) for line in p.stdout]
                         + [results.put(None)], daemon=True).start()
        procs.append(p)
    compiled, errors, compiler = dict(known), {}, None
    prov = provenance("cpu")
    out = {"provenance": prov, "target": "sm_90", "grid": {
        "gate_experts": GATE_EXPERTS, "extra": EXTRA, "scores": "all", "d": DS, "k": KS,
        "dtypes": [str(t) for t in DTYPES], "n": N_SAMPLES, "R": N_PROBLEMS}}
    running, t0 = len(procs), time.time()

    def save():
        rows = []
        for point in grid:
            row = {key: v for key, v in point.items()}
            row["predicted"] = predicted_bytes(point)
            row["actual"] = compiled.get(point["key"])
            if point["key"] in errors:
                row["error"] = errors[point["key"]]
            rows.append(row)
        out.update(compiler_triton=compiler, summary=summarize(rows), rows=rows)
        label = f"triton{compiler or 'unknown'}"
        write_json(output_path(args, "shared_memory", prov, label=label, gpu="cpu-sm90"), out)
        return rows

    while running:
        msg = results.get()
        if msg is None:
            running -= 1
            continue
        if "triton" in msg:
            compiler = msg["triton"]
            continue
        if msg["shared"] is None:
            errors[msg["key"]] = msg["error"]
        else:
            compiled[msg["key"]] = msg["shared"]
        done = len(compiled) + len(errors) - len(known)
        print(f"[{time.time() - t0:6.0f} s] {done}/{len(todo)} {msg['compile_s']:5.1f} s "
              f"{msg['shared'] if msg['shared'] is not None else msg['error'][:80]}", flush=True)
        save()
    for p in procs:
        p.wait()
    rows = save()
    print(json.dumps(out["summary"]))
    worst = sorted((r for r in rows if r["actual"]), key=lambda r: r["predicted"] / r["actual"])
    for r in worst[:10]:
        print(f"{r['predicted'] / r['actual']:.3f} predicted {r['predicted']} actual {r['actual']}"
              f" {r['kernel']} {r['gate']} {r['score']} {r['expert']} d={r['d']} k={r['k']} "
              f"{r['dtype']} bn={r['config']['block_n']} st={r['config']['num_stages']} "
              f"tile={r['config']['tile_max']}")
    return 0 if all(p.returncode == 0 for p in procs) else 1


def add_parser(sub) -> None:
    p = sub.add_parser("shared-memory", help="the shared-memory model against Triton's compiler "
                       "for sm_90, over a grid of shapes (CPU)", description=__doc__)
    p.add_argument("--triton-path", help="directory holding the triton package to compile with "
                   "(default: the installed one)")
    p.add_argument("--procs", type=int, default=2, help="compiling processes (default 2)")
    p.add_argument("--limit", type=int, default=0, help="only the first N launches of the grid")
    p.add_argument("--chosen-only", action="store_true", help="compile only the configurations "
                   "pick_config chooses (the rest of the grid is recorded, uncompiled, or taken "
                   "from --reuse)")
    p.add_argument("--reuse", nargs="*", metavar="JSON", help="results of an earlier run with "
                   "the same Triton: kernels measured there are not compiled again")
    add_output_arguments(p)
    p.set_defaults(run=run)
