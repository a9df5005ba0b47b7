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
    tiny = torch.finfo(loss.dtype).tiny
    for _ in range(stop.max_iter):
        # gradient of the mean squared loss is -2 J^T r / n
        small_grad = (2 * jtr.abs().amax(-1) / n) <= stop.gtol
        converged |= active & small_grad
        active &= ~small_grad
        # Two host synchronisations per iteration (the active rows, the accepted rows): the rest
        # is masked arithmetic on the active rows, queued without waiting for the device.
        rows = active.nonzero().flatten()
        if rows.numel() == 0:
            break
        sub = None if rows.numel() == R else rows
        n_iter[rows] += 1
        delta, ok = _damped_solve(jtj[rows], jtr[rows], lam[rows])
        theta_r, loss_r, lam_r = theta[rows], loss[rows], lam[rows]
        trial = theta_r + delta
        trial_loss = problem.loss(trial, sub)
        better = ok & torch.isfinite(trial_loss) & (trial_loss < loss_r)
        # rejected: more damping, up to the bound past which no step lowers the loss to rounding
        # (a stationary point); accepted: less damping, and stop on a small relative decrease or
        # a short step
        lam_r = torch.where(better, (lam_r / 3).clamp_min(LAMBDA_MIN), lam_r * 4)
        gave_up = ~better & (lam_r > LAMBDA_MAX)
        rel = (loss_r - trial_loss) / loss_r.clamp_min(tiny)
        short = delta.norm(dim=-1) <= stop.xtol * (stop.xtol + theta_r.norm(dim=-1))
        stopped = gave_up | (better & ((rel < stop.ftol) | short))
        lam[rows] = lam_r
        theta[rows] = torch.where(better[:, None], trial, theta_r)
        converged[rows] |= stopped
        active[rows] &= ~stopped
        acc = rows[better]
        if acc.numel():
            state = problem.evaluate(theta[acc], None if acc.numel() == R else acc)
            loss[acc], jtr[acc], jtj[acc] = state.loss, state.jtr, state.jtj
    return SolverOutput(theta, loss, n_iter, converged)
