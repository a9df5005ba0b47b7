"""Batched Levenberg-Marquardt: R problems advance together, each with its own damping.

With a box (docs/theory.md#compact-parameter-set) it is a projected trust-region method: the
coordinates held at a bound by the gradient are fixed, the damped Gauss-Newton step is solved on
the others, and the trial point is clamped to the box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import torch

from moe_theory.estimators.bounds import binding, outward, projected_gradient_max
from moe_theory.estimators.problem import LeastSquaresProblem

#: Damping bounds. Past the upper one no step can lower the loss to rounding: the fit stops.
LAMBDA_MIN, LAMBDA_MAX = 1e-12, 1e12
#: Re-solves per bounded step that hold the face coordinates the step pushes outwards.
FACE_ROUNDS = 3

#: Why a fit stopped (docs/theory.md#stopping-rule), one code per test, and the reason it reports.
#: ``damping``: the damping passed LAMBDA_MAX, so even a step along the (projected, scaled)
#: gradient, a descent direction at any non-stationary point, no longer lowers the loss: a
#: stationary point to rounding, counted as a tolerance stop but recorded apart. ``epochs``: a
#: fixed budget by design (``sgd-paper``), which claims no stationary point.
STOP_TESTS = ("running", "gtol", "ftol", "xtol", "damping", "max_iter", "epochs", "non_finite")
STOP_REASONS = ("tolerance", "max_iter", "non_finite")
_REASON_OF_TEST = {"gtol": "tolerance", "ftol": "tolerance", "xtol": "tolerance",
                   "damping": "tolerance", "max_iter": "max_iter", "epochs": "max_iter",
                   "non_finite": "non_finite"}
RUNNING, GTOL, FTOL, XTOL, DAMPING, MAX_ITER, EPOCHS, NON_FINITE = range(len(STOP_TESTS))
#: The tolerance tests that see a short accepted step or a small decrease, not stationarity: a
#: fit they stop is restarted to check it (moe_theory.estimators.lse, ``restart_drop``); the
#: other two test stationarity themselves.
SHORT_STEP_TESTS = ("ftol", "xtol")
STATIONARY_TESTS = ("gtol", "damping")


def stop_reason(test: str) -> str:
    """``tolerance``, ``max_iter`` or ``non_finite`` for a stop test of :data:`STOP_TESTS`."""
    return _REASON_OF_TEST[test]


@dataclass(frozen=True)
class StopRule:
    """Stopping: relative loss decrease below ``ftol`` on an accepted step, an accepted step
    shorter than ``xtol * (xtol + ||theta||)`` (the test scipy's solvers use too: along the flat
    directions of over-specified atoms the loss keeps falling by tiny amounts while the
    parameters no longer move), the projected gradient of the mean squared loss below ``gtol`` in
    max-norm, or ``max_iter`` iterations (then the fit is not converged)."""

    max_iter: int = 200
    ftol: float = 1e-10
    gtol: float = 1e-10
    xtol: float = 1e-8

    def __post_init__(self) -> None:
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"max_iter: must be a positive integer, got {self.max_iter!r}")
        for name in ("ftol", "gtol", "xtol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) or \
                    not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, name, float(value))


@dataclass
class SolverOutput:
    theta: torch.Tensor  # (R, p)
    loss: torch.Tensor  # (R,) sum of squared residuals
    n_iter: torch.Tensor  # (R,)
    stop: torch.Tensor  # (R,) int64 index into STOP_TESTS
    proj_grad_max: torch.Tensor  # (R,) max-norm of the projected gradient of the mean loss

    @property
    def converged(self) -> torch.Tensor:
        """(R,) stopped by a tolerance test (not the cap, not a non-finite value)."""
        return (self.stop >= GTOL) & (self.stop <= DAMPING)


def _damped_solve(jtj: torch.Tensor, jtr: torch.Tensor, lam: torch.Tensor,
                  free: torch.Tensor | None = None):
    """Solve ``(J^T J + lam D) delta = J^T r`` with Marquardt's scaling ``D = diag(J^T J)``.

    The diagonal is floored relative to its largest entry so that parameters the data cannot see
    (a dead ReLU expert, say) still get a finite, damped step. ``free: (R, p)`` bool solves on
    those coordinates only (the others' rows and columns are decoupled, their right-hand side
    zero, so their step is exactly 0). Returns the step and a mask of the problems whose
    factorisation succeeded.
    """
    diag = torch.diagonal(jtj, dim1=-2, dim2=-1)
    if free is not None:
        eye = torch.eye(jtj.shape[-1], dtype=torch.bool, device=jtj.device)
        jtj = jtj.masked_fill(~(free[:, :, None] & free[:, None, :]) & ~eye, 0)
        jtr = jtr.masked_fill(~free, 0)
    floor = diag.amax(-1, keepdim=True).clamp_min(1e-300) * 1e-12
    scaled = diag.clamp_min(floor) * lam[:, None]
    system = jtj + torch.diag_embed(scaled)
    chol, info = torch.linalg.cholesky_ex(system)
    ok = info == 0
    delta = torch.cholesky_solve(jtr[..., None], chol)[..., 0]
    delta = torch.where(ok[:, None], delta, torch.zeros_like(delta))
    return delta, ok & torch.isfinite(delta).all(-1)


def _finite(loss: torch.Tensor, jtr: torch.Tensor, jtj: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(loss) & torch.isfinite(jtr).all(-1) & torch.isfinite(jtj).flatten(1).all(-1)


def levenberg_marquardt(
    problem: LeastSquaresProblem, theta0: torch.Tensor, stop: StopRule = StopRule(),
    lam0: float = 1e-3, *, box: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> SolverOutput:
    """Minimise each problem's sum of squared residuals from ``theta0: (R, p)``.

    Each iteration makes one Gauss-Newton pass (loss, ``J^T r``, ``J^T J``) over the problems
    whose last step was accepted and one loss-only pass at the trial points.

    ``box``: ``(lo, hi)``, each ``(R, p)``, with ``theta0`` inside. Coordinates that sit at a bound
    with the gradient pushing outwards (:func:`~moe_theory.estimators.bounds.binding`) keep their
    value; the damped step is solved on the rest and the trial point clamped to the box. As the
    damping grows the step turns into a projected, diagonally scaled gradient step, a descent
    direction at any point that is not stationary for the bounded problem, so the damping loop
    keeps the method's guarantee. Without a box the iterates are those of plain LM, bit for bit.
    """
    R, n = theta0.shape[0], problem.n
    theta = theta0.clone()
    state = problem.evaluate(theta)
    loss, jtr, jtj = state.loss.clone(), state.jtr.clone(), state.jtj.clone()
    lam = torch.full((R,), lam0, dtype=theta.dtype, device=theta.device)
    n_iter = torch.zeros(R, dtype=torch.long, device=theta.device)
    test = torch.zeros(R, dtype=torch.long, device=theta.device)
    # a start where the loss or its derivatives overflow cannot be fitted from
    bad = ~_finite(loss, jtr, jtj)
    test[bad] = NON_FINITE
    active = ~bad
    tiny = torch.finfo(loss.dtype).tiny
    for _ in range(stop.max_iter):
        held = None if box is None else binding(theta, jtr, *box)
        small_grad = projected_gradient_max(theta, jtr, n, box) <= stop.gtol
        test[active & small_grad] = GTOL
        active &= ~small_grad
        # Two host synchronisations per iteration (the active rows, the accepted rows): the rest
        # is masked arithmetic on the active rows, queued without waiting for the device.
        rows = active.nonzero().flatten()
        if rows.numel() == 0:
            break
        sub = None if rows.numel() == R else rows
        n_iter[rows] += 1
        theta_r, loss_r, lam_r = theta[rows], loss[rows], lam[rows]
        if box is None:
            delta, ok = _damped_solve(jtj[rows], jtr[rows], lam[rows])
            trial = theta_r + delta
        else:
            lo_r, hi_r, held_r = box[0][rows], box[1][rows], held[rows]
            delta, ok = _damped_solve(jtj[rows], jtr[rows], lam[rows], ~held_r)
            # a coordinate on a face that the coupled step pushes outwards would be clamped
            # back, and the other coordinates' step assumed it moved: hold it too and solve
            # again (the step of the damped model restricted to the box's face)
            for _ in range(FACE_ROUNDS):
                more = outward(theta_r, delta, lo_r, hi_r) & ~held_r
                if not bool(more.any()):
                    break
                held_r = held_r | more
                delta, ok = _damped_solve(jtj[rows], jtr[rows], lam[rows], ~held_r)
            trial = torch.minimum(torch.maximum(theta_r + delta, lo_r), hi_r)
            delta = trial - theta_r
        trial_loss = problem.loss(trial, sub)
        better = ok & torch.isfinite(trial_loss) & (trial_loss < loss_r)
        # rejected: more damping, up to the bound past which no step lowers the loss to rounding
        # (a stationary point); accepted: less damping, and stop on a small relative decrease or
        # a short step
        lam_r = torch.where(better, (lam_r / 3).clamp_min(LAMBDA_MIN), lam_r * 4)
        gave_up = ~better & (lam_r > LAMBDA_MAX)
        rel = (loss_r - trial_loss) / loss_r.clamp_min(tiny)
        short = delta.norm(dim=-1) <= stop.xtol * (stop.xtol + theta_r.norm(dim=-1))
        flat, moved_little = better & (rel < stop.ftol), better & short
        stopped = gave_up | flat | moved_little
        lam[rows] = lam_r
        theta[rows] = torch.where(better[:, None], trial, theta_r)
        test[rows] = torch.where(gave_up, DAMPING, torch.where(
            flat, FTOL, torch.where(moved_little, XTOL, test[rows])))
        active[rows] &= ~stopped
        acc = rows[better]
        if acc.numel():
            state = problem.evaluate(theta[acc], None if acc.numel() == R else acc)
            loss[acc], jtr[acc], jtj[acc] = state.loss, state.jtr, state.jtj
            # derivatives that overflow at an accepted point (its loss is finite) end the fit
            bad = ~_finite(state.loss, state.jtr, state.jtj)
            test[acc] = torch.where(bad & active[acc], NON_FINITE, test[acc])
            active[acc] &= ~bad
    # the gtol test runs at the top of an iteration, so the point the last iteration accepted
    # was never tested: a fit whose returned parameters pass gtol stopped on it, not on the cap
    # (the stop reason is that of the parameters returned)
    grad_max = projected_gradient_max(theta, jtr, n, box)
    small_grad = active & (grad_max <= stop.gtol)
    test[small_grad] = GTOL
    test[active & ~small_grad] = MAX_ITER
    return SolverOutput(theta, loss, n_iter, test, grad_max)
