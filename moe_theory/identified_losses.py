"""Which losses of an over-specified fit the data determine (docs/theory.md#identified-losses).

A loss measures the least-squares estimator only if two measures with the same regression
function are not far apart in it. :func:`unidentified_losses` looks for such pairs among the
near-degeneracies of an over-specified mixture: an atom's expert traded among its copies
(:func:`expert_trades`: exact for positively homogeneous experts, and for a zero expert under
sigmoid gating) and an extra atom held at the least weight the fits' box allows
(:func:`light_atoms`). The reference certificate (:mod:`moe_theory.certificates`) records what
it finds, and a curve fails where its loss is not determined at its own scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from moe_theory.estimators import Bounds
from moe_theory.initialization import split_atoms, split_order
from moe_theory.measure import MixingMeasure
from moe_theory.voronoi import voronoi_loss

#: reference (over-specified fits of G*): two measures are indistinguishable at the sweep's
#: largest n when their regression functions differ by at most one noise variance of expected SSR
#: there, ``n_max * mean((f_G' - f_G*)^2) / nu <= 1``, well under the SSR_GAP_MAX by which the
#: optimiser certificate tells two fits apart; a loss that is above UNIDENTIFIED_LOSS_MIN at such
#: a G' does not measure what the data determine. The trades of an atom's expert among its copies
#: (``t`` below) cover the two exact degeneracies of the expert classes: positive homogeneity
#: (ReLU, linear: ``h(x; t eta) = t h(x; eta)``) and a zero expert (``h(x; 0) = 0``: any expert
#: under sigmoid gating, where weights do not sum to one).
INDISTINGUISHABLE_SSR = 1.0
UNIDENTIFIED_LOSS_MIN = 1e-8
EXPERT_TRADES = (0.5, 1.0)
#: the third near-degeneracy, light atoms (:func:`light_atoms`): a copy of an atom's gate held
#: at the box's lower face of beta0 carries almost no weight, so its expert is nearly free; with
#: no box, beta0 = -LIGHT_BETA0 (a weight e^-30 ~ 1e-13 of the atom's, below any n's resolution)
LIGHT_BETA0 = 30.0
#: ... and a curve fails on such a measure only where its loss there is at least this share of
#: the curve's smallest per-n median: the fit may drift that far at no cost in SSR, which moves
#: that median's log by up to log(1.1) = 0.095, the size of the slope CI half-width a verdict
#: allows (rates.CI_HALF_WIDTH_MAX) over the 1.2 decades of a typical grid
UNIDENTIFIED_SHARE = 0.1


def expert_trades(ref: MixingMeasure, k: int) -> list[tuple[str, MixingMeasure]]:
    """``k``-atom measures that copy one atom of the k*-atom ``ref`` and trade its expert
    among the copies, each with what it did (docs/theory.md#identified-losses).

    Atom ``j`` is copied ``c = k - k* + 1`` times, each copy keeping its gate slope, and copy
    ``i`` gets the expert ``t_i eta_j``. Softmax copies split the atom's weight evenly
    (:func:`~moe_theory.initialization.split_atoms`) and ``t`` has mean 1; sigmoid copies keep
    the whole gate (a sigmoid weight does not split into sigmoid weights) and ``t`` sums to 1.
    Where the expert is positively homogeneous, or ``t_i = 0`` with ``h(x; 0) = 0``, the
    regression function is exactly ``f_ref``; elsewhere it is not, and the test it serves
    (:func:`unidentified_losses`) measures which."""
    k0 = ref.k
    out = []
    for j in range(k0):
        split = (j,) * (k - k0)
        copy = split_atoms(ref, k, split)
        idx = [i for i, o in enumerate(split_order(ref, k, split)) if o == j]
        for spread in EXPERT_TRADES:
            t = 1 + spread * torch.linspace(-1, 1, len(idx), dtype=ref.expert_params.dtype)
            gp, ep = copy.gate_params.clone(), copy.expert_params.clone()
            if ref.gate == "sigmoid":
                t = t / len(idx)
                gp[:, idx] = ref.gate_params[:, [j]]
            ep[:, idx] = ep[:, idx] * t.to(ep.device)[:, None]
            words = ", ".join(f"{v:.2g}" for v in t.tolist())
            out.append((f"atom {j} copied {len(idx)} times with experts ({words}) x its own",
                        copy.replace(gp, ep)))
    return out


def light_atoms(ref: MixingMeasure, k: int, box: Bounds | None = None
                ) -> list[tuple[str, MixingMeasure]]:
    """``k``-atom measures that add to the k*-atom ``ref`` ``k - k*`` atoms with one atom's gate
    slope, held at the least weight the fits' ``box`` allows (``beta0`` on its lower face,
    ``-LIGHT_BETA0`` without a box), and expert 0 or minus the atom's: the weight-shrinking
    near-degeneracy of an over-specified fit (docs/theory.md#identified-losses). Each comes
    with what it did.

    Softmax measures come twice: with the pinned atom last as in ``ref``, and written in the
    gauge where a light atom is the pinned one (every gate shifted by the light atom's, as far
    as the box lets the other atoms' ``beta0`` rise). The regression function is the same up
    to the smaller shift; the losses, which compare ``exp(beta0)`` and gate slopes in the fit's
    pinned gauge, are not."""
    k0 = ref.k
    boxed = box is not None and not math.isinf(box.beta0)
    low, where = (box.beta0, "the box's lower face") if boxed else (LIGHT_BETA0, "no box")
    at = k0 - 1 if ref.gate == "softmax" else k0
    out = []
    for j in range(k0):
        for sign, words in ((0.0, "0"), (-1.0, f"minus atom {j}'s")):
            expert = ref.expert_params[:, [j]] * sign
            ep = torch.cat([ref.expert_params[:, :at], expert.expand(-1, k - k0, -1),
                            ref.expert_params[:, at:]], dim=1)
            gate = ref.gate_params[:, [j]].clone()
            gate[..., 0] = -low
            gp = torch.cat([ref.gate_params[:, :at], gate.expand(-1, k - k0, -1),
                            ref.gate_params[:, at:]], dim=1)
            added = (f"{k - k0} light atom(s) added, with atom {j}'s gate slope, beta0 = "
                     f"{-low:.3g} ({where}) and expert {words}")
            out.append((added, ref.replace(gp, ep)))
            if ref.gate != "softmax":
                continue
            # the light atom pinned: the others' beta0 rise by its depth, at most to the face
            depth = min(low, low - float(ref.gate_params[..., 0].max())) if boxed else low
            gate[..., 0] = -depth
            gp = torch.cat([ref.gate_params[:, :at], gate.expand(-1, k - k0, -1),
                            ref.gate_params[:, at:]], dim=1) - gate
            order = [i for i in range(k) if i != at] + [at]
            out.append((f"{k - k0} light atom(s) added, with atom {j}'s gate slope, "
                        f"{depth:.3g} below the others in beta0, written as the pinned atom "
                        f"(the other gates shifted by its own), and expert {words}",
                        ref.replace(gp[:, order], ep[:, order])))
    return out


def inside(measure: MixingMeasure, box: Bounds | None) -> bool:
    """Is every parameter of ``measure`` within the half-widths of ``box`` (None: no box)?"""
    if box is None:
        return True
    for group in ("beta0", "beta1", "A", "a", "b"):
        values = getattr(measure, group)
        if values is not None and float(values.abs().max()) > getattr(box, group) * (1 + 1e-12):
            return False
    return True


def unidentified_losses(ref: MixingMeasure, k: int, losses: Sequence[str], X: torch.Tensor,
                        n_max: int, nu: float, box: Bounds | None = None
                        ) -> dict[str, dict[str, Any]]:
    """The losses of a ``k``-atom fit of ``ref`` (``k > k*``) that the data do not determine:
    ``{loss: {"value": v, "reason": why}}`` with ``v`` the largest value above
    UNIDENTIFIED_LOSS_MIN that the loss takes at a measure of :func:`expert_trades` or
    :func:`light_atoms` inside the fit's ``box`` (the estimator's parameter set) whose
    regression function the sweep's largest sample cannot tell from ``ref``'s
    (INDISTINGUISHABLE_SSR). Such a loss need not fall below ``v`` with n whatever the estimator
    does: the least-squares fit may sit anywhere among these measures (a curve judges ``v``
    against its own values: :func:`reference_status`)."""
    ref_cpu, ref = ref.to(device="cpu"), ref.to(device=X.device)
    with torch.no_grad():
        f_ref = ref(X)
    found: dict[str, tuple[float, str]] = {}
    for words, other in expert_trades(ref, k) + light_atoms(ref, k, box):
        if not inside(other, box):
            continue
        with torch.no_grad():
            ssr = float(((other(X) - f_ref) ** 2).mean()) * n_max / nu
        if not ssr <= INDISTINGUISHABLE_SSR:
            continue
        other_cpu = other.to(device="cpu")
        for loss in losses:
            value = float(voronoi_loss(other_cpu, ref_cpu, loss)[0])
            if value > UNIDENTIFIED_LOSS_MIN and value > found.get(loss, (0.0, ""))[0]:
                found[loss] = (value, (
                    f"{loss} not identified: G* with {words} has the same regression function "
                    f"(n_max x mean square difference / nu = {ssr:.1e}) and {loss} = {value:.2g}"))
    return {loss: {"value": value, "reason": reason} for loss, (value, reason) in found.items()}
