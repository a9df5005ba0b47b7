"""A batch of R least-squares problems in the free-parameter layout of ``kernels.moe.torch_pass``."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kernels.moe import MoEPass, gram, moe_pass, n_free_gates
from kernels.moe.torch_pass import check_batch
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
    data_rows : (B,) int64, the data set ``X[data_rows[i]]`` of problem i, when there are more
        problems than data sets (several starts per replication); None: problem i fits ``X[i]``
    gram_dtype : precision of the Gram products of ``J^T J``
        (docs/kernels.md#mixed-precision-gauss-newton); loss and ``J^T r`` keep X's dtype
    """

    X: torch.Tensor
    Y: torch.Tensor
    gate: str
    score: str
    expert: str
    k: int
    backend: str
    data_rows: torch.Tensor | None = None
    gram_dtype: str = "float64"
    #: the Gram route's feature pairs of X (kernels/moe/gram.py), formed at the first
    #: Gauss-Newton pass when they fit the device's cache budget: they depend on X alone
    _features: torch.Tensor | None = field(default=None, init=False, repr=False)
    _features_checked: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        # data_rows out of range would make the Triton kernels read past X. Checked here, once
        # per problem (one host synchronisation on a GPU), rather than by every pass: a fit's
        # passes read data_rows or a subset of it gathered by torch indexing, which checks those
        # indices itself, so evaluate() skips the kernels' own per-call check (check_rows=False)
        # and a Levenberg-Marquardt iteration keeps its two synchronisations.
        check_batch(self.X, self.data_rows, rows_name="data_rows")

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
        """Loss and Gauss-Newton blocks of the problems ``rows`` (all when None)."""
        X, Y = self.X, self.Y
        if self.data_rows is not None:
            # several problems share a data set: the kernels read its rows in place
            rows = self.data_rows if rows is None else self.data_rows[rows]
        gp, ep = self.unpack(theta)
        V = self._gram_features() if jacobian and gauss_newton else None
        # the rows are read in place where the kernels can (a subset's copy of X and of the kept
        # feature pairs cost more than the pass at n = 10^5). Their range is not checked again
        # (a host synchronisation per pass): data_rows was checked when the problem was made,
        # a subset of it is gathered above by torch indexing, and without data_rows the rows
        # are the solvers' subsets of the problems (nonzero() of a mask over them)
        out = moe_pass(X, Y, gp.to(X.dtype), ep.to(X.dtype), gate=self.gate, score=self.score,
                       expert=models.get_expert(self.expert), jacobian=jacobian,
                       gauss_newton=gauss_newton, backend=self.backend, gram_features=V,
                       rows=rows, gram_dtype=self.gram_dtype, check_rows=False)
        return MoEPass(*(None if t is None else t.to(theta.dtype) for t in out))

    def on_data_sets(self, sets: torch.Tensor) -> LeastSquaresProblem:
        """One problem per data set of ``sets: (B,)``, reading this problem's data in place and
        sharing its Gram feature pairs, which depend on X alone: a second copy would double
        the largest cache, and whether it fit would depend on the memory other processes hold
        at that moment."""
        sub = LeastSquaresProblem(self.X, self.Y, self.gate, self.score, self.expert, self.k,
                                  self.backend, sets, self.gram_dtype)
        sub._features, sub._features_checked = self._features, self._features_checked
        return sub

    def _gram_features(self) -> torch.Tensor | None:
        if not self._features_checked:
            self._features_checked = True
            # kept in the products' precision: a float32 Gram halves the cache
            dtype = gram.product_dtype(self.gram_dtype, self.X.dtype)
            if gram.applies(self.score) and gram.cache_fits(self.X, dtype):
                self._features = gram.feature_pairs(self.X, dtype)
        return self._features

    def data(self, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``X: (B, n, d)``, ``Y: (B, n)`` of the problems ``rows`` (all when None), for the
        solvers that do not go through the kernels (a copy where problems share data)."""
        if self.data_rows is not None:
            rows = self.data_rows if rows is None else self.data_rows[rows]
        if rows is None:
            return self.X, self.Y
        return self.X[rows], self.Y[rows]

    def loss(self, theta: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Sum of squared residuals: (B,) or (len(rows),)."""
        return self.evaluate(theta, rows, jacobian=False).loss
