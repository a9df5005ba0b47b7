"""A batch of R least-squares problems in the free-parameter layout of ``kernels.moe.reference``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.moe import MoEPass, moe_pass, n_free_gates
from moe_theory import models
from moe_theory.measure import MixingMeasure


@dataclass
class LeastSquaresProblem:
    """``min_theta sum_t (y_t - f_theta(x_t))^2`` for each of R replications.

    Attributes
    ----------
    X : (R, n, d)
    Y : (R, n)
    gate, score, expert : the fitted model
    k : number of fitted atoms
    backend : ``auto``, ``torch`` or ``triton`` (see :func:`kernels.moe.moe_pass`)
    """

    X: torch.Tensor
    Y: torch.Tensor
    gate: str
    score: str
    expert: str
    k: int
    backend: str

    @property
    def d(self) -> int:
        return self.X.shape[-1]

    @property
    def n(self) -> int:
        return self.X.shape[1]

    @property
    def pg(self) -> int:
        return models.gate_dim(self.score, self.d)

    @property
    def pe(self) -> int:
        return models.get_expert(self.expert).dim(self.d)

    @property
    def k_free(self) -> int:
        return n_free_gates(self.gate, self.k)

    @property
    def p(self) -> int:
        return self.k_free * self.pg + self.k * self.pe

    def pack(self, measure: MixingMeasure) -> torch.Tensor:
        """Free parameters of a measure: (R, p)."""
        R = measure.R
        return torch.cat(
            [measure.gate_params[:, : self.k_free].reshape(R, -1), measure.expert_params.reshape(R, -1)],
            dim=1,
        )

    def unpack(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``theta: (R, p)`` -> gate params (R, k, pg) with the pinned row zero, expert params."""
        R, cut = theta.shape[0], self.k_free * self.pg
        gp = theta[:, :cut].reshape(R, self.k_free, self.pg)
        if self.k_free < self.k:
            gp = torch.cat([gp, gp.new_zeros(R, self.k - self.k_free, self.pg)], dim=1)
        return gp, theta[:, cut:].reshape(R, self.k, self.pe)

    def measure(self, theta: torch.Tensor) -> MixingMeasure:
        gp, ep = self.unpack(theta)
        return MixingMeasure(self.gate, self.score, self.expert, self.d, gp, ep)

    def evaluate(
        self, theta: torch.Tensor, rows: torch.Tensor | None = None, *, gauss_newton: bool = True,
        jacobian: bool = True,
    ) -> MoEPass:
        """Loss and Gauss-Newton blocks of the replications ``rows`` (all when None)."""
        X, Y = (self.X, self.Y) if rows is None else (self.X[rows], self.Y[rows])
        gp, ep = self.unpack(theta)
        out = moe_pass(X, Y, gp.to(X.dtype), ep.to(X.dtype), gate=self.gate, score=self.score,
                       expert=models.get_expert(self.expert), jacobian=jacobian,
                       gauss_newton=gauss_newton, backend=self.backend)
        return MoEPass(*(None if t is None else t.to(theta.dtype) for t in out))

    def loss(self, theta: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Sum of squared residuals: (R,) or (len(rows),)."""
        return self.evaluate(theta, rows, jacobian=False).loss
