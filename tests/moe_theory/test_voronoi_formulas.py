"""Audit of the Voronoi losses against docs/theory.md#voronoi-losses: each loss recomputed by an
independent loop over atoms and cells, and the behaviours the definitions fix at their edges
(weights that overflow, a light pinned softmax atom)."""

import math

import numpy as np
import pytest
import torch

from moe_theory.measure import MixingMeasure
from moe_theory.voronoi import PARAMETER_ERRORS, voronoi_loss


def _measure(gate, atoms, expert="relu"):
    """atoms: (beta0, beta1, a, b) with d = 1 and a linear score."""
    return MixingMeasure.from_dict({"gate": gate, "score": "linear", "expert": expert, "d": 1,
                                    "atoms": [{"beta0": b0, "beta1": [b1], "A": None, "a": [a],
                                               "b": b} for b0, b1, a, b in atoms]})


def _random_measure(rng, R, k, gate, score, expert, d):
    pg = 1 + (d if score != "monomial" else 0) + (d * (d + 1) // 2 if score != "linear" else 0)
    pe = 1 if expert == "constant" else d + 1
    return MixingMeasure(gate, score, expert, d, torch.tensor(rng.normal(size=(R, k, pg))),
                         torch.tensor(rng.normal(size=(R, k, pe))))


def _docs_losses(fitted, reference, r):
    """D1, D2r, D3 and the per-parameter errors of docs/theory.md#voronoi-losses, written from
    the text atom by atom in plain Python (no code shared with moe_theory.voronoi): the softmax
    gauge pinned here by hand, cells by the nearest reference atom with ties to the lowest j,
    even-power experts measured up to their sign."""
    gp, ep = fitted.gate_params.numpy(), fitted.expert_params.numpy()
    gp0, ep0 = reference.gate_params.numpy(), reference.expert_params.numpy()
    if fitted.gate == "softmax":
        gp, gp0 = gp - gp[:, -1:], gp0 - gp0[:, -1:]
    w = math.exp if fitted.gate == "softmax" else (lambda b: 1 / (1 + math.exp(-b)))
    symmetric = fitted.expert.startswith("poly") and int(fitted.expert[4:]) % 2 == 0
    q_beta1 = fitted.d if fitted.score != "monomial" else 0
    q_A = gp.shape[-1] - 1 - q_beta1
    q_eta = ep.shape[-1]
    groups = {"beta1": (0, q_beta1), "A": (q_beta1, q_beta1 + q_A),
              "eta": (q_beta1 + q_A, q_beta1 + q_A + q_eta)}
    out = {name: [] for name in ("D1", "D2", "D3", *PARAMETER_ERRORS)}
    for rep in range(gp.shape[0]):
        k, k0 = gp.shape[1], gp0.shape[1]
        om = [list(gp[rep, i, 1:]) + list(ep[rep, i]) for i in range(k)]
        om0 = [list(gp0[0, j, 1:]) + list(ep0[0, j]) for j in range(k0)]
        cell, diff = [], []
        for i in range(k):
            best = None
            for j in range(k0):
                writings = [om[i]]
                if symmetric:
                    writings.append(om[i][:-q_eta] + [-v for v in om[i][-q_eta:]])
                for v in writings:
                    delta = [x - y for x, y in zip(v, om0[j], strict=True)]
                    dist = math.sqrt(sum(x * x for x in delta))
                    if best is None or dist < best[0]:
                        best = (dist, j, delta)
            cell.append(best[1])
            diff.append(best[2])
        count = [cell.count(j) for j in range(k0)]
        d1 = d2 = d3 = 0.0
        for j in range(k0):
            mismatch = abs(sum(w(gp[rep, i, 0]) for i in range(k) if cell[i] == j)
                           - w(gp0[0, j, 0]))
            if fitted.gate == "softmax" or count[j] != 1:
                d1, d2 = d1 + mismatch, d2 + mismatch
        for i in range(k):
            norm = math.sqrt(sum(x * x for x in diff[i]))
            db = abs(gp[rep, i, 0] - gp0[0, cell[i], 0])
            over = count[cell[i]] > 1
            d3 += db + norm
            if fitted.gate == "sigmoid":
                d1 += norm ** 2 if over else db + norm
                d2 += norm ** r if over else db ** r + norm ** r
            else:
                d1 += w(gp[rep, i, 0]) * (norm ** 2 if over else norm)
                d2 += w(gp[rep, i, 0]) * norm ** r
        for name, value in (("D1", d1), ("D2", d2), ("D3", d3)):
            out[name].append(value)
        for group, (lo, hi) in groups.items():
            for cell_type in ("exact", "over"):
                errs = [math.sqrt(sum(x * x for x in diff[i][lo:hi])) for i in range(k)
                        if (count[cell[i]] > 1) == (cell_type == "over")]
                out[f"err_{group}_{cell_type}"].append(
                    max(errs) if errs and hi > lo else float("nan"))
    return {name: np.array(values) for name, values in out.items()}


@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
@pytest.mark.parametrize("score", ["linear", "quadratic", "monomial"])
@pytest.mark.parametrize("expert", ["relu", "poly2", "constant"])
def test_every_loss_is_the_docs_formula(gate, score, expert):
    """Random measures of 1-5 fitted and 1-4 reference atoms (empty and over-specified cells
    alike), and the same rounded to integers, where ties between cells are frequent. Tolerance
    1e-12 relative: each loss is a sum of a few dozen float64 terms summed in another order."""
    rng = np.random.default_rng([7, len(gate), len(score), len(expert)])
    for trial in range(12):
        d, k0, k = int(rng.integers(1, 4)), int(rng.integers(1, 5)), int(rng.integers(1, 6))
        reference = _random_measure(rng, 1, k0, gate, score, expert, d)
        fitted = _random_measure(rng, 3, k, gate, score, expert, d)
        if trial % 2:  # integers: Voronoi ties
            reference = reference.replace(reference.gate_params.round(),
                                          reference.expert_params.round())
            fitted = fitted.replace(fitted.gate_params.round(), fitted.expert_params.round())
        want = _docs_losses(fitted, reference, r=3.0)
        for kind, expected in want.items():
            got = voronoi_loss(fitted, reference, kind, r=3.0).numpy()
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14,
                                       err_msg=f"{kind}, trial {trial}")


TRUTH = [(0.5, 1.0, 1.0, 0.0), (0.0, 0.0, -1.0, 0.0)]


@pytest.mark.parametrize("kind", ["D1", "D2"])
def test_a_softmax_weight_past_float_range_gives_an_infinite_loss_not_nan(kind):
    """An atom at its reference location with exp(beta0) past float64's range (beta0 > 709.8):
    the weight term |exp(beta0) - exp(beta0*)| is inf, and so is the loss. The location term of
    that atom is exp(beta0) * 0, which made the loss NaN, as if the fit had diverged (counted
    as dropped_nan rather than dropped_inf), though its parameters are finite."""
    truth = _measure("softmax", TRUTH)
    below = _measure("softmax", [(700.0, 1.0, 1.0, 0.0), (0.0, 0.0, -1.0, 0.0)])
    # below the overflow the loss is the docs' sum (the location terms vanish: both atoms sit
    # on their reference atoms); relative 1e-12: two terms, one far below the other's ulp
    expected = abs(math.exp(700.0) - math.exp(0.5)) + 0.0
    assert float(voronoi_loss(below, truth, kind)) == pytest.approx(expected, rel=1e-12)
    above = _measure("softmax", [(710.0, 1.0, 1.0, 0.0), (0.0, 0.0, -1.0, 0.0)])
    assert float(voronoi_loss(above, truth, kind)) == math.inf
    assert math.isfinite(float(voronoi_loss(above, truth, "D3")))


def test_d1_matched_of_a_fit_with_a_light_pinned_atom_is_finite_and_gauge_free():
    """D1_matched depends on the regression function's parameter class alone
    (docs/theory.md#identified-losses): the same fit written with its heavy atom pinned, or with
    its light atom pinned (every other beta0 then 710 above it), has the same D1_matched. The
    intercepts' shift was log(sum(exp(beta0))), inf in the second writing, and the loss NaN."""
    truth = _measure("softmax", TRUTH)
    light_last = _measure("softmax", [(710.0, 1.0, 1.0, 0.0), (0.0, 0.0, -1.0, 0.0)])
    heavy_last = _measure("softmax", [(0.0, 0.0, -1.0, 0.0), (710.0, 1.0, 1.0, 0.0)])
    a = float(voronoi_loss(light_last, truth, "D1_matched"))
    b = float(voronoi_loss(heavy_last, truth, "D1_matched"))
    assert math.isfinite(b)
    # the two writings' parameters differ by rounding of a 710 shift (ulp 1e-13): the search
    # ends at the same point up to that
    assert a == pytest.approx(b, rel=1e-9)
