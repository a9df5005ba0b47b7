"""Batched Levenberg-Marquardt: R problems advance together, each with its own damping."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moe_theory.estimators.problem import LeastSquaresProblem

#: Damping bounds. Past the upper one no step can lower the loss to rounding: the fit stops.
LAMBDA_MIN, LAMBDA_MAX = 1e-12, 1e12


@dataclass(frozen=True)
class StopRule:
    """Stopping: relative loss decrease below ``ftol`` on an accepted step, an accepted step
    shorter than ``xtol * (xtol + ||theta||)`` (the test scipy's solvers use too: along the flat
    directions of over-specified atoms the loss keeps falling by tiny amounts while the
    parameters no longer move), the gradient of the mean squared loss below ``gtol`` in
    max-norm, or ``max_iter`` iterations."""

    max_iter: int = 200
    ftol: float = 1e-10
    gtol: float = 1e-10
    xtol: float = 1e-8


@dataclass
class SolverOutput:
    theta: torch.Tensor  # (R, p)
    loss: torch.Tensor  # (R,) sum of squared residuals
    n_iter: torch.Tensor  # (R,)
    converged: torch.Tensor  # (R,) bool


def _damped_solve(jtj: torch.Tensor, jtr: torch.Tensor, lam: torch.Tensor):
    """Solve ``(J^T J + lam D) delta = J^T r`` with Marquardt's scaling ``D = diag(J^T J)``.

    The diagonal is floored relative to its largest entry so that parameters the data cannot see
    (a dead ReLU expert, say) still get a finite, damped step. Returns the step and a mask of the
    problems whose factorisation succeeded.
    """
    diag = torch.diagonal(jtj, dim1=-2, dim2=-1)
    floor = diag.amax(-1, keepdim=True).clamp_min(1e-300) * 1e-12
    scaled = diag.clamp_min(floor) * lam[:, None]
    system = jtj + torch.diag_embed(scaled)
    chol, info = torch.linalg.cholesky_ex(system)
    ok = info == 0
    delta = torch.cholesky_solve(jtr[..., None], chol)[..., 0]
    delta = torch.where(ok[:, None], delta, torch.zeros_like(delta))
    return delta, ok & torch.isfinite(delta).all(-1)


def levenberg_marquardt(
    problem: LeastSquaresProblem, theta0: torch.Tensor, stop: StopRule = StopRule(),
    lam0: float = 1e-3,
) -> SolverOutput:
    """Minimise each problem's sum of squared residuals from ``theta0: (R, p)``.

    Each iteration makes one Gauss-Newton pass (loss, ``J^T r``, ``J^T J``) over the problems
    whose last step was accepted and one loss-only pass at the trial points.
    """
    R, n = theta0.shape[0], problem.n
    theta = theta0.clone()
    state = problem.evaluate(theta)
    loss, jtr, jtj = state.loss.clone(), state.jtr.clone(), state.jtj.clone()
    lam = torch.full((R,), lam0, dtype=theta.dtype, device=theta.device)
    n_iter = torch.zeros(R, dtype=torch.long, device=theta.device)
    converged = torch.zeros(R, dtype=torch.bool, device=theta.device)
    active = torch.ones(R, dtype=torch.bool, device=theta.device)
    for _ in range(stop.max_iter):
        # gradient of the mean squared loss is -2 J^T r / n
        small_grad = (2 * jtr.abs().amax(-1) / n) <= stop.gtol
        converged |= active & small_grad
        active &= ~small_grad
        rows = active.nonzero().flatten()
        if rows.numel() == 0:
            break
        n_iter[rows] += 1
        delta, ok = _damped_solve(jtj[rows], jtr[rows], lam[rows])
        trial = theta[rows] + delta
        trial_loss = problem.loss(trial, None if rows.numel() == R else rows)
        better = ok & torch.isfinite(trial_loss) & (trial_loss < loss[rows])
        acc, rej = rows[better], rows[~better]
        if rej.numel():
            lam[rej] = lam[rej] * 4
            gave_up = rej[lam[rej] > LAMBDA_MAX]
            active[gave_up] = False  # no descent left at rounding level: a stationary point
            converged[gave_up] = True
        if acc.numel():
            rel = (loss[acc] - trial_loss[better]) / loss[acc].clamp_min(torch.finfo(loss.dtype).tiny)
            short = delta[better].norm(dim=-1) <= stop.xtol * (stop.xtol + theta[acc].norm(dim=-1))
            theta[acc] = trial[better]
            lam[acc] = (lam[acc] / 3).clamp_min(LAMBDA_MIN)
            done = acc[(rel < stop.ftol) | short]
            converged[done] = True
            active[done] = False
            state = problem.evaluate(theta[acc], None if acc.numel() == R else acc)
            loss[acc], jtr[acc], jtj[acc] = state.loss, state.jtr, state.jtj
    return SolverOutput(theta, loss, n_iter, converged)
