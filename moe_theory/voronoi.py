"""Voronoi losses between a fitted and a reference mixing measure (docs/theory.md#voronoi-losses).

Fitted atoms ``i = 1..k`` fall in the Voronoi cell ``A_j`` of their nearest reference atom in the
non-weight parameters ``omega`` (ties to the lowest j). Cells with one fitted atom are *exact*,
cells with more are *over-specified*. Every loss is invariant to permuting atoms and 0 at the
reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from moe_theory.measure import MixingMeasure, check_measure
from moe_theory.models import get_expert, score_has_linear, score_has_quadratic
from moe_theory.validation import check_choice, check_number

if TYPE_CHECKING:  # a setting is read, never built, here
    from moe_theory.settings import Setting

LOSS_KINDS = ("D1", "D2", "D3")
PARAMETER_GROUPS = ("eta", "beta1", "A")
CELL_TYPES = ("exact", "over")
PARAMETER_ERRORS = tuple(f"err_{g}_{c}" for g in PARAMETER_GROUPS for c in CELL_TYPES)


def parameter_error_parts(loss_name: str) -> tuple[str, str] | None:
    """``(group, cell type)`` of a per-parameter error ``err_<group>_<cell>`` (an MoE's, or an
    attention study's ``err_W_over``); None for a Voronoi loss."""
    parts = loss_name.split("_")
    return (parts[1], parts[2]) if len(parts) == 3 and parts[0] == "err" else None

#: losses measured in another gauge than the fit's pinned one (:func:`has_matched_gauge`)
GAUGE_KINDS = ("D1_matched",)
ALL_KINDS = LOSS_KINDS + PARAMETER_ERRORS + GAUGE_KINDS
#: Default exponent r of D2r (N24 Thm 3/4 hold for any r >= 1).
DEFAULT_R = 2.0


@dataclass(frozen=True)
class Cells:
    """The Voronoi partition of R fitted measures w.r.t. their references.

    Attributes
    ----------
    assign : (R, k) index of each fitted atom's cell
    count : (R, k0) number of fitted atoms per cell
    over : (R, k) whether the atom's cell is over-specified
    diff_omega : (R, k, q) ``omega_i - omega*_{A(i)}``
    diff_beta0 : (R, k) ``beta0_i - beta0*_{A(i)}``
    """

    assign: torch.Tensor
    count: torch.Tensor
    over: torch.Tensor
    diff_omega: torch.Tensor
    diff_beta0: torch.Tensor


def _broadcast(fitted: MixingMeasure, reference: MixingMeasure) -> MixingMeasure:
    if (fitted.score, fitted.expert, fitted.d) != (reference.score, reference.expert, reference.d):
        raise ValueError(
            f"reference: is ({reference.score}, {reference.expert}, d={reference.d}) but the fitted "
            f"measure is ({fitted.score}, {fitted.expert}, d={fitted.d})"
        )
    reference = reference.to(device=fitted.gate_params.device, dtype=fitted.gate_params.dtype)
    if reference.R == 1 and fitted.R > 1:
        reference = reference.repeat(fitted.R)
    if reference.R != fitted.R:
        raise ValueError(f"reference: has R = {reference.R}, the fitted measure R = {fitted.R}")
    return reference


def atom_distances(measure: MixingMeasure, omega: torch.Tensor, omega_ref: torch.Tensor):
    """Distances (R, k, k0) between atoms ``omega`` of ``measure``'s kind and atoms
    ``omega_ref``, as Voronoi cells measure them; with, for sign-symmetric experts, where the
    flipped expert is the nearer (``flip``) and the flip's ``signs`` (None otherwise)."""
    dist = torch.cdist(omega, omega_ref)
    if not get_expert(measure.expert).sign_symmetric:
        return dist, None, None
    # eta and -eta are one expert (even powers): measure each atom by the nearer of the two
    # (a distance between experts, not between their parameters), so that two fits of one
    # regression function are not far apart in any loss
    q_eta = measure.expert_params.shape[-1]
    signs = torch.ones(omega.shape[-1], dtype=omega.dtype, device=omega.device)
    signs[-q_eta:] = -1.0
    flipped_dist = torch.cdist(omega * signs, omega_ref)
    flip = flipped_dist < dist
    return torch.where(flip, flipped_dist, dist), flip, signs


def voronoi_cells(fitted: MixingMeasure, reference: MixingMeasure) -> Cells:
    # public (moe_theory.voronoi_cells): a wrong type named, not an AttributeError of its use
    check_measure("fitted", fitted, finite=False)
    check_measure("reference", reference, finite=False)
    reference = _broadcast(fitted, reference)
    omega, omega_ref = fitted.omega, reference.omega
    dist, flip, signs = atom_distances(fitted, omega, omega_ref)
    symmetric = signs is not None
    assign = dist.argmin(-1)  # first minimum: ties go to the lowest j
    k0 = reference.k
    count = torch.nn.functional.one_hot(assign, k0).sum(1)
    over = torch.gather(count, 1, assign) > 1
    if symmetric:
        omega = torch.where(torch.gather(flip, 2, assign[..., None]), omega * signs, omega)
    idx = assign[..., None].expand(-1, -1, omega.shape[-1])
    diff_omega = omega - torch.gather(omega_ref, 1, idx)
    diff_beta0 = fitted.beta0 - torch.gather(reference.beta0, 1, assign)
    return Cells(assign, count, over, diff_omega, diff_beta0)


def _weight_mismatch(fitted, reference, cells: Cells) -> torch.Tensor:
    """``|sum_{i in A_j} w(beta0_i) - w(beta0*_j)|`` per cell: (R, k0)."""
    sums = torch.zeros_like(reference.beta0).scatter_add(1, cells.assign, fitted.weights)
    return (sums - reference.weights).abs()


def voronoi_loss(
    fitted: MixingMeasure, reference: MixingMeasure, kind: str = "D1", *, r: float = DEFAULT_R
) -> torch.Tensor:
    """A Voronoi loss or per-parameter error of each replication: (R,); NaN for a replication
    whose fitted or reference parameters are not all finite.

    Parameters
    ----------
    fitted : R measures with k atoms
    reference : one measure (broadcast) or R of them; ``G*``, or ``G_bar`` for ``D3``
    kind : ``D1`` (N24 Thm 2; gate-weighted for softmax), ``D2`` (D2r of N24 Thm 3/4, exponent
        ``r``), ``D3`` (dense regime, against ``G_bar``), ``err_{eta,beta1,A}_{exact,over}``
        (max over cells of that type of the parameter-group error; NaN without such a cell), or
        ``D1_matched`` (a softmax fit's D1 in the gauge matched to the reference:
        :func:`matched_gauge_d1`; NaN for other gates and scores)
    """
    check_choice("kind", kind, ALL_KINDS)
    # NaN in, NaN out: a diverged fit's losses are NaN (counted as dropped), and a reference
    # may be another fit (two fits compared in D3)
    check_measure("fitted", fitted, finite=False)
    check_measure("reference", reference, finite=False)
    loss = _voronoi_loss(fitted, reference, kind, r)
    # A NaN atom's distances are NaN, argmin puts it in cell 0, and a parameter error reads its
    # own group only: a fit that diverged in beta1 got a finite, wrong err_eta_over
    defined = fitted.finite() & _broadcast(fitted, reference).finite().to(loss.device)
    return torch.where(defined, loss, torch.full_like(loss, float("nan")))


def _voronoi_loss(fitted: MixingMeasure, reference: MixingMeasure, kind: str,
                  r: float) -> torch.Tensor:
    if fitted.gate != reference.gate:
        raise ValueError(
            f"reference: gate {reference.gate!r} differs from the fitted gate {fitted.gate!r}; "
            "a misspecified fit is measured against G_bar of its own gate"
        )
    if kind == "D2":
        check_number("r", r, 1)  # NaN compares false both ways: it passed r < 1
    if kind == "D1_matched":
        if not has_matched_gauge(fitted.gate, fitted.score):
            # undefined, as a parameter error is without its cell
            return torch.full((fitted.R,), float("nan"), dtype=fitted.gate_params.dtype)
        return matched_gauge_d1(fitted, reference)
    reference = _broadcast(fitted, reference)
    cells = voronoi_cells(fitted, reference)
    norm = cells.diff_omega.norm(dim=-1)
    db = cells.diff_beta0.abs()
    over = cells.over

    if kind in PARAMETER_ERRORS:
        return _parameter_error(fitted, cells, kind)
    if kind == "D3":
        # docs/theory.md#voronoi-losses: every cell, first-order in both beta0 and omega
        return (db + norm).sum(-1)

    mismatch = _weight_mismatch(fitted, reference, cells)
    power_over = 2.0 if kind == "D1" else r
    power_exact = 1.0 if kind == "D1" else r
    if fitted.gate == "sigmoid":
        # N24 Thm 2: the weight term counts only cells that are not exactly specified
        weight_term = (mismatch * (cells.count != 1)).sum(-1)
        atom_term = torch.where(over, norm**power_over, db**power_exact + norm**power_exact)
    else:
        # softmax: every cell's weight term; parameter terms weighted by exp(beta0_i)
        weight_term = mismatch.sum(-1)
        location = torch.where(over, norm**power_over, norm**power_exact)
        # an atom at its reference location adds nothing, whatever its weight: exp(beta0) past
        # ~709 is inf, and inf * 0 made the loss NaN (counted as a diverged fit) where its weight
        # term makes it inf
        atom_term = torch.where(location == 0, torch.zeros_like(location),
                                fitted.weights * location)
    return weight_term + atom_term.sum(-1)


#: compass search of :func:`matched_gauge_d1` over the slopes' common shift: first and last step
MATCH_STEP_FIRST, MATCH_STEP_LAST = 4.0, 1e-7
#: largest input dimension whose softmax sweeps measure ``D1_matched``: the compass search moves
#: one coordinate per step, so its cost grows about as d^2 (20 fits of a 9-atom d = 32 measure,
#: 77 s on a CPU core, against 0.3 s at d = 8 and 0.08 s at d = 4)
MATCH_D_MAX = 8


def has_matched_gauge(gate: str, score: str) -> bool:
    """Whether ``D1_matched`` is defined: a softmax gate (a sigmoid one has no gauge) with a
    linear score (a quadratic score's common shift has more parameters than the search)."""
    return gate == "softmax" and score == "linear"


def applicable_losses(setting: Setting, reference: str, wanted: tuple[str, ...] | None,
                      gate: str | None = None) -> list[str]:
    """The losses a fit of ``setting`` against ``reference`` (``G*`` or ``G_bar``) is measured
    by (those of ``wanted`` only, where given). ``gate``: the fitted gate, where known; a softmax
    fit of a linear score against G* is also measured in the matched gauge (``D1_matched``,
    docs/theory.md#identified-losses), up to ``d = MATCH_D_MAX`` (its search's cost)."""
    kinds = ["D3"] if reference == "G_bar" else ["D1", "D2"]
    groups = ["eta"] + (["beta1"] if score_has_linear(setting.score) else []) + (
        ["A"] if score_has_quadratic(setting.score) else [])
    kinds += [e for e in PARAMETER_ERRORS if e.split("_")[1] in groups]
    if (reference == "G*" and gate is not None and has_matched_gauge(gate, setting.score)
            and setting.d <= MATCH_D_MAX):
        kinds += list(GAUGE_KINDS)
    return [k for k in kinds if wanted is None or k in wanted]


def matched_gauge_d1(fitted: MixingMeasure, reference: MixingMeasure) -> torch.Tensor:
    """The softmax ``D1`` of each replication with the gates' common shift matched to the
    reference (docs/theory.md#identified-losses): the intercepts shifted so that the fitted
    ``exp(beta0)`` add up to the reference's, the slopes by the common shift that brings the fit
    nearest the reference in ``D1`` (a compass search from each shift that zeroes one atom's
    slope, the fit's own gauge among them). It depends on the regression function's parameter
    class alone, where the pinned ``D1`` moves with which atom the fit's parametrisation puts
    last. The minimum over the intercepts' shift too would not do: as it tends to ``-inf`` every
    fitted weight vanishes and ``D1`` tends to the reference's total weight for any fit. The
    search ends on a local minimum (D1 is not smooth in the shift): an upper bound on the
    matched D1, within 1% of a Nelder-Mead search from its end on 598 of 600 committed fits
    and 14% above it on a far one (docs/theory.md#voronoi-losses).
    Where :func:`has_matched_gauge` only. Returns (R,)."""
    return matched_gauge_search(fitted, reference)[0]


def matched_gauge_search(fitted: MixingMeasure, reference: MixingMeasure
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`matched_gauge_d1`'s search: per replication the matched ``D1`` (R,), the shift
    of the gates' intercepts (R, 1) and that of their slopes (R, d) where the search ended (a
    finer search from there: ``paper_figures/matched_gauge_search.py``)."""
    if not has_matched_gauge(fitted.gate, fitted.score):
        raise ValueError("fitted: the matched gauge is defined for softmax gates with linear "
                         f"scores, got {fitted.gate!r} with {fitted.score!r} scores")
    reference = _broadcast(fitted, reference)
    R, k, d = fitted.R, fitted.k, fitted.d
    device = fitted.gate_params.device
    # one search per (replication, atom whose slope the start zeroes), on the measures as
    # selecting writes them (pinned: ``fitted`` may be in another gauge, selecting re-pins)
    rows = torch.arange(R, device=device).repeat_interleave(k)
    many, ref = fitted.select(rows), reference.select(rows)
    gp = many.gate_params
    # logsumexp: a fit whose pinned atom is light has beta0 past ~709 elsewhere, where
    # log(sum(exp)) overflowed to inf and made this gauge-free loss NaN
    base = (torch.logsumexp(ref.beta0, -1) - torch.logsumexp(many.beta0, -1))[:, None]
    slopes = -gp[torch.arange(R * k, device=device), torch.arange(k, device=device).repeat(R),
                 1:1 + d]

    def d1_at(measure, ref_, intercepts, slopes_):
        return voronoi_loss(measure.in_gauge(torch.cat([intercepts, slopes_], -1)), ref_, "D1")

    best = d1_at(many, ref, base, slopes)
    # each search's 2d compass moves, move-major: (2d R k, d)
    moves = torch.cat([torch.eye(d), -torch.eye(d)]).to(gp).repeat_interleave(R * k, 0)
    step = torch.full((R * k,), MATCH_STEP_FIRST, dtype=gp.dtype, device=device)
    tile = torch.arange(R * k, device=device).repeat(2 * d)
    wide, wide_ref, wide_base = many.select(tile), ref.select(tile), base[tile]
    cols = torch.arange(R * k, device=device)
    while bool((step > MATCH_STEP_LAST).any()):
        trial = slopes.repeat(2 * d, 1) + moves * step.repeat(2 * d)[:, None]
        low, which = d1_at(wide, wide_ref, wide_base, trial).reshape(2 * d, R * k).min(0)
        # a finished search stays where it stopped: moving it on while others run would make a
        # replication's value depend on the batch it was measured in (docs/design.md#reproducibility)
        better = (low < best) & (step > MATCH_STEP_LAST)
        slopes = torch.where(better[:, None], trial.reshape(2 * d, R * k, d)[which, cols], slopes)
        best = torch.where(better, low, best)
        step = torch.where(better, step, step / 2)
    # the first of a replication's k searches to reach its lowest value
    which = best.reshape(R, k).argmin(1) + torch.arange(R, device=device) * k
    return best[which], base[which], slopes[which]


def _parameter_error(fitted: MixingMeasure, cells: Cells, kind: str) -> torch.Tensor:
    group, cell_type = parameter_error_parts(kind)
    q_beta1 = 0 if fitted.beta1 is None else fitted.d
    q_a = fitted.gate_params.shape[-1] - 1 - q_beta1
    q_eta = fitted.expert_params.shape[-1]
    sl = {"beta1": slice(0, q_beta1), "A": slice(q_beta1, q_beta1 + q_a),
          "eta": slice(q_beta1 + q_a, q_beta1 + q_a + q_eta)}[group]
    err = cells.diff_omega[..., sl].norm(dim=-1)
    mask = cells.over if cell_type == "over" else ~cells.over
    nan = torch.full_like(err, float("nan"))
    width = sl.stop - sl.start
    if width == 0:
        return nan[:, 0]
    masked = torch.where(mask, err, torch.full_like(err, -1.0)).amax(-1)
    return torch.where(masked < 0, nan[:, 0], masked)

