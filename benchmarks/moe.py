"""MoE least-squares benchmark: ``python -m benchmarks moe [--quick] [--tune] [--json PATH]``.

In one process, on the same random float32 data (sigmoid gate, linear score, ReLU experts):
- ours: the Triton loss + ``J^T r`` pass, and the Gauss-Newton pass (adds ``J^T J``);
- eager PyTorch autograd of the loss (one loss + gradient step, docs/kernels.md#moe-pass);
- torch.compile of the reference's per-chunk loss + ``J^T r`` (same chunking as the reference);
- the reference Gauss-Newton pass (eager).
Before timing, every kernel output is checked against the reference in float64 on the same data
(:mod:`benchmarks.checks`, which ``tests/gpu`` runs too); one that fails its check is not timed,
no ratio is built on it, and its row's ``not_timed`` says why (:func:`_timed`). Floors
(docs/kernels.md#moe-pass): bytes ``R n (d + 1) itemsize`` over the copy bandwidth measured in
the same run; ``J^T J`` FLOPs ``2 R n p^2`` against torch.matmul's measured tf32 / float64 rates.

``--check`` compiles and checks every gate, score and expert (both dtypes) on small problems;
``--tune`` times block-size variants of both kernels (the numbers behind the defaults in
kernels/moe/triton_pass.py; see kernels/moe/NOTES.md); ``--precision`` fits by the estimator's
Levenberg-Marquardt (``moe_theory.estimators.fit_lse``) from one start on float64 data and on
float32 data with the ``J^T J`` products in tf32 and in ieee float32, and compares the fits.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import functools
import itertools
import multiprocessing as mp
import sys
import time
from collections.abc import Callable

import torch

from benchmarks.checks import (
    gram_errors,
    gram_tolerance,
    moe_failures,
    moe_pass_errors,
    moe_problem,
    moe_tolerance,
    pass_errors,
    reference_pass,
)
from benchmarks.output import add_output_arguments, output_path, write_json
from kernels.moe.gram import applies as gram_applies
from kernels.moe.gram import feature_pairs
from kernels.moe.gram import gram_jtj as torch_gram_jtj
from kernels.moe.torch_pass import (
    MoEPass,
    _chunk_size,
    jacobian_chunk,
    jacobian_coefficients,
    n_free_gates,
)
from kernels.moe.torch_pass import moe_pass as reference_moe_pass
from kernels.moe.triton_gram import GramConfig, gram_jtj
from kernels.moe.triton_pass import LaunchConfig, default_config, fp64_dots, triton_moe_pass
from moe_theory import models
from moe_theory.estimators import fit_lse
from moe_theory.measure import MixingMeasure
from moe_theory.provenance import provenance

GRADIENT_SHAPES = ((64, 100_000, 8, 4), (256, 100_000, 8, 8), (16, 1_000_000, 8, 4))
GN_SHAPE = (20, 100_000, 32, 9)
QUICK_GRADIENT_SHAPES = GRADIENT_SHAPES[:1]
MODEL = dict(gate="sigmoid", score="linear", expert="relu")
DEVICE = "cuda"

GRADIENT_VARIANTS = tuple(
    LaunchConfig(block_n=b, num_warps=w, num_stages=1, waves=v, split=sp, maxnreg=r)
    for b, w, sp, v, r in ((128, 4, 1, 8, None), (64, 4, 2, 8, None), (64, 4, 2, 16, None),
                           (128, 8, 2, 16, None), (32, 4, 4, 16, None), (64, 4, 2, 32, None),
                           # registers capped: more warps per scheduler to hide latency
                           (64, 4, 2, 16, 168), (64, 4, 2, 24, 128), (32, 4, 4, 24, 128))
)
GN_VARIANTS = tuple(
    LaunchConfig(block_n=b, num_warps=w, num_stages=s, tile_max=t, waves=v)
    for b, w, s, t, v in ((64, 8, 2, 128, 4), (128, 8, 2, 128, 4), (64, 4, 2, 128, 4),
                          (128, 4, 2, 128, 4), (32, 4, 2, 128, 4), (128, 8, 1, 128, 4),
                          (64, 4, 2, 64, 4), (128, 8, 2, 128, 2))
)
#: Gram kernel (J^T J for linear scores) block sizes: role pairs, feature pairs, samples, warps,
#: stages, programs per SM.
GRAM_VARIANTS = tuple(
    GramConfig(block_a=a, block_n=b, num_warps=w, num_stages=s, waves=v, layout=lay)
    for a, b, w, s, v, lay in (
        (64, 32, 4, 2, 4, "per_feature"), (64, 32, 8, 2, 4, "per_feature"),
        (128, 32, 8, 2, 4, "per_feature"), (64, 64, 4, 2, 4, "per_feature"),
        (64, 32, 4, 3, 4, "per_feature"), (64, 32, 4, 1, 4, "per_feature"),
        (32, 32, 4, 2, 8, "per_feature"), (128, 64, 8, 3, 4, "per_feature"),
        (64, 16, 4, 3, 4, "pairs"), (64, 32, 4, 1, 4, "pairs"))
)
PRECISIONS = ("tf32", "tf32x3", "ieee")
_EXPERTS = ("linear", "relu", "gelu", "tanh", "poly3", "constant")
#: ``--check``: every expert under two (gate, score) pairs, every score under both gates; the
#: Gauss-Newton kernel (which also computes loss and J^T r) in both dtypes, the gradient kernel in
#: float32. Linear scores at (d, k) = (5, 3), quadratic ones at (3, 4). tests/gpu runs the same.
CHECK_COMBOS = tuple(dict.fromkeys(
    [("sigmoid", "linear", e) for e in _EXPERTS] + [("softmax", "monomial", e) for e in _EXPERTS]
    + [(g, s, "gelu") for g in models.GATES for s in models.SCORES]
))
CHECK_RUNS = (("float32", False), ("float32", True), ("float64", True))
#: ``--check``'s problems: R and an odd n that crosses many tiles and sample splits.
CHECK_R, CHECK_N = 3, 1001


def _bench(fn: Callable[[], object]) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"))


def _p(d: int, k: int, gate: str = "sigmoid", score: str = "linear", expert: str = "relu") -> int:
    ex = models.get_expert(expert)
    return n_free_gates(gate, k) * models.gate_dim(score, d) + k * ex.dim(d)


def _problem(R: int, n: int, d: int, k: int, dtype: torch.dtype, gate: str = "sigmoid",
             score: str = "linear", expert: str = "relu"):
    return moe_problem(R, n, d, k, dtype, gate, score, expert, device=DEVICE)


def _copy_bandwidth() -> float:
    """Device copy bandwidth in GB/s, counting bytes read plus bytes written."""
    x = torch.rand(2**28, device=DEVICE)
    y = torch.empty_like(x)
    return 2 * x.numel() * x.element_size() / _bench(lambda: y.copy_(x)) / 1e6


def _matmul_rates() -> dict:
    """torch.matmul TFLOP/s at 8192^3 in tf32, float32 (ieee) and float64."""
    rates = {}
    for name, dtype, tf32 in (("tf32", torch.float32, True), ("fp32", torch.float32, False),
                              ("fp64", torch.float64, False)):
        a = torch.randn(8192, 8192, device=DEVICE, dtype=dtype)
        b = torch.randn(8192, 8192, device=DEVICE, dtype=dtype)
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            rates[name] = 2 * 8192**3 / _bench(lambda a=a, b=b: a @ b) / 1e9
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
    return rates


# --------------------------------------------------------------------------------------------- #
# Peers
# --------------------------------------------------------------------------------------------- #


def _eager_step(X, Y, gp, ep, gate: str, score: str, expert: str):
    """One loss + gradient step through PyTorch autograd (the eager anchor of
    docs/kernels.md#moe-pass)."""
    gp = gp.detach().requires_grad_(True)
    ep = ep.detach().requires_grad_(True)
    f = models.regression_function(X, gp, ep, gate=gate, score=score,
                                   expert=models.get_expert(expert))
    loss = ((Y - f) ** 2).sum()
    return torch.autograd.grad(loss, (gp, ep))


@functools.lru_cache(maxsize=8)
def _compiled_chunk(gate: str, score: str, expert: str):
    ex = models.get_expert(expert)

    def chunk(Xc, Yc, gp, ep):
        f, J = jacobian_chunk(Xc, gp, ep, gate, score, ex)
        r = Yc - f
        return (r * r).sum(-1), torch.einsum("rnp,rn->rp", J, r)

    return torch.compile(chunk)


def _compiled_reference(X, Y, gp, ep, gate: str, score: str, expert: str):
    """The reference's loss + J^T r with its chunking, each chunk through torch.compile."""
    R, n, d = X.shape
    step = _chunk_size(R, _p(d, gp.shape[1], gate, score, expert), X.element_size(), n, X.device)
    fn = _compiled_chunk(gate, score, expert)
    loss, jtr = 0, 0
    for start in range(0, n, step):
        lc, jc = fn(X[:, start:start + step], Y[:, start:start + step], gp, ep)
        loss, jtr = loss + lc, jtr + jc
    return loss, jtr


# --------------------------------------------------------------------------------------------- #
# Compilation in parallel (Triton compiles serially in-process)
# --------------------------------------------------------------------------------------------- #


def _compile_job(job: tuple) -> str:
    # Worker process: same d, k and flags as the timed call (n and splits are not specialised),
    # so the timed runs load the binary from Triton's on-disk cache.
    d, k, gate, score, expert, dtype_name, gn, config = job
    X, Y, gp, ep = _problem(1, 64, d, k, getattr(torch, dtype_name), gate, score, expert)
    triton_moe_pass(X, Y, gp, ep, gate=gate, score=score, expert=models.get_expert(expert),
                    gauss_newton=gn, config=config)
    torch.cuda.synchronize()
    return str(job)


def _precompile(jobs: list[tuple], workers: int = 14) -> None:
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        for fut in cf.as_completed([pool.submit(_compile_job, j) for j in jobs]):
            try:
                fut.result()
            except Exception as err:  # reported; the timed call will raise it again
                print(f"  precompile failed: {str(err).splitlines()[0][:200]}", file=sys.stderr)
    print(f"precompiled {len(jobs)} variants in {time.perf_counter() - t0:.0f} s", flush=True)


def with_precision(d: int, k: int, precision: str) -> LaunchConfig:
    """The default Gauss-Newton configuration with J^T J products in ``precision`` (with the Gram
    route, ``config`` is the gradient kernel's and only its ``jtj_precision`` reaches J^T J)."""
    base = default_config(*MODEL.values(), d, k, gauss_newton=not gram_applies(MODEL["score"]))
    return LaunchConfig(**{**vars(base), "jtj_precision": precision})


# --------------------------------------------------------------------------------------------- #
# Sections
# --------------------------------------------------------------------------------------------- #


def check_dims(score: str) -> tuple[int, int]:
    """``--check``'s (d, k): (5, 3) for linear scores, (3, 4) for quadratic ones."""
    return (5, 3) if score == "linear" else (3, 4)


def _check_all() -> list[dict]:
    """CHECK_COMBOS x CHECK_RUNS on small odd shapes, against the float64 reference."""
    rows = []
    for (gate, score, expert), (dtype, gn) in itertools.product(CHECK_COMBOS, CHECK_RUNS):
        d, k = check_dims(score)
        X, Y, gp, ep = _problem(CHECK_R, CHECK_N, d, k, getattr(torch, dtype), gate, score, expert)
        try:
            err = moe_pass_errors(X, Y, gp, ep, gate=gate, score=score, expert=expert,
                                  gauss_newton=gn)
            bad = moe_failures(err, X.dtype)
        except Exception as e:  # reported in the table, the run goes on
            err = {"error": str(e).splitlines()[0][:200]}
            bad = err
        if bad:
            print(f"check {gate} {score} {expert} {dtype} gn={gn}: FAILED {bad}", flush=True)
        rows.append(dict(gate=gate, score=score, expert=expert, dtype=dtype, gn=gn, **err))
    worst = {}
    for row in rows:
        key = (row["dtype"], row["gn"])
        for name in ("loss", "jtr", "jtj"):
            if row.get(name) is not None:
                worst[key + (name,)] = max(worst.get(key + (name,), 0.0), row[name])
    for key, value in sorted(worst.items()):
        print(f"check worst {key}: {value:.2e}")
    return rows


def _check(out, ref, what: str, dtype: torch.dtype = torch.float32) -> dict:
    err = pass_errors(out, ref)
    bad = moe_failures(err, dtype)
    print(f"  check {what}: " + ", ".join(f"{k} {v:.1e}" for k, v in err.items())
          + (f"  FAILED {bad}" if bad else ""), flush=True)
    return err


def _checked(fn: Callable[[], dict]) -> dict:
    """A check's errors, or ``{"error": ...}`` where the checked call raised (:func:`_section`:
    recorded, the run goes on, and the provider is then not timed)."""
    return _section(fn, what="check")


def check_failure(errors: dict, limit: Callable[[str], float]) -> str | None:
    """Why a provider's check failed, None when it passed: the check raised (``errors`` holds
    ``error``), or an error is above ``limit(name)`` (NaN and inf included)."""
    if "error" in errors:
        return f"check raised: {errors['error']}"
    bad = {name: e for name, e in errors.items() if not e <= limit(name)}
    if bad:
        return "check failed: " + ", ".join(f"{name} {e:.1e} > {limit(name):.0e}"
                                              for name, e in bad.items())
    return None


def moe_check_failure(errors: dict, dtype: torch.dtype) -> str | None:
    """:func:`check_failure` of a MoE pass at the tolerances of :func:`moe_failures`."""
    return check_failure(errors, lambda name: moe_tolerance(name, dtype))


def _timed(row: dict, key: str, failure: str | None, fn: Callable[[], object], *,
           sub: str | None = None) -> float | None:
    """Time ``fn`` into ``row[key]`` (``row[key][sub]``) if its provider passed its check.

    A provider whose output failed its check (``failure``, from :func:`check_failure`) is not
    timed: a wrong result's time is no measurement of the pass, so it is left out of the row and
    of every ratio built on it, and ``row["not_timed"]["key[.sub]"]`` says why.
    """
    name = key if sub is None else f"{key}.{sub}"
    if failure is not None:
        row.setdefault("not_timed", {})[name] = failure
        print(f"  not timed {name}: {failure}", flush=True)
        return None
    ms = _bench(fn)
    if sub is None:
        row[key] = ms
    else:
        row.setdefault(key, {})[sub] = ms
    return ms


def _add_section(row: dict, section: dict, suffix: str = "") -> None:
    """``row.update`` with ``suffix`` on each key, the section's ``not_timed`` entries added to
    the row's own (named as the keys they stand for) rather than replacing them."""
    for name, why in section.pop("not_timed", {}).items():
        key, dot, sub = name.partition(".")
        row.setdefault("not_timed", {})[f"{key}{suffix}{dot}{sub}"] = why
    row.update({f"{key}{suffix}": v for key, v in section.items()})


def _gradient_only(ref: MoEPass) -> MoEPass:
    """The reference's loss and ``J^T r``: what a pass without ``J^T J`` is checked against."""
    return MoEPass(ref.loss, ref.jtr, None)


def _gradient_point(R: int, n: int, d: int, k: int, bandwidth: float, tune: bool) -> dict:
    X, Y, gp, ep = _problem(R, n, d, k, torch.float32)
    ex = models.get_expert(MODEL["expert"])
    print(f"(R, n, d, k) = {(R, n, d, k)}", flush=True)
    ref = reference_pass(X, Y, gp, ep, **MODEL, gauss_newton=False)
    row = dict(R=R, n=n, d=d, k=k, p=_p(d, k))
    ours = functools.partial(triton_moe_pass, X, Y, gp, ep, **{**MODEL, "expert": ex},
                             gauss_newton=False)
    row["check"] = _checked(lambda: _check(ours(), ref, "ours"))
    row["floor_ms"] = R * n * (d + 1) * X.element_size() / bandwidth / 1e6
    _timed(row, "ours_ms", moe_check_failure(row["check"], X.dtype), ours)
    # Launch and host overhead: the same call on 1/100 of the samples, checked on its own data.
    small = _problem(R, n // 100, d, k, torch.float32)
    ours_small = functools.partial(triton_moe_pass, *small, **{**MODEL, "expert": ex},
                                   gauss_newton=False)
    row["check_small"] = _checked(lambda: _check(
        ours_small(), reference_pass(*small, **MODEL, gauss_newton=False), "ours, n / 100"))
    _timed(row, "ours_small_ms", moe_check_failure(row["check_small"], X.dtype), ours_small)
    if tune:
        row["variants"] = []
        for c in GRADIENT_VARIANTS:
            variant = {"config": vars(c)}
            variant["check"] = _checked(lambda c=c: _check(ours(config=c), ref, f"variant {c}"))
            _timed(variant, "ms", moe_check_failure(variant["check"], X.dtype),
                   functools.partial(ours, config=c))
            row["variants"].append(variant)
        _print_variants(row["variants"])
    row["eager_ms"] = _bench(lambda: _eager_step(X, Y, gp, ep, **MODEL))
    if "ours_ms" in row:  # a ratio only of a pass that passed its check
        row["ratio_to_floor"] = row["ours_ms"] / row["floor_ms"]
        row["speedup_vs_eager"] = row["eager_ms"] / row["ours_ms"]
    return row


def _compiled_point(row: dict) -> dict:
    """torch.compile of the reference on a gradient point (last: its compiles take the longest)."""
    X, Y, gp, ep = _problem(row["R"], row["n"], row["d"], row["k"], torch.float32)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    _compiled_reference(X, Y, gp, ep, **MODEL)
    torch.cuda.synchronize()
    # the first call alone (compilation): the clock used to stop after do_bench too, so
    # compile_s held the whole timing loop as well
    compile_s = time.perf_counter() - t0
    ms = _bench(lambda: _compiled_reference(X, Y, gp, ep, **MODEL))
    out = dict(compile_s=compile_s, compiled_reference_ms=ms)
    if "ours_ms" in row:  # not where ours failed its check (not timed)
        out["speedup_vs_compiled"] = ms / row["ours_ms"]
    return out


def _gn_point(R: int, n: int, d: int, k: int, bandwidth: float, rates: dict, tune: bool) -> dict:
    X, Y, gp, ep = _problem(R, n, d, k, torch.float32)
    ex = models.get_expert(MODEL["expert"])
    model = {**MODEL, "expert": ex}
    p = _p(d, k)
    print(f"(R, n, d, k) = {(R, n, d, k)}, p = {p}", flush=True)
    row = dict(R=R, n=n, d=d, k=k, p=p, jtj_flop=2 * R * n * p * p)
    ref = reference_pass(X, Y, gp, ep, **MODEL)
    gn = functools.partial(triton_moe_pass, X, Y, gp, ep, **model)
    row["check"] = _checked(lambda: _check(gn(), ref, "ours fp32 (tf32 J^T J)"))
    # the pass without J^T J is another compiled kernel (no coefficients U written): its own check
    row["check_gradient"] = _checked(lambda: _check(gn(gauss_newton=False), _gradient_only(ref),
                                                    "ours fp32, gradient only"))
    row["triton_fp64_dots"] = fp64_dots(X.device)
    X64, Y64, gp64, ep64 = X.double(), Y.double(), gp.double(), ep.double()
    gn64 = functools.partial(triton_moe_pass, X64, Y64, gp64, ep64, **model)
    if row["triton_fp64_dots"]:
        row["check_fp64"] = _checked(lambda: _check(gn64(), ref, "ours fp64", torch.float64))
    row["check_precisions"] = {
        prec: _checked(lambda prec=prec: moe_pass_errors(
            X, Y, gp, ep, **MODEL, config=with_precision(d, k, prec), reference=ref))
        for prec in PRECISIONS
    }
    if tune and not gram_applies(MODEL["score"]):
        variant_checks = [_checked(lambda c=c: _check(gn(config=c), ref, f"variant {c}"))
                          for c in GN_VARIANTS]
    row["floor_ms"] = R * n * (d + 1) * X.element_size() / bandwidth / 1e6
    # each pass timed only if it passed its check (_timed); the ratios below leave out the others
    _timed(row, "ours_gradient_ms", moe_check_failure(row["check_gradient"], X.dtype),
           functools.partial(gn, gauss_newton=False))
    _timed(row, "ours_gn_ms", moe_check_failure(row["check"], X.dtype), gn)
    for prec in PRECISIONS:
        _timed(row, "ours_gn_precision_ms",
               moe_check_failure(row["check_precisions"][prec], X.dtype),
               functools.partial(gn, config=with_precision(d, k, prec)), sub=prec)
    if row["triton_fp64_dots"]:
        _timed(row, "ours_gn_fp64_ms", moe_check_failure(row["check_fp64"], torch.float64), gn64)
    row["reference_gn_fp64_ms"] = _bench(lambda: reference_moe_pass(X64, Y64, gp64, ep64,
                                                                     **model))
    if gram_applies(MODEL["score"]):
        _add_section(row, _gram_section(X, jacobian_coefficients(X, gp, ep, **model), d, k,
                                        rates, tune))
        if row["triton_fp64_dots"]:
            _add_section(row, _gram_section(
                X64, jacobian_coefficients(X64, gp64, ep64, **model), d, k, rates, tune,
                precisions=("ieee",)), suffix="_fp64")
    elif tune:
        row["variants"] = []
        for c, check in zip(GN_VARIANTS, variant_checks, strict=True):
            variant = {"config": vars(c), "check": check}
            _timed(variant, "ms", moe_check_failure(check, X.dtype),
                   functools.partial(gn, config=c))
            row["variants"].append(variant)
        _print_variants(row["variants"])
    row["eager_ms"] = _bench(lambda: _eager_step(X, Y, gp, ep, **MODEL))
    row["reference_gn_ms"] = _bench(lambda: reference_moe_pass(X, Y, gp, ep, **model))
    if "ours_gn_ms" in row:
        row["jtj_tflops"] = row["jtj_flop"] / row["ours_gn_ms"] / 1e9
        row["jtj_vs_tf32_matmul"] = row["jtj_tflops"] / rates["tf32"]
        row["speedup_gn_vs_reference"] = row["reference_gn_ms"] / row["ours_gn_ms"]
    # the float64 rate of ours where it has float64 dots and passed its check, else of the
    # reference (named, so that a reference rate is never read as ours)
    row["jtj_fp64_provider"] = "ours" if "ours_gn_fp64_ms" in row else "reference"
    fp64_ms = row.get("ours_gn_fp64_ms", row["reference_gn_fp64_ms"])
    row["jtj_tflops_fp64"] = row["jtj_flop"] / fp64_ms / 1e9
    row["jtj_fp64_vs_fp64_matmul"] = row["jtj_tflops_fp64"] / rates["fp64"]
    if "ours_gradient_ms" in row:
        row["gradient_ratio_to_floor"] = row["ours_gradient_ms"] / row["floor_ms"]
    return row


def _gram_section(X, U, d: int, k: int, rates: dict, tune: bool,
                  precisions: tuple[str, ...] = PRECISIONS) -> dict:
    """The Gram kernel alone (``J^T J`` from U and X): time per precision, the FLOP rates it
    reaches counted as docs/kernels.md#moe-pass counts ``J^T J`` (``2 R n p^2``) and as executed
    (``2 R n A Q``), and block-size variants."""
    R, n = X.shape[:2]
    kw = dict(gate=MODEL["gate"], expert=MODEL["expert"], k=k)
    p, m = _p(d, k), U.shape[1]
    executed = 2 * R * n * (m * (m + 1) // 2) * ((d + 1) * (d + 2) // 2)
    rate_key = "fp64" if X.dtype == torch.float64 else "tf32"
    out = {"gram_executed_flop": executed, "gram_ms": {}}
    # the Triton kernel's output against the PyTorch Gram product before it is timed; a
    # precision that fails its check is not timed (_timed) and no rate below is built on it
    out["gram_check"] = _checked(lambda: gram_errors(U, X, **kw, precisions=precisions))
    print("  Gram check (relative error vs float64): " + ", ".join(
        f"{k_} {v:.1e}" if isinstance(v, float) else f"{k_} {v}"
        for k_, v in out["gram_check"].items()), flush=True)

    def tolerance(prec: str) -> float:
        return gram_tolerance(X.dtype, prec)

    for prec in precisions:
        errors = out["gram_check"] if "error" in out["gram_check"] else {
            prec: out["gram_check"][prec]}
        _timed(out, "gram_ms", check_failure(errors, tolerance),
               lambda prec=prec: gram_jtj(U, X, precision=prec, **kw), sub=prec)
    # the same product through PyTorch: W and V per sample chunk, one cuBLAS batched product each
    # (tf32 allowed for float32, as the Triton kernel's default)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        out["gram_ms"]["torch"] = _bench(lambda: torch_gram_jtj(U, X, **kw))
        # what a fit does: the feature pairs V formed once, reused by every pass
        pairs = feature_pairs(X)
        out["gram_ms"]["torch_cached_V"] = _bench(
            lambda: torch_gram_jtj(U, X, V=pairs, **kw))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    # the fastest of the checked kernel's default precision and PyTorch's products (the
    # reference itself): a failed kernel is not in gram_ms, so not in the rates
    best = min(out["gram_ms"][key] for key in (
        "ieee" if X.dtype == torch.float64 else "tf32", "torch", "torch_cached_V")
        if key in out["gram_ms"])
    out["gram_effective_tflops"] = 2 * R * n * p * p / best / 1e9
    out["gram_executed_tflops"] = executed / best / 1e9
    out["gram_vs_matmul"] = out["gram_effective_tflops"] / rates[rate_key]
    out["gram_matmul_rate"] = rate_key
    print(f"  Gram {X.dtype}: " + ", ".join(f"{k_} {v:.3f} ms" for k_, v in out["gram_ms"].items())
          + f"; effective {out['gram_effective_tflops']:.0f} TFLOP/s = "
          f"{out['gram_vs_matmul']:.2f} x {rate_key} matmul, executed "
          f"{out['gram_executed_tflops']:.0f} TFLOP/s", flush=True)
    if tune:
        out["gram_variants"] = []
        # the variants run at the kernel's default precision: tf32 for float32 on a GPU
        default = "ieee" if X.dtype == torch.float64 else "tf32"
        for c in GRAM_VARIANTS:
            variant = {"config": vars(c)}
            variant["check"] = _checked(lambda c=c: gram_errors(U, X, **kw, precisions=(default,),
                                                                config=c))

            def time_variant(c=c, variant=variant) -> dict:
                _timed(variant, "ms", check_failure(variant["check"], tolerance),
                       lambda: gram_jtj(U, X, config=c, **kw))
                return {}

            variant.update(_section(time_variant))  # a launch that fails records its error
            out["gram_variants"].append(variant)
            print(f"  Gram variant {vars(c)}: {variant}", flush=True)
    return out


def _precision_study(R: int = 4, n: int = 100_000, d: int = 32, k: int = 9, iters: int = 100
                     ) -> dict:
    """The estimator's fits from one over-specified near-truth start on float64 data and on
    float32 data with the ``J^T J`` products (cuBLAS, the Gram route) in tf32 and in ieee float32.

    Truth: sigmoid gate, ReLU experts, k* = 8 atoms drawn as in the N24 settings (beta ~ N(0,
    0.01/d), (a, b) ~ N(0, 1/d)), noise variance 0.01; fitted k = 9 with atom 0 split in two, by
    ``fit_lse`` (Levenberg-Marquardt, its stopping rule, at most ``iters`` iterations).
    Reported: each fit's distance to the float64 fit relative to the float64 fit's distance to
    the truth (the Voronoi-loss scale), the relative difference of the final losses, and how
    the fits stopped.
    """
    g = torch.Generator(device=DEVICE).manual_seed(0)
    ks = k - 1
    gp = torch.randn(R, ks, d + 1, generator=g, device=DEVICE, dtype=torch.float64) * (0.01 / d)**0.5
    ep = torch.randn(R, ks, d + 1, generator=g, device=DEVICE, dtype=torch.float64) / d**0.5
    X = torch.rand(R, n, d, generator=g, device=DEVICE, dtype=torch.float64) * 2 - 1
    f = models.regression_function(X, gp, ep, gate="sigmoid", score="linear",
                                   expert=models.get_expert("relu"))
    Y = f + 0.1 * torch.randn(R, n, generator=g, device=DEVICE, dtype=torch.float64)
    split = gp[:, :1].clone()
    split[..., :1] = torch.logit(torch.sigmoid(gp[:, :1, :1]) / 2)
    gp_true = torch.cat([split, gp[:, 1:], split], dim=1)
    ep_true = torch.cat([ep, ep[:, :1]], dim=1)
    theta_true = torch.cat([gp_true.reshape(R, -1), ep_true.reshape(R, -1)], dim=1)
    noise = 0.05 * torch.randn(theta_true.shape, generator=g, device=DEVICE, dtype=torch.float64)
    gp0, ep0 = (theta_true + noise).split([k * (d + 1), k * (d + 1)], dim=1)
    start = MixingMeasure("sigmoid", "linear", "relu", d, gp0.reshape(R, k, d + 1),
                          ep0.reshape(R, k, d + 1))

    def fit(dtype: torch.dtype, tf32: bool):
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            return fit_lse(X.to(dtype), Y.to(dtype), k, "sigmoid", "relu", "linear", init=start,
                           max_iter=iters)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old

    fits = {"fp64": fit(torch.float64, False), "fp32-tf32": fit(torch.float32, True),
            "fp32-ieee": fit(torch.float32, False)}

    def theta(result) -> torch.Tensor:
        m = result.measure
        return torch.cat([m.gate_params.reshape(R, -1), m.expert_params.reshape(R, -1)], dim=1)

    theta64, loss64 = theta(fits["fp64"]).double(), fits["fp64"].fit_loss.double()
    scale = (theta64 - theta_true).norm(dim=1)
    out = {"R": R, "n": n, "d": d, "k": k, "max_iter": iters,
           "fp64_distance_to_truth": scale.tolist()}
    for name, result in fits.items():
        loss = result.fit_loss.double()
        out[name] = {
            "theta_diff_over_error": ((theta(result).double() - theta64).norm(dim=1)
                                      / scale).tolist(),
            "loss_rel_diff": ((loss - loss64) / loss64).tolist(),
            "final_loss": loss.tolist(),
            "n_iter": result.n_iter.tolist(),
            "converged": result.converged.tolist(),
        }
        print(f"  precision {name}: |theta - theta64| / |theta64 - theta*| = "
              + ", ".join(f"{v:.1e}" for v in out[name]["theta_diff_over_error"])
              + "; (loss - loss64) / loss64 = "
              + ", ".join(f"{v:.1e}" for v in out[name]["loss_rel_diff"])
              + f"; iterations {out[name]['n_iter']}", flush=True)
    return out


def _print_variants(variants: list[dict]) -> None:
    for v in variants:
        c = v["config"]
        print(f"  variant bn={c['block_n']} w={c['num_warps']} s={c['num_stages']} "
              f"tile={c['tile_max']} waves={c['waves']} acc3={c['acc3']} split={c['split']} "
              f"maxnreg={c.get('maxnreg')}: "
              + (f"{v['ms']:.4f} ms" if "ms" in v else "not timed (failed its check)"),
              flush=True)


def _section(fn: Callable[[], dict], *, what: str = "section") -> dict:
    """Run one benchmark section (or a check: ``what``); a failure is recorded in the results,
    not fatal."""
    try:
        return fn()
    except Exception as err:
        print(f"  {what} failed: {type(err).__name__}: {str(err)[:500]}", flush=True)
        return {"error": f"{type(err).__name__}: {str(err)[:2000]}"}


def _fmt(row: dict, key: str, spec: str) -> str:
    """``row[key]`` formatted, or ``-`` in the same width where it is missing (a pass that
    failed its check has no time and no ratio)."""
    value = row.get(key)
    width = spec.split(".")[0]
    return f"{'-':>{width}}" if value is None else f"{value:{spec}}"


def _print_table(results: dict) -> None:
    print(f"\ncopy bandwidth {results['bandwidth_gbs']:.0f} GB/s; matmul TFLOP/s "
          + ", ".join(f"{k} {v:.1f}" for k, v in results["matmul_tflops"].items()))
    print(f"{'R':>4} {'n':>8} {'d':>3} {'k':>2} | {'ours ms':>8} {'floor ms':>8} {'x floor':>7} "
          f"| {'eager ms':>8} {'x eager':>7} | {'compiled':>8} {'x comp':>6}")
    not_timed = []
    for r in results["gradient"]:
        if "error" in r:
            continue
        print(f"{r['R']:>4} {r['n']:>8} {r['d']:>3} {r['k']:>2} | {_fmt(r, 'ours_ms', '8.3f')} "
              f"{r['floor_ms']:8.3f} {_fmt(r, 'ratio_to_floor', '7.2f')} | "
              f"{r['eager_ms']:8.2f} {_fmt(r, 'speedup_vs_eager', '7.1f')} | "
              f"{_fmt(r, 'compiled_reference_ms', '8.2f')} {_fmt(r, 'speedup_vs_compiled', '6.1f')}")
        not_timed += [(r["R"], r["n"], r["d"], r["k"], key, why)
                      for key, why in r.get("not_timed", {}).items()]
    g = results.get("gauss_newton")
    if g and "error" not in g:
        ours = (f"ours {g['ours_gn_ms']:.3f} ms ({g['jtj_tflops']:.1f} TFLOP/s = "
                f"{g['jtj_vs_tf32_matmul']:.2f} x tf32 matmul)" if "ours_gn_ms" in g
                else "ours not timed (failed its check)")
        gradient = (f"gradient {g['ours_gradient_ms']:.3f} ms "
                    f"({g['gradient_ratio_to_floor']:.2f} x floor)" if "ours_gradient_ms" in g
                    else "gradient not timed (failed its check)")
        print(f"GN {(g['R'], g['n'], g['d'], g['k'])} p={g['p']}: {ours}; "
              f"fp64 ({g['jtj_fp64_provider']}) "
              f"{g.get('ours_gn_fp64_ms', g['reference_gn_fp64_ms']):.3f} ms "
              f"({g['jtj_tflops_fp64']:.1f} TFLOP/s = "
              f"{g['jtj_fp64_vs_fp64_matmul']:.2f} x fp64 matmul); reference GN "
              f"{g['reference_gn_ms']:.2f} ms; {gradient}; eager {g['eager_ms']:.2f} ms")
        print("  J^T J precision ms: " + ", ".join(
            f"{k} {v:.3f}" for k, v in g.get("ours_gn_precision_ms", {}).items()))
        not_timed += [(g["R"], g["n"], g["d"], g["k"], key, why)
                      for key, why in g.get("not_timed", {}).items()]
    for R, n, d, k, key, why in not_timed:
        print(f"not timed at {(R, n, d, k)}: {key}: {why}")


def _jobs(tune: bool, check: bool, quick: bool) -> list[tuple]:
    jobs = set()
    shapes = QUICK_GRADIENT_SHAPES if quick else GRADIENT_SHAPES
    for _, _, d, k in shapes:
        jobs.add((d, k, *MODEL.values(), "float32", False, None))
        jobs.update((d, k, *MODEL.values(), "float32", False, c) for c in GRADIENT_VARIANTS
                    if tune)
    d, k = GN_SHAPE[2:]
    jobs.add((d, k, *MODEL.values(), "float32", False, None))
    for dtype in ("float32", "float64"):  # float64 compiles only where Triton has fp64 dots
        jobs.add((d, k, *MODEL.values(), dtype, True, None))
    jobs.update((d, k, *MODEL.values(), "float32", True, with_precision(d, k, p))
                for p in PRECISIONS)
    if tune:
        jobs.update((d, k, *MODEL.values(), "float32", True, c) for c in GN_VARIANTS)

    if check:
        for (gate, score, expert), (dtype, gn) in itertools.product(CHECK_COMBOS, CHECK_RUNS):
            jobs.add((*check_dims(score), gate, score, expert, dtype, gn, None))
    return sorted(jobs, key=str)


def _profile_target(shape: str) -> int:
    """The float32 loss + gradient pass at ``R,n,d,k``, compiled, then called 5 times and
    synchronised: a target for ``ncu`` (kernels/moe/NOTES.md: the profile of the pass)."""
    try:
        R, n, d, k = (int(v) for v in shape.split(","))
    except ValueError:
        print(f"--profile: expected R,n,d,k (four integers), got {shape!r}", file=sys.stderr)
        return 2
    X, Y, gp, ep = _problem(R, n, d, k, torch.float32)
    ex = models.get_expert(MODEL["expert"])
    for _ in range(5):
        triton_moe_pass(X, Y, gp, ep, **{**MODEL, "expert": ex}, gauss_newton=False)
    torch.cuda.synchronize()
    print(f"profiled (R, n, d, k) = {(R, n, d, k)}, 5 calls")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and write the JSON if asked."""
    if not torch.cuda.is_available():
        print("the moe benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    if args.profile:
        return _profile_target(args.profile)
    prov = provenance(DEVICE)
    path = output_path(args, "moe", prov, label="quick" if args.quick else None)

    def save(results: dict) -> None:  # after every section: a run cut short keeps its numbers
        write_json(path, results)

    _precompile(_jobs(args.tune, args.check, args.quick))
    results: dict = {"provenance": prov}
    print(prov, flush=True)
    if args.check:
        results["check_all"] = _check_all()
        save(results)
    results["bandwidth_gbs"] = _copy_bandwidth()
    results["matmul_tflops"] = _matmul_rates()
    print(f"bandwidth {results['bandwidth_gbs']:.0f} GB/s, matmul {results['matmul_tflops']}",
          flush=True)
    shapes = QUICK_GRADIENT_SHAPES if args.quick else GRADIENT_SHAPES
    save(results)
    results["gradient"] = []
    for shape in shapes:
        results["gradient"].append(_section(lambda shape=shape: _gradient_point(
            *shape, results["bandwidth_gbs"], args.tune)))
        save(results)
    results["gauss_newton"] = _section(lambda: _gn_point(
        *GN_SHAPE, results["bandwidth_gbs"], results["matmul_tflops"], args.tune))
    save(results)
    if args.precision:
        results["precision"] = _section(_precision_study)
        save(results)
    if not (args.quick or args.no_compile):
        for row in results["gradient"]:
            if "error" not in row:
                got = _section(lambda row=row: _compiled_point(row))
                row.update({"compile_error": got["error"]} if "error" in got else got)
                save(results)
    _print_table(results)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``moe`` subcommand."""
    p = subparsers.add_parser("moe", help="MoE least-squares pass vs eager / compiled PyTorch",
                              description=__doc__.split("\n\n")[0])
    add_output_arguments(p)
    p.add_argument("--quick", action="store_true",
                   help="first gradient shape only, no torch.compile")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")
    p.add_argument("--tune", action="store_true", help="also time block-size variants")
    p.add_argument("--check", action="store_true",
                   help="also check every gate, score and expert on the GPU")
    p.add_argument("--precision", action="store_true",
                   help="also fit by Levenberg-Marquardt with J^T J in each precision")
    p.add_argument("--profile", metavar="R,n,d,k",
                   help="only call the float32 loss + gradient pass 5 times at this shape "
                        "(a target for ncu) and exit")
    p.set_defaults(run=run)
