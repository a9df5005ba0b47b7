"""Gradient-based fits through autograd: ``adam``, ``lbfgs`` and N24's protocol ``sgd-paper``.

The objective summed over replications separates, so one optimiser over the stacked parameters
updates every replication with its own gradient (L-BFGS's line search is the one shared piece:
it sees the summed loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moe_theory import models
from moe_theory.estimators.levenberg_marquardt import SolverOutput, StopRule
from moe_theory.estimators.problem import LeastSquaresProblem


@dataclass(frozen=True)
class SGDProtocol:
    """N24's published protocol: minibatch SGD, 10 epochs, learning rate 0.1."""

    epochs: int = 10
    lr: float = 0.1
    batch_size: int = 64
    seed: int = 0


def _mean_loss(problem: LeastSquaresProblem, theta: torch.Tensor, idx: torch.Tensor | None = None):
    """Per-replication mean squared residual on all samples or a minibatch ``idx: (R, b)``."""
    X, Y = problem.X, problem.Y
    if idx is not None:
        X = torch.gather(X, 1, idx[..., None].expand(-1, -1, X.shape[-1]))
        Y = torch.gather(Y, 1, idx)
    gp, ep = problem.unpack(theta)
    f = models.regression_function(X, gp.to(X.dtype), ep.to(X.dtype), gate=problem.gate, score=problem.score,
                                   expert=models.get_expert(problem.expert))
    return ((Y - f) ** 2).mean(-1).to(theta.dtype)


def _finish(problem, theta, n_iter, converged) -> SolverOutput:
    theta = theta.detach()
    return SolverOutput(theta, problem.loss(theta), n_iter, converged)


def adam(problem: LeastSquaresProblem, theta0: torch.Tensor, stop: StopRule = StopRule(),
         lr: float = 1e-2) -> SolverOutput:
    theta = theta0.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    R = theta0.shape[0]
    prev = torch.full((R,), float("inf"), dtype=theta0.dtype, device=theta0.device)
    converged = torch.zeros(R, dtype=torch.bool, device=theta0.device)
    n_iter = torch.zeros(R, dtype=torch.long, device=theta0.device)
    for _ in range(stop.max_iter):
        opt.zero_grad()
        losses = _mean_loss(problem, theta)
        losses.sum().backward()
        grad_small = theta.grad.abs().amax(-1) <= stop.gtol
        rel = (prev - losses.detach()).abs() / losses.detach().clamp_min(1e-300)
        converged |= grad_small | (rel < stop.ftol)
        n_iter += (~converged).long()
        if bool(converged.all()):
            break
        prev = losses.detach()
        # frozen replications keep their parameters: zero their gradient
        theta.grad[converged] = 0
        opt.step()
    return _finish(problem, theta, n_iter, converged)


def lbfgs(problem: LeastSquaresProblem, theta0: torch.Tensor, stop: StopRule = StopRule()
          ) -> SolverOutput:
    theta = theta0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=stop.max_iter, tolerance_grad=stop.gtol,
                            tolerance_change=stop.ftol, history_size=50,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = _mean_loss(problem, theta).sum()
        loss.backward()
        return loss

    opt.step(closure)
    state = opt.state[opt._params[0]]
    n = int(state.get("n_iter", stop.max_iter))
    R = theta0.shape[0]
    n_iter = torch.full((R,), n, dtype=torch.long, device=theta0.device)
    converged = torch.full((R,), n < stop.max_iter, dtype=torch.bool, device=theta0.device)
    return _finish(problem, theta, n_iter, converged)


def sgd_paper(problem: LeastSquaresProblem, theta0: torch.Tensor,
              protocol: SGDProtocol = SGDProtocol()) -> SolverOutput:
    """Plain minibatch SGD; each replication shuffles its own samples every epoch."""
    theta = theta0.clone().requires_grad_(True)
    opt = torch.optim.SGD([theta], lr=protocol.lr)
    R, n = problem.Y.shape
    gen = torch.Generator(device="cpu").manual_seed(protocol.seed)
    steps = 0
    for _ in range(protocol.epochs):
        order = torch.argsort(torch.rand(R, n, generator=gen), dim=1).to(problem.X.device)
        for start in range(0, n, protocol.batch_size):
            opt.zero_grad()
            _mean_loss(problem, theta, order[:, start : start + protocol.batch_size]).sum().backward()
            opt.step()
            steps += 1
    n_iter = torch.full((R,), steps, dtype=torch.long, device=theta0.device)
    # a fixed budget of epochs, not a convergence test: N24's protocol does not claim an LSE
    converged = torch.zeros(R, dtype=torch.bool, device=theta0.device)
    return _finish(problem, theta, n_iter, converged)
