"""Rate estimation, verdicts and the rates table on synthetic curves whose exponent is known."""

from __future__ import annotations

import dataclasses
import sys
import types
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from moe_theory.rates import (
    RATES_COLUMNS,
    VERDICT_WIDEN,
    fit_rate,
    format_rates_table,
    rates_table,
    verdict,
)

N_GRID = np.geomspace(1e3, 1e5, 9)
REPS = 20
SIGMA = 0.3  # sd of the log-normal noise on each replication's loss


def lognormal_curve(rng, exponent, n=N_GRID, reps=REPS, sigma=SIGMA, scale=2.0):
    """Replications ``scale * n^exponent * exp(sigma * z)`` at each n."""
    return [scale * m**exponent * np.exp(sigma * rng.standard_normal(reps)) for m in n]


def slope_sd(n=N_GRID, reps=REPS, sigma=SIGMA):
    """Sampling sd of the OLS slope of log(mean of reps) on log n under log-normal noise.

    The mean of ``reps`` log-normal factors has relative sd ``sqrt((e^{sigma^2} - 1) / reps)``,
    which by the delta method is the sd of its log; the OLS slope divides that by sqrt(Sxx).
    """
    x = np.log(n)
    return np.sqrt((np.exp(sigma**2) - 1) / reps) / np.sqrt(((x - x.mean()) ** 2).sum())


def stub_theory(exponents):
    """A theory lookup giving ``exponents[(fit_gate, loss_name)]`` (absent: no theory)."""

    def lookup(fit_gate, score, regime, expert, loss_name):
        exponent = exponents.get((fit_gate, loss_name))
        label = "no theory" if exponent is None else f"n^{exponent}"
        return SimpleNamespace(exponent=exponent, label=label, source="stub")

    return lookup


def results_table(curves, n=N_GRID, reps=REPS, sigma=SIGMA, seed=0, setting="toy-dense"):
    """A tidy results table (docs/theory.md#results-table): ``curves`` maps (fit_gate, loss_name) -> exponent.

    Each fit (fit_gate, n, rep) has ``wall_s = 1 + rep / 10`` repeated on all its loss rows; rep 0
    is uncertified and rep 1 not converged.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for m in n.round().astype(int):
        for rep in range(reps):
            for (gate, loss), exponent in curves.items():
                rows.append(
                    {
                        "setting": setting,
                        "truth_gate": "softmax",
                        "fit_gate": gate,
                        "score": "linear",
                        "expert": "relu",
                        "regime": "dense",
                        "d": 4,
                        "k_true": 2,
                        "k_fit": 3,
                        "n": m,
                        "rep": rep,
                        "seed": 1000 * m + rep,
                        "loss_name": loss,
                        "loss_value": 2.0 * m**exponent * np.exp(sigma * rng.standard_normal()),
                        "converged": rep != 1,
                        "certified": rep != 0,
                        "n_iter": 30,
                        "fit_loss": 1.0,
                        "ref_loss": 1.0,
                        "wall_s": 1.0 + rep / 10,
                        "device": "cpu",
                        "backend": "torch",
                        "config_hash": "0123abcd",
                    }
                )
    return pd.DataFrame(rows)


# ---- fit_rate -----------------------------------------------------------------------------------


def test_noisy_power_law_slope_within_four_sampling_sds():
    fit = fit_rate(N_GRID, lognormal_curve(np.random.default_rng(1), -0.5), seed=0)
    sd = slope_sd()  # about 0.015 here
    assert abs(fit.slope + 0.5) < 4 * sd
    assert fit.ci_low <= -0.5 <= fit.ci_high
    # The bootstrap resamples the same within-n noise the derivation assumes: its CI half-width
    # should be near 1.96 sd (20 replications estimate that spread to within ~20%).
    assert 0.6 * 1.96 * sd < (fit.ci_high - fit.ci_low) / 2 < 1.5 * 1.96 * sd
    # The OLS SE rests on 7 residual degrees of freedom: right order, looser band.
    assert 0.4 * sd < fit.slope_se < 2.0 * sd
    assert 0.9 < fit.r2 < 1.0
    assert fit.n_points == len(N_GRID) and fit.n_dropped == 0


def test_bootstrap_ci_covers_true_exponent_at_about_nominal_rate():
    # Percentile bootstrap of a 20-replication mean is slightly liberal (it resamples with the
    # plug-in variance, (R - 1) / R of the unbiased one), so expect ~0.93; with 300 data sets the
    # binomial sd is ~0.015, and [0.85, 0.99] is about five sds either way.
    rng = np.random.default_rng(2)
    trials = 300
    fits = [fit_rate(N_GRID, lognormal_curve(rng, -0.5), n_boot=400, seed=i) for i in range(trials)]
    covered = sum(fit.ci_low <= -0.5 <= fit.ci_high for fit in fits)
    assert 0.85 <= covered / trials <= 0.99


def test_exact_power_law_is_recovered_exactly():
    values = [np.full(5, 3.0 * m**-0.5) for m in N_GRID]
    fit = fit_rate(N_GRID, values)
    assert fit.slope == pytest.approx(-0.5, rel=1e-12)
    assert fit.intercept == pytest.approx(np.log(3.0), rel=1e-12)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert fit.slope_se == pytest.approx(0.0, abs=1e-12)
    assert fit.ci_low == pytest.approx(-0.5, rel=1e-12)
    assert fit.ci_high == pytest.approx(-0.5, rel=1e-12)


def test_bootstrap_is_reproducible_for_a_fixed_seed():
    values = lognormal_curve(np.random.default_rng(3), -0.5)
    assert fit_rate(N_GRID, values, seed=7) == fit_rate(N_GRID, values, seed=7)
    other = fit_rate(N_GRID, values, seed=8)
    assert other.ci_low != fit_rate(N_GRID, values, seed=7).ci_low
    assert other.slope == fit_rate(N_GRID, values, seed=7).slope  # the point fit has no randomness


def test_invalid_losses_are_dropped_and_counted():
    clean = lognormal_curve(np.random.default_rng(4), -0.5)
    dirty = [v.copy() for v in clean]
    dirty[0] = np.append(dirty[0], [0.0, -1.0])
    dirty[3] = np.append(dirty[3], [np.nan, np.inf])
    fit = fit_rate(N_GRID, dirty)
    assert fit.n_dropped == 4
    # Same kept values, same bootstrap draws: everything but the count is identical.
    assert fit == dataclasses.replace(fit_rate(N_GRID, clean), n_dropped=4)


def test_a_sample_size_with_no_usable_loss_is_left_out():
    values = lognormal_curve(np.random.default_rng(5), -0.5)
    values[-1] = np.zeros(REPS)
    fit = fit_rate(N_GRID, values)
    assert fit.n_points == len(N_GRID) - 1 and fit.n_dropped == REPS
    assert fit.slope == fit_rate(N_GRID[:-1], values[:-1]).slope


def test_too_few_points_give_nan_not_a_crash():
    two = fit_rate([1e3, 1e4], [[1.0, 1.1], [0.3, 0.35]])
    assert np.isnan(two.slope_se)  # an OLS SE needs a residual degree of freedom
    assert np.isfinite(two.slope) and two.ci_low <= two.slope <= two.ci_high
    one = fit_rate([1e3, 1e4], [[1.0, 1.1], [np.nan]])
    assert one.n_points == 1 and np.isnan(one.slope) and np.isnan(one.ci_low)
    assert verdict(-0.5, one.ci_low, one.ci_high) == "insufficient data"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n": [1e3, 1e4], "values_per_n": [[1.0]]}, "values_per_n"),
        ({"n": [0.0, 1e4], "values_per_n": [[1.0], [0.5]]}, "n"),
        ({"n": [1e3, 1e4], "values_per_n": [[1.0], [0.5]], "n_boot": 0}, "n_boot"),
    ],
)
def test_bad_input_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        fit_rate(**kwargs)


# ---- verdict ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exponent", "ci", "widen", "expected"),
    [
        (-0.5, (-0.55, -0.45), VERDICT_WIDEN, "consistent"),
        (-0.5, (-0.60, -0.549), VERDICT_WIDEN, "consistent"),  # inside only thanks to the margin
        (-0.5, (-0.60, -0.549), 0.0, "inconsistent"),
        (-0.5, (-0.60, -0.551), VERDICT_WIDEN, "inconsistent"),
        (-0.5, (-0.451, -0.40), VERDICT_WIDEN, "consistent"),
        (-0.5, (-0.451, -0.40), 0.0, "inconsistent"),
        (-0.5, (-0.449, -0.40), VERDICT_WIDEN, "inconsistent"),
        (-0.5, (-0.30, -0.20), VERDICT_WIDEN, "inconsistent"),
        (0.0, (-0.04, 0.02), VERDICT_WIDEN, "consistent"),
        (None, (-0.55, -0.45), VERDICT_WIDEN, "no theory"),
        (float("nan"), (-0.55, -0.45), VERDICT_WIDEN, "no theory"),
        (-0.5, (float("nan"), float("nan")), VERDICT_WIDEN, "insufficient data"),
    ],
)
def test_verdict(exponent, ci, widen, expected):
    assert verdict(exponent, *ci, widen=widen) == expected


def test_verdict_margin_is_the_documented_constant():
    assert VERDICT_WIDEN == 0.05


# ---- rates_table --------------------------------------------------------------------------------

CURVES = {("sigmoid", "D3"): -0.5, ("sigmoid", "D1"): -0.5, ("softmax", "D3"): -0.25}
THEORY = stub_theory({("sigmoid", "D3"): -0.5, ("softmax", "D3"): -0.5})


def test_rates_table_one_row_per_curve_with_verdicts():
    df = results_table(CURVES)
    table = rates_table(df.sample(frac=1.0, random_state=0), THEORY, n_boot=500)
    assert list(table.columns) == list(RATES_COLUMNS)
    assert list(zip(table["fit_gate"], table["loss_name"], strict=True)) == [
        ("sigmoid", "D1"),
        ("sigmoid", "D3"),
        ("softmax", "D3"),
    ]
    by = table.set_index(["fit_gate", "loss_name"])
    assert by.loc[("sigmoid", "D3"), "verdict"] == "consistent"
    assert by.loc[("sigmoid", "D1"), "verdict"] == "no theory"
    # Built to fail: data decay as n^-1/4, the theory says n^-1/2.
    assert by.loc[("softmax", "D3"), "verdict"] == "inconsistent"
    assert by.loc[("softmax", "D3"), "slope"] == pytest.approx(-0.25, abs=4 * slope_sd())
    assert by.loc[("sigmoid", "D3"), "theory_label"] == "n^-0.5"
    assert by.loc[("sigmoid", "D3"), "theory_source"] == "stub"
    assert np.isnan(by.loc[("sigmoid", "D1"), "theory_exponent"])
    row = by.loc[("sigmoid", "D3")]
    assert (row["setting"], row["expert"], row["regime"], row["k_fit"]) == (
        "toy-dense",
        "relu",
        "dense",
        3,
    )
    assert (row["n_points"], row["n_min"], row["n_max"], row["reps"]) == (9, 1000, 100000, REPS)


def test_rates_table_counts_each_fit_once():
    table = rates_table(results_table(CURVES), THEORY, n_boot=50)
    # Every fit's wall_s (1 + rep / 10) sits on each of its loss rows; sigmoid fits carry two
    # losses, and a curve must still count each of its fits once.
    per_n = sum(1.0 + rep / 10 for rep in range(REPS))
    assert table["wall_s"].to_numpy() == pytest.approx(np.full(3, len(N_GRID) * per_n))
    assert table["certified_share"].to_numpy() == pytest.approx(np.full(3, 1 - 1 / REPS))
    assert table["converged_share"].to_numpy() == pytest.approx(np.full(3, 1 - 1 / REPS))


def test_rates_table_reports_dropped_losses():
    df = results_table(CURVES)
    bad = (df["fit_gate"] == "softmax") & (df["rep"] == 5) & (df["n"] == 1000)
    df.loc[bad, "loss_value"] = np.nan
    table = rates_table(df, THEORY, n_boot=50).set_index(["fit_gate", "loss_name"])
    assert table.loc[("softmax", "D3"), "n_dropped"] == 1
    assert table.loc[("sigmoid", "D3"), "n_dropped"] == 0


def test_rates_table_uses_the_theory_module_by_default(monkeypatch):
    fake = types.ModuleType("moe_theory.theory")
    fake.predicted_rate = stub_theory({("softmax", "D3"): -0.25})
    monkeypatch.setitem(sys.modules, "moe_theory.theory", fake)
    table = rates_table(results_table(CURVES), n_boot=50).set_index(["fit_gate", "loss_name"])
    assert table.loc[("softmax", "D3"), "theory_exponent"] == -0.25
    assert table.loc[("softmax", "D3"), "verdict"] == "consistent"


def test_rates_table_missing_column_is_named():
    with pytest.raises(ValueError, match="wall_s"):
        rates_table(results_table(CURVES).drop(columns="wall_s"), THEORY)


def test_rates_table_rejects_a_curve_mixing_experts():
    df = results_table(CURVES)
    df.loc[df["rep"] == 2, "expert"] = "linear"
    with pytest.raises(ValueError, match="^expert:"):
        rates_table(df, THEORY)


def test_rates_table_rejects_duplicate_fits():
    df = results_table(CURVES)
    with pytest.raises(ValueError, match="duplicate"):
        rates_table(pd.concat([df, df.iloc[:1]]), THEORY)


# ---- format_rates_table -------------------------------------------------------------------------


def test_format_rates_table():
    table = rates_table(results_table(CURVES), THEORY, n_boot=50)
    text = format_rates_table(table.iloc[::-1])
    lines = text.splitlines()
    assert len(lines) == 2 + len(table)
    assert lines[0].split()[:3] == ["setting", "fit", "loss"]
    assert set(lines[1]) <= {"-", " "}
    body = [line.split()[1:3] for line in lines[2:]]
    assert body == [["sigmoid", "D1"], ["sigmoid", "D3"], ["softmax", "D3"]]
    softmax = lines[4]
    row = table.iloc[2]
    assert f"{row['slope']:+.2f} ± {2 * row['slope_se']:.2f}" in softmax
    assert f"[{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]" in softmax
    assert softmax.rstrip().endswith("inconsistent  95%")
    # Fixed width: every column starts at the same offset on every line.
    assert len({line.index(line.split()[1]) for line in lines[2:]}) == 1


def test_format_rates_table_missing_column_is_named():
    with pytest.raises(ValueError, match="verdict"):
        format_rates_table(pd.DataFrame(columns=[c for c in RATES_COLUMNS if c != "verdict"]))
