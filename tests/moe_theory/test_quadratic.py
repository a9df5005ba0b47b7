"""Quadratic-gating MoEs (Y25, A24): settings, Voronoi losses, theory entries, config checks,
and a small dense-regime convergence test."""

import numpy as np
import pytest
import torch

import moe_theory as mt
from moe_theory.config import load_config, parse_config
from moe_theory.initialization import split_atoms
from moe_theory.population import population_lse
from moe_theory.rates import fit_rate
from moe_theory.theory import predicted_rate
from moe_theory.voronoi import ALL_KINDS, GAUGE_KINDS, applicable_losses, voronoi_loss

Y25 = [name for name in mt.list_settings() if name.startswith("yan2025-")]


def kinds_for(measure):
    """The losses defined for a quadratic-score measure (the matched gauge is linear scores')."""
    groups = ["eta"] + (["beta1"] if measure.beta1 is not None else []) + ["A"]
    return [k for k in ALL_KINDS if k not in GAUGE_KINDS
            and (not k.startswith("err_") or k.split("_")[1] in groups)]


@pytest.mark.parametrize("name", Y25)
def test_settings_follow_their_regime(name):
    setting = mt.get_setting(name)
    truth = setting.truth()
    A, beta1 = truth.A[0], truth.beta1
    split = 0  # the default split: the first atom
    slopes = A[split].abs().sum() + (0 if beta1 is None else beta1[0, split].abs().sum())
    if setting.regime == "sparse":
        assert float(slopes) == 0.0
        assert float(A[1].abs().sum()) > 0  # only the over-specified atom's gate is constant
    else:
        assert float(A[split].abs().sum()) > 0
    assert setting.k_fit == setting.k_true + 1 and setting.d == 2


@pytest.mark.parametrize("score", ["quadratic", "monomial"])
@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
def test_losses_are_zero_at_the_truth(score, gate):
    truth = mt.get_setting(f"yan2025-{score}-{gate}-dense-gelu").truth()
    for kind in kinds_for(truth):
        value = voronoi_loss(truth, truth, kind)
        if kind.endswith("_over"):  # no over-specified cell when k = k*
            assert bool(torch.isnan(value).all())
        else:
            assert float(value) == 0.0


@pytest.mark.parametrize("score", ["quadratic", "monomial"])
@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
def test_losses_are_invariant_to_permuting_atoms(score, gate):
    setting = mt.get_setting(f"yan2025-{score}-{gate}-dense-linear")
    truth = setting.truth()
    fitted = split_atoms(truth, setting.k_fit)
    gen = torch.Generator().manual_seed(0)
    fitted = fitted.replace(
        fitted.gate_params + 0.05 * torch.randn(fitted.gate_params.shape, generator=gen,
                                                dtype=torch.float64),
        fitted.expert_params + 0.05 * torch.randn(fitted.expert_params.shape, generator=gen,
                                                  dtype=torch.float64))
    # softmax measures are in the gauge that pins the last atom: permute the others only
    perm = [2, 0, 1, 3] if gate == "softmax" else [2, 0, 1]
    permuted = fitted.replace(fitted.gate_params[:, perm], fitted.expert_params[:, perm])
    for kind in kinds_for(truth):
        a, b = voronoi_loss(fitted, truth, kind), voronoi_loss(permuted, truth, kind)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0, equal_nan=True)
        assert kind.endswith("_over") or kind == "D3" or float(a) > 0


def test_applicable_losses_follow_the_score():
    quad = applicable_losses(mt.get_setting("yan2025-quadratic-softmax-dense-gelu"), "G*", None)
    mono = applicable_losses(mt.get_setting("yan2025-monomial-softmax-dense-gelu"), "G*", None)
    assert {"err_A_exact", "err_A_over", "err_beta1_exact"} <= set(quad)
    assert {"err_A_exact", "err_A_over"} <= set(mono)
    assert not any(loss.startswith("err_beta1") for loss in mono)


def test_theory_entries_for_quadratic_scores():
    # Y25 (reconstruction): the sigmoid fit against G_bar is parametric for every expert
    for expert in ("gelu", "linear", "poly2"):
        assert predicted_rate("sigmoid", "quadratic", "dense", expert, "D3").exponent == -0.5
    # A24: softmax over-specified + linear experts has no polynomial rate, GELU experts n^-1/4
    assert predicted_rate("softmax", "quadratic", "dense", "linear", "err_eta_over").exponent == 0
    assert predicted_rate("softmax", "monomial", "dense", "gelu", "err_eta_over").exponent == -0.25
    # a softmax fit of a sigmoid truth is a misspecified parametric fit (White 1982)
    cross = predicted_rate("softmax", "quadratic", "sparse", "gelu", "D3", reference="G_bar")
    assert cross.exponent == -0.5 and "reconstruction" in cross.source


def test_yan2025_config_loads_in_both_presets():
    full, fast = load_config("yan2025"), load_config("yan2025", fast=True)
    assert set(fast.settings) <= set(full.settings)
    for config in (full, fast):
        for name in config.settings:
            setting = mt.get_setting(name)
            # the sigmoid truth in the dense regime has no unique G_bar (settings.py): left out
            assert not (setting.truth_gate == "sigmoid" and setting.regime == "dense")
    assert full.n[0] == 1000 and full.n[-1] == 100000


@pytest.mark.parametrize(("raw", "field"), [
    ({"settings": ["yan2025-monomial-softmax-dense-gelu"], "losses": ["err_beta1_exact"]},
     "losses"),
    ({"settings": ["small-dense-relu"], "losses": ["D1", "err_A_over"]}, "losses"),
    ({"settings": ["yan2025-monomial-sigmoid-sparse-linear"],
      "plot": {"sigmoid": ["D1", "err_beta1_over"]}}, "plot.sigmoid"),
])
def test_config_rejects_losses_the_scores_lack(raw, field):
    with pytest.raises(ValueError, match=f"config key '{field}'"):
        parse_config({"name": "bad", "n": [100, 200], "reps": 2, **raw})


# ---- convergence: dense regime, linear experts -----------------------------------------------
CONVERGENCE_SETTING = "yan2025-quadratic-softmax-dense-linear"
CONVERGENCE_N = (500, 2000, 8000)
CONVERGENCE_REPS = 16
#: G_bar's design is 12x the largest n: its own error stays well under the fits' (the sweeps' is
#: 2e5 on CPU, docs/theory.md#the-reference-measure-g_bar)
CONVERGENCE_DESIGN = 100_000
#: Theory: sigmoid n^-1/2 (Y25, D3 against G_bar) against softmax ~1/log n (A24), a gap of 0.5.
#: Measured at this size on six data seeds (fixed here: 2025): sigmoid -0.42..-0.74, softmax
#: -0.22..-0.43 (the over-specified softmax error still decays before its asymptotic regime),
#: gaps 0.07..0.40, mean 0.27, sd 0.14. A margin of 0.1 asks for the direction of the theory with
#: room for about one sd of sampling noise below the mean gap; the fixed seed gives 0.34.
CONVERGENCE_MARGIN = 0.1


def convergence_slopes() -> dict[str, tuple[float, float, float]]:
    """Expert-error slopes of both fits of a dense softmax-gated truth with linear experts.

    The sigmoid fit cannot represent the truth and converges to its G_bar (all cells exact: its
    experts' error is ``err_eta_exact``); the softmax fit is over-specified against G*
    (``err_eta_over``). Data for both fits are the same draws (common random numbers).
    """
    setting = mt.get_setting(CONVERGENCE_SETTING)
    truth = setting.truth()
    g_bar = population_lse(setting, "sigmoid", design_size=CONVERGENCE_DESIGN, use_cache=False,
                           backend="torch")
    errors = {"sigmoid": [], "softmax": []}
    for n in CONVERGENCE_N:
        X, Y = mt.sample(truth, n=n, reps=CONVERGENCE_REPS, seed=2025,
                         noise_var=setting.noise_var)
        for gate, ref, loss in (("sigmoid", g_bar, "err_eta_exact"),
                                ("softmax", truth, "err_eta_over")):
            fit = mt.fit_lse(X, Y, setting.k_fit, gate, setting.expert, setting.score,
                             init=mt.near_truth(ref, setting.k_fit, seed=n), reference=ref,
                             backend="torch")
            assert bool(fit.certified.all())
            errors[gate].append(voronoi_loss(fit.measure, ref, loss).numpy())
    out = {}
    for gate, values in errors.items():
        rate = fit_rate(np.array(CONVERGENCE_N), values, n_boot=200)
        out[gate] = (rate.slope, rate.ci_low, rate.ci_high)
    return out


@pytest.mark.slow
def test_dense_linear_convergence_sigmoid_beats_softmax():
    slopes = convergence_slopes()
    sigmoid, softmax = slopes["sigmoid"][0], slopes["softmax"][0]
    assert sigmoid < softmax - CONVERGENCE_MARGIN
    lo, hi = slopes["sigmoid"][1:]
    assert lo - 0.05 <= -0.5 <= hi + 0.05  # the sigmoid fit's verdict is "consistent"
