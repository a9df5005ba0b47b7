"""Self-attention as a quadratic-gating MoE (A24, docs/theory.md#attention-rows-as-moe), its
regularity (R25), and the reproduce hook that draws the attention figures."""

import json
import math

import pandas as pd
import pytest
import torch

from moe_theory import regularity, reproduce
from moe_theory.attention_moe import attention_as_moe, attention_rows
from moe_theory.studies import attention_regularity, attention_teacher

#: The map and attention agree to rounding (docs/theory.md#attention-rows-as-moe); both sides are
#: float64 sums of N products.
ROUNDING = 1e-12


def projections(d=3, D=4, d_v=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(d, m, generator=gen, dtype=torch.float64) for m in (D, D, d_v))


@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
def test_attention_rows_equal_the_moe_rows(gate):
    W_Q, W_K, W_V = projections()
    N = 5
    X = torch.randn(7, N, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    moe = attention_as_moe(W_Q, W_K, W_V, N, gate=gate)
    attention = attention_rows(X, W_Q, W_K, W_V, gate=gate)
    torch.testing.assert_close(moe(X), attention, rtol=ROUNDING, atol=ROUNDING)
    # row i, output c is a package MixingMeasure (monomial score, linear experts) at x_bar
    x_bar = X.reshape(1, 7, N * 3)
    for i in range(N):
        for c in range(W_V.shape[1]):
            measure = moe.row_measure(i, c)
            assert (measure.score, measure.expert, measure.k, measure.d) == ("monomial", "linear",
                                                                             N, N * 3)
            torch.testing.assert_close(measure(x_bar)[0], attention[:, i, c], rtol=ROUNDING,
                                       atol=ROUNDING)


def test_bias_acts_on_sigmoid_and_cancels_under_softmax():
    W_Q, W_K, W_V = projections()
    X = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sig = [attention_as_moe(W_Q, W_K, W_V, 4, gate="sigmoid", bias=b)(X) for b in (0.0, -2.0)]
    soft = [attention_as_moe(W_Q, W_K, W_V, 4, gate="softmax", bias=b)(X) for b in (0.0, -2.0)]
    assert not torch.allclose(sig[0], sig[1])
    torch.testing.assert_close(soft[0], soft[1], rtol=ROUNDING, atol=ROUNDING)
    # default bias is R25's -log N, the attention kernel's default too
    torch.testing.assert_close(attention_as_moe(W_Q, W_K, W_V, 4)(X),
                               attention_as_moe(W_Q, W_K, W_V, 4, bias=-math.log(4))(X))


@pytest.mark.parametrize(("change", "field"), [
    ({"N": 0}, "N"),
    ({"W_K": torch.zeros(3, 5, dtype=torch.float64)}, "W_K"),
    ({"W_V": torch.zeros(2, 2, dtype=torch.float64)}, "W_V"),
    ({"W_Q": torch.zeros(3, dtype=torch.float64)}, "W_Q"),
    ({"gate": "relu"}, "gate"),
    ({"bias": float("nan")}, "bias"),
])
def test_map_bad_input_names_the_field(change, field):
    W_Q, W_K, W_V = projections()
    kwargs = {"W_Q": W_Q, "W_K": W_K, "W_V": W_V, "N": 4, "gate": "sigmoid", **change}
    with pytest.raises(ValueError, match=rf"^{field}:"):
        attention_as_moe(**kwargs)


def test_moe_rejects_a_sequence_of_the_wrong_length():
    moe = attention_as_moe(*projections(), 4)
    with pytest.raises(ValueError, match="^X:"):
        moe(torch.zeros(1, 5, 3, dtype=torch.float64))


@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
def test_power_iteration_finds_the_jacobian_norm_and_the_bound_holds(gate):
    W_Q, W_K, W_V = projections(d=4, D=4, d_v=4, seed=3)
    X = torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    bias = -math.log(6)
    lip = regularity.local_lipschitz(X, W_Q, W_K, W_V, gate=gate, bias=bias, rtol=1e-12)

    def jacobian_norm(x):
        def f(z):
            return regularity.attention_map(z[None], W_Q, W_K, W_V, gate=gate, bias=bias,
                                            scale=0.5)[0]
        J = torch.autograd.functional.jacobian(f, x).reshape(24, 24)
        return torch.linalg.matrix_norm(J, ord=2)

    exact = torch.stack([jacobian_norm(x) for x in X])
    torch.testing.assert_close(lip, exact, rtol=1e-6, atol=0)
    if gate == "sigmoid":
        assert bool((regularity.sigmoid_local_bound(X, W_Q, W_K, W_V, bias=bias) >= lip).all())


def test_reproduce_runs_the_attention_experiments(tmp_path, monkeypatch):
    # tiny studies: this checks the hook and the files, not the science
    monkeypatch.setattr(attention_regularity, "FAST_STUDY", attention_regularity.RegularityStudy(
        d=4, seq_lens=(4, 8), radii=(1.0, 2.0), n_for_radius=4, sequences=2, iters=20))
    monkeypatch.setattr(attention_teacher, "FAST_STUDY", attention_teacher.TeacherStudentStudy(
        d=2, d_v=2, seq_len=3, n=(16, 32), reps=2, max_iter=20))
    for name in ("attention-regularity", "attention-teacher"):
        table = reproduce.reproduce(name, fast=True, out=tmp_path / name)
        assert len(table) > 0
        files = {p.name for p in (tmp_path / name).iterdir()}
        assert {f"{name}.png", f"{name}.pdf", "results.csv", "run.json"} <= files
        run = json.loads((tmp_path / name / "run.json").read_text())
        assert run["experiment"] == name and run["fast"] is True
        # provenance, as every run.json records it
        assert run["device"] == "cpu" and {"git_commit", "git_dirty", "device_name"} <= set(run)
    # the regularity study's slopes are no estimator's rates: its table and caption say so, and
    # the caption gives each slope's CI where it had given a verdict word of the point slopes
    growth = (tmp_path / "attention-regularity" / "growth.txt").read_text()
    assert growth.startswith(attention_regularity.GROWTH_HEADER + "\n")
    results = pd.read_csv(tmp_path / "attention-regularity" / "results.csv")
    study = attention_regularity.FAST_STUDY
    text = attention_regularity.caption(study, attention_regularity.growth_table(results))
    assert "no certificates, no verdict" in text and "agree" not in text
    table = attention_regularity.growth_table(results)
    r = table[(table.gate == "softmax")].iloc[0]
    assert f"softmax N^{r.slope_vs_seq_len:+.2f} [{r.ci_low_seq_len:+.2f}, " in text
