"""Regularity of attention (R25; docs/theory.md#regularity): the local Lipschitz constant of ``X -> Attn(X)``.

The local Lipschitz constant at a sequence ``X`` (N tokens of dimension d) is the spectral norm of
the Jacobian of the map, estimated by power iteration on ``J^T J`` with forward- and reverse-mode
products (:func:`torch.func.jvp`, :func:`torch.func.vjp`) through the attention kernels' dense
float64 reference. A local constant at random inputs is a lower bound for the Lipschitz constant
over a ball of inputs, never an upper one.

What R25 (Ramapuram et al., ICLR 2025) bound, as far as we reconstruct it (the body of the paper
was not available): for tokens of norm at most ``R``, the Lipschitz constant of sigmoid attention
is bounded by a quantity polynomial in ``R`` (through ``sigma' <= 1/4``) that grows with the
sequence length N, linearly for a fixed bias; softmax attention's known bounds grow faster in
``R``. :func:`sigmoid_local_bound` is a bound of that form that we derive here (docstring), so
that the data can be checked against a bound that certainly holds. The study that draws the
figure: :mod:`moe_theory.studies.attention_regularity`.
"""

from __future__ import annotations

import math

import torch

from kernels.attention.torch_attention import sigmoid_attention_reference
from moe_theory import models
from moe_theory.attention_moe import check_projections
from moe_theory.validation import check_finite, check_positive_int


def attention_map(X: torch.Tensor, W_Q: torch.Tensor, W_K: torch.Tensor, W_V: torch.Tensor, *,
                  gate: str, bias: float, scale: float) -> torch.Tensor:
    """Single-head attention of a batch of sequences, ``X: (B, N, d) -> (B, N, D)``.

    ``W_V`` is zero-padded to the head dimension D of ``W_Q`` when narrower.
    """
    D = W_Q.shape[1]
    V = torch.nn.functional.pad(W_V, (0, D - W_V.shape[1]))
    q, k, v = ((X @ W)[:, None] for W in (W_Q, W_K, V))
    return sigmoid_attention_reference(q, k, v, bias=bias, scale=scale, gate=gate)[:, 0]


def local_lipschitz(X: torch.Tensor, W_Q: torch.Tensor, W_K: torch.Tensor, W_V: torch.Tensor, *,
                    gate: str = "sigmoid", bias: float | None = None, scale: float | None = None,
                    iters: int = 200, rtol: float = 1e-7, seed: int = 0) -> torch.Tensor:
    """Spectral norm of the Jacobian of attention at each sequence, by power iteration.

    Parameters
    ----------
    X : (B, N, d) sequences (the Jacobian of the batched map is block-diagonal, so the B power
        iterations run side by side, each normalised on its own)
    W_Q, W_K : (d, D), W_V : (d, D_v)
    gate : ``sigmoid`` or ``softmax``
    bias : logit bias, ``-log N`` when None; scale : ``1/sqrt(D)`` when None
    iters : at most this many products with ``J^T J``
    rtol : stop once every Rayleigh quotient changes by less than this, relatively

    Returns
    -------
    (B,) local Lipschitz constants (Euclidean norms on ``vec(X)`` and ``vec(Attn(X))``)
    """
    models.check_gate(gate)
    _, D = check_projections(W_Q, W_K, W_V)
    if not isinstance(X, torch.Tensor) or X.dim() != 3 or X.shape[1] < 1:
        shape = tuple(X.shape) if isinstance(X, torch.Tensor) else type(X).__name__
        raise ValueError(f"X: must have shape (B, N, d) with N >= 1, got {shape}")
    check_finite("X", X)
    iters = check_positive_int("iters", iters)
    N = X.shape[1]
    bias = -math.log(N) if bias is None else float(bias)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)

    def f(Z: torch.Tensor) -> torch.Tensor:
        return attention_map(Z, W_Q, W_K, W_V, gate=gate, bias=bias, scale=scale)

    _, vjp = torch.func.vjp(f, X)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(X.shape, generator=gen, dtype=X.dtype).to(X.device)
    v = v / v.flatten(1).norm(dim=1).view(-1, 1, 1)
    rayleigh = torch.zeros(X.shape[0], dtype=X.dtype, device=X.device)
    for _ in range(iters):
        _, Jv = torch.func.jvp(f, (X,), (v,))
        (JtJv,) = vjp(Jv)
        new = (v * JtJv).flatten(1).sum(1)
        v = JtJv / JtJv.flatten(1).norm(dim=1).clamp_min(torch.finfo(X.dtype).tiny).view(-1, 1, 1)
        done = bool(((new - rayleigh).abs() <= rtol * new.abs()).all())
        rayleigh = new
        if done:
            break
    return rayleigh.clamp_min(0).sqrt()


def sigmoid_local_bound(X: torch.Tensor, W_Q: torch.Tensor, W_K: torch.Tensor,
                        W_V: torch.Tensor, *, bias: float, scale: float | None = None
                        ) -> torch.Tensor:
    """An upper bound on the local Lipschitz constant of sigmoid attention at each sequence.

    With ``A = scale W_Q W_K^T``, ``S = sigma(X A X^T + b)``, ``S' = sigma'(X A X^T + b)`` and
    ``R = max_i ||x_i||``, differentiating ``o_i = sum_j S_ij W_V^T x_j`` along ``H`` gives
    ``||do_i|| <= ||W_V|| (sum_j S_ij ||h_j|| + ||A|| R^2 (||h_i|| sum_j S'_ij + sum_j S'_ij ||h_j||))``
    and, since S and S' are entrywise non-negative,

        ``L(X) <= ||W_V|| (||S|| + ||A|| R^2 (max_i sum_j S'_ij + ||S'||))`` (spectral norms).

    Over a ball (``S <= sigma(||A|| R^2 + b)``, ``S' <= 1/4``) this is at most
    ``||W_V|| N (sigma(||A|| R^2 + b) + ||A|| R^2 / 2)``: linear in N for a fixed bias and
    quadratic in R, the shape of R25's bound (reconstruction). With ``b = -log N`` the weights
    are ``O(1/N)`` and the local bound stays bounded in N.

    Parameters
    ----------
    X : (B, N, d); W_Q, W_K : (d, D); W_V : (d, D_v)

    Returns
    -------
    (B,)
    """
    _, D = check_projections(W_Q, W_K, W_V)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    A = scale * W_Q @ W_K.T
    logits = X @ A @ X.transpose(1, 2) + bias
    S = torch.sigmoid(logits)
    S_prime = S * (1 - S)
    R = X.norm(dim=-1).amax(-1)
    spectral = torch.linalg.matrix_norm
    return spectral(W_V, ord=2) * (
        spectral(S, ord=2) + spectral(A, ord=2) * R**2
        * (S_prime.sum(-1).amax(-1) + spectral(S_prime, ord=2)))
