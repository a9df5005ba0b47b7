"""The LSE over a box (docs/theory.md#compact-parameter-set) and the stopping rule
(docs/theory.md#stopping-rule)."""

import math

import pytest
import torch

import moe_theory as mt
from moe_theory.estimators.bounds import (
    Bounds,
    at_bound,
    box_bounds,
    groups_at_bound,
    resolve_bounds,
)
from moe_theory.estimators.problem import LeastSquaresProblem
from moe_theory.settings import SMALL_ATOMS

#: SMALL_ATOMS's expert intercepts are 0.2 and -0.1: a box of 0.15 on b holds the first one away
#: from its unconstrained optimum in every replication.
B_BOX = 0.15


@pytest.fixture(scope="module")
def tanh_problem():
    """Exactly specified, every gate input-dependent: an isolated minimum, fast to reach."""
    rows = torch.tensor(SMALL_ATOMS, dtype=torch.float64)[None]
    truth = mt.MixingMeasure("sigmoid", "linear", "tanh", 2, rows[..., :3], rows[..., 3:])
    X, Y = mt.sample(truth, n=500, reps=4, seed=4)
    return truth, X, Y, mt.near_truth(truth, 2, seed=5, jitter=0.05)


def test_bounded_fit_stays_in_the_box_and_reports_the_active_bound(monkeypatch, tanh_problem):
    truth, X, Y, init = tanh_problem
    seen = []
    real = LeastSquaresProblem.evaluate

    def spy(self, theta, rows=None, **kw):
        seen.append(theta.detach().clone())
        return real(self, theta, rows, **kw)

    monkeypatch.setattr(LeastSquaresProblem, "evaluate", spy)
    fit = mt.fit_lse(X, Y, 2, "sigmoid", "tanh", init=init, bounds=Bounds(b=B_BOX))
    monkeypatch.undo()
    # every point the solver evaluated (starts, trials, accepted points) lies in the box
    problem = LeastSquaresProblem(X, Y, "sigmoid", "linear", "tanh", 2, "torch")
    is_b = torch.tensor([False, False, False] * 2 + [False, False, True] * 2)
    assert len(seen) > 10
    for theta in seen:
        assert float(theta[:, is_b].abs().max()) <= B_BOX
    assert bool(fit.bound_active.all())
    assert float(fit.measure.b.abs().max()) == pytest.approx(B_BOX, rel=0, abs=0)
    assert fit.stop_reason == ["tolerance"] * 4 and bool(fit.converged.all())
    # the projected gradient vanishes at a box-constrained minimum (to the ftol stop's
    # accuracy, measured <= 3e-8), the raw one does not: the box holds b
    assert float(fit.proj_grad_max.max()) < 1e-6
    raw = problem.evaluate(problem.pack(fit.measure), gauss_newton=False).jtr
    assert float((2 * raw.abs().amax(-1) / X.shape[1]).min()) > 1e-5


def test_groups_at_bound_names_the_group_on_its_face(tanh_problem):
    truth, X, Y, init = tanh_problem
    fit = mt.fit_lse(X, Y, 2, "sigmoid", "tanh", init=init, bounds=Bounds(b=B_BOX))
    faces = groups_at_bound(fit.measure, Bounds(b=B_BOX))
    # the fit above holds b on its face in every replication, nothing else has a box
    assert list(faces) == ["beta0", "beta1", "a", "b"]
    assert bool(faces["b"].all()) and not any(bool(faces[g].any()) for g in ("beta0", "beta1", "a"))
    # an entry on the face of another group, in one replication: that group there, only
    rows = torch.tensor(SMALL_ATOMS, dtype=torch.float64)[None].repeat(3, 1, 1)
    rows[1, 0, 1] = -2.0  # beta1 of atom 0, replication 1, on the lower face
    rows[2, 1, 0] = 2.0 * (1 - 1e-6)  # beta0 inside the box by more than the tolerance
    measure = mt.MixingMeasure("sigmoid", "linear", "tanh", 2, rows[..., :3], rows[..., 3:])
    faces = groups_at_bound(measure, Bounds(beta0=2.0, beta1=2.0))
    assert faces["beta1"].tolist() == [False, True, False]
    assert not bool(faces["beta0"].any()) and not bool(faces["b"].any())
    # the same answer as the solvers' own test on the packed parameters
    box = resolve_bounds(Bounds(beta0=2.0, beta1=2.0), score="linear", expert="tanh", d=2,
                         k_free=2, k=2, R=3, device=torch.device("cpu"))
    problem = LeastSquaresProblem(X[:1, :1], Y[:1, :1], "sigmoid", "linear", "tanh", 2, "torch")
    assert at_bound(problem.pack(measure), box).tolist() == [False, True, False]


def test_bounded_lm_agrees_with_scipys_bounded_solver(tanh_problem):
    truth, X, Y, init = tanh_problem
    box = Bounds(b=B_BOX)
    ours = mt.fit_lse(X, Y, 2, "sigmoid", "tanh", init=init, bounds=box)
    scipy = mt.fit_lse(X, Y, 2, "sigmoid", "tanh", init=init, bounds=box, backend="scipy")
    # two independent bounded optimisers (projected LM here, SciPy's reflective trust region)
    # reach the same constrained minimum; ftol 1e-10 limits the agreement of the objective
    # to ~1e-9 relative
    assert torch.allclose(ours.fit_loss, scipy.fit_loss, rtol=1e-8, atol=0)
    assert bool(scipy.bound_active.all())
    # without the box the fit is lower: the box binds
    free = mt.fit_lse(X, Y, 2, "sigmoid", "tanh", init=init)
    assert bool((free.fit_loss < ours.fit_loss * (1 - 1e-6)).all())
    assert not bool(free.bound_active.any())


def test_no_box_and_a_box_that_never_binds_give_the_same_iterates(tanh_problem):
    truth, X, Y, init = tanh_problem
    kw = dict(init=init, max_iter=30)
    plain = mt.fit_lse(X, Y, 2, "sigmoid", "tanh", **kw)
    wide = mt.fit_lse(X, Y, 2, "sigmoid", "tanh", bounds=box_bounds(truth, 2, 1e3), **kw)
    unbounded = mt.fit_lse(X, Y, 2, "sigmoid", "tanh", bounds=Bounds(), **kw)
    for other in (wide, unbounded):
        assert torch.equal(plain.measure.gate_params, other.measure.gate_params)
        assert torch.equal(plain.measure.expert_params, other.measure.expert_params)
        assert torch.equal(plain.n_iter, other.n_iter)
        assert plain.stop_test == other.stop_test
    assert not bool(wide.bound_active.any())


def test_unbounded_lm_is_the_old_algorithm(tanh_problem):
    """The solver before the box and the stop codes, written out: plain Marquardt-scaled LM with
    the same damping rule. The batched solver must take the same iterates, bit for bit."""
    from moe_theory.estimators.levenberg_marquardt import LAMBDA_MAX, LAMBDA_MIN, _damped_solve

    truth, X, Y, init = tanh_problem
    problem = LeastSquaresProblem(X[:1], Y[:1], "sigmoid", "linear", "tanh", 2, "torch")
    theta = problem.pack(init.draw(1, "sigmoid"))
    state = problem.evaluate(theta)
    loss, jtr, jtj, lam, n = state.loss, state.jtr, state.jtj, torch.full((1,), 1e-3,
                                                                        dtype=torch.float64), 500
    for _ in range(25):
        if float(2 * jtr.abs().max() / n) <= 1e-10:
            break
        delta, ok = _damped_solve(jtj, jtr, lam)
        trial_loss = problem.loss(theta + delta)
        better = bool(ok) and float(trial_loss) < float(loss)
        lam = (lam / 3).clamp_min(LAMBDA_MIN) if better else lam * 4
        if better:
            rel = float((loss - trial_loss) / loss)
            theta = theta + delta
            state = problem.evaluate(theta)
            loss, jtr, jtj = state.loss, state.jtr, state.jtj
            if rel < 1e-10 or float(delta.norm()) <= 1e-8 * (1e-8 + float((theta - delta).norm())):
                break
        elif float(lam) > LAMBDA_MAX:
            break
    fit = mt.fit_lse(X[:1], Y[:1], 2, "sigmoid", "tanh", init=init, max_iter=25, backend="torch")
    assert torch.equal(problem.pack(fit.measure), theta)


def test_a_cap_terminated_fit_is_not_converged(tanh_problem):
    truth, X, Y, init = tanh_problem
    fit = mt.fit_lse(X, Y, 2, "sigmoid", "tanh", init=init, max_iter=2)
    assert fit.stop_reason == ["max_iter"] * 4 and fit.stop_test == ["max_iter"] * 4
    assert not bool(fit.converged.any())
    assert bool((fit.proj_grad_max > 1e-10).all())
    done = mt.fit_lse(X, Y, 2, "sigmoid", "tanh", init=init, max_iter=200)
    assert bool(done.converged.all()) and set(done.stop_reason) == {"tolerance"}


def test_sgd_paper_runs_its_budget_and_is_never_converged(tanh_problem):
    truth, X, Y, init = tanh_problem
    fit = mt.fit_lse(X, Y, 2, "sigmoid", "tanh", init=init, algorithm="sgd-paper",
                     sgd=mt.SGDProtocol(epochs=1, batch_size=250), bounds=Bounds(b=B_BOX))
    assert fit.stop_test == ["epochs"] * 4 and fit.stop_reason == ["max_iter"] * 4
    assert not bool(fit.converged.any())
    assert float(fit.measure.b.abs().max()) <= B_BOX


@pytest.mark.parametrize("algorithm", ["adam", "lbfgs"])
def test_first_order_fits_report_why_they_stopped(tanh_problem, algorithm):
    truth, X, Y, init = tanh_problem
    fit = mt.fit_lse(X, Y, 2, "sigmoid", "tanh", init=init, algorithm=algorithm, max_iter=5)
    assert set(fit.stop_reason) <= {"tolerance", "max_iter"}
    assert fit.converged.tolist() == [r == "tolerance" for r in fit.stop_reason]
    assert bool(torch.isfinite(fit.proj_grad_max).all())


def test_adam_stays_in_the_box(tanh_problem):
    truth, X, Y, init = tanh_problem
    fit = mt.fit_lse(X, Y, 2, "sigmoid", "tanh", init=init, algorithm="adam", max_iter=50,
                     bounds=Bounds(b=B_BOX))
    assert float(fit.measure.b.abs().max()) <= B_BOX


def test_a_non_finite_start_is_reported_not_converged(tanh_problem):
    truth, X, Y, _ = tanh_problem
    # linear experts of size 1e200: the squared residuals overflow
    start = mt.MixingMeasure("sigmoid", "linear", "linear", 2, truth.gate_params,
                             truth.expert_params * 1e200)
    fit = mt.fit_lse(X[:1], Y[:1], 2, "sigmoid", "linear", init=start)
    assert fit.stop_reason == ["non_finite"] and not bool(fit.converged.any())


def test_box_bounds_rule():
    truth = mt.get_setting("small-sparse-relu").truth()
    box = box_bounds(truth, 3, 10.0)
    # b*: 0.2, -0.1 -> the floor 1 applies; a*: up to 1.2; beta1 = 0 (sparse) -> floor;
    # beta0 = 0.4, -0.2, and the split copies of atom 0 get logit(sigma(0.4) / 2) = -0.46...
    split_beta0 = math.log(torch.sigmoid(torch.tensor(0.4)).item() / 2
                           / (1 - torch.sigmoid(torch.tensor(0.4)).item() / 2))
    assert box.b == 10.0 and box.beta1 == 10.0 and box.a == pytest.approx(12.0)
    assert box.beta0 == 10.0 and abs(split_beta0) < 1
    assert box_bounds(truth, 3, math.inf).unbounded
    # the near-truth start's centre is inside the box
    lo, hi = resolve_bounds(box, score="linear", expert="relu", d=2, k_free=3, k=3, R=1,
                            device=torch.device("cpu"))
    problem = LeastSquaresProblem(torch.zeros(1, 1, 2, dtype=torch.float64),
                                  torch.zeros(1, 1, dtype=torch.float64), "sigmoid", "linear",
                                  "relu", 3, "torch")
    centre = problem.pack(mt.near_truth(truth, 3, jitter=0.0).draw(1, "sigmoid"))
    assert bool(((centre > lo) & (centre < hi)).all())


def test_box_bounds_per_group():
    """Each group's half-width is its own multiple of the same scale as a single multiple's."""
    truth = mt.get_setting("small-sparse-relu").truth()
    scales = {"beta0": 10.0, "beta1": 2.0, "a": 3.0, "b": math.inf}
    box = box_bounds(truth, 3, scales)
    for group, scale in scales.items():
        assert getattr(box, group) == pytest.approx(
            scale / 10.0 * getattr(box_bounds(truth, 3, 10.0), group))
    # a group the table leaves out takes the default multiple
    assert box_bounds(truth, 3, {"b": 3.0}).a == box_bounds(truth, 3).a
    assert box_bounds(truth, 3, dict.fromkeys(("beta0", "beta1", "A", "a", "b"),
                                              math.inf)).unbounded


@pytest.mark.parametrize(
    ("call", "field"),
    [(lambda: Bounds(beta0=0.0), "bounds.beta0"),
     (lambda: box_bounds(mt.get_setting("small-sparse-relu").truth(), 3, {"gamma": 2.0}),
      "bound_scale.gamma"),
     (lambda: box_bounds(mt.get_setting("small-sparse-relu").truth(), 3, {"a": -2.0}),
      "bound_scale.a"), (lambda: Bounds(a=-1.0), "bounds.a"),
     (lambda: Bounds(b=float("nan")), "bounds.b"),
     (lambda: box_bounds(mt.get_setting("small-sparse-relu").truth(), 3, 0.0), "bound_scale"),
     (lambda: box_bounds(mt.get_setting("small-sparse-relu").truth(), 3, -2.0), "bound_scale")],
)
def test_bad_bounds_name_the_field(call, field):
    with pytest.raises(ValueError, match=field):
        call()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"bounds": (torch.ones(12), -torch.ones(12))}, "bounds"),
     ({"bounds": (torch.full((12,), float("nan")), torch.ones(12))}, "bounds"),
     ({"bounds": (-torch.ones(5), torch.ones(5))}, "bounds"),
     ({"ftol": -1.0}, "ftol"), ({"gtol": float("nan")}, "gtol"), ({"xtol": float("inf")}, "xtol"),
     ({"noise_var": 0.0}, "noise_var"), ({"noise_var": float("nan")}, "noise_var"),
     ({"algorithm": "lbfgs", "bounds": Bounds(b=1.0)}, "bounds")],
)
def test_bad_fit_arguments_name_the_field(tanh_problem, kwargs, field):
    truth, X, Y, init = tanh_problem
    with pytest.raises(ValueError, match=field):
        mt.fit_lse(X, Y, 2, "sigmoid", "tanh", init=init, **kwargs)
