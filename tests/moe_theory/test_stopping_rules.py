"""The stopping rule of the Levenberg-Marquardt fit (docs/theory.md#stopping-rule): the stop
reason, n_iter and the projected gradient reported are those of the parameters returned. Each
test failed before its fix (an audit of the stopping rules)."""

from __future__ import annotations

import math

import torch

import moe_theory as mt


def _zero_target_problem():
    """d = 1, k = 2, sigmoid gates, linear experts, Y = 0: a zero-residual problem whose
    Gauss-Newton iterates reach the gtol test in a few iterations."""
    gp = torch.tensor([[[0.3, 2.0], [-0.4, -1.0]]], dtype=torch.float64)
    ep = torch.tensor([[[1.0, 0.5], [-1.0, 0.2]]], dtype=torch.float64)
    truth = mt.MixingMeasure("sigmoid", "linear", "linear", 1, gp, ep)
    X, _ = mt.sample(truth, n=50, reps=1, seed=0)
    return X, torch.zeros(1, 50, dtype=torch.float64), mt.near_truth(truth, 2, seed=1, jitter=0.1)


def test_a_point_that_passes_gtol_on_the_last_iteration_is_not_a_cap_stop():
    # gtol was tested only at the top of an iteration: a fit whose last allowed iteration
    # accepted a point with a small projected gradient reported max_iter (not converged) with
    # proj_grad_max <= gtol, at the very parameters a fit with one more iteration allowed
    # reported as a gtol stop
    X, Y, init = _zero_target_problem()
    free = mt.fit_lse(X, Y, 2, "sigmoid", "linear", init=init, max_iter=200)
    assert free.stop_test == ["gtol"]
    m = int(free.n_iter[0])
    assert 1 < m < 200
    capped = mt.fit_lse(X, Y, 2, "sigmoid", "linear", init=init, max_iter=m)
    assert torch.equal(capped.measure.gate_params, free.measure.gate_params)
    assert torch.equal(capped.measure.expert_params, free.measure.expert_params)
    assert int(capped.n_iter[0]) == m
    assert float(capped.proj_grad_max[0]) <= 1e-10
    assert capped.stop_test == ["gtol"] and capped.stop_reason == ["tolerance"]
    assert bool(capped.converged[0])
    # one iteration fewer really is a cap stop
    short = mt.fit_lse(X, Y, 2, "sigmoid", "linear", init=init, max_iter=m - 1)
    assert short.stop_test == ["max_iter"] and not bool(short.converged[0])
    assert float(short.proj_grad_max[0]) > 1e-10


def _relu_problem(n=400, seed=3):
    """d = 2, a 2-atom sigmoid-gated ReLU truth fitted with k = 2 from a jittered start, noise
    variance 0.01: ReLU kinks keep LM's damping high, where ftol and xtol see short steps."""
    gp = torch.tensor([[[0.5, 1.5, -1.0], [-0.5, -1.0, 2.0]]], dtype=torch.float64)
    ep = torch.tensor([[[1.0, -0.5, 0.3], [-1.2, 0.8, 0.1]]], dtype=torch.float64)
    truth = mt.MixingMeasure("sigmoid", "linear", "relu", 2, gp, ep)
    X, Y = mt.sample(truth, n=n, reps=4, seed=seed, noise_var=0.01)
    return X, Y, mt.near_truth(truth, 2, seed=seed, jitter=0.5)


def test_a_short_step_stop_is_restarted_and_its_drop_measured_in_nu():
    # ftol and xtol see a short accepted step, which a large damping makes of any step: such a
    # stop need not be stationary (ReLU fits were found that a fresh start lowered by 13 nu).
    # A loose ftol makes every fit stop on a step far from the minimum, so the restart from
    # its end must find a lower SSR (by over 1 nu on some), measured in nu as a refit from the
    # kept fit measures it.
    X, Y, init = _relu_problem()
    nu, n = 0.01, X.shape[1]
    fit = mt.fit_lse(X, Y, 2, "sigmoid", "relu", init=init, noise_var=nu, ftol=0.05)
    assert set(fit.stop_test) <= {"ftol", "xtol"}
    again = mt.fit_lse(X, Y, 2, "sigmoid", "relu", init=fit.measure, ftol=0.05)
    expected = (fit.fit_loss - again.fit_loss) * n / nu
    assert bool((expected > 0).all()) and bool((expected > 1).any())
    assert torch.allclose(fit.restart_drop, expected, rtol=1e-9, atol=1e-9)
    # the estimate stays the fit's: the restart only measures it
    assert torch.equal(fit.fit_loss, mt.objective(X, Y, fit.measure))


def test_stationary_stops_are_not_restarted_and_cap_stops_have_no_drop():
    X, Y, init = _zero_target_problem()
    gtol = mt.fit_lse(X, Y, 2, "sigmoid", "linear", init=init, noise_var=0.1)
    assert gtol.stop_test == ["gtol"] and gtol.restart_drop.tolist() == [0.0]
    capped = mt.fit_lse(X, Y, 2, "sigmoid", "linear", init=init, noise_var=0.1, max_iter=1)
    assert capped.stop_test == ["max_iter"] and math.isnan(float(capped.restart_drop[0]))
    # the drop's unit is nu: without it there is nothing to report
    assert mt.fit_lse(X, Y, 2, "sigmoid", "linear", init=init, max_iter=1).restart_drop is None


def test_an_lbfgs_ftol_stop_is_restarted_too():
    # L-BFGS reports ftol on a small relative decrease, the same short step as LM's: its stops
    # had no restart (NaN, read as converged by the stop alone), though LM from their ends
    # lowered some by 6 nu. LM is the probe whatever the algorithm.
    X, Y, init = _relu_problem(n=1000)
    nu = 0.01
    fit = mt.fit_lse(X, Y, 2, "sigmoid", "relu", init=init, noise_var=nu, algorithm="lbfgs")
    assert "ftol" in fit.stop_test
    short = [r for r, t in enumerate(fit.stop_test) if t in ("ftol", "xtol")]
    again = mt.fit_lse(X[short], Y[short], 2, "sigmoid", "relu", init=fit.measure.select(
        torch.tensor(short)))
    expected = (fit.fit_loss[short] - again.fit_loss) * X.shape[1] / nu
    assert torch.allclose(fit.restart_drop[short], expected, rtol=1e-6, atol=1e-9)
    assert bool((fit.restart_drop[short] >= 0).all())
