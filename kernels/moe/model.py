"""The mixture-of-experts vocabulary the kernels compute with: gates, scores, experts, their
feature maps and the regression function (docs/theory.md#gates-scores-and-experts).

This is the one home of these formulas; ``moe_theory.models`` builds on it. Parameters are kept
*packed* per atom, the layout the estimators and kernels share:

- gate parameters ``(R, k, pg)`` = ``[beta0, beta1 (d, if the score has a linear term),
  upper triangle of A (d(d+1)/2, if it has a quadratic term)]``, so that the score is the dot
  product of the gate parameters with :func:`score_features`;
- expert parameters ``(R, k, pe)`` = ``[a (d), b]`` (just ``[b]`` for constant experts), so that
  the expert's pre-activation is the dot product with :func:`expert_features`.

A symmetric ``A`` enters the score as ``x^T A x = sum_{u<=v} c_uv A_uv x_u x_v`` with ``c_uu = 1``
and ``c_uv = 2`` off the diagonal, hence the factor 2 in the quadratic features.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch

GATES = ("sigmoid", "softmax")
SCORES = ("linear", "quadratic", "monomial")
EXPERT_NAMES = ("linear", "relu", "gelu", "tanh", "constant", "poly{p}")

_POLY = re.compile(r"^poly([1-9][0-9]*)$")


def _check_choice(field: str, value: object, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{field}: unknown value {value!r}; allowed: {', '.join(allowed)}")
    return value  # type: ignore[return-value]


def check_gate(gate: str) -> str:
    return _check_choice("gate", gate, GATES)


def check_score(score: str) -> str:
    return _check_choice("score", score, SCORES)


def check_expert(name: str) -> str:
    """``name`` if it names an expert (``poly{p}`` for any ``p >= 1``), else a ValueError."""
    if not isinstance(name, str) or not (name in EXPERT_NAMES[:-1] or _POLY.match(name)):
        raise ValueError(
            f"expert: unknown value {name!r}; allowed: {', '.join(EXPERT_NAMES)} (p >= 1)"
        )
    return name


def score_has_linear(score: str) -> bool:
    return check_score(score) in ("linear", "quadratic")


def score_has_quadratic(score: str) -> bool:
    return check_score(score) in ("quadratic", "monomial")


def n_triu(d: int) -> int:
    return d * (d + 1) // 2


def gate_dim(score: str, d: int) -> int:
    """Number of gate parameters per atom, ``pg``."""
    return 1 + (d if score_has_linear(score) else 0) + (n_triu(d) if score_has_quadratic(score) else 0)


def n_free_gates(gate: str, k: int) -> int:
    """Atoms whose gate parameters are free: softmax pins the last atom's score at zero."""
    return k - 1 if check_gate(gate) == "softmax" else k


@dataclass(frozen=True)
class Expert:
    """An expert ``h(x; a, b) = act(a^T x + b)``; ``constant`` is ``h = b``."""

    name: str

    @property
    def power(self) -> int | None:
        m = _POLY.match(self.name)
        return int(m.group(1)) if m else None

    @property
    def has_slope(self) -> bool:
        return self.name != "constant"

    def dim(self, d: int) -> int:
        """Number of expert parameters per atom, ``pe``."""
        return d + 1 if self.has_slope else 1

    def value_and_derivative(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``h(z)`` and ``h'(z)`` of the activation, elementwise."""
        name = self.name
        if name in ("linear", "constant"):
            return z, torch.ones_like(z)
        if name == "relu":
            return torch.relu(z), (z > 0).to(z.dtype)
        if name == "tanh":
            t = torch.tanh(z)
            return t, 1 - t * t
        if name == "gelu":
            # exact (erf) GELU: h = z Phi(z), h' = Phi(z) + z phi(z)
            cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2.0)))
            pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
            return z * cdf, cdf + z * pdf
        p = self.power
        return z**p, p * z ** (p - 1)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.value_and_derivative(z)[0]


def triu_indices(d: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(torch.triu_indices(d, d, device=device))  # type: ignore[return-value]


def quadratic_features(X: torch.Tensor) -> torch.Tensor:
    """``phi(x)_uv = c_uv x_u x_v`` over the upper triangle: ``X: (..., d) -> (..., d(d+1)/2)``."""
    d = X.shape[-1]
    iu, ju = triu_indices(d, X.device)
    weight = torch.where(iu == ju, 1.0, 2.0).to(X.dtype)
    return X[..., iu] * X[..., ju] * weight


def score_features(X: torch.Tensor, score: str) -> torch.Tensor:
    """Features whose dot product with an atom's gate parameters is its score.

    ``X: (..., d) -> (..., pg)``.
    """
    parts = [torch.ones_like(X[..., :1])]
    if score_has_linear(score):
        parts.append(X)
    if score_has_quadratic(score):
        parts.append(quadratic_features(X))
    return torch.cat(parts, dim=-1)


def expert_features(X: torch.Tensor, expert: Expert) -> torch.Tensor:
    """``[x, 1]`` (or ``[1]`` for constant experts): ``X: (..., d) -> (..., pe)``."""
    ones = torch.ones_like(X[..., :1])
    return torch.cat([X, ones], dim=-1) if expert.has_slope else ones


def gate_probabilities(scores: torch.Tensor, gate: str) -> torch.Tensor:
    """Gate values ``pi: (..., k)`` from scores ``(..., k)``.

    Softmax normalises over the atoms; sigmoid gates each atom on its own (no competition).
    """
    if check_gate(gate) == "softmax":
        return torch.softmax(scores, dim=-1)
    return torch.sigmoid(scores)


def regression_function(
    X: torch.Tensor,
    gate_params: torch.Tensor,
    expert_params: torch.Tensor,
    *,
    gate: str,
    score: str,
    expert: Expert,
) -> torch.Tensor:
    """``f_G(x) = sum_i pi_i(x) h(x; eta_i)`` (docs/theory.md#regression-model).

    Parameters
    ----------
    X : (R, n, d)
    gate_params : (R, k, pg)
    expert_params : (R, k, pe)

    Returns
    -------
    (R, n)
    """
    scores = torch.einsum("rnq,rkq->rnk", score_features(X, score), gate_params)
    z = torch.einsum("rnq,rkq->rnk", expert_features(X, expert), expert_params)
    return (gate_probabilities(scores, gate) * expert(z)).sum(-1)


__all__ = [
    "EXPERT_NAMES", "GATES", "SCORES", "Expert", "check_expert", "check_gate", "check_score",
    "expert_features", "gate_dim", "gate_probabilities", "n_free_gates", "n_triu",
    "quadratic_features", "regression_function", "score_features", "score_has_linear",
    "score_has_quadratic", "triu_indices",
]
