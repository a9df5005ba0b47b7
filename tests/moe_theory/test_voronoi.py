"""Voronoi losses (docs/theory.md#voronoi-losses): zero at the truth, permutation-invariant, by hand."""

import math

import pytest
import torch

from moe_theory.initialization import near_truth
from moe_theory.measure import MixingMeasure
from moe_theory.settings import get_setting
from moe_theory.voronoi import ALL_KINDS, voronoi_cells, voronoi_loss


def measure(gate, atoms):
    """atoms: (beta0, beta1, a, b) with d = 1."""
    return MixingMeasure.from_dict({"gate": gate, "score": "linear", "expert": "relu", "d": 1,
                                    "atoms": [{"beta0": b0, "beta1": [b1], "A": None, "a": [a],
                                               "b": b} for b0, b1, a, b in atoms]})


TRUTH = [(0.0, 0.0, 1.0, 0.0), (0.0, 0.0, -1.0, 0.0)]
# two fitted atoms fall in cell 1 (over-specified), one in cell 2 (exact)
FITTED = [(0.1, 0.0, 1.1, 0.0), (-0.2, 0.0, 0.9, 0.1), (0.3, 0.2, -1.0, 0.0)]


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_cells_by_hand():
    cells = voronoi_cells(measure("sigmoid", FITTED), measure("sigmoid", TRUTH))
    assert cells.assign.tolist() == [[0, 0, 1]]
    assert cells.count.tolist() == [[2, 1]]
    assert cells.over.tolist() == [[True, True, False]]


def test_sigmoid_d1_by_hand():
    # N24 Thm 2: weight mismatch of the over-specified cell, squared distances inside it,
    # first-order |dbeta0| + ||domega|| in the exact cell
    expected = abs(sig(0.1) + sig(-0.2) - sig(0.0)) + (0.1**2) + (0.1**2 + 0.1**2) + (0.3 + 0.2)
    got = voronoi_loss(measure("sigmoid", FITTED), measure("sigmoid", TRUTH), "D1")
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_sigmoid_d2r_by_hand():
    r = 3.0
    expected = abs(sig(0.1) + sig(-0.2) - sig(0.0)) + 0.1**r + math.sqrt(0.02) ** r + (
        0.3**r + 0.2**r)
    got = voronoi_loss(measure("sigmoid", FITTED), measure("sigmoid", TRUTH), "D2", r=r)
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_softmax_d1_by_hand():
    fitted = [(0.1, 0.0, 1.1, 0.0), (-0.2, 0.0, 0.9, 0.1), (0.0, 0.0, -1.0, 0.2)]  # last pinned
    e = math.exp
    expected = (abs(e(0.1) + e(-0.2) - 1) + abs(e(0.0) - 1)
                + e(0.1) * 0.1**2 + e(-0.2) * 0.02 + e(0.0) * 0.2)
    got = voronoi_loss(measure("softmax", fitted), measure("softmax", TRUTH), "D1")
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_d3_by_hand():
    ref = FITTED[:2] + [(0.0, 0.0, -1.0, 0.0)]
    fitted = [(0.15, 0.0, 1.1, 0.0), FITTED[1], (0.3, 0.0, -1.0, 0.4)]
    expected = (0.05 + 0.0) + 0.0 + (0.3 + 0.4)
    got = voronoi_loss(measure("sigmoid", fitted), measure("sigmoid", ref), "D3")
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_parameter_errors_by_cell_type():
    f, t = measure("sigmoid", FITTED), measure("sigmoid", TRUTH)
    assert float(voronoi_loss(f, t, "err_eta_over")) == pytest.approx(math.sqrt(0.02))
    assert float(voronoi_loss(f, t, "err_eta_exact")) == pytest.approx(0.0)
    assert float(voronoi_loss(f, t, "err_beta1_exact")) == pytest.approx(0.2)
    assert math.isnan(float(voronoi_loss(f, t, "err_A_exact")))  # linear score: no A


@pytest.mark.parametrize("name", ["small-sparse-relu", "small-dense-linear", "nguyen2024-dense-relu"])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_zero_at_truth_and_permutation_invariant(name, kind):
    if kind == "D1_matched" and name == "nguyen2024-dense-relu":
        pytest.skip("d = 32: the matched gauge's search takes ~15 s here; d = 2 covers it")
    truth = get_setting(name).truth()
    value = voronoi_loss(truth, truth, kind)
    assert bool(torch.isnan(value).all()) or float(value) == 0.0
    fitted = near_truth(truth, truth.k + 1, seed=3, jitter=0.05).draw(4, truth.gate)
    perm = torch.randperm(fitted.k - (1 if truth.gate == "softmax" else 0)).tolist()
    perm += list(range(len(perm), fitted.k))  # the pinned softmax atom stays last
    permuted = fitted.replace(fitted.gate_params[:, perm], fitted.expert_params[:, perm])
    a, b = voronoi_loss(fitted, truth, kind), voronoi_loss(permuted, truth, kind)
    assert torch.allclose(a, b, equal_nan=True)
    finite = a[~torch.isnan(a)]
    # a pinned softmax atom alone in its cell has no gate error: >= 0 there, > 0 for the D's
    assert bool((finite > 0).all()) if kind.startswith("D") else bool((finite >= 0).all())


@pytest.mark.parametrize("expert, symmetric", [("poly2", True), ("poly4", True),
                                                ("poly3", False), ("gelu", False)])
def test_even_power_experts_are_measured_up_to_their_sign(expert, symmetric):
    """``(a^T x + b)^p`` is unchanged by ``(a, b) -> -(a, b)`` for even ``p``: a fit whose atom
    carries the flipped expert has the same regression function, so every loss must be the
    unflipped fit's (yan2025's two quadratic poly2 G_bars were 7.8 apart in D3 that way). For
    odd powers and GELU the flip changes the function and the loss sees it."""
    def poly(atoms):
        return MixingMeasure.from_dict({"gate": "sigmoid", "score": "linear", "expert": expert,
                                        "d": 1, "atoms": [{"beta0": b0, "beta1": [b1], "A": None,
                                                           "a": [a], "b": b}
                                                          for b0, b1, a, b in atoms]})
    truth = poly([(0.3, 1.0, 2.0, 0.5), (-0.2, -1.0, -1.0, 1.0)])
    near = poly([(0.35, 1.1, 2.1, 0.4), (-0.25, -0.9, -1.2, 1.1)])
    flipped = poly([(0.35, 1.1, -2.1, -0.4), (-0.25, -0.9, -1.2, 1.1)])  # atom 0's expert negated
    X = torch.linspace(-1, 1, 101, dtype=torch.float64)[None, :, None]
    assert torch.allclose(near(X), flipped(X)) == symmetric
    for kind in ("D1", "D3", "err_eta_exact", "err_beta1_exact"):
        a, b = voronoi_loss(near, truth, kind), voronoi_loss(flipped, truth, kind)
        assert torch.allclose(a, b) == symmetric, kind
    every_flipped = poly([(0.3, 1.0, -2.0, -0.5), (-0.2, -1.0, 1.0, -1.0)])
    assert (float(voronoi_loss(every_flipped, truth, "D3")) == 0.0) == symmetric


@pytest.mark.parametrize("r", [0.5, math.nan, math.inf, True, "2"])
def test_a_d2_exponent_that_is_not_a_finite_number_ge_1_is_named(r):
    """NaN compares false both ways, so a check written as ``r < 1`` let it through to a NaN
    loss."""
    with pytest.raises(ValueError, match="^r: must be a finite number >= 1"):
        voronoi_loss(measure("sigmoid", FITTED), measure("sigmoid", TRUTH), "D2", r=r)


def test_gate_mismatch_and_unknown_kind_are_named():
    f, t = measure("sigmoid", FITTED), measure("softmax", TRUTH)
    with pytest.raises(ValueError, match="reference: gate"):
        voronoi_loss(f, t, "D1")
    with pytest.raises(ValueError, match="kind"):
        voronoi_loss(f, measure("sigmoid", TRUTH), "D9")


def test_in_gauge_keeps_the_regression_function_and_unpins_the_last_atom():
    fitted = measure("softmax", FITTED)
    shift = torch.tensor([[1.5, -0.7]], dtype=torch.float64)
    moved = fitted.in_gauge(shift)
    assert moved.beta0[0, -1] == 1.5 and moved.beta1[0, -1, 0] == -0.7
    X = torch.rand(1, 50, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(moved(X), fitted(X), rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="gate"):
        measure("sigmoid", FITTED).in_gauge(shift)


def test_matched_gauge_d1_ignores_the_gauge_the_fit_is_written_in():
    """The same mixture written with each of its atoms pinned (the constructor pins the last):
    the pinned D1 differs from writing to writing, the matched one does not; zero at the
    reference; by hand where the intercepts' shift is all there is to match."""
    from moe_theory.voronoi import matched_gauge_d1

    truth = measure("softmax", TRUTH)
    assert float(matched_gauge_d1(truth, truth)[0]) < 1e-9
    # the truth written in another gauge: the matched shift, (-log 2, -0.5), undoes it exactly,
    # where the pinned D1 counts the doubled weights
    moved = truth.in_gauge(torch.tensor([[math.log(2.0), 0.5]], dtype=torch.float64))
    assert float(voronoi_loss(moved, truth, "D1")[0]) > 1.0
    assert float(matched_gauge_d1(moved, truth)[0]) < 1e-9
    atoms = [(0.4, 0.3, 1.1, 0.0), (-2.5, -1.0, 0.9, 0.1), (0.3, 0.2, -1.0, 0.0)]
    writings = [measure("softmax", atoms[i + 1:] + atoms[:i + 1]) for i in range(3)]
    batch = MixingMeasure.concat(writings)
    pinned = voronoi_loss(batch, truth, "D1")
    matched = matched_gauge_d1(batch, truth)
    assert float(pinned.max() / pinned.min()) > 2
    torch.testing.assert_close(matched, matched[:1].expand(3), rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="fitted"):
        matched_gauge_d1(measure("sigmoid", FITTED), measure("sigmoid", TRUTH))


def test_a_softmax_sweep_measures_d1_in_the_matched_gauge_too(tmp_path):
    """A softmax fit of a softmax truth (reference G*) gets D1_matched rows, the matched gauge's
    D1 of its stored estimate; the loss is NaN for a sigmoid fit and listed for no G_bar one."""
    import json

    from moe_theory.config import parse_config
    from moe_theory.store import FIT_MEASURE
    from moe_theory.sweep import run_sweep
    from moe_theory.voronoi import applicable_losses, matched_gauge_d1

    setting = get_setting("small-dense-relu")
    assert "D1_matched" in applicable_losses(setting, "G*", None, "softmax")
    assert "D1_matched" not in applicable_losses(setting, "G*", None, "sigmoid")
    assert "D1_matched" not in applicable_losses(setting, "G_bar", None, "softmax")
    # d = 32: the search would cost a minute per shard, so sweeps leave the loss out
    wide = get_setting("nguyen2024-dense-relu")
    assert "D1_matched" not in applicable_losses(wide, "G*", None, "softmax")
    config = parse_config({"name": "t", "settings": ["small-dense-relu"], "fit_gates": ["softmax"],
                           "n": [200], "reps": 2, "starts": 1})
    table = run_sweep(config, tmp_path / "out", log=lambda msg: None)
    rows = table[table["loss_name"] == "D1_matched"].sort_values("rep")
    assert len(rows) == 2 and bool((rows["loss_value"] > 0).all())
    fits = MixingMeasure.from_dict([json.loads(v) for v in rows[FIT_MEASURE]])
    torch.testing.assert_close(torch.tensor(rows["loss_value"].to_numpy()),
                               matched_gauge_d1(fits, setting.truth()), rtol=0, atol=0)
    sigmoid = voronoi_loss(measure("sigmoid", FITTED), measure("sigmoid", TRUTH), "D1_matched")
    assert bool(torch.isnan(sigmoid).all())


def test_matched_gauge_d1_of_a_fit_does_not_depend_on_its_batch():
    """A sweep measures D1_matched shard by shard and remeasure over a whole table: each
    replication's compass search stops on its own, so a value is the same bit for bit whether
    its fit is measured alone or beside others whose searches run longer. Random fits far from
    the truth make the searches' lengths differ (before the searches stopped on their own, 8
    of these 12 moved by up to 1.5e-7)."""
    from moe_theory.voronoi import matched_gauge_d1

    truth = measure("softmax", TRUTH)
    g = torch.Generator().manual_seed(3)
    R, k = 12, truth.k + 1
    fits = MixingMeasure("softmax", "linear", "relu", 1,
                         torch.randn(R, k, 2, dtype=torch.float64, generator=g),
                         torch.randn(R, k, 2, dtype=torch.float64, generator=g))
    batch = matched_gauge_d1(fits, truth)
    alone = torch.cat([matched_gauge_d1(fits.select(torch.tensor([i])), truth) for i in range(R)])
    assert bool(torch.isfinite(batch).all())
    assert torch.equal(batch, alone)
    halves = torch.cat([matched_gauge_d1(fits.select(torch.arange(i, i + 6)), truth)
                        for i in (0, 6)])
    assert torch.equal(batch, halves)


@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
@pytest.mark.parametrize("where", ["beta0", "beta1", "expert"])
def test_a_fit_with_one_nan_parameter_has_every_loss_nan(gate, where):
    """NaN in, NaN out, for every kind and only for that replication: a NaN atom's distances
    are NaN, argmin put it in cell 0 (cell 0 then over-specified), and a parameter error reads
    its own group only, so err_eta_over came out finite (2.2 against a clean 0.2)."""
    def measure(atoms):
        return MixingMeasure.from_dict({"gate": gate, "score": "linear", "expert": "relu", "d": 1,
                                        "atoms": [{"beta0": b0, "beta1": [b1], "A": None, "a": [a],
                                                   "b": b} for b0, b1, a, b in atoms]})

    ref = measure([(0.0, 0.0, 1.0, 0.0), (0.0, 0.0, -1.0, 0.0)])
    clean = measure([(0.1, 0.0, 1.1, 0.0), (0.2, 0.3, -0.9, 0.1), (0.0, 0.1, -1.2, 0.0)])
    two = clean.replace(clean.gate_params.repeat(2, 1, 1), clean.expert_params.repeat(2, 1, 1))
    gp, ep = two.gate_params.clone(), two.expert_params.clone()
    if where == "expert":
        ep[0, 1, 0] = math.nan
    else:
        gp[0, 1, 0 if where == "beta0" else 1] = math.nan
    bad = two.replace(gp, ep)
    for kind in ALL_KINDS:
        values = voronoi_loss(bad, ref, kind)
        assert math.isnan(values[0]), kind
        # the finite replication keeps its loss (NaN only where the kind has no cell of its type)
        expected = voronoi_loss(clean, ref, kind)[0]
        assert (math.isnan(values[1]) and math.isnan(expected)) or values[1] == expected, kind
    # a NaN reference leaves no loss defined either
    ref_bad = ref.replace(ref.gate_params.clone(), ref.expert_params.clone())
    ref_bad.expert_params[0, 0, 0] = math.nan
    assert all(math.isnan(voronoi_loss(clean, ref_bad, kind)[0]) for kind in ALL_KINDS)


def test_the_public_cells_and_register_name_an_argument_of_the_wrong_type():
    """mt.voronoi_cells("a", truth) and mt.register("x") ended in an AttributeError of their
    use ('str' object has no attribute 'score'); they name the argument."""
    import moe_theory as mt

    truth = mt.get_setting("small-sparse-relu").truth()
    with pytest.raises(ValueError, match="^fitted: expected a MixingMeasure, got str"):
        mt.voronoi_cells("a", truth)
    with pytest.raises(ValueError, match="^reference: expected a MixingMeasure, got int"):
        mt.voronoi_cells(truth, 3)
    assert mt.voronoi_cells(truth, truth).count.sum() == truth.k
    with pytest.raises(ValueError, match="^setting: expected a Setting, got str"):
        mt.register("x")
