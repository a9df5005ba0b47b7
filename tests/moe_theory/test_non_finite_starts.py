"""Starts that end (or begin) non-finite: one replication's overflow must not reach another's
fit, and the fit reports them as the docs say (docs/theory.md#multi-start). Each test failed
before its fix (an audit of the estimators)."""

from __future__ import annotations

import math

import pytest
import torch

import moe_theory as mt
from moe_theory.settings import SMALL_ATOMS


@pytest.fixture(scope="module")
def poly3_problem():
    """Two replications, cubic experts: parameters 1e120 times the truth's overflow the loss."""
    rows = torch.tensor(SMALL_ATOMS, dtype=torch.float64)[None]
    truth = mt.MixingMeasure("sigmoid", "linear", "poly3", 2, rows[..., :3], rows[..., 3:])
    X, Y = mt.sample(truth, n=200, reps=2, seed=4)
    gp = truth.gate_params.repeat(2, 1, 1)
    ep = truth.expert_params.repeat(2, 1, 1) + 0.05
    return truth, X, Y, gp, ep


def test_lbfgs_fit_does_not_depend_on_another_replications_non_finite_start(poly3_problem):
    # L-BFGS minimises the summed loss: one start whose loss overflows made it NaN, and every
    # other replication of the batch stopped after one iteration with a loss of ~1e267
    truth, X, Y, gp, ep = poly3_problem
    bad = ep.clone()
    bad[0] *= 1e120
    init = mt.MixingMeasure("sigmoid", "linear", "poly3", 2, gp, bad)
    fit = mt.fit_lse(X, Y, 2, "sigmoid", "poly3", init=init, algorithm="lbfgs", max_iter=50)
    alone = mt.fit_lse(X[1:], Y[1:], 2, "sigmoid", "poly3", init=init.select([1]),
                       algorithm="lbfgs", max_iter=50)
    assert fit.stop_test[0] == "non_finite" and int(fit.n_iter[0]) == 0
    assert not bool(fit.converged[0])
    assert fit.stop_test[1] == alone.stop_test[0]
    assert int(fit.n_iter[1]) == int(alone.n_iter[0]) > 1
    assert float(fit.fit_loss[1]) == pytest.approx(float(alone.fit_loss[0]), rel=1e-12)
    assert float(fit.fit_loss[1]) < 0.02  # noise variance 0.01 (mt.sample's default scale)


def test_lbfgs_with_every_start_non_finite_reports_them(poly3_problem):
    truth, X, Y, gp, ep = poly3_problem
    init = mt.MixingMeasure("sigmoid", "linear", "poly3", 2, gp, ep * 1e120)
    fit = mt.fit_lse(X, Y, 2, "sigmoid", "poly3", init=init, algorithm="lbfgs", max_iter=20)
    assert fit.stop_test == ["non_finite", "non_finite"]
    assert fit.n_iter.tolist() == [0, 0]
    assert not bool(fit.converged.any())


def test_ssr_spread_is_inf_when_every_start_ended_non_finite(poly3_problem):
    # FitResult documents ssr_spread as inf when a start ended non-finite; with every start
    # non-finite, inf - inf gave NaN
    truth, X, Y, gp, ep = poly3_problem
    bad = mt.MixingMeasure("sigmoid", "linear", "poly3", 2, gp, ep * 1e120)
    good = mt.MixingMeasure("sigmoid", "linear", "poly3", 2, gp, ep)
    one = mt.fit_lse(X, Y, 2, "sigmoid", "poly3", init=bad, max_iter=5, noise_var=0.01)
    assert one.stop_test == ["non_finite", "non_finite"]
    assert one.ssr_spread.tolist() == [math.inf, math.inf]
    two = mt.fit_lse(X, Y, 2, "sigmoid", "poly3", init=[good, bad], max_iter=5, noise_var=0.01)
    assert two.ssr_spread.tolist() == [math.inf, math.inf]
    assert bool(torch.isfinite(two.fit_loss).all())
