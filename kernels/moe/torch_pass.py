"""PyTorch reference for the batched MoE least-squares pass (docs/kernels.md#moe-pass).

This is the test oracle for the Triton kernels and the CPU path of the estimator. One call streams
the data of R independent problems in sample chunks and returns, per problem, the sum of squared
residuals and, on request, the Gauss-Newton blocks ``J^T J`` and ``J^T r``, where ``J`` is the
Jacobian of ``f_G`` with respect to the packed free parameters and ``r = y - f_G(x)``. The gradient
of the loss is ``-2 J^T r``. ``J`` itself exists only one chunk at a time.

Free-parameter layout ``theta: (R, p)`` (shared with the estimators and kernels):
``[gate params of atoms 0..k_free-1 (k_free*pg), expert params of atoms 0..k-1 (k*pe)]``, where
``k_free = k - 1`` for softmax (the last atom's score is pinned to zero) and ``k`` for sigmoid.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from kernels.moe import gram
from kernels.moe.model import (
    Expert,
    expert_features,
    gate_probabilities,
    n_free_gates,
    score_features,
)

#: Bytes a chunk of the Jacobian may take; n = 10^6 samples then costs no more memory than 10^3.
#: On a CPU per problem and small, on a GPU for the batch and large (as ``gram.CHUNK_BYTES``,
#: which says why), with the same floor of samples (``gram.MIN_CHUNK_SAMPLES``).
JACOBIAN_CHUNK_BYTES = {"cpu": 128 * 2**10, "cuda": 2 * 2**30}


class MoEPass(NamedTuple):
    """Per-problem outputs: ``loss (R,)``, ``jtr (R, p)``, ``jtj (R, p, p)`` (or None)."""

    loss: torch.Tensor
    jtr: torch.Tensor | None
    jtj: torch.Tensor | None


def check_batch(X: torch.Tensor, rows: torch.Tensor | None = None, *, check_rows: bool = True,
                rows_name: str = "rows") -> None:
    """A pass's batch: ``X (R, n, d)`` with at least one data set and one sample, and ``rows``
    (when given) a non-empty 1-D int64 tensor on X's device whose entries index X's data sets.

    The reference and the Triton pass both call this, so that they refuse the same inputs with
    the same message: an empty batch has no pass to make (the reference used to fail deep in a
    reshape for R = 0 and return zeros for n = 0, the kernels refused both), and a ``rows`` entry
    outside ``0 .. R - 1`` makes the Triton kernels read another tensor's memory (negative entries
    wrap round in the reference's gathers: another data set's samples).

    ``check_rows=False`` skips the range check, which reads the smallest and largest entry back
    to the host (on a GPU a synchronisation): for a caller whose rows are in range by
    construction (``moe_theory.estimators.problem.LeastSquaresProblem`` checks its ``data_rows``
    once when it is made, not in every pass of a fit). ``rows_name``: the field named in the
    message.
    """
    if not isinstance(X, torch.Tensor) or X.dim() != 3:
        shape = tuple(X.shape) if isinstance(X, torch.Tensor) else type(X).__name__
        raise ValueError(f"X: must have shape (R, n, d), got {shape}")
    if X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"X: needs at least one problem (R >= 1) and one sample (n >= 1), "
                         f"got shape {tuple(X.shape)}")
    if rows is None:
        return
    if (not isinstance(rows, torch.Tensor) or rows.dim() != 1 or rows.dtype != torch.int64
            or rows.device != X.device):
        got = (f"{tuple(rows.shape)} {rows.dtype} on {rows.device}"
               if isinstance(rows, torch.Tensor) else type(rows).__name__)
        raise ValueError(f"{rows_name}: must be a 1-D int64 tensor on {X.device}, got {got}")
    if rows.numel() < 1:
        raise ValueError(f"{rows_name}: needs at least one problem, got an empty tensor")
    if check_rows:
        lo, hi = (int(v) for v in torch.aminmax(rows))
        if lo < 0 or hi >= X.shape[0]:
            raise ValueError(f"{rows_name}: entries must index X's {X.shape[0]} data sets "
                             f"(0 <= {rows_name} < {X.shape[0]}), got entries from {lo} to {hi}")


def _chunk_size(R: int, p: int, itemsize: int, n: int, device: torch.device) -> int:
    budget = JACOBIAN_CHUNK_BYTES.get(device.type, JACOBIAN_CHUNK_BYTES["cpu"])
    return gram.chunk_samples(budget, R, 4 * p * itemsize, n, device)


def _chunk_terms(Xc, gate_params, expert_params, gate, score, expert: Expert):
    """Features, gate values, expert values and ``f`` on one chunk of samples."""
    Fg = score_features(Xc, score)
    Fe = expert_features(Xc, expert)
    scores = torch.einsum("rnq,rkq->rnk", Fg, gate_params)
    z = torch.einsum("rnq,rkq->rnk", Fe, expert_params)
    pi = gate_probabilities(scores, gate)
    h, dh = expert.value_and_derivative(z)
    f = (pi * h).sum(-1)
    return Fg, Fe, pi, h, dh, f


def _coefficients(pi, h, dh, f, gate: str):
    """``df/ds`` and ``df/dz`` per atom: every Jacobian column is one of them times a feature."""
    if gate == "softmax":
        # d pi_i / d s_j = pi_i (delta_ij - pi_j)  =>  df/ds_i = pi_i (h_i - f)
        df_ds = pi * (h - f[..., None])
    else:
        df_ds = pi * (1 - pi) * h
    return df_ds, pi * dh


def jacobian_coefficients(X, gate_params, expert_params, *, gate: str, score: str,
                          expert: Expert) -> torch.Tensor:
    """``U (R, k_free + k, n)``: ``df/ds`` of the free gates, then ``df/dz`` (what the Triton
    gradient kernel writes for the Gram kernel)."""
    *_, pi, h, dh, f = _chunk_terms(X, gate_params, expert_params, gate, score, expert)
    df_ds, df_dz = _coefficients(pi, h, dh, f, gate)
    k_free = n_free_gates(gate, gate_params.shape[1])
    return torch.cat([df_ds[..., :k_free], df_dz], dim=-1).transpose(1, 2).contiguous()


def jacobian_chunk(Xc, gate_params, expert_params, gate, score, expert: Expert):
    """``f`` and the Jacobian of ``f`` w.r.t. the free parameters on a chunk: ``(R, c), (R, c, p)``."""
    Fg, Fe, pi, h, dh, f = _chunk_terms(Xc, gate_params, expert_params, gate, score, expert)
    df_ds, df_dz = _coefficients(pi, h, dh, f, gate)
    k_free = n_free_gates(gate, gate_params.shape[1])
    R, c = Xc.shape[:2]
    J_gate = (df_ds[..., :k_free, None] * Fg[..., None, :]).reshape(R, c, -1)
    J_expert = (df_dz[..., None] * Fe[..., None, :]).reshape(R, c, -1)
    return f, torch.cat([J_gate, J_expert], dim=-1)


def moe_pass(
    X: torch.Tensor,
    Y: torch.Tensor,
    gate_params: torch.Tensor,
    expert_params: torch.Tensor,
    *,
    gate: str,
    score: str,
    expert: Expert,
    jacobian: bool = True,
    gauss_newton: bool = True,
    structured: bool = True,
    gram_features: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
    gram_dtype: str = "float64",
    check_rows: bool = True,
) -> MoEPass:
    """One pass over the data.

    Parameters
    ----------
    X : (R, n, d)
    Y : (R, n)
    gate_params : (R, k, pg); for softmax the pinned atom's row enters the scores (callers pass
        zeros) but has no Jacobian columns
    expert_params : (R, k, pe)
    jacobian : also return ``J^T r`` (hence the gradient)
    gauss_newton : also return ``J^T J`` (needs ``jacobian``)
    structured : for linear scores, compute ``J^T r`` and ``J^T J`` from the Jacobian's
        coefficients (``kernels/moe/gram.py``, a quarter of the products); False: from explicit
        chunks of ``J`` (the oracle the tests hold both routes to)
    gram_features : :func:`kernels.moe.gram.feature_pairs` of X for the structured route, if the
        caller keeps it across passes
    rows : evaluate the problems ``X[rows]`` only (the parameters then have ``len(rows)`` rows);
        their samples are gathered one chunk at a time, so that a subset of many problems sharing
        few data sets (several starts per replication) never copies ``X`` whole
    gram_dtype : precision of the Gram products of ``J^T J`` on the structured route
        (:data:`kernels.moe.gram.GRAM_DTYPES`); loss and ``J^T r`` keep X's dtype
    check_rows : check that every entry of ``rows`` indexes a data set of X (one host
        synchronisation on a GPU); False for a caller whose rows are in range by construction
        (:func:`check_batch`)

    An empty batch (no problem, no sample, or empty ``rows``) raises a ``ValueError`` naming the
    field, as the Triton pass does.

    Every intermediate is bounded by :data:`JACOBIAN_CHUNK_BYTES` (and the Gram route's
    :data:`kernels.moe.gram.CHUNK_BYTES`) whatever n: only the data, the kept feature pairs and
    the outputs grow with it.
    """
    check_batch(X, rows, check_rows=check_rows)
    R, n, _ = X.shape
    if rows is not None:
        R = rows.numel()
    k = gate_params.shape[1]
    if jacobian and gauss_newton and structured and gram.applies(score):
        return _gram_pass(X, Y, gate_params, expert_params, gate=gate, score=score, expert=expert,
                          V=gram_features, rows=rows, gram_dtype=gram_dtype)
    p = n_free_gates(gate, k) * gate_params.shape[2] + k * expert_params.shape[2]
    loss = X.new_zeros(R)
    jtr = X.new_zeros(R, p) if jacobian else None
    jtj = X.new_zeros(R, p, p) if jacobian and gauss_newton else None
    step = _chunk_size(R, p if jacobian else k * 4, X.element_size(), n, X.device)
    for start in range(0, n, step):
        Xc, Yc = _chunk(X, Y, rows, start, start + step)
        if jacobian:
            f, J = jacobian_chunk(Xc, gate_params, expert_params, gate, score, expert)
            r = Yc - f
            jtr += torch.einsum("rnp,rn->rp", J, r)
            if jtj is not None:
                jtj += J.transpose(1, 2) @ J
        else:
            r = Yc - _chunk_terms(Xc, gate_params, expert_params, gate, score, expert)[-1]
        loss += (r * r).sum(-1)
    return MoEPass(loss, jtr, jtj)


def _chunk(X: torch.Tensor, Y: torch.Tensor, rows: torch.Tensor | None, start: int, stop: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples ``start:stop`` of the problems ``rows`` (all when None): views, or a chunk's copy."""
    if rows is None:
        return X[:, start:stop], Y[:, start:stop]
    return X[rows, start:stop], Y[rows, start:stop]


def _gram_pass(X, Y, gate_params, expert_params, *, gate: str, score: str, expert: Expert,
               V: torch.Tensor | None = None, rows: torch.Tensor | None = None,
               gram_dtype: str = "float64") -> MoEPass:
    """Loss, ``J^T r`` and ``J^T J`` from the coefficients ``U (R, m, c)`` of each sample chunk
    (linear scores): each chunk's ``W^T V`` is added as soon as its ``U`` exists, so no array
    has n columns (at n = 10^7 and 100 problems U alone would take 144 GB)."""
    _, n, d = X.shape
    R, k = gate_params.shape[:2]
    k_free = n_free_gates(gate, k)
    tab = gram.tables(gate, expert.name, d, k)
    loss = X.new_zeros(R)
    jtr = X.new_zeros(R, tab.m, d + 1)
    acc = X.new_zeros(R, tab.A, tab.Q)
    step = _chunk_size(R, tab.m + d, X.element_size(), n, X.device)
    # planned once per pass: the plan costs a host synchronisation
    plan = None if rows is None else gram.row_plan(rows, X.shape[0])
    for start in range(0, n, step):
        Xc, Yc = _chunk(X, Y, rows, start, start + step)
        *_, pi, h, dh, f = _chunk_terms(Xc, gate_params, expert_params, gate, score, expert)
        df_ds, df_dz = _coefficients(pi, h, dh, f, gate)
        Uc = torch.cat([df_ds[..., :k_free], df_dz], dim=-1)  # (R, c, m)
        r = Yc - f
        loss += (r * r).sum(-1)
        jtr += torch.einsum("rcm,rcf->rmf", Uc * r[..., None], gram.with_constant(Xc))
        gram.accumulate_gram(acc, Uc.transpose(1, 2), X, start, V=V, rows=rows,
                             gram_dtype=gram_dtype, plan=plan)
    jtj = gram.gather_jtj(acc, gate=gate, expert=expert.name, d=d, k=k)
    jtr_index = gram.device_tables(gate, expert.name, d, k, X.device)[3]
    return MoEPass(loss, jtr.reshape(R, -1)[:, jtr_index], jtj)
