"""Gates, scores, experts and mixing measures (docs/theory.md#gates-scores-and-experts)."""

import json

import pytest
import torch

from moe_theory import models
from moe_theory.measure import MixingMeasure

torch.manual_seed(0)


def random_measure(gate="sigmoid", score="linear", expert="relu", R=2, k=3, d=2):
    pg, pe = models.gate_dim(score, d), models.get_expert(expert).dim(d)
    return MixingMeasure(gate, score, expert, d, torch.randn(R, k, pg, dtype=torch.float64),
                         torch.randn(R, k, pe, dtype=torch.float64))


def test_softmax_gates_sum_to_one_and_are_shift_invariant():
    s = torch.randn(4, 50, 5, dtype=torch.float64)
    pi = models.gate_probabilities(s, "softmax")
    assert torch.allclose(pi.sum(-1), torch.ones(4, 50, dtype=torch.float64))
    shifted = models.gate_probabilities(s + torch.randn(4, 50, 1, dtype=torch.float64), "softmax")
    assert torch.allclose(pi, shifted)


def test_sigmoid_gates_lie_in_open_unit_interval_and_do_not_compete():
    s = 5 * torch.randn(3, 40, 4, dtype=torch.float64)
    pi = models.gate_probabilities(s, "sigmoid")
    assert bool((pi > 0).all() and (pi < 1).all())
    s2 = s.clone()
    s2[..., 0] += 3.0  # raising one atom's score leaves the others' gates alone
    assert torch.equal(models.gate_probabilities(s2, "sigmoid")[..., 1:], pi[..., 1:])


@pytest.mark.parametrize("name", ["linear", "relu", "gelu", "tanh", "poly2", "poly3", "constant"])
def test_expert_derivative_matches_autograd(name):
    expert = models.get_expert(name)
    z = torch.linspace(-2, 2, 41, dtype=torch.float64).add(0.013).requires_grad_(True)
    h, dh = expert.value_and_derivative(z)
    (grad,) = torch.autograd.grad(h.sum(), z)
    assert torch.allclose(dh, grad, atol=1e-12)


def test_gelu_is_the_exact_erf_form():
    z = torch.linspace(-3, 3, 13, dtype=torch.float64)
    assert torch.allclose(models.get_expert("gelu")(z), torch.nn.functional.gelu(z), atol=1e-14)


@pytest.mark.parametrize("score", models.SCORES)
def test_score_features_reproduce_the_quadratic_form(score):
    d = 3
    X = torch.randn(2, 7, d, dtype=torch.float64)
    beta0 = torch.randn(2, 1, dtype=torch.float64)
    beta1 = torch.randn(2, 1, d, dtype=torch.float64)
    A = torch.randn(2, 1, d, d, dtype=torch.float64)
    A = A + A.transpose(-1, -2)
    m = MixingMeasure.from_parts(
        gate="sigmoid", score=score, expert="linear", beta0=beta0, b=torch.zeros(2, 1),
        beta1=beta1 if models.score_has_linear(score) else None,
        A=A if models.score_has_quadratic(score) else None, a=torch.zeros(2, 1, d), d=d)
    s = (models.score_features(X, score) * m.gate_params[:, :1]).sum(-1)
    expected = beta0
    if models.score_has_linear(score):
        expected = expected + torch.einsum("rnd,rd->rn", X, beta1[:, 0])
    if models.score_has_quadratic(score):
        expected = expected + torch.einsum("rnd,rde,rne->rn", X, A[:, 0], X)
    assert torch.allclose(s, expected)


def test_regression_function_by_hand():
    m = MixingMeasure.from_dict({"gate": "sigmoid", "score": "linear", "expert": "relu", "d": 1,
                                 "atoms": [{"beta0": 0.5, "beta1": [1.0], "A": None, "a": [2.0],
                                            "b": -0.5},
                                           {"beta0": -1.0, "beta1": [0.0], "A": None, "a": [-1.0],
                                            "b": 0.25}]})
    x = 0.75
    expected = torch.sigmoid(torch.tensor(0.5 + x)) * max(2 * x - 0.5, 0) + torch.sigmoid(
        torch.tensor(-1.0)) * max(-x + 0.25, 0)
    assert float(m(torch.tensor([[[x]]], dtype=torch.float64))) == pytest.approx(float(expected))


def test_softmax_measure_is_put_in_the_pinned_gauge_without_changing_f():
    gp = torch.randn(2, 3, 3, dtype=torch.float64)
    ep = torch.randn(2, 3, 3, dtype=torch.float64)
    m = MixingMeasure("softmax", "linear", "relu", 2, gp, ep)
    assert torch.equal(m.gate_params[:, -1], torch.zeros(2, 3, dtype=torch.float64))
    X = torch.rand(2, 20, 2, dtype=torch.float64)
    ref = models.regression_function(X, gp, ep, gate="softmax", score="linear",
                                     expert=models.get_expert("relu"))
    assert torch.allclose(m(X), ref)


@pytest.mark.parametrize("score", models.SCORES)
@pytest.mark.parametrize("expert", ["relu", "constant"])
def test_json_round_trip(score, expert):
    m = random_measure("softmax", score, expert, R=3, k=2, d=2)
    back = MixingMeasure.from_json(m.to_json())
    assert torch.allclose(back.gate_params, m.gate_params)
    assert torch.allclose(back.expert_params, m.expert_params)
    one = m.select(1).to_dict()
    assert isinstance(one, dict)
    assert (one["atoms"][0]["A"] is None) == (score == "linear")
    assert (one["atoms"][0]["a"] is None) == (expert == "constant")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(gate="tanh"), "gate"),
        (lambda d: d.update(expert="swish"), "expert"),
        (lambda d: d.update(score="cubic"), "score"),
        (lambda d: d["atoms"][0].update(beta1=[0.0]), "atoms[0].beta1"),
        (lambda d: d["atoms"][0].update(b=None), "atoms[0].b"),
        (lambda d: d["atoms"][0].update(beta0=float("nan")), "atoms[0].beta0"),
        (lambda d: d.pop("d"), "d"),
        # torch read true as 1.0 ("d": true was refused, "beta0": true was not)
        (lambda d: d["atoms"][0].update(beta0=True), "atoms[0].beta0"),
        (lambda d: d["atoms"][0].update(a=[True, 0.5]), "atoms[0].a"),
        (lambda d: d["atoms"][0].update(beta0=10**400), "atoms[0].beta0"),
        # a key the format lacks was read as absent, and the rest measured (a loss of 0.0)
        (lambda d: d.update(foo=1), "foo: unknown key"),
        (lambda d: d["atoms"][0].update(beta_0=0.5), "atoms[0].beta_0: unknown key"),
    ],
)
def test_malformed_measure_json_names_the_field(mutate, field):
    good = {"gate": "sigmoid", "score": "linear", "expert": "relu", "d": 2,
            "atoms": [{"beta0": 0.1, "beta1": [0.0, 0.2], "A": None, "a": [1.0, -0.5], "b": 0.3}]}
    data = json.loads(json.dumps(good))
    mutate(data)
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        MixingMeasure.from_dict(data)


def test_dimension_mismatch_between_measure_and_X_is_named():
    m = random_measure(d=2)
    with pytest.raises(ValueError, match="X: last dimension"):
        m(torch.rand(2, 5, 3, dtype=torch.float64))


@pytest.mark.parametrize(("change", "field"), [
    ({"d": 0}, "d"), ({"d": -1}, "d"), ({"d": 2.5}, "d"), ({"d": True}, "d"),
    ({"k_true": 0}, "k_true"), ({"k_fit": 0}, "k_fit"), ({"k_fit": "3"}, "k_fit"),
    ({"noise_var": float("nan")}, "noise_var"), ({"noise_var": -1}, "noise_var"),
    ({"beta1_sd": float("nan")}, "beta1_sd"), ({"expert_sd": -1}, "expert_sd"),
    ({"A_sd": float("inf")}, "A_sd"), ({"beta0_sd": True}, "beta0_sd"),
    ({"truth_seed": -1}, "truth_seed"), ({"truth_seed": 1.5}, "truth_seed"),
    ({"fit_gates": "sigmoid"}, "fit_gates"), ({"fit_gates": ()}, "fit_gates"),
    ({"split": (0.5,)}, "split"), ({"name": ""}, "name"), ({"description": None}, "description"),
    ({"atoms": ((0.0,) * 6,)}, "atoms"), ({"atoms": ((float("nan"),) * 6,) * 2}, "atoms"),
    ({"k_fit": 1}, "k_fit: must be >= k_true = 2")])
def test_a_bad_setting_field_is_named_at_construction(change, field):
    """Users register their own settings: d = 0 or noise_var = -1 were accepted, beta1_sd = NaN
    gave a truth of NaN parameters, and d = -1 or expert_sd = -1 failed in numpy's words."""
    from dataclasses import replace

    from moe_theory.settings import get_setting

    with pytest.raises(ValueError, match=f"^{field}"):
        replace(get_setting("small-sparse-relu"), **change)


def test_every_registered_setting_passes_its_checks_unchanged():
    """The checks keep every registered setting as it was (to_dict() keys G_bar's cache)."""
    from dataclasses import asdict, replace

    from moe_theory.settings import get_setting, list_settings

    for name in list_settings():
        setting = get_setting(name)
        again = replace(setting)
        assert again == setting and json.dumps(asdict(again)) == json.dumps(setting.to_dict())
