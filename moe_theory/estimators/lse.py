"""The least-squares estimator ``G_hat = argmin_{G in Theta} sum_t (y_t - f_G(x_t))^2``
(docs/theory.md#estimator), over a box ``Theta`` (docs/theory.md#compact-parameter-set), from one
or several starts per replication (docs/theory.md#multi-start)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from kernels.moe import BACKENDS, moe_pass, resolve_backend
from kernels.moe.gram import check_gram_dtype
from moe_theory import models
from moe_theory.estimators.bounds import Bounds, at_bound, resolve_bounds
from moe_theory.estimators.first_order import SGDProtocol, adam, lbfgs, sgd_paper
from moe_theory.estimators.levenberg_marquardt import (
    SHORT_STEP_TESTS,
    STATIONARY_TESTS,
    STOP_TESTS,
    StopRule,
    levenberg_marquardt,
    stop_reason,
)
from moe_theory.estimators.problem import LeastSquaresProblem
from moe_theory.estimators.scipy_baseline import scipy_least_squares
from moe_theory.initialization import NearTruth, RandomInit, random_init
from moe_theory.measure import MixingMeasure, check_measure
from moe_theory.validation import (
    check_choice,
    check_data,
    check_positive_float,
    check_positive_int,
    check_seed,
)

ALGORITHMS = ("lm", "lbfgs", "adam", "sgd-paper")
FIT_BACKENDS = BACKENDS + ("scipy",)
#: Parameters, Gauss-Newton blocks and the damped solves stay in float64 whatever the data's
#: dtype: float32 data (the GPU kernels' fast path) then only rounds the passes over the data.
PARAM_DTYPE = torch.float64
#: docs/theory.md#estimator: a fit is certified when its loss is no worse than the reference's,
#: to rounding.
CERTIFY_RTOL = 1e-9


@dataclass
class FitResult:
    """Per-replication outcome of :func:`fit_lse`; every per-fit quantity is the kept start's.

    Attributes
    ----------
    measure : fitted measures, R of them
    n_iter : (R,) iterations of the kept start
    converged : (R,) stopped on a tolerance test (``stop_reason == "tolerance"``)
    stop_reason : R of ``tolerance``, ``max_iter``, ``non_finite`` (docs/theory.md#stopping-rule)
    stop_test : R of the finer test that stopped the fit, from
        :data:`~moe_theory.estimators.levenberg_marquardt.STOP_TESTS` (``damping`` apart)
    fit_loss : (R,) mean squared residual at the fit
    ref_loss : (R,) mean squared residual at the reference measure, or None without one
    certified : (R,) ``fit_loss <= ref_loss * (1 + 1e-9)``; None without a reference
    bound_active : (R,) some parameter of the fit sits on a face of the box (False unbounded)
    proj_grad_max : (R,) max-norm of the projected gradient of the mean squared residual
    n_starts : starts per replication, S
    start_ssr : (R, S) sum of squared residuals reached from each start
    start_n_iter : (R, S) iterations of each start (a batched fit costs about their sum)
    ssr_spread : (R,) ``(max - min)`` of ``start_ssr`` over the starts, over the noise variance
        (inf when a start ended non-finite); None when ``noise_var`` is not given
    starts_near_best : (R,) starts whose SSR is within the noise variance of the best; None
        when ``noise_var`` is not given
    start_measure : the measure each start ended at, S * R of them, start-major (start ``s`` of
        replication ``r`` at ``s * R + r``); the kept ones are ``measure``
    start_certified : (R, S) each start's end is no worse than the reference (the test of
        ``certified``); None without a reference
    restart_drop : (R,) what a restart of the kept fit lowers its sum of squared residuals by,
        over the noise variance (docs/theory.md#stopping-rule): measured where the fit stopped
        on ``ftol`` or ``xtol`` (a short step, or a small decrease, need not be a stationary
        point), restarting it with LM whatever the algorithm (scipy's solver for the scipy
        backend); 0 where ``gtol`` or ``damping`` stopped it (stationary by their own test);
        NaN where it did not stop on a tolerance. None when ``noise_var`` is not given
    """

    measure: MixingMeasure
    n_iter: torch.Tensor
    converged: torch.Tensor
    stop_reason: list[str]
    stop_test: list[str]
    fit_loss: torch.Tensor
    ref_loss: torch.Tensor | None
    certified: torch.Tensor | None
    bound_active: torch.Tensor
    proj_grad_max: torch.Tensor
    n_starts: int
    start_ssr: torch.Tensor
    start_n_iter: torch.Tensor
    ssr_spread: torch.Tensor | None
    starts_near_best: torch.Tensor | None
    start_measure: MixingMeasure
    start_certified: torch.Tensor | None
    restart_drop: torch.Tensor | None
    wall_s: float
    algorithm: str
    backend: str
    device: str
    extra: dict = field(default_factory=dict)


def objective(X: torch.Tensor, Y: torch.Tensor, measure: MixingMeasure, backend: str = "auto"
              ) -> torch.Tensor:
    """Mean squared residual of each replication at ``measure`` (one, or R of them): (R,)."""
    # checked as fit_lse checks them: NaN data gave NaN, and another d an einsum's traceback
    measure = check_measure("measure", measure)
    check_data(X, Y, d=measure.d)
    if measure.R not in (1, X.shape[0]):
        raise ValueError(f"measure: {measure.R} measures for {X.shape[0]} data sets (give one, "
                         "or one per data set)")
    return _objective(X, Y, measure, backend)


def _objective(X: torch.Tensor, Y: torch.Tensor, measure: MixingMeasure, backend: str
               ) -> torch.Tensor:
    """:func:`objective` on inputs already checked (fit_lse's: a second pass over the data to
    find no NaN, on a GPU a synchronisation, is not repeated)."""
    measure = measure.to(device=X.device, dtype=X.dtype)
    if measure.R == 1 and X.shape[0] != 1:
        measure = measure.repeat(X.shape[0])
    out = moe_pass(X, Y, measure.gate_params, measure.expert_params, gate=measure.gate,
                   score=measure.score, expert=measure.expert_fn, jacobian=False, backend=backend)
    return out.loss.double() / X.shape[1]


Init = NearTruth | RandomInit | MixingMeasure


def fit_lse(
    X: torch.Tensor,
    Y: torch.Tensor,
    k: int,
    gate: str,
    expert: str,
    score: str = "linear",
    *,
    init: Init | Sequence[Init] | None = None,
    algorithm: str = "lm",
    backend: str = "auto",
    reference: MixingMeasure | None = None,
    bounds: Bounds | tuple[torch.Tensor, torch.Tensor] | None = None,
    noise_var: float | None = None,
    max_iter: int = 200,
    ftol: float = 1e-10,
    gtol: float = 1e-10,
    xtol: float = 1e-8,
    sgd: SGDProtocol | None = None,
    rep_ids: list[int] | None = None,
    gram_dtype: str = "float64",
) -> FitResult:
    """Least-squares fit of a k-atom MoE to each of R data sets at once, from S starts each.

    Parameters
    ----------
    X : (R, n, d)
    Y : (R, n)
    k : fitted number of atoms
    gate, expert, score : the fitted model (docs/theory.md#gates-scores-and-experts)
    init : the starts. One of :func:`~moe_theory.near_truth` (R starts),
        :func:`~moe_theory.random_init` (``n_starts * R``), a measure (1, R or ``S * R`` of them),
        or a list of these, concatenated in order. Starts are **start-major**: row ``s * R + r``
        is start s of replication r. All ``S * R`` problems are fitted in one batch that reads
        each replication's data in place, and the start with the lowest sum of squared residuals
        is kept per replication (the first on a tie). Default ``random_init()``.
    algorithm : ``lm`` (default), ``lbfgs``, ``adam`` or ``sgd-paper``
    backend : ``auto``, ``torch``, ``triton`` or ``scipy`` (one problem at a time with scipy's
        trust-region solver ``trf``, the baseline: ``algorithm`` must be ``lm``, ``n_iter``
        counts its residual evaluations, at most ``10 * max_iter``, and ``xtol`` is not used)
    reference : the measure to certify against (``G*`` where representable, else ``G_bar``)
    bounds : the box ``Theta`` (docs/theory.md#compact-parameter-set): a
        :class:`~moe_theory.estimators.bounds.Bounds` (see
        :func:`~moe_theory.estimators.bounds.box_bounds`), packed ``(lo, hi)`` of shape ``(p,)``
        or ``(R, p)`` in the layout of
        :class:`~moe_theory.estimators.problem.LeastSquaresProblem`, or None (no box: the
        iterates are those of the unbounded solver, bit for bit). Starts outside the box are
        clamped into it. ``lbfgs`` takes no box.
    noise_var : the noise variance ``nu``, the unit of ``ssr_spread`` and ``starts_near_best``
        (None: those are None)
    max_iter, ftol, gtol, xtol : stopping rule, see
        :class:`~moe_theory.estimators.levenberg_marquardt.StopRule`
    rep_ids : the replications' global numbers, so that a near-truth start depends on the
        replication, not on the batch it is fitted in (default ``0..R-1``)
    gram_dtype : ``float64`` (default: the data's precision), ``float32``, ``tf32`` or ``tf32x3``:
        the precision of the Gram products of ``J^T J`` in LM's Gauss-Newton passes
        (docs/kernels.md#mixed-precision-gauss-newton). Loss, ``J^T r``, the damped solve and
        every stopping test stay in float64, so the fixed points and the certificate do not
        move; only the path to them (and the iterations it takes) may.
    """
    models.check_gate(gate)
    models.check_score(score)
    models.get_expert(expert)
    k = check_positive_int("k", k)
    check_choice("algorithm", algorithm, ALGORITHMS)
    check_choice("backend", backend, FIT_BACKENDS)
    if backend == "scipy" and algorithm != "lm":
        # scipy runs its own solver whatever was asked: the result would name one it never ran
        raise ValueError(f"algorithm: backend 'scipy' runs scipy's own least-squares solver "
                         f"(trf, LM-type): use algorithm 'lm' with it, got {algorithm!r}")
    check_data(X, Y)
    if reference is not None:
        check_measure("reference", reference)
    if isinstance(sgd, dict):  # a config's sgd table, as the CLI reads it
        sgd = SGDProtocol.from_table(sgd)
    elif sgd is not None and not isinstance(sgd, SGDProtocol):
        raise ValueError(f"sgd: expected an SGDProtocol or a dict of its fields, got "
                         f"{type(sgd).__name__}")
    if rep_ids is not None:
        # one global number per replication: fewer gave replications another's start
        rep_ids = [check_seed(f"rep_ids[{i}]", r) for i, r in enumerate(rep_ids)]
        if len(rep_ids) != X.shape[0]:
            raise ValueError(f"rep_ids: one per replication, R = {X.shape[0]}, got "
                             f"{len(rep_ids)}")
    if reference is not None and reference.d != X.shape[-1]:
        raise ValueError(f"reference: has d = {reference.d} but X has d = {X.shape[-1]}")
    if gate == "softmax" and k < 2:
        raise ValueError("k: a softmax fit needs k >= 2 (one atom is pinned)")
    # a fit of fewer atoms than the measure it starts near or is measured against cannot reach
    # it: its certificate and losses would mislead (the CLI and near_truth refuse it too)
    for field_, measure in (("reference", reference),
                            ("init", init.reference if isinstance(init, NearTruth) else None)):
        if measure is not None and k < measure.k:
            raise ValueError(f"k: the fitted number of atoms ({k}) must be >= k* = {measure.k}, "
                             f"the atoms of {field_}")
    if noise_var is not None:
        noise_var = check_positive_float("noise_var", noise_var)
    check_gram_dtype(gram_dtype)
    stop = StopRule(check_positive_int("max_iter", max_iter), ftol, gtol, xtol)
    # the kernels keep their own fallback for shapes they do not take: pass ``auto`` through
    kernel_backend = "torch" if backend == "scipy" else backend
    resolved = "scipy" if backend == "scipy" else resolve_backend(backend, X.device)
    R, d = X.shape[0], X.shape[-1]
    start = time.perf_counter()

    starts = starting_measures(random_init() if init is None else init, R, gate, score, expert,
                                k, d, rep_ids, X.device)
    S = starts.R // R
    # start-major problems: problem s * R + r fits replication r's data, read in place
    data_rows = None if S == 1 else torch.arange(S * R, device=X.device) % R
    problem = LeastSquaresProblem(X, Y, gate, score, expert, k, kernel_backend, data_rows,
                                  gram_dtype)
    box = resolve_bounds(bounds, score=score, expert=expert, d=d, k_free=problem.k_free, k=k, R=R,
                         device=X.device)
    theta0 = problem.pack(starts)
    if box is not None:
        if algorithm == "lbfgs" and backend != "scipy":
            raise ValueError("bounds: algorithm 'lbfgs' takes no box (a projection would break "
                             "its curvature pairs); use 'lm' or 'adam', or no bounds")
        box = (box[0].repeat(S, 1), box[1].repeat(S, 1))
        theta0 = torch.minimum(torch.maximum(theta0, box[0]), box[1])
    if backend == "scipy":
        out = scipy_least_squares(problem, theta0, stop, box=box)
    elif algorithm == "lm":
        out = levenberg_marquardt(problem, theta0, stop, box=box)
    elif algorithm == "adam":
        out = adam(problem, theta0, stop, box=box)
    elif algorithm == "lbfgs":
        out = lbfgs(problem, theta0, stop)
    else:
        reps = range(R) if rep_ids is None else rep_ids
        out = sgd_paper(problem, theta0, sgd or SGDProtocol(), box=box,
                        streams=[(rep, s) for s in range(S) for rep in reps])

    # a start that ended non-finite never wins, and counts as infinitely far from the best
    ssr = out.loss.view(S, R)
    ssr = torch.where(torch.isfinite(ssr), ssr, math.inf)
    pick = torch.arange(R, device=ssr.device)
    if S > 1:
        pick = ssr.argmin(0) * R + pick
    theta = out.theta[pick]
    box = None if box is None else (box[0][pick], box[1][pick])
    ssr_spread = starts_near_best = None
    if noise_var is not None:
        best = ssr.amin(0)
        # every start non-finite: inf - inf would report NaN, not the documented inf
        ssr_spread = torch.where(torch.isfinite(best), ssr.amax(0) - best, math.inf) / noise_var
        starts_near_best = (ssr - best <= noise_var).sum(0)
    tests = [STOP_TESTS[i] for i in out.stop[pick].tolist()]
    restart_drop = None
    if noise_var is not None:
        # LM is the probe whatever stopped the fit: L-BFGS and Adam report ftol on a small
        # relative decrease too, the same short step
        solver = scipy_least_squares if backend == "scipy" else levenberg_marquardt
        restart_drop = _restart_drop(solver, theta, out.loss[pick], tests, box, stop, noise_var,
                                     problem.on_data_sets)
    start_measure = problem.measure(out.theta)
    fitted = start_measure.select(pick)
    fit_loss = out.loss[pick] / X.shape[1]
    ref_loss = certified = start_certified = None
    if reference is not None:
        ref_loss = _objective(X, Y, reference, kernel_backend)
        # the floor only matters for a noise-free reference, whose loss is exactly 0
        floor = torch.finfo(X.dtype).eps * (Y * Y).mean(-1)
        worst = ref_loss * (1 + CERTIFY_RTOL) + floor
        certified = fit_loss <= worst
        start_certified = out.loss.view(S, R).T / X.shape[1] <= worst[:, None]
    if X.device.type == "cuda":
        torch.cuda.synchronize(X.device)
    return FitResult(
        measure=fitted, n_iter=out.n_iter[pick], converged=out.converged[pick],
        stop_reason=[stop_reason(t) for t in tests], stop_test=tests, fit_loss=fit_loss,
        ref_loss=ref_loss, certified=certified, bound_active=at_bound(theta, box),
        proj_grad_max=out.proj_grad_max[pick], n_starts=S, start_ssr=out.loss.view(S, R).T,
        start_n_iter=out.n_iter.view(S, R).T,
        ssr_spread=ssr_spread, starts_near_best=starts_near_best,
        start_measure=start_measure, start_certified=start_certified, restart_drop=restart_drop,
        wall_s=time.perf_counter() - start, algorithm=algorithm, backend=resolved,
        device=str(X.device), extra={"gram_dtype": gram_dtype},
    )


def _restart_drop(solver, theta: torch.Tensor, ssr: torch.Tensor, tests: list[str],
                  box: tuple[torch.Tensor, torch.Tensor] | None, stop: StopRule,
                  noise_var: float, problem_of) -> torch.Tensor:
    """:attr:`FitResult.restart_drop`: the kept fits that stopped on ``ftol`` or ``xtol`` are
    started again from their ends by ``solver`` (LM, or scipy's for the scipy backend), with a
    fresh damping and the same stopping rule; ``problem_of(sets)`` poses one problem per data
    set.

    Those two tests see a short accepted step, and after a run of rejected steps the damping
    makes any accepted step short: a fit of ReLU experts can stop there, far from stationary,
    with a fresh start from its end lowering the SSR by several nu. ``gtol`` and ``damping``
    test stationarity themselves. The restart's point is not kept: the estimate stays the
    fit's, and the drop is what the converged certificate reads (docs/theory.md#stopping-rule).
    """
    drop = torch.full_like(ssr, math.nan)
    drop[torch.tensor([t in STATIONARY_TESTS for t in tests], device=ssr.device)] = 0.0
    short = [r for r, t in enumerate(tests) if t in SHORT_STEP_TESTS]
    if not short:
        return drop
    rows = torch.tensor(short, device=theta.device)
    sub_box = None if box is None else (box[0][rows], box[1][rows])
    again = solver(problem_of(rows), theta[rows], stop, box=sub_box)
    # LM and trf accept only steps that lower the loss; a restart that ended non-finite found
    # no lower point
    lower = torch.where(torch.isfinite(again.loss), torch.minimum(again.loss, ssr[rows]),
                        ssr[rows])
    drop[rows] = (ssr[rows] - lower) / noise_var
    return drop


def starting_measures(init: Init | Sequence[Init], R: int, gate: str, score: str, expert: str,
                       k: int, d: int, rep_ids: list[int] | None, device: torch.device
                       ) -> MixingMeasure:
    """The ``S * R`` starting measures of :func:`fit_lse`, start-major, float64 on ``device``
    (also the way to fit each start as a problem of its own: pass them as the ``init`` of a fit
    whose data repeat every replication S times)."""
    parts = list(init) if isinstance(init, (list, tuple)) else [init]
    if not parts:
        raise ValueError("init: an empty list of starts")
    blocks = []
    for part in parts:
        if isinstance(part, RandomInit):
            m = part.draw(R, gate, k=k, score=score, expert=expert, d=d, rep_ids=rep_ids,
                          device=device, dtype=PARAM_DTYPE)
        elif isinstance(part, NearTruth):
            if part.reference.d != d:
                raise ValueError(f"init: the truth has d = {part.reference.d} but X has d = {d}")
            m = part.draw(R, gate, rep_ids=rep_ids, device=device, dtype=PARAM_DTYPE)
        elif isinstance(part, MixingMeasure):
            m = check_measure("init", part)  # a NaN start ended at once, n_iter 0, unsaid
            if m.R == 1 and R > 1:
                m = m.repeat(R)
            if m.R % R:
                raise ValueError(f"init: a batch of starting measures needs 1, R = {R} or a "
                                 f"multiple S * R of them (start-major), got {m.R}")
        else:
            raise ValueError(f"init: expected near_truth(...), random_init(...), a MixingMeasure "
                             f"or a list of them, got {type(part).__name__}")
        if (m.gate, m.score, m.expert, m.k, m.d) != (gate, score, expert, k, d):
            raise ValueError(
                f"init: starting measures are ({m.gate}, {m.score}, {m.expert}, k={m.k}, "
                f"d={m.d}) but the fit asks for ({gate}, {score}, {expert}, k={k}, d={d})")
        blocks.append(m.to(device=device, dtype=PARAM_DTYPE))
    if len(blocks) == 1:
        return blocks[0]
    return MixingMeasure.concat(blocks)
