"""One problem at a time with ``scipy.optimize.least_squares``: the baseline a user would write,
and the cross-check of the batched solvers (same analytic Jacobian, independent optimiser)."""

from __future__ import annotations

import numpy as np
import torch

from kernels.moe.torch_pass import jacobian_chunk
from moe_theory import models
from moe_theory.estimators.levenberg_marquardt import SolverOutput, StopRule
from moe_theory.estimators.problem import LeastSquaresProblem


def scipy_least_squares(problem: LeastSquaresProblem, theta0: torch.Tensor,
                        stop: StopRule = StopRule()) -> SolverOutput:
    expert = models.get_expert(problem.expert)
    thetas, n_iter, converged = [], [], []
    for r in range(theta0.shape[0]):
        sol = _solve_one(problem, expert, r, theta0[r].detach().cpu().double().numpy(), stop)
        thetas.append(torch.from_numpy(sol.x))
        n_iter.append(sol.nfev)
        converged.append(sol.status > 0)
    theta = torch.stack(thetas).to(theta0)
    return SolverOutput(theta, problem.loss(theta),
                        torch.tensor(n_iter, device=theta0.device),
                        torch.tensor(converged, device=theta0.device))


def _solve_one(problem: LeastSquaresProblem, expert, r: int, x0: np.ndarray, stop: StopRule):
    # imported here: every sweep worker imports this module, few call scipy (import ~1 s on an
    # H100 host, paid by each of reproduce's processes)
    from scipy.optimize import least_squares

    X = problem.X[r : r + 1].detach().cpu().double()
    Y = problem.Y[r].detach().cpu().double().numpy()
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
        method="trf", x_scale="jac", ftol=stop.ftol, xtol=1e-15, gtol=stop.gtol,
        max_nfev=stop.max_iter * 10,
    )
