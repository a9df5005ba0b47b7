"""The model is the model of docs/theory.md: the regression function against a plain-numpy
implementation of the docs' formulas, the named settings against the docs' table and regimes,
the noise and inputs of the data, the JSON format, the softmax gauge pin and the near-truth split.

Tolerances are stated where they are used, with why they hold.
"""

import itertools
import math

import numpy as np
import pytest
import torch

from moe_theory import models
from moe_theory.data import sample
from moe_theory.initialization import all_splits, near_truth, resolved_split, split_atoms
from moe_theory.measure import MixingMeasure
from moe_theory.settings import Setting, get_setting, list_settings

EXPERTS = ("linear", "relu", "gelu", "tanh", "poly1", "poly2", "poly3", "constant")

# ---- the docs' regression function, in numpy, from the named parameters -------------------------

_erf = np.vectorize(math.erf)


def _activation(name, z):
    if name == "linear":
        return z
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "gelu":  # the exact, erf-based GELU: z Phi(z)
        return z * 0.5 * (1.0 + _erf(z / math.sqrt(2.0)))
    if name == "tanh":
        return np.tanh(z)
    assert name.startswith("poly")
    return z ** int(name[4:])


def f_numpy(X, gate, score, expert, beta0, beta1, A, a, b):
    """``f_G(x) = sum_i pi_i(x) h(x; eta_i)`` of docs/theory.md, one measure.

    X (n, d); beta0 (k,); beta1 (k, d); A (k, d, d) symmetric; a (k, d); b (k,). The score is
    written as the docs write it (``x^T A x``, not the packed triangle), and softmax on the raw
    (unpinned) scores."""
    s = np.broadcast_to(beta0, (X.shape[0], beta0.shape[0])).copy()
    if score in ("linear", "quadratic"):
        s += X @ beta1.T
    if score in ("quadratic", "monomial"):
        s += np.einsum("nu,kuv,nv->nk", X, A, X)
    if gate == "softmax":
        e = np.exp(s - s.max(1, keepdims=True))
        pi = e / e.sum(1, keepdims=True)
    else:
        pi = 1.0 / (1.0 + np.exp(-s))
    h = np.broadcast_to(b, s.shape) if expert == "constant" else _activation(expert, X @ a.T + b)
    return (pi * h).sum(1)


def _random_parts(rng, R, k, d):
    A = rng.normal(size=(R, k, d, d))
    return dict(beta0=rng.normal(size=(R, k)), beta1=rng.normal(size=(R, k, d)),
                A=0.5 * (A + A.transpose(0, 1, 3, 2)), a=rng.normal(size=(R, k, d)),
                b=rng.normal(size=(R, k)))


def _measure(gate, score, expert, parts):
    t = torch.as_tensor
    return MixingMeasure.from_parts(
        gate=gate, score=score, expert=expert, d=parts["a"].shape[-1], beta0=t(parts["beta0"]),
        b=t(parts["b"]), beta1=t(parts["beta1"]) if models.score_has_linear(score) else None,
        A=t(parts["A"]) if models.score_has_quadratic(score) else None,
        a=t(parts["a"]) if expert != "constant" else None)


@pytest.mark.parametrize("x_dist", ["uniform", "normal"])
@pytest.mark.parametrize("gate,score,expert",
                         list(itertools.product(models.GATES, models.SCORES, EXPERTS)))
def test_regression_function_is_the_docs_formula(gate, score, expert, x_dist):
    """Every gate x score x expert, R = 2 measures of k = 4 atoms in d = 3, each replication
    its own parameters and inputs.

    Tolerance ``1e-12 (1 + max |f|)``: both sides evaluate the same finite sums in float64,
    in other orders (packed features against ``x^T A x``; one einsum against matmuls; softmax
    after the gauge pin against raw scores with the max subtracted), and exp, erf and tanh are
    accurate to a few ulp, so they agree to ~1e-15 relative (measured: 5e-16); any formula
    error (a missing factor 2 on an off-diagonal of A, sd for variance, a sign) moves f by
    O(0.1)."""
    rng = np.random.default_rng([7, models.GATES.index(gate), models.SCORES.index(score),
                                 EXPERTS.index(expert), x_dist == "normal"])
    R, k, d, n = 2, 4, 3, 300
    parts = _random_parts(rng, R, k, d)
    X = rng.uniform(-1, 1, (R, n, d)) if x_dist == "uniform" else rng.normal(size=(R, n, d))
    got = _measure(gate, score, expert, parts)(torch.as_tensor(X)).numpy()
    for r in range(R):
        want = f_numpy(X[r], gate, score, expert, *(parts[key][r] for key in
                                                   ("beta0", "beta1", "A", "a", "b")))
        np.testing.assert_allclose(got[r], want, rtol=0, atol=1e-12 * (1 + np.abs(want).max()))


def test_an_asymmetric_A_is_read_as_its_symmetric_part():
    """``x^T A x`` sees only ``(A + A^T) / 2``; from_parts stores that."""
    rng = np.random.default_rng(1)
    parts = _random_parts(rng, 1, 3, 3)
    asym = rng.normal(size=(1, 3, 3, 3))
    X = rng.uniform(-1, 1, (1, 50, 3))
    m = _measure("sigmoid", "quadratic", "gelu", dict(parts, A=asym))
    want = f_numpy(X[0], "sigmoid", "quadratic", "gelu", parts["beta0"][0], parts["beta1"][0],
                   asym[0], parts["a"][0], parts["b"][0])
    np.testing.assert_allclose(m(torch.as_tensor(X))[0].numpy(), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("score", models.SCORES)
def test_softmax_gauge_pin_zeroes_the_last_score_and_keeps_f(score):
    """docs/theory.md, the softmax gauge pin: the last atom's score parameters are zero after
    construction, every atom is shifted by them, and f_G is the raw parameters' (tolerance as
    in the formula test)."""
    rng = np.random.default_rng(2)
    parts = _random_parts(rng, 2, 4, 2)
    raw = _measure("sigmoid", score, "relu", parts).gate_params  # sigmoid: stored as given
    m = _measure("softmax", score, "relu", parts)
    assert torch.equal(m.gate_params[:, -1], torch.zeros_like(m.gate_params[:, -1]))
    torch.testing.assert_close(m.gate_params, raw - raw[:, -1:], rtol=0, atol=0)
    X = rng.uniform(-1, 1, (2, 80, 2))
    for r in range(2):
        want = f_numpy(X[r], "softmax", score, "relu", *(parts[key][r] for key in
                                                         ("beta0", "beta1", "A", "a", "b")))
        np.testing.assert_allclose(m(torch.as_tensor(X))[r].numpy(), want, rtol=0, atol=1e-12)


# ---- JSON ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("gate,score,expert",
                         list(itertools.product(models.GATES, models.SCORES,
                                                ("relu", "poly3", "constant"))))
def test_json_round_trip_is_exact(gate, score, expert):
    """to_json/from_json and to_json_rows/from_json_rows give the same float64 numbers bit for
    bit (repr round-trips; a symmetric A comes back as (A + A^T)/2 = A exactly), over many
    orders of magnitude."""
    rng = np.random.default_rng(3)
    parts = _random_parts(rng, 3, 4, 3)
    parts = {key: v * 10.0 ** rng.integers(-12, 12, v.shape) if key != "A" else v
             for key, v in parts.items()}
    m = _measure(gate, score, expert, parts)
    for back in (MixingMeasure.from_json(m.to_json()),
                 MixingMeasure.from_json_rows(m.to_json_rows())):
        assert (back.gate, back.score, back.expert, back.d) == (gate, score, expert, 3)
        assert torch.equal(back.gate_params, m.gate_params)
        assert torch.equal(back.expert_params, m.expert_params)


# ---- named settings ------------------------------------------------------------------------------

_N24 = dict(d=32, k_true=8, k_fit=9, score="linear", noise_var=0.01, x_dist="uniform",
            truth_seed=2024, beta0_sd=math.sqrt(0.01 / 32), expert_sd=math.sqrt(1 / 32))


def _docs_table():
    """The docs' "Named settings" section, setting by setting."""
    table = {}
    for expert in ("relu", "linear"):
        table[f"nguyen2024-dense-{expert}"] = dict(
            _N24, truth_gate="softmax", expert=expert, regime="dense",
            beta1_sd=math.sqrt(0.01 / 32))
        table[f"nguyen2024-sparse-{expert}"] = dict(
            _N24, truth_gate="sigmoid", expert=expert, regime="sparse", beta1_sd=0.0)
    for expert, s, var, nu in (("relu", 0.7, 3, 0.02), ("gelu", 1.5, 3, 0.02),
                               ("linear", 1.0, 10, 0.2)):
        table[f"nguyen2024-measurable-{expert}"] = dict(
            d=8, k_true=3, k_fit=4, truth_gate="softmax", score="linear", expert=expert,
            regime="dense", beta0_sd=0.5, beta1_sd=math.sqrt(var / 8), expert_sd=s,
            noise_var=nu, truth_seed=2024, x_dist="uniform")
    table["nguyen2024-measurable-gelu-d4"] = dict(
        table["nguyen2024-measurable-gelu"], d=4, beta1_sd=math.sqrt(5 / 4), truth_seed=2)
    for expert in ("relu", "linear"):
        table[f"small-k3-dense-{expert}"] = dict(
            d=2, k_true=3, k_fit=4, truth_gate="softmax", score="linear", expert=expert,
            regime="dense", noise_var=1e-4, x_dist="uniform")
        for regime, gate in (("sparse", "sigmoid"), ("dense", "softmax")):
            table[f"small-{regime}-{expert}"] = dict(
                d=2, k_true=2, k_fit=3, truth_gate=gate, score="linear", expert=expert,
                regime=regime, x_dist="uniform")
    for score, gate, regime, expert in itertools.product(
            ("quadratic", "monomial"), ("softmax", "sigmoid"), ("dense", "sparse"),
            ("gelu", "linear", "poly2")):
        k = 3 if gate == "softmax" else 2
        table[f"yan2025-{score}-{gate}-{regime}-{expert}"] = dict(
            d=2, k_true=k, k_fit=k + 1, truth_gate=gate, score=score, expert=expert,
            regime=regime, noise_var=1e-4, x_dist="uniform")
    return table


DOCS_TABLE = _docs_table()


def test_the_registry_holds_the_documented_settings():
    assert sorted(list_settings()) == sorted(DOCS_TABLE)


@pytest.mark.parametrize("name", sorted(DOCS_TABLE))
def test_named_setting_matches_the_docs(name):
    setting = get_setting(name)
    for key, value in DOCS_TABLE[name].items():
        assert getattr(setting, key) == pytest.approx(value, rel=1e-15, abs=0), key
    truth = setting.truth()
    assert (truth.gate, truth.score, truth.expert, truth.d, truth.k, truth.R) == (
        setting.truth_gate, setting.score, setting.expert, setting.d, setting.k_true, 1)


def _slopes(measure):
    """max |beta1, A| per atom of a batch-of-one measure, in its stored (pinned) gauge."""
    return measure.gate_params[0, :, 1:].abs().amax(-1)


def _design(d, n=4000, seed=0):
    return torch.as_tensor(np.random.default_rng(seed).uniform(-1, 1, (1, n, d)))


@pytest.mark.parametrize("name", sorted(DOCS_TABLE))
def test_named_truth_is_in_its_documented_regime(name):
    """docs/theory.md#regimes. Sparse: every over-specified atom (the fit's split) has
    ``beta1* = 0, A* = 0``, every atom with ``sparse_zero = "all"``; a sigmoid truth then
    splits to k atoms with the same f. Dense: some over-specified atom has a slope; softmax
    still splits exactly, sigmoid does not. Exact here means to 1e-13 absolute on f of size
    O(1-10), a few hundred ulp (measured up to 1.1e-14, poly2); the sigmoid dense truths miss
    by O(1) (measured 3.6-22)."""
    setting = get_setting(name)
    truth = setting.truth()
    over = sorted(set(resolved_split(truth, setting.k_fit, setting.split)))
    slopes = _slopes(truth)
    if setting.regime == "sparse":
        zero = range(setting.k_true) if setting.sparse_zero == "all" else over
        assert all(float(slopes[i]) == 0 for i in zero)
    else:
        assert any(float(slopes[i]) > 0.01 for i in over)  # N24's: 0.057, "tiny" (docs)
    X = _design(setting.d)
    gap = float((split_atoms(truth, setting.k_fit, setting.split)(X) - truth(X)).abs().max())
    exact = setting.truth_gate == "softmax" or setting.regime == "sparse"
    assert (gap < 1e-13) if exact else (gap > 1e-3)
    # the reference a sigmoid/softmax fit of the truth's own gate is measured against
    assert setting.reference_kind(setting.truth_gate) == ("G*" if exact else "G_bar")


def _user_setting(**kw):
    params = dict(name="audit-user", truth_gate="softmax", score="linear", expert="gelu", d=2,
                  k_true=3, k_fit=4, regime="sparse", beta0_sd=0.5, beta1_sd=1.0, expert_sd=1.0,
                  truth_seed=1, sparse_zero="over_specified")
    params.update(kw)
    return Setting(**params)


@pytest.mark.parametrize("atoms", [None, ((0.1, 1.0, 2.0, 1.0, 0.0, 0.0),
                                          (0.2, -1.0, 0.5, 0.0, 1.0, 0.0),
                                          (0.0, 0.3, 0.3, 1.0, 1.0, 1.0))])
def test_sparse_softmax_truth_zeroes_the_over_specified_slopes_in_the_pinned_gauge(atoms):
    """A user's sparse softmax setting with ``sparse_zero = "over_specified"``: the split atom's
    slopes were zeroed before the measure pinned the last atom's score, so they came out as
    minus the last atom's (-0.58, -0.36 for the drawn truth), and the truth was not in the
    sparse regime of the docs. The other atoms keep their slopes relative to the pinned one."""
    setting = _user_setting(atoms=atoms)
    truth = setting.truth()
    over = sorted(set(resolved_split(truth, setting.k_fit, setting.split)))
    assert over == [0]
    assert float(_slopes(truth)[0]) == 0
    assert float(_slopes(truth)[1]) > 0.1
    assert torch.equal(truth.gate_params[0, -1], torch.zeros_like(truth.gate_params[0, -1]))


@pytest.mark.parametrize("score,sds", [("monomial", dict(beta1_sd=1.0, A_sd=0.0)),
                                       ("linear", dict(beta1_sd=0.0, A_sd=1.0))])
def test_a_dense_setting_needs_a_slope_its_score_uses(score, sds):
    """A "dense" setting whose only nonzero slope sd is one its score does not use drew a truth
    with constant gates (not the docs' dense regime), measured against a G_bar that a sigmoid
    fit does not need."""
    with pytest.raises(ValueError, match="dense setting needs gate slopes"):
        _user_setting(truth_gate="sigmoid", score=score, regime="dense", **sds)


# ---- data ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("x_dist", ["uniform", "normal"])
@pytest.mark.parametrize("nu", [1e-4, 0.25])
def test_noise_has_variance_nu_and_inputs_their_law(nu, x_dist):
    """``Y = f(X) + eps``, ``eps ~ N(0, nu)`` with nu a variance, inputs Uniform[-1, 1]^d or
    N(0, I). n = 2 * 10^5 per replication: the sample variance of the residuals is nu within
    a relative 0.02, 6 sd of its sqrt(2 / n) = 0.0032 (a standard deviation taken for the
    variance is off by a factor 2 at nu = 0.25 and 100 at 1e-4); the inputs' mean and variance
    within 6 sd of theirs over the 2 * 2 * 10^5 * 2 numbers. Fixed seeds: the test is
    deterministic."""
    truth = get_setting("small-k3-dense-relu").truth()
    n, reps = 200_000, 2
    X, Y = sample(truth, n, reps, seed=11, noise_var=nu, x_dist=x_dist)
    assert X.shape == (reps, n, 2) and Y.shape == (reps, n)
    eps = Y - truth(X)
    assert bool(((eps.var(1) / nu - 1).abs() < 0.02).all()), eps.var(1) / nu
    assert bool((eps.mean(1).abs() < 6 * math.sqrt(nu / n)).all())
    N = X.numel()
    var, var_of_sq = (1 / 3, 4 / 45) if x_dist == "uniform" else (1.0, 2.0)
    assert abs(float(X.mean())) < 6 * math.sqrt(var / N)
    assert abs(float(X.var()) - var) < 6 * math.sqrt(var_of_sq / N)
    if x_dist == "uniform":
        assert float(X.min()) >= -1 and float(X.max()) <= 1
    else:
        assert float(X.abs().max()) > 3  # not a bounded law


# ---- near-truth split ----------------------------------------------------------------------------


@pytest.mark.parametrize("gate,score,expert",
                         list(itertools.product(models.GATES, models.SCORES,
                                                ("relu", "gelu", "poly2", "constant"))))
def test_near_truth_split_without_jitter_is_the_truth(gate, score, expert):
    """docs/theory.md#estimator: every split of a k* = 3 truth to k = 3..5 atoms, jitter 0,
    has the truth's f to 1e-13 absolute (rounding of log/logit and sums, measured 5e-15);
    softmax for any truth, the pinned atom's copies included, the pinned atom staying last
    with the truth's expert; sigmoid where the gates are constant (the sparse regime)."""
    rng = np.random.default_rng(5)
    parts = _random_parts(rng, 1, 3, 2)
    if gate == "sigmoid":
        parts["beta1"][:] = 0
        parts["A"][:] = 0
    truth = _measure(gate, score, expert, parts)
    X = _design(2)
    for k in (3, 4, 5):
        for split in all_splits(3, k):
            start = near_truth(truth, k, jitter=0.0, split=split).draw(1, gate)
            assert start.k == k
            assert float((start(X) - truth(X)).abs().max()) < 1e-13, (k, split)
            if gate == "softmax":
                assert torch.equal(start.gate_params[0, -1],
                                   torch.zeros_like(start.gate_params[0, -1]))
                assert torch.equal(start.expert_params[0, -1], truth.expert_params[0, -1])
