"""The regression function of a mixture of experts: gates, scores and experts
(docs/theory.md#gates-scores-and-experts).

The formulas live in :mod:`kernels.moe.model`, the layer the kernels compute with; this module
names them for the mathematics and adds what only the theory needs (which experts are strongly
identifiable, the mixing weight of an atom). The packed parameter layout is documented there.
"""

from __future__ import annotations

import torch

from kernels.moe import model
from kernels.moe.model import (
    EXPERT_NAMES,
    GATES,
    SCORES,
    check_expert,
    check_gate,
    check_score,
    expert_features,
    gate_dim,
    gate_probabilities,
    n_triu,
    quadratic_features,
    regression_function,
    score_features,
    score_has_linear,
    score_has_quadratic,
    triu_indices,
)

STRONGLY_IDENTIFIABLE = ("relu", "gelu", "tanh")


class Expert(model.Expert):
    """An expert ``h(x; a, b) = act(a^T x + b)``; ``constant`` is ``h = b``."""

    @property
    def strongly_identifiable(self) -> bool:
        return self.name in STRONGLY_IDENTIFIABLE

    @property
    def sign_symmetric(self) -> bool:
        """``h(x; -eta) = h(x; eta)``: even powers, ``(-(a^T x + b))^p = (a^T x + b)^p``. The
        parameters ``eta`` and ``-eta`` are then one expert, and a loss must not tell them apart
        (docs/theory.md#voronoi-losses)."""
        return self.power is not None and self.power % 2 == 0


def get_expert(name: str) -> Expert:
    return Expert(check_expert(name))


def gate_weight(beta0: torch.Tensor, gate: str) -> torch.Tensor:
    """The mixing weight ``w(beta0)`` of an atom: ``exp`` for softmax, ``sigma`` for sigmoid."""
    return torch.exp(beta0) if check_gate(gate) == "softmax" else torch.sigmoid(beta0)


__all__ = [
    "EXPERT_NAMES", "GATES", "SCORES", "STRONGLY_IDENTIFIABLE", "Expert", "check_gate",
    "check_score", "expert_features", "gate_dim", "gate_probabilities", "gate_weight",
    "get_expert", "n_triu", "quadratic_features", "regression_function", "score_features",
    "score_has_linear", "score_has_quadratic", "triu_indices",
]
