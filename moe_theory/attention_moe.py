"""Single-head self-attention written as a quadratic-gating mixture of experts
(A24; docs/theory.md#attention-rows-as-moe).

With ``x_bar = vec(X)`` the ``N d`` concatenated tokens of a sequence ``X`` (N x d) and ``E_j`` the
``d x Nd`` selector with ``E_j x_bar = x_j``, row ``i`` of attention is

    ``o_i = sum_j gate(x_bar^T M_ij x_bar + b) * (W_V^T E_j x_bar)``,
    ``M_ij = E_i^T W_Q W_K^T E_j * scale``,

an MoE over ``x_bar`` with N atoms ``j``: quadratic gating scores (a quadratic form plus a
constant, the *monomial* score of docs/theory.md#gates-scores-and-experts) and linear experts
``W_V^T E_j``. The sigmoid gate acts on each score alone; softmax normalises the N scores of a row
(the constant ``b`` then cancels).
Each output coordinate of a row is therefore one scalar :class:`~moe_theory.measure.MixingMeasure`
of the package, which :meth:`AttentionMoE.row_measure` builds, so the identity can be checked
against the package's own regression function as well as against the attention reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kernels.attention.torch_attention import sigmoid_attention_reference
from moe_theory import models
from moe_theory.measure import MixingMeasure
from moe_theory.validation import check_finite, check_positive_int


@dataclass(frozen=True)
class AttentionMoE:
    """N quadratic-gating MoEs over ``x_bar = vec(X)``, one per query row.

    Attributes
    ----------
    gate : ``sigmoid`` or ``softmax``
    N : sequence length
    d : token dimension
    M : (N, N, N d, N d) gate forms ``M_ij`` (not symmetric; only their symmetric part acts)
    experts : (N, D_v, N d) expert matrices ``W_V^T E_j``
    bias : the constant of every score
    """

    gate: str
    N: int
    d: int
    M: torch.Tensor
    experts: torch.Tensor
    bias: float

    @property
    def d_out(self) -> int:
        return self.experts.shape[1]

    def scores(self, x_bar: torch.Tensor) -> torch.Tensor:
        """``x_bar^T M_ij x_bar + b``: ``x_bar: (R, N d) -> (R, N, N)`` (rows i, atoms j)."""
        return torch.einsum("rp,ijpq,rq->rij", x_bar, self.M.to(x_bar), x_bar) + self.bias

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        """Row outputs of every sequence: ``X: (R, N, d) -> (R, N, D_v)``."""
        x_bar = self._flatten(X)
        weights = models.gate_probabilities(self.scores(x_bar), self.gate)  # (R, i, j)
        expert_out = torch.einsum("jcp,rp->rjc", self.experts.to(x_bar), x_bar)  # (R, j, D_v)
        return torch.einsum("rij,rjc->ric", weights, expert_out)

    def row_measure(self, i: int, c: int) -> MixingMeasure:
        """Output coordinate ``c`` of row ``i`` as a package mixing measure (R = 1).

        Score ``monomial`` (``x_bar^T A_j x_bar + beta0_j`` with ``A_j = sym(M_ij)``,
        ``beta0_j = b``), expert ``linear`` with ``a_j = E_j^T W_V[:, c]``, ``b_j = 0``, over
        ``d = N d_token`` inputs and N atoms.
        """
        if not 0 <= i < self.N:
            raise ValueError(f"i: row index must be in [0, {self.N - 1}], got {i}")
        if not 0 <= c < self.d_out:
            raise ValueError(f"c: output coordinate must be in [0, {self.d_out - 1}], got {c}")
        M = self.M[i]  # (j, p, q)
        p = M.shape[-1]
        return MixingMeasure.from_parts(
            gate=self.gate, score="monomial", expert="linear", d=p,
            beta0=torch.full((1, self.N), float(self.bias), dtype=M.dtype),
            A=0.5 * (M + M.transpose(-1, -2))[None],
            a=self.experts[:, c, :][None], b=M.new_zeros(1, self.N),
        )

    def _flatten(self, X: torch.Tensor) -> torch.Tensor:
        if not isinstance(X, torch.Tensor) or X.dim() != 3 or tuple(X.shape[1:]) != (self.N, self.d):
            shape = tuple(X.shape) if isinstance(X, torch.Tensor) else type(X).__name__
            raise ValueError(f"X: must have shape (R, N, d) = (R, {self.N}, {self.d}), got {shape}")
        check_finite("X", X)
        return X.reshape(X.shape[0], self.N * self.d)


def check_projections(W_Q: torch.Tensor, W_K: torch.Tensor, W_V: torch.Tensor) -> tuple[int, int]:
    """Check ``W_Q, W_K: (d, D)`` and ``W_V: (d, D_v)``; return ``(d, D)``."""
    for name, W in (("W_Q", W_Q), ("W_K", W_K), ("W_V", W_V)):
        if not isinstance(W, torch.Tensor) or W.dim() != 2:
            shape = tuple(W.shape) if isinstance(W, torch.Tensor) else type(W).__name__
            raise ValueError(f"{name}: must be a matrix (d, D), got {shape}")
        check_finite(name, W)
    if W_Q.shape != W_K.shape:
        raise ValueError(f"W_K: must have the shape of W_Q {tuple(W_Q.shape)}, got {tuple(W_K.shape)}")
    if W_V.shape[0] != W_Q.shape[0]:
        raise ValueError(f"W_V: must have d = {W_Q.shape[0]} rows like W_Q, got {W_V.shape[0]}")
    return W_Q.shape[0], W_Q.shape[1]


def default_bias(N: int) -> float:
    """R25's sigmoid-attention bias ``-log N`` (the attention kernel's default too)."""
    return -math.log(N)


def attention_as_moe(
    W_Q: torch.Tensor,
    W_K: torch.Tensor,
    W_V: torch.Tensor,
    N: int,
    *,
    gate: str = "sigmoid",
    bias: float | None = None,
    scale: float | None = None,
) -> AttentionMoE:
    """The quadratic-gating MoE of single-head attention on sequences of length N
    (docs/theory.md#attention-rows-as-moe).

    Parameters
    ----------
    W_Q, W_K : (d, D) query and key projections
    W_V : (d, D_v) value projection
    N : sequence length (number of tokens; the number of experts of each row)
    gate : ``sigmoid`` (elementwise) or ``softmax`` (normalised over the N keys of a row)
    bias : constant added to every score; ``-log N`` when None (R25; cancels under softmax)
    scale : logit scale; ``1 / sqrt(D)`` when None, as in the attention kernel

    Returns
    -------
    AttentionMoE
    """
    models.check_gate(gate)
    N = check_positive_int("N", N)
    d, D = check_projections(W_Q, W_K, W_V)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    bias = default_bias(N) if bias is None else float(bias)
    for name, value in (("scale", scale), ("bias", bias)):
        if not math.isfinite(value):
            raise ValueError(f"{name}: must be finite, got {value}")
    eye = torch.eye(N, dtype=W_Q.dtype, device=W_Q.device)
    # E_i^T B E_j is B placed in block (i, j) of an (N d x N d) matrix: kron(e_i e_j^T, B)
    core = (W_Q @ W_K.T) * scale
    units = torch.einsum("ia,jb->ijab", eye, eye)  # e_i e_j^T, (N, N, N, N)
    M = torch.einsum("ijab,uv->ijaubv", units, core).reshape(N, N, N * d, N * d)
    # W_V^T E_j: W_V^T placed in the j-th block column
    experts = torch.einsum("ja,vc->jcav", eye, W_V).reshape(N, W_V.shape[1], N * d)
    return AttentionMoE(gate, N, d, M, experts, bias)


def attention_rows(
    X: torch.Tensor,
    W_Q: torch.Tensor,
    W_K: torch.Tensor,
    W_V: torch.Tensor,
    *,
    gate: str = "sigmoid",
    bias: float | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Single-head attention of sequences by the attention kernels' dense reference.

    ``X: (R, N, d) -> (R, N, D_v)``; ``gate(Q K^T * scale + b) V`` with ``Q = X W_Q``,
    ``K = X W_K``, ``V = X W_V``. ``V`` is zero-padded to the head dimension of ``Q`` and ``K``
    when narrower (the reference needs one D; the padding leaves the output's first ``D_v``
    columns unchanged).
    """
    models.check_gate(gate)
    _, D = check_projections(W_Q, W_K, W_V)
    if not isinstance(X, torch.Tensor) or X.dim() != 3 or X.shape[1] < 1:
        shape = tuple(X.shape) if isinstance(X, torch.Tensor) else type(X).__name__
        raise ValueError(f"X: must have shape (R, N, d) with N >= 1, got {shape}")
    d_v = W_V.shape[1]
    if d_v > D:
        raise ValueError(f"W_V: at most D = {D} columns (the head dimension of W_Q), got {d_v}")
    q, k = (X @ W_Q)[:, None], (X @ W_K)[:, None]
    v = torch.nn.functional.pad(X @ W_V, (0, D - d_v))[:, None]
    N = X.shape[1]
    out = sigmoid_attention_reference(
        q, k, v, bias=default_bias(N) if bias is None else float(bias),
        scale=1.0 / math.sqrt(D) if scale is None else float(scale), gate=gate,
    )
    return out[:, 0, :, :d_v]
