"""One problem at a time with ``scipy.optimize.least_squares``: the baseline a user would write,
and the cross-check of the batched solvers (same analytic Jacobian, independent optimiser)."""

from __future__ import annotations

import numpy as np
import torch

from kernels.moe.torch_pass import jacobian_chunk
from moe_theory import models
from moe_theory.estimators.bounds import projected_gradient_max
from moe_theory.estimators.levenberg_marquardt import (
    FTOL,
    GTOL,
    MAX_ITER,
    NON_FINITE,
    XTOL,
    SolverOutput,
    StopRule,
)
from moe_theory.estimators.problem import LeastSquaresProblem

#: scipy's ``status`` -> our stop test (4: both ftol and xtol held; -1: improper input, which
#: the checks before the call rule out)
_STOP_OF_STATUS = {1: GTOL, 2: FTOL, 3: XTOL, 4: FTOL, 0: MAX_ITER}


def scipy_least_squares(problem: LeastSquaresProblem, theta0: torch.Tensor,
                        stop: StopRule = StopRule(), *,
                        box: tuple[torch.Tensor, torch.Tensor] | None = None) -> SolverOutput:
    """scipy's trust-region reflective solver (``trf``), bounded by ``box`` when given."""
    expert = models.get_expert(problem.expert)
    thetas, n_iter, tests = [], [], []
    for r in range(theta0.shape[0]):
        bounds = (-np.inf, np.inf) if box is None else tuple(
            b[r].detach().cpu().double().numpy() for b in box)
        sol = _solve_one(problem, expert, r, theta0[r].detach().cpu().double().numpy(), stop,
                         bounds)
        thetas.append(torch.from_numpy(sol.x))
        n_iter.append(sol.nfev)
        tests.append(_STOP_OF_STATUS.get(sol.status, NON_FINITE))
    theta = torch.stack(thetas).to(theta0)
    loss = problem.loss(theta)
    jtr = problem.evaluate(theta, gauss_newton=False).jtr
    test = torch.tensor(tests, device=theta0.device)
    test = torch.where(torch.isfinite(loss), test, NON_FINITE)
    return SolverOutput(theta, loss, torch.tensor(n_iter, device=theta0.device), test,
                        projected_gradient_max(theta, jtr, problem.n, box))


def _solve_one(problem: LeastSquaresProblem, expert, r: int, x0: np.ndarray, stop: StopRule,
               bounds: tuple):
    # imported here: every sweep worker imports this module, few call scipy (import ~1 s on an
    # H100 host, paid by each of reproduce's processes)
    from scipy.optimize import least_squares

    X, Y = problem.data(torch.tensor([r], device=problem.X.device))
    X, Y = X.detach().cpu().double(), Y[0].detach().cpu().double().numpy()
    cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    def residual_and_jacobian(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # scipy asks for the residual and the Jacobian separately at the same point: one pass
        key = theta.tobytes()
        if key not in cache:
            gp, ep = problem.unpack(torch.from_numpy(theta)[None])
            f, J = jacobian_chunk(X, gp, ep, problem.gate, problem.score, expert)
            cache.clear()
            cache[key] = (f[0].numpy() - Y, J[0].numpy())
        return cache[key]

    return least_squares(
        lambda t: residual_and_jacobian(t)[0], x0, jac=lambda t: residual_and_jacobian(t)[1],
        bounds=bounds, method="trf", x_scale="jac", ftol=stop.ftol, xtol=1e-15, gtol=stop.gtol,
        max_nfev=stop.max_iter * 10,
    )
