"""Predicted convergence rates (docs/theory.md#theory-table), each with its source.

An exponent e means ``loss ~ n^e``: -0.5 is parametric, -0.25 the over-specified rate of strongly
identifiable experts, and 0.0 stands for "slower than any polynomial" (labelled so). Sources
are cited by the keys of docs/bibliography.md (``N24 Thm 4``, ``Y25``, ``White 1982``); the rows
and their reasons are those of docs/theory.md#theory-table.
"""

from __future__ import annotations

from dataclasses import dataclass

from moe_theory import models
from moe_theory.voronoi import has_matched_gauge, parameter_error_parts


@dataclass(frozen=True)
class TheoryRate:
    exponent: float | None
    label: str
    source: str


PARAMETRIC = -0.5
FOURTH_ROOT = -0.25  # over-specified atoms of strongly identifiable experts
SLOWER_THAN_POLYNOMIAL = 0.0


def _rate(exponent: float | None, source: str, label: str | None = None) -> TheoryRate:
    if label is None:
        label = {PARAMETRIC: "n^-1/2", FOURTH_ROOT: "n^-1/4",
                 SLOWER_THAN_POLYNOMIAL: "slower than any polynomial"}.get(exponent, "none")
    return TheoryRate(exponent, label, source)


NO_THEORY = TheoryRate(None, "no prediction", "")


def predicted_rate(fit_gate: str, score: str, regime: str, expert: str, loss_name: str,
                   reference: str | None = None) -> TheoryRate:
    """The theory's exponent for one curve.

    ``reference`` is ``G*`` or ``G_bar`` when known; by default a sigmoid fit in the dense regime
    is measured against ``G_bar`` and everything else against ``G*``.
    """
    models.check_gate(fit_gate)
    models.check_score(score)
    parts = parameter_error_parts(loss_name)
    group = parts[0] if parts is not None else None
    if (group == "beta1" and not models.score_has_linear(score)) or (
            group == "A" and not models.score_has_quadratic(score)):
        return NO_THEORY  # the score has no such parameter
    if loss_name == "D1_matched" and not has_matched_gauge(fit_gate, score):
        return NO_THEORY  # undefined there (moe_theory.voronoi.voronoi_loss gives NaN)
    strong = models.get_expert(expert).strongly_identifiable
    quadratic = score != "linear"
    if reference is None:
        reference = "G_bar" if (fit_gate == "sigmoid" and regime == "dense") else "G*"

    if fit_gate == "sigmoid":
        if reference == "G_bar":
            # N24 Thm 4 (strongly identifiable) / Thm 5 (linear): D3 ~ n^-1/2, first order in
            # every parameter, so each parameter group too. Y25 extends it to quadratic scores,
            # where weakly identifiable experts keep the parametric rate (reconstruction).
            src = "Y25 (reconstruction)" if quadratic else ("N24 Thm 4" if strong else "N24 Thm 5")
            if loss_name == "D3" or parts is not None:
                return _rate(PARAMETRIC, src)
            return NO_THEORY
        src = "Y25 (reconstruction)" if quadratic else ("N24 Thm 2" if strong else "N24 Thm 3")
        if not strong:
            # N24 Thm 3: in the sparse regime, linear experts admit no polynomial rate
            if loss_name in ("D1", "D2") or parts is not None:
                return _rate(SLOWER_THAN_POLYNOMIAL, src)
            return NO_THEORY
        if loss_name == "D1":
            return _rate(PARAMETRIC, src)
        if parts is not None:
            return _rate(PARAMETRIC if parts[1] == "exact" else FOURTH_ROOT, src)
        return NO_THEORY

    # softmax fits (N24 Table 1, after N24b; A24 for quadratic: docs/bibliography.md)
    if reference == "G_bar":
        if quadratic and (loss_name == "D3" or parts is not None):
            # A softmax fit of a sigmoid truth is misspecified; least squares then converges at
            # n^-1/2 to the L2 projection G_bar when that is unique with a non-singular Hessian
            # (White 1982), the argument of N24 Thm 4/5 for the sigmoid fit. Not in A24 or Y25
            # (docs/theory.md#theory-table, last row).
            return _rate(PARAMETRIC, "misspecified LSE, White 1982 (reconstruction)")
        return NO_THEORY
    # A24 (as cited by Y25): quadratic polynomial gate + linear experts is slower than any
    # polynomial; its monomial-gate result was not available, and with linear experts the two
    # copies of an over-specified atom share one gate and can trade expert parameters exactly
    # (e^{b_1} h_1 + e^{b_2} h_2 = e^{b*} h*), so the same label is kept for both scores
    src = "A24 (reconstruction)" if quadratic else "N24 Table 1"
    # D1 in the gauge matched to G* (docs/theory.md#identified-losses) gets D1's rate, marked a
    # reconstruction: the sources bound D1 of a fit written in a fixed gauge
    d1 = loss_name in ("D1", "D1_matched")
    if loss_name == "D1_matched":
        src += " (matched gauge: reconstruction)"
    if not strong:
        if d1 or loss_name == "D2" or parts is not None:
            return _rate(SLOWER_THAN_POLYNOMIAL, src, "~1/log n")
        return NO_THEORY
    if d1:
        return _rate(PARAMETRIC, src)
    if parts is not None:
        return _rate(PARAMETRIC if parts[1] == "exact" else FOURTH_ROOT, src)
    return NO_THEORY


predicted_rate.accepts_reference = True  # type: ignore[attr-defined]


def theory_table() -> list[dict]:
    """Every (fit gate, score, regime, expert class, loss) with its predicted rate."""
    from moe_theory.voronoi import ALL_KINDS

    rows = []
    for fit_gate in models.GATES:
        for score in models.SCORES:
            for regime in ("sparse", "dense"):
                for expert in ("relu", "gelu", "tanh", "linear", "poly2", "constant"):
                    for loss in ALL_KINDS:
                        rate = predicted_rate(fit_gate, score, regime, expert, loss)
                        if rate.exponent is not None:
                            rows.append({"fit_gate": fit_gate, "score": score, "regime": regime,
                                         "expert": expert, "loss_name": loss,
                                         "exponent": rate.exponent, "label": rate.label,
                                         "source": rate.source})
    return rows
