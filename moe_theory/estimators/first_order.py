"""Gradient-based fits through autograd: ``adam``, ``lbfgs`` and N24's protocol ``sgd-paper``.

The objective summed over replications separates, so one optimiser over the stacked parameters
updates every replication with its own gradient (L-BFGS's line search is the one shared piece:
it sees the summed loss).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from moe_theory import models
from moe_theory.data import stable_seed
from moe_theory.estimators.bounds import binding, projected_gradient_max
from moe_theory.estimators.levenberg_marquardt import (
    EPOCHS,
    FTOL,
    GTOL,
    MAX_ITER,
    NON_FINITE,
    RUNNING,
    SolverOutput,
    StopRule,
)
from moe_theory.estimators.problem import LeastSquaresProblem
from moe_theory.validation import check_number, check_positive_int, check_seed


@dataclass(frozen=True)
class SGDProtocol:
    """N24's published protocol: minibatch SGD, 10 epochs, learning rate 0.1."""

    epochs: int = 10
    lr: float = 0.1
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        # an infinite or NaN rate gives NaN fits that only their stop reason reports; the
        # errors say ``sgd.`` as a config's ``sgd`` table and fit_lse's ``sgd`` argument do
        for key, value in (("epochs", check_positive_int("sgd.epochs", self.epochs)),
                           ("lr", check_number("sgd.lr", self.lr, 0, strict=True)),
                           ("batch_size", check_positive_int("sgd.batch_size", self.batch_size)),
                           ("seed", check_seed("sgd.seed", self.seed))):
            object.__setattr__(self, key, value)

    @classmethod
    def from_table(cls, table: dict) -> SGDProtocol:
        """The protocol a config's ``sgd`` table (or :func:`fit_lse`'s ``sgd`` dict) names; an
        unknown key is refused by name, as every value is by ``sgd.<key>``."""
        unknown = sorted(set(table) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"sgd: unknown key(s) {unknown}; allowed sub-keys: "
                             f"{', '.join(cls.__dataclass_fields__)}")
        return cls(**table)


def _mean_loss(problem: LeastSquaresProblem, theta: torch.Tensor, idx: torch.Tensor | None = None,
               rows: torch.Tensor | None = None):
    """Per-problem mean squared residual on all samples or a minibatch ``idx: (R, b)``, of all
    problems or of the problems ``rows`` (whose parameters ``theta`` then holds)."""
    X, Y = problem.data(rows)
    if idx is not None:
        X = torch.gather(X, 1, idx[..., None].expand(-1, -1, X.shape[-1]))
        Y = torch.gather(Y, 1, idx)
    gp, ep = problem.unpack(theta)
    f = models.regression_function(X, gp.to(X.dtype), ep.to(X.dtype), gate=problem.gate, score=problem.score,
                                   expert=models.get_expert(problem.expert))
    return ((Y - f) ** 2).mean(-1).to(theta.dtype)


def _project(theta: torch.Tensor, box: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    """Clamp the iterate into the box in place (projected gradient methods)."""
    if box is not None:
        with torch.no_grad():
            theta.copy_(torch.minimum(torch.maximum(theta, box[0]), box[1]))


def _finish(problem, theta, n_iter, test, box) -> SolverOutput:
    """The loss and projected gradient at the last iterate (one pass), and the stop codes: a
    non-finite loss overrides the test that stopped the run."""
    theta = theta.detach()
    loss = problem.loss(theta)
    jtr = problem.evaluate(theta, gauss_newton=False).jtr
    test = torch.where(torch.isfinite(loss), test, NON_FINITE)
    return SolverOutput(theta, loss, n_iter, test, projected_gradient_max(theta, jtr, problem.n, box))


def adam(problem: LeastSquaresProblem, theta0: torch.Tensor, stop: StopRule = StopRule(),
         lr: float = 1e-2, *, box: tuple[torch.Tensor, torch.Tensor] | None = None
         ) -> SolverOutput:
    """Adam on every problem at once; with a box, each step is followed by a projection onto it.
    Stops a problem on a small projected gradient (``gtol``), a small relative change of its
    loss (``ftol``), or the cap."""
    theta = theta0.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    R = theta0.shape[0]
    prev = torch.full((R,), float("inf"), dtype=theta0.dtype, device=theta0.device)
    test = torch.zeros(R, dtype=torch.long, device=theta0.device)
    n_iter = torch.zeros(R, dtype=torch.long, device=theta0.device)
    for _ in range(stop.max_iter):
        opt.zero_grad()
        losses = _mean_loss(problem, theta)
        losses.sum().backward()
        # the gradient of the mean loss is -2 J^T r / n: the projection takes J^T r's sign
        grad = theta.grad
        if box is not None:
            grad = grad.masked_fill(binding(theta.detach(), -grad, *box), 0)
        grad_small = grad.abs().amax(-1) <= stop.gtol
        rel = (prev - losses.detach()).abs() / losses.detach().clamp_min(1e-300)
        running = test == RUNNING
        test = torch.where(running & grad_small, GTOL,
                           torch.where(running & (rel < stop.ftol), FTOL, test))
        n_iter += (test == RUNNING).long()
        if bool((test != RUNNING).all()):
            break
        prev = losses.detach()
        # frozen problems keep their parameters: Adam's momentum moved them on with a zero
        # gradient, so that a fit depended on how long the others in its batch ran
        frozen = test != RUNNING
        kept = theta.detach()[frozen].clone()
        theta.grad[frozen] = 0
        opt.step()
        with torch.no_grad():
            theta[frozen] = kept
        _project(theta, box)
    test = torch.where(test == RUNNING, MAX_ITER, test)
    return _finish(problem, theta, n_iter, test, box)


def lbfgs(problem: LeastSquaresProblem, theta0: torch.Tensor, stop: StopRule = StopRule()
          ) -> SolverOutput:
    """torch's L-BFGS with a strong Wolfe line search on the summed loss (unbounded only: a
    projection would break its curvature pairs). It stops every problem together: on its gradient
    or loss-change tolerance (reported ``gtol`` when the gradient is below ``gtol`` at the end,
    else ``ftol``), or at ``max_iter`` or its budget of function evaluations (``max_iter``: a
    budget, not a tolerance, so not converged)."""
    R = theta0.shape[0]
    # One start whose loss or gradient overflows made the summed loss NaN, and with it every
    # other problem's line search and direction: such starts are left out, as LM leaves them.
    at_start = problem.evaluate(theta0, gauss_newton=False)
    finite = torch.isfinite(at_start.loss) & torch.isfinite(at_start.jtr).all(-1)
    rows = None if bool(finite.all()) else finite.nonzero().flatten()
    theta = (theta0 if rows is None else theta0[rows]).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=stop.max_iter, tolerance_grad=stop.gtol,
                            tolerance_change=stop.ftol, history_size=50,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = _mean_loss(problem, theta, rows=rows).sum()
        loss.backward()
        return loss

    if theta.shape[0]:
        opt.step(closure)
    state = opt.state[opt._params[0]]
    n = int(state.get("n_iter", stop.max_iter if theta.shape[0] else 0))
    n_iter = torch.full((R,), n, dtype=torch.long, device=theta0.device).masked_fill(~finite, 0)
    if rows is not None:
        theta = theta0.clone().index_copy_(0, rows, theta.detach())
    out = _finish(problem, theta, n_iter, torch.full((R,), MAX_ITER, device=theta0.device), None)
    out.stop = out.stop.masked_fill(~finite, NON_FINITE)
    # torch's L-BFGS also stops once it has spent max_eval evaluations, before max_iter: that
    # stop is a budget's, and read as ftol it counted as converged
    evals_spent = int(state.get("func_evals", 0)) >= int(opt.param_groups[0]["max_eval"])
    if n < stop.max_iter:
        out.stop = torch.where(out.stop == NON_FINITE, NON_FINITE, torch.where(
            out.proj_grad_max <= stop.gtol, GTOL, MAX_ITER if evals_spent else FTOL))
    return out


def sgd_paper(problem: LeastSquaresProblem, theta0: torch.Tensor,
              protocol: SGDProtocol = SGDProtocol(), *,
              box: tuple[torch.Tensor, torch.Tensor] | None = None,
              streams: Sequence[object] | None = None) -> SolverOutput:
    """Plain minibatch SGD; each problem shuffles its own samples every epoch (with a box, each
    step is projected onto it). It runs its fixed budget of epochs by design: N24's protocol
    does not claim an LSE, and the fit reports the stop test ``epochs`` (reason ``max_iter``).

    ``streams``: one label per problem (default its row), the only thing its minibatch order is
    seeded by besides ``protocol.seed``. :func:`~moe_theory.estimators.lse.fit_lse` passes
    (replication, start), so a replication's fit does not depend on which or how many
    replications share its batch: the optimiser check's refits of two replications then differ
    from the sweep's fits by the variant alone, not by a reshuffle."""
    theta = theta0.clone().requires_grad_(True)
    opt = torch.optim.SGD([theta], lr=protocol.lr)
    R, n = theta0.shape[0], problem.n
    streams = range(R) if streams is None else streams
    if len(streams) != R:
        raise ValueError(f"streams: {len(streams)} labels for {R} problems")
    gens = [torch.Generator(device="cpu").manual_seed(stable_seed("sgd", protocol.seed, label))
            for label in streams]
    steps = 0
    for _ in range(protocol.epochs):
        order = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(problem.X.device)
        for start in range(0, n, protocol.batch_size):
            opt.zero_grad()
            _mean_loss(problem, theta, order[:, start : start + protocol.batch_size]).sum().backward()
            opt.step()
            _project(theta, box)
            steps += 1
    n_iter = torch.full((R,), steps, dtype=torch.long, device=theta0.device)
    return _finish(problem, theta, n_iter, torch.full((R,), EPOCHS, device=theta0.device), box)
