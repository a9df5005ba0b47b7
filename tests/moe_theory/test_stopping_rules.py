"""The stopping rule of the Levenberg-Marquardt fit (docs/theory.md#stopping-rule): the stop
reason, n_iter and the projected gradient reported are those of the parameters returned. Each
test failed before its fix (an audit of the stopping rules)."""

from __future__ import annotations

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
