"""The least-squares estimator ``G_hat = argmin_G sum_t (y_t - f_G(x_t))^2`` (SPEC section 3)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from kernels.moe import BACKENDS, moe_pass, resolve_backend
from moe_theory import models
from moe_theory.estimators.first_order import SGDProtocol, adam, lbfgs, sgd_paper
from moe_theory.estimators.levenberg_marquardt import StopRule, levenberg_marquardt
from moe_theory.estimators.problem import LeastSquaresProblem
from moe_theory.estimators.scipy_baseline import scipy_least_squares
from moe_theory.initialization import NearTruth, RandomInit, random_init
from moe_theory.measure import MixingMeasure
from moe_theory.validation import check_choice, check_data, check_positive_int

ALGORITHMS = ("lm", "lbfgs", "adam", "sgd-paper")
FIT_BACKENDS = BACKENDS + ("scipy",)
#: Parameters, Gauss-Newton blocks and the damped solves stay in float64 whatever the data's
#: dtype: float32 data (the GPU kernels' fast path) then only rounds the passes over the data.
PARAM_DTYPE = torch.float64
#: SPEC section 3: a fit is certified when its loss is no worse than the reference's, to rounding.
CERTIFY_RTOL = 1e-9


@dataclass
class FitResult:
    """Per-replication outcome of :func:`fit_lse`.

    Attributes
    ----------
    measure : fitted measures, R of them
    n_iter, converged : (R,)
    fit_loss : (R,) mean squared residual at the fit
    ref_loss : (R,) mean squared residual at the reference measure, or None without one
    certified : (R,) ``fit_loss <= ref_loss * (1 + 1e-9)``; None without a reference
    """

    measure: MixingMeasure
    n_iter: torch.Tensor
    converged: torch.Tensor
    fit_loss: torch.Tensor
    ref_loss: torch.Tensor | None
    certified: torch.Tensor | None
    wall_s: float
    algorithm: str
    backend: str
    device: str
    extra: dict = field(default_factory=dict)


def objective(X: torch.Tensor, Y: torch.Tensor, measure: MixingMeasure, backend: str = "auto"
              ) -> torch.Tensor:
    """Mean squared residual of each replication at ``measure`` (one, or R of them): (R,)."""
    measure = measure.to(device=X.device, dtype=X.dtype)
    if measure.R == 1 and X.shape[0] != 1:
        measure = measure.repeat(X.shape[0])
    out = moe_pass(X, Y, measure.gate_params, measure.expert_params, gate=measure.gate,
                   score=measure.score, expert=measure.expert_fn, jacobian=False, backend=backend)
    return out.loss.double() / X.shape[1]


def fit_lse(
    X: torch.Tensor,
    Y: torch.Tensor,
    k: int,
    gate: str,
    expert: str,
    score: str = "linear",
    *,
    init: NearTruth | RandomInit | MixingMeasure | None = None,
    algorithm: str = "lm",
    backend: str = "auto",
    reference: MixingMeasure | None = None,
    max_iter: int = 200,
    ftol: float = 1e-10,
    gtol: float = 1e-10,
    xtol: float = 1e-8,
    sgd: SGDProtocol | None = None,
    rep_ids: list[int] | None = None,
) -> FitResult:
    """Least-squares fit of a k-atom MoE to each of R data sets at once.

    Parameters
    ----------
    X : (R, n, d)
    Y : (R, n)
    k : fitted number of atoms
    gate, expert, score : the fitted model (SPEC section 1)
    init : :func:`~moe_theory.near_truth`, :func:`~moe_theory.random_init` (the best of its starts
        is kept per replication), or explicit starting measures; default ``random_init()``
    algorithm : ``lm`` (default), ``lbfgs``, ``adam`` or ``sgd-paper``
    backend : ``auto``, ``torch``, ``triton`` or ``scipy`` (one problem at a time, LM-type)
    reference : the measure to certify against (``G*`` where representable, else ``G_bar``)
    max_iter, ftol, gtol, xtol : stopping rule, see
        :class:`~moe_theory.estimators.levenberg_marquardt.StopRule`
    rep_ids : the replications' global numbers, so that a near-truth start depends on the
        replication, not on the batch it is fitted in (default ``0..R-1``)
    """
    models.check_gate(gate)
    models.check_score(score)
    models.get_expert(expert)
    k = check_positive_int("k", k)
    check_choice("algorithm", algorithm, ALGORITHMS)
    check_choice("backend", backend, FIT_BACKENDS)
    check_data(X, Y)
    if isinstance(init, NearTruth) and init.reference.d != X.shape[-1]:
        raise ValueError(f"init: the truth has d = {init.reference.d} but X has d = {X.shape[-1]}")
    if reference is not None and reference.d != X.shape[-1]:
        raise ValueError(f"reference: has d = {reference.d} but X has d = {X.shape[-1]}")
    if gate == "softmax" and k < 2:
        raise ValueError("k: a softmax fit needs k >= 2 (one atom is pinned)")
    stop = StopRule(check_positive_int("max_iter", max_iter), float(ftol), float(gtol), float(xtol))
    # the kernels keep their own fallback for shapes they do not take: pass ``auto`` through
    kernel_backend = "torch" if backend == "scipy" else backend
    resolved = "scipy" if backend == "scipy" else resolve_backend(backend, X.device)
    R = X.shape[0]
    start = time.perf_counter()

    init = random_init() if init is None else init
    if isinstance(init, RandomInit):
        starts = init.draw(R, gate, k=k, score=score, expert=expert, d=X.shape[-1],
                           device=X.device, dtype=PARAM_DTYPE)
        n_starts = init.n_starts
        Xs, Ys = X.repeat(n_starts, 1, 1), Y.repeat(n_starts, 1)
    else:
        starts = init if isinstance(init, MixingMeasure) else init.draw(
            R, gate, rep_ids=rep_ids, device=X.device, dtype=PARAM_DTYPE)
        n_starts, Xs, Ys = 1, X, Y
        if (starts.gate, starts.score, starts.expert, starts.k) != (gate, score, expert, k):
            raise ValueError(
                f"init: starting measures are ({starts.gate}, {starts.score}, {starts.expert}, "
                f"k={starts.k}) but the fit asks for ({gate}, {score}, {expert}, k={k})")
        if starts.R == 1 and R > 1:
            starts = starts.repeat(R)
        starts = starts.to(device=X.device, dtype=PARAM_DTYPE)

    problem = LeastSquaresProblem(Xs, Ys, gate, score, expert, k, kernel_backend)
    theta0 = problem.pack(starts)
    if backend == "scipy":
        out = scipy_least_squares(problem, theta0, stop)
    elif algorithm == "lm":
        out = levenberg_marquardt(problem, theta0, stop)
    elif algorithm == "adam":
        out = adam(problem, theta0, stop)
    elif algorithm == "lbfgs":
        out = lbfgs(problem, theta0, stop)
    else:
        out = sgd_paper(problem, theta0, sgd or SGDProtocol())

    theta, loss, n_iter, converged = out.theta, out.loss, out.n_iter, out.converged
    if n_starts > 1:
        # start-major rows: pick, per replication, the start with the lowest loss
        best = loss.view(n_starts, R).argmin(0)
        pick = best * R + torch.arange(R, device=best.device)
        theta, loss, n_iter, converged = theta[pick], loss[pick], n_iter[pick], converged[pick]
    fitted = LeastSquaresProblem(X, Y, gate, score, expert, k, kernel_backend).measure(theta)
    fit_loss = loss / X.shape[1]
    ref_loss = certified = None
    if reference is not None:
        ref_loss = objective(X, Y, reference, kernel_backend)
        # the floor only matters for a noise-free reference, whose loss is exactly 0
        floor = torch.finfo(X.dtype).eps * (Y * Y).mean(-1)
        certified = fit_loss <= ref_loss * (1 + CERTIFY_RTOL) + floor
    if X.device.type == "cuda":
        torch.cuda.synchronize(X.device)
    return FitResult(
        measure=fitted, n_iter=n_iter, converged=converged, fit_loss=fit_loss, ref_loss=ref_loss,
        certified=certified, wall_s=time.perf_counter() - start, algorithm=algorithm,
        backend=resolved, device=str(X.device),
    )
