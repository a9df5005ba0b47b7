"""Rate estimation, verdicts and the rates table on synthetic curves whose exponent is known."""

from __future__ import annotations

import dataclasses
import sys
import types
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from moe_theory import sublevel
from moe_theory.certificates import (
    FAIL,
    NOT_RUN,
    PASS,
    FolderCertificates,
    ReferenceCertificate,
    Status,
    free_parameters,
)
from moe_theory.rates import (
    CERT_COLUMNS,
    CI_HALF_WIDTH_MAX,
    GAP_EXHIBITED,
    GAP_NO_CI,
    GAP_REVERSED,
    GAP_UNRESOLVED,
    MIN_POINTS,
    PLUS_MINUS,
    RATES_COLUMNS,
    SUBLEVEL_LEGEND,
    VERDICT_WIDEN,
    curve_fit,
    curve_verdict,
    fit_rate,
    format_rates_table,
    gap_comparable,
    gap_table,
    rates_table,
    verdict,
)

N_GRID = np.geomspace(1e3, 1e5, 9)
REPS = 20
SIGMA = 0.3  # sd of the log-normal noise on each replication's loss
NU = 0.01  # noise variance of the synthetic fits


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
    """A tidy results table (docs/theory.md#results-table): ``curves`` maps (fit_gate,
    loss_name) -> exponent.

    Each fit (fit_gate, n, rep) has ``wall_s = 1 + rep / 10`` repeated on all its loss rows; rep 0
    is uncertified and rep 1 not converged (19 of 20 each: the 95% the certificates ask for).
    The reference's SSR exceeds the fit's by ``nu p``, a regular fit's expected drop.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for m in n.round().astype(int):
        for rep in range(reps):
            for (gate, loss), exponent in curves.items():
                p = free_parameters(gate, "linear", "relu", 4, 3)
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
                        "fit_loss": NU,
                        "ref_loss": NU + NU * p / m,
                        "wall_s": 1.0 + rep / 10,
                        "device": "cpu",
                        "backend": "torch",
                        "config_hash": "0123abcd",
                    }
                )
    return pd.DataFrame(rows)


def passing_certificates(df, *, noise_var=NU):
    """Certificates under which every curve of ``df`` can pass: a passing reference certificate
    per (setting, fit_gate) and a passing optimiser check per curve (converged and over-fit are
    judged from the table's own columns), each recorded for the table's config."""
    config_hash = str(df["config_hash"].iloc[0]) if "config_hash" in df.columns else ""
    reference = {}
    for setting, gate in df[["setting", "fit_gate"]].drop_duplicates().itertuples(index=False):
        reference[(setting, gate)] = ReferenceCertificate(
            setting=setting, fit_gate=gate, kind="G*", model={"k": 2}, p=9, noise_var=noise_var,
            design_size=100, n_min=1000, n_max=100000, fisher_min_eig=1.0, fisher_cond=10.0,
            hessian_min_eig=1.0, covariance="inverse Fisher", error_scale=0.1,
            min_atom_distance=1.0, misspecification=0.0, misspecification_scale=1e-6,
            # the identified-losses test ran on every loss and found each identified
            unidentified={}, identified_tested=sorted(df["loss_name"].unique()),
            config_hash=config_hash)
    curves = df[["setting", "fit_gate", "loss_name"]].drop_duplicates()
    check = {"config_hash": config_hash,
             "curves": {"/".join(c): {"status": PASS, "reasons": []}
                        for c in curves.itertuples(index=False)}}
    return FolderCertificates(reference, check)


ALL_PASS = {name: Status(PASS) for name in ("reference", "converged", "optimiser", "overfit")}


# ---- fit_rate ---------------------------------------------------------------------------------


def test_noisy_power_law_slope_within_four_sampling_sds():
    fit = fit_rate(N_GRID, lognormal_curve(np.random.default_rng(1), -0.5), seed=0)
    sd = slope_sd()  # about 0.015 here
    assert abs(fit.slope + 0.5) < 4 * sd
    assert fit.ci_low <= -0.5 <= fit.ci_high
    # The bootstrap resamples the same within-n noise the derivation assumes: its SE should be
    # near sd (20 replications estimate that spread to within ~20%), the CI a t interval on it.
    assert 0.7 * sd < fit.slope_se < 1.4 * sd
    assert 1.96 * fit.slope_se < fit.half_width < 2.2 * fit.slope_se
    assert 0.9 < fit.r2 < 1.0
    assert fit.n_points == len(N_GRID) and fit.n_dropped == 0 and fit.reps_used == REPS


def test_bootstrap_ci_covers_the_true_slope_at_95_percent():
    # The CI preset's shape (8 replications, 6 n over 1.3 decades), where a percentile interval of
    # the resampled slopes covered only ~90%. With M data sets the coverage estimate has binomial
    # sd sqrt(.95 * .05 / M) = 0.0069 at M = 1000: the band of 3 sds, [0.929, 0.971], fails a
    # correct 95% procedure with probability 0.3% and excludes a 90% one by 7 sds.
    rng = np.random.default_rng(2)
    n = np.geomspace(1e3, 2e4, 6)
    trials = 1000
    covered = 0
    for i in range(trials):
        fit = fit_rate(n, lognormal_curve(rng, -0.5, n=n, reps=8, sigma=0.5), n_boot=200, seed=i)
        covered += fit.ci_low <= -0.5 <= fit.ci_high
    sd = np.sqrt(0.95 * 0.05 / trials)
    assert abs(covered / trials - 0.95) <= 3 * sd
    assert 0.90 < 0.95 - 3 * sd  # the band would reject a 90% interval


def test_slope_is_of_the_log_of_the_mean_not_the_mean_of_the_log():
    # Two replications per n, exp(+-s_n) around n^-1/2 with a spread s_n growing in n: the
    # mean of the logs decays exactly as n^-1/2, the log of the mean does not
    # (log cosh(s_n) is added), and the median of two values is their mean.
    n = np.array([1e3, 1e4, 1e5, 1e6])
    spread = np.array([0.1, 0.5, 1.0, 1.5])
    values = [m**-0.5 * np.exp([-s, s]) for m, s in zip(n, spread, strict=True)]
    fit = fit_rate(n, values, n_boot=50)
    x = np.log(n)
    log_mean = np.log([v.mean() for v in values])
    mean_log = np.array([np.log(v).mean() for v in values])
    assert fit.slope == pytest.approx(np.polyfit(x, log_mean, 1)[0], rel=1e-12)
    assert np.polyfit(x, mean_log, 1)[0] == pytest.approx(-0.5, rel=1e-12)
    assert fit.slope > -0.5 + 0.1  # the two differ by far more than rounding
    assert fit.median.slope == pytest.approx(fit.slope, rel=1e-12)


def test_median_slope_resists_one_outlier():
    values = lognormal_curve(np.random.default_rng(9), -0.5)
    values[-1][0] = 1e300
    fit = fit_rate(N_GRID, values)
    assert fit.slope > 10  # the mean follows the outlier
    assert fit.median.slope == pytest.approx(-0.5, abs=0.1)


def test_exact_power_law_is_recovered_exactly():
    values = [np.full(5, 3.0 * m**-0.5) for m in N_GRID]
    fit = fit_rate(N_GRID, values)
    assert fit.slope == pytest.approx(-0.5, rel=1e-12)
    assert fit.intercept == pytest.approx(np.log(3.0), rel=1e-12)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    # no spread among the replications: no CI (test_tied_replications_give_no_ci_and_no_verdict)
    assert np.isnan(fit.slope_se) and np.isnan(fit.half_width)


def test_bootstrap_is_reproducible_for_a_fixed_seed():
    values = lognormal_curve(np.random.default_rng(3), -0.5)
    assert fit_rate(N_GRID, values, seed=7) == fit_rate(N_GRID, values, seed=7)
    other = fit_rate(N_GRID, values, seed=8)
    assert other.ci_low != fit_rate(N_GRID, values, seed=7).ci_low
    assert other.slope == fit_rate(N_GRID, values, seed=7).slope  # the point fit has no randomness


def test_invalid_losses_are_dropped_and_counted_by_reason():
    clean = lognormal_curve(np.random.default_rng(4), -0.5)
    dirty = [v.copy() for v in clean]
    dirty[0] = np.append(dirty[0], [0.0, -1.0])
    dirty[3] = np.append(dirty[3], [np.nan, np.inf, -np.inf])
    bound = [np.zeros(v.size, dtype=bool) for v in dirty]
    dirty[5] = np.append(dirty[5], 0.5)
    bound[5] = np.append(np.zeros(REPS, dtype=bool), True)
    fit = fit_rate(N_GRID, dirty, bound_per_n=bound)
    assert dict(fit.dropped) == {"nan": 1, "inf": 2, "nonpositive": 2, "bound": 1}
    assert fit.n_dropped == 6
    # Same kept values, same bootstrap draws: everything but the counts is identical.
    assert fit == dataclasses.replace(fit_rate(N_GRID, clean), n_dropped=6, dropped=fit.dropped,
                                      n_values=fit.n_values)
    assert fit.n_values == sum(len(v) for v in dirty) == 180 + 6


def test_a_sample_size_with_one_usable_replication_is_dropped_and_listed():
    values = lognormal_curve(np.random.default_rng(5), -0.5)
    values[-1] = np.append(np.full(REPS - 1, np.nan), values[-1][0])
    fit = fit_rate(N_GRID, values)
    assert fit.n_points == len(N_GRID) - 1 and fit.dropped_n == (N_GRID[-1],)
    assert fit.reps_used == REPS and fit.dropped["nan"] == REPS - 1
    assert fit.slope == fit_rate(N_GRID[:-1], values[:-1]).slope


def test_too_few_points_give_nan_not_a_crash():
    two = fit_rate([1e3, 1e4], [[1.0, 1.1], [0.3, 0.35]])
    assert np.isfinite(two.slope) and two.ci_low <= two.slope <= two.ci_high
    one = fit_rate([1e3, 1e4], [[1.0, 1.1], [np.nan, 0.3]])
    assert one.n_points == 1 and np.isnan(one.slope) and np.isnan(one.ci_low)
    assert verdict(-0.5, one.ci_low, one.ci_high) == "insufficient data"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n": [1e3, 1e4], "values_per_n": [[1.0]]}, "values_per_n"),
        ({"n": [0.0, 1e4], "values_per_n": [[1.0], [0.5]]}, "n"),
        ({"n": [np.nan, 1e4], "values_per_n": [[1.0], [0.5]]}, "n"),
        ({"n": [1e3, 1e4], "values_per_n": [[1.0], [0.5]], "n_boot": 1}, "n_boot"),
        ({"n": [1e3, 1e4], "values_per_n": [[1.0], [0.5]], "bound_per_n": [[False]]},
         "bound_per_n"),
    ],
)
def test_bad_input_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        fit_rate(**kwargs)


# ---- verdicts ---------------------------------------------------------------------------------


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
def test_verdict_compares_the_widened_ci(exponent, ci, widen, expected):
    assert verdict(exponent, *ci, widen=widen) == expected


def test_verdict_constants_are_the_documented_ones():
    assert VERDICT_WIDEN == 0.05
    # a widened CI (half-width below the bound) is shorter than the 1/4 between n^-1/2 and
    # n^-1/4: it cannot contain both
    assert 2 * (CI_HALF_WIDTH_MAX + VERDICT_WIDEN) == pytest.approx(0.25)
    assert MIN_POINTS == 4
    assert PLUS_MINUS == "± = half-width of the bootstrap 95% CI"


def narrow_fit(slope=-0.5, half=0.03, points=9):
    return fit_rate(N_GRID[:points], [m**slope * np.exp(
        half * np.linspace(-1, 1, 20)) for m in N_GRID[:points]])


def test_curve_verdict_needs_every_certificate():
    fit = narrow_fit()
    assert fit.half_width < CI_HALF_WIDTH_MAX
    assert curve_verdict(-0.5, fit, ALL_PASS) == ("consistent", "")
    assert curve_verdict(-0.25, fit, ALL_PASS)[0] == "inconsistent"
    failed = {**ALL_PASS, "reference": Status(FAIL, "Fisher condition number 2e15")}
    label, reason = curve_verdict(-0.5, fit, failed)
    assert label == "not measurable (reference failed)"
    assert "reference: fail (Fisher condition number 2e15)" in reason
    missing = {**ALL_PASS, "optimiser": Status(NOT_RUN, "no optimiser check")}
    assert curve_verdict(-0.5, fit, missing)[0] == "not measurable (optimiser not run)"
    both = {**failed, "optimiser": missing["optimiser"]}
    assert curve_verdict(-0.5, fit, both)[0] == (
        "not measurable (reference failed; optimiser not run)")
    # a curve without an exponent is judged as the others up to the comparison: its printed
    # slope must not read as a measured rate where a certificate failed, nor where the CI or a
    # guard withholds a verdict (it had been "no theory" whatever its certificates)
    assert curve_verdict(None, fit, both)[0] == (
        "not measurable (reference failed; optimiser not run)")
    assert curve_verdict(None, fit, ALL_PASS) == ("no theory", "")
    assert curve_verdict(float("nan"), narrow_fit(points=3), ALL_PASS)[0] == (
        "not measurable (3 usable n < 4)")
    wide = narrow_fit(half=3.0)
    assert not wide.half_width < CI_HALF_WIDTH_MAX
    assert curve_verdict(None, wide, ALL_PASS)[0] == "inconclusive (CI too wide)"


def test_wide_ci_is_inconclusive_even_when_the_theory_lies_inside():
    wide = fit_rate(N_GRID[:5], lognormal_curve(np.random.default_rng(6), -0.5, n=N_GRID[:5],
                                                reps=3, sigma=1.5))
    assert wide.half_width > CI_HALF_WIDTH_MAX
    assert verdict(-0.5, wide.ci_low, wide.ci_high) == "consistent"  # what the CI alone says
    label, reason = curve_verdict(-0.5, wide, ALL_PASS)
    assert label == "inconclusive (CI too wide)" and "half-width" in reason


def test_fewer_than_four_usable_sample_sizes_get_no_verdict():
    fit = narrow_fit(points=3)
    assert curve_verdict(-0.5, fit, ALL_PASS)[0] == "not measurable (3 usable n < 4)"


def test_tied_replications_give_no_ci_and_no_verdict():
    """Replications equal at every n (a loss stuck at one value) pass the two-per-n rule but
    show no spread: the bootstrap cannot size the slope's error, so there is no CI, and no
    firm verdict, rather than a zero-width CI that would reject any exponent but the slope."""
    n = N_GRID[:5]
    fit = fit_rate(n, [np.full(3, m**-0.4) for m in n])
    assert fit.slope == pytest.approx(-0.4)
    assert np.isnan(fit.half_width) and np.isnan(fit.ci_low) and np.isnan(fit.ci_high)
    label, reason = curve_verdict(-0.5, fit, ALL_PASS)
    assert label == "inconclusive (CI too wide)" and "tied" in reason


def test_a_tie_at_one_n_leaves_the_curve_without_a_ci():
    """Replications tied at one n entered the CI with zero variance: the same slope went from
    inconclusive to a firm verdict (half-width 0.093 to 0.061 on such a curve)."""
    n = N_GRID[::2]
    values = lognormal_curve(np.random.default_rng(7), -0.5, n=n, reps=4, sigma=0.35)
    tied = [v.copy() for v in values]
    tied[0][:] = tied[0].mean()  # the same mean, so the same slope
    base, fit = fit_rate(n, values), fit_rate(n, tied)
    assert np.isfinite(base.half_width) and fit.slope == pytest.approx(base.slope)
    assert np.isnan(fit.half_width) and np.isnan(fit.median.half_width)
    label, reason = curve_verdict(-0.5, fit, ALL_PASS)
    assert label == "inconclusive (CI too wide)" and "tied at some n" in reason


@pytest.mark.parametrize("dtype, eps", [(np.float64, np.finfo(np.float64).eps),
                                        (np.float32, 2.0**-23)])
def test_replications_equal_to_rounding_are_tied(dtype, eps):
    """A loss stuck at one value whose replications differ in their last bits (one ulp) got a
    half-width of 5e-16 (1.2e-8 in float32) and a firm verdict: consistent with its own slope,
    inconsistent with any other."""
    n = N_GRID[:5]
    rng = np.random.default_rng(0)
    values = [np.asarray(np.full(20, 0.3 * m**-0.4), dtype).astype(float)
              * (1 + eps * rng.integers(-1, 2, 20)) for m in n]
    assert all(np.ptp(v) > 0 for v in values)
    fit = fit_rate(n, values)
    assert np.isnan(fit.half_width)
    assert curve_verdict(-0.4, fit, ALL_PASS)[0] == "inconclusive (CI too wide)"


def test_one_huge_value_cannot_make_a_curve_consistent():
    # the yan2025 symptom: one value of 1e300 gave slope +283 +- 319 and "consistent"
    values = lognormal_curve(np.random.default_rng(7), -0.5)
    values[-1][0] = 1e300
    fit = fit_rate(N_GRID, values)
    assert fit.slope > 10
    label, _ = curve_verdict(fit.slope, fit, ALL_PASS)
    assert label == "inconclusive (CI too wide)"


# ---- rates_table ------------------------------------------------------------------------------

CURVES = {("sigmoid", "D3"): -0.5, ("sigmoid", "D1"): -0.5, ("softmax", "D3"): -0.25}
THEORY = stub_theory({("sigmoid", "D3"): -0.5, ("softmax", "D3"): -0.5})


def test_rates_table_one_row_per_curve_with_verdicts():
    df = results_table(CURVES)
    table = rates_table(df.sample(frac=1.0, random_state=0), THEORY, n_boot=500,
                        certificates=passing_certificates(df))
    assert list(table.columns) == list(RATES_COLUMNS)
    assert list(zip(table["fit_gate"], table["loss_name"], strict=True)) == [
        ("sigmoid", "D1"),
        ("sigmoid", "D3"),
        ("softmax", "D3"),
    ]
    by = table.set_index(["fit_gate", "loss_name"])
    assert (by[list(CERT_COLUMNS)] == PASS).all().all()
    assert by.loc[("sigmoid", "D3"), "verdict"] == "consistent"
    assert by.loc[("sigmoid", "D1"), "verdict"] == "no theory"
    # Built to fail: data decay as n^-1/4, the theory says n^-1/2.
    assert by.loc[("softmax", "D3"), "verdict"] == "inconsistent"
    assert by.loc[("softmax", "D3"), "slope"] == pytest.approx(-0.25, abs=4 * slope_sd())
    assert by.loc[("softmax", "D3"), "slope_median"] == pytest.approx(-0.25, abs=0.05)
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
    assert (row["n_used"], row["n_min"], row["n_max"], row["reps_used"], row["reps"]) == (
        9, 1000, 100000, REPS, REPS)
    assert row["ci_half_width"] == pytest.approx((row["ci_high"] - row["ci_low"]) / 2)


def test_without_certificates_no_curve_gets_a_firm_verdict():
    table = rates_table(results_table(CURVES), THEORY, n_boot=50).set_index(
        ["fit_gate", "loss_name"])
    # the synthetic setting is not registered: no noise variance, hence no over-fit either
    assert table.loc[("sigmoid", "D3"), "verdict"] == (
        "not measurable (reference, optimiser, overfit not run)")
    assert table.loc[("sigmoid", "D3"), "cert_converged"] == PASS
    assert "optimiser: not run" in table.loc[("sigmoid", "D3"), "reason"]


def test_uncertified_fits_fail_the_optimiser_certificate():
    df = results_table(CURVES)
    df.loc[(df["rep"] == 3) & (df["fit_gate"] == "softmax"), "certified"] = False  # 2 of 20
    table = rates_table(df, THEORY, n_boot=50, certificates=passing_certificates(df))
    by = table.set_index(["fit_gate", "loss_name"])
    assert by.loc[("softmax", "D3"), "cert_optimiser"] == FAIL
    assert by.loc[("softmax", "D3"), "verdict"] == "not measurable (optimiser failed)"
    assert "worse than the reference" in by.loc[("softmax", "D3"), "reason"]
    assert by.loc[("sigmoid", "D3"), "verdict"] == "consistent"


def test_rates_table_counts_each_fit_once():
    table = rates_table(results_table(CURVES), THEORY, n_boot=50)
    # Every fit's wall_s (1 + rep / 10) sits on each of its loss rows; sigmoid fits carry two
    # losses, and a curve must still count each of its fits once.
    per_n = sum(1.0 + rep / 10 for rep in range(REPS))
    assert table["wall_s"].to_numpy() == pytest.approx(np.full(3, len(N_GRID) * per_n))
    assert table["certified_share"].to_numpy() == pytest.approx(np.full(3, 1 - 1 / REPS))
    assert table["converged_share"].to_numpy() == pytest.approx(np.full(3, 1 - 1 / REPS))


def test_rates_table_counts_nan_losses_and_uses_the_used_reps():
    df = results_table(CURVES)
    bad = (df["fit_gate"] == "softmax") & (df["rep"] == 5) & (df["n"] == 1000)
    df.loc[bad, "loss_value"] = np.nan
    table = rates_table(df, THEORY, n_boot=50).set_index(["fit_gate", "loss_name"])
    assert table.loc[("softmax", "D3"), "n_dropped"] == 1
    assert table.loc[("softmax", "D3"), "dropped_nan"] == 1
    assert table.loc[("softmax", "D3"), "reps"] == REPS - 1
    assert table.loc[("sigmoid", "D3"), "n_dropped"] == 0


def test_rates_table_drops_fits_at_a_bound():
    df = results_table(CURVES).assign(bound_active=False)
    df.loc[(df["rep"] == 2) & (df["n"] == 1000), "bound_active"] = True
    table = rates_table(df, THEORY, n_boot=50).set_index(["fit_gate", "loss_name"])
    assert (table["dropped_bound"] == 1).all()


def test_rates_table_rejects_nan_n_naming_the_field():
    df = results_table(CURVES)
    df.loc[3, "n"] = np.nan
    with pytest.raises(ValueError, match="^n:"):
        rates_table(df, THEORY)


def test_rates_table_uses_the_theory_module_by_default(monkeypatch):
    fake = types.ModuleType("moe_theory.theory")
    fake.predicted_rate = stub_theory({("softmax", "D3"): -0.25})
    monkeypatch.setitem(sys.modules, "moe_theory.theory", fake)
    df = results_table(CURVES)
    table = rates_table(df, n_boot=50, certificates=passing_certificates(df)).set_index(
        ["fit_gate", "loss_name"])
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


# ---- format_rates_table -----------------------------------------------------------------------


def test_format_rates_table():
    df = results_table(CURVES)
    table = rates_table(df, THEORY, n_boot=50, certificates=passing_certificates(df))
    text = format_rates_table(table.iloc[::-1])
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["setting", "fit", "loss"]
    assert "slope (± 95% CI)" in lines[0]
    assert set(lines[1]) <= {"-", " "}
    body = [line.split()[1:3] for line in lines[2:2 + len(table)]]
    assert body == [["sigmoid", "D1"], ["sigmoid", "D3"], ["softmax", "D3"]]
    softmax = lines[4]
    row = table.iloc[2]
    assert f"{row['slope']:+.2f} ± {row['ci_half_width']:.2f}" in softmax
    assert f"{row['n_used']} x {row['reps_used']}" in softmax
    # no check entry reports the sublevel ratios here: "-"
    assert softmax.rstrip().endswith("pass  pass  pass  pass  -         inconsistent")
    assert PLUS_MINUS in text and SUBLEVEL_LEGEND in text
    # Fixed width: every column starts at the same offset on every line.
    assert len({line.index(line.split()[1]) for line in lines[2:2 + len(table)]}) == 1


def test_format_rates_table_puts_the_plotted_curves_first():
    df = results_table(CURVES)
    table = rates_table(df, THEORY, n_boot=50, certificates=passing_certificates(df))
    table["plotted"] = table.loss_name.eq("D3") & table.fit_gate.eq("softmax")
    lines = format_rates_table(table).splitlines()
    assert lines[2].split()[1:3] == ["softmax", "D3"]
    assert set(lines[3]) <= {"·", " "} and "·" in lines[3]
    assert [line.split()[1:3] for line in lines[4:6]] == [["sigmoid", "D1"], ["sigmoid", "D3"]]
    assert any(line.startswith("the first 1 curves are the figure's") for line in lines)
    # without the column, or with nothing plotted, the plain order and no dotted rule
    table["plotted"] = False
    assert "·" not in format_rates_table(table)


def test_format_rates_table_notes_the_reasons_once():
    table = rates_table(results_table(CURVES), THEORY, n_boot=50)
    text = format_rates_table(table)
    notes = text.split("notes:\n", 1)[1]
    # the three curves share one reason (no reference certificate, no check): one note
    assert notes.count("reference: not run") == 1
    assert "toy-dense / sigmoid / D1, toy-dense / sigmoid / D3, toy-dense / softmax / D3" in notes


def test_the_sublevel_ratios_of_the_check_reach_the_table_and_a_loose_curve_gets_a_note():
    """The check's sublevel summary (moe_theory.check.sublevel_summary) becomes the rates
    columns and the table's ``sublevel`` cell; a curve with a loose data set gets a note naming
    the ratio, its n and the count, whatever its verdict; a tight one gets none."""
    df = results_table(CURVES)
    certs = passing_certificates(df)
    tight = {"data_sets": 4, "ratio_median": 1.0, "ratio_max": 1.004, "ratio_max_n": 2000,
             "by_n": {"2000": 1.004}, "loose": 0}
    loose = {"data_sets": 8, "ratio_median": 1.5, "ratio_max": 26.8, "ratio_max_n": 64000,
             "by_n": {"64000": 26.8}, "loose": 3}
    certs.check["curves"]["toy-dense/sigmoid/D3"]["sublevel"] = tight
    certs.check["curves"]["toy-dense/softmax/D3"]["sublevel"] = loose
    table = rates_table(df, THEORY, n_boot=50, certificates=certs).set_index("loss_name",
                                                                              append=True)
    row = {(r.fit_gate, r.Index[1]): r for r in table.itertuples()}
    assert row["softmax", "D3"].sublevel_max == 26.8 and row["softmax", "D3"].sublevel_loose == 3
    assert row["sigmoid", "D3"].sublevel_max == 1.004 and row["sigmoid", "D3"].sublevel_loose == 0
    assert np.isnan(row["sigmoid", "D1"].sublevel_max)  # no entry: NaN, not 0
    assert "sublevel" not in row["sigmoid", "D3"].reason
    assert ("sublevel: a fit at least as good as the reference has 27x the kept fit's loss "
            "(n=64000), over 2x on 3 of 8 data sets") in row["softmax", "D3"].reason
    assert row["softmax", "D3"].verdict == "inconsistent"  # evidence beside, not in, the verdict
    # a curve without a theory exponent has no rate bound to speak of
    assert sublevel.note(loose, has_theory=False).endswith("over 2x on 3 of 8 data sets")
    assert sublevel.note(tight) == sublevel.note({}) == ""
    lines = {line.split()[1] + "/" + line.split()[2]: line
             for line in format_rates_table(table.reset_index("loss_name")).splitlines()[2:5]}
    assert "pass  1.00      " in lines["sigmoid/D3"] and "pass  27        " in lines["softmax/D3"]


def test_format_rates_table_missing_column_is_named():
    with pytest.raises(ValueError, match="verdict"):
        format_rates_table(pd.DataFrame(columns=[c for c in RATES_COLUMNS if c != "verdict"]))


def test_every_drop_reason_has_words_for_a_legend():
    from moe_theory.rates import DROP_REASONS, DROP_WORDS

    assert set(DROP_WORDS) == set(DROP_REASONS) and all(DROP_WORDS.values())


def test_the_overlays_agreement_reads_the_values_the_slope_uses():
    """Fits on the box are left out of the slope and of the figure's means; the overlay's
    agreement must leave them out too, or a table would say its curve never follows the
    overlay while the figure's means do from the first n."""
    df = results_table({("sigmoid", "D3"): -0.5}, sigma=0.05, seed=3)
    df["bound_active"] = False
    worst = df["n"].eq(df["n"].max()) & df["rep"].isin([2, 3, 4])
    df.loc[worst, "bound_active"] = True
    df.loc[worst, "loss_value"] *= 50
    certs = passing_certificates(df)
    grid = sorted(df["n"].unique())
    cert = certs.reference[("toy-dense", "sigmoid")]
    # the overlay predicts the curve's law, the mean of n^-1/2 under the table's noise
    cert.overlay["D3"] = {"n": [int(m) for m in grid],
                          "mean": [float(df[(df.n == m) & ~df.bound_active].loss_value.mean())
                                   for m in grid]}
    (row,) = rates_table(df, certificates=certs).itertuples()
    assert row.dropped_bound == 3
    assert row.overlay_from_n == grid[0]


@pytest.mark.parametrize("left", [1, 0])
def test_the_overlays_agreement_passes_over_an_n_the_slope_drops(left):
    """An n_max left with one usable value (an outlier 10x the law) or none: the slope drops it,
    and the overlay's agreement, which read it (or stopped at it), gave NaN."""
    df = results_table({("sigmoid", "D3"): -0.5}, sigma=0.05, seed=3)
    certs = passing_certificates(df)
    grid = sorted(df["n"].unique())
    cert = certs.reference[("toy-dense", "sigmoid")]
    cert.overlay["D3"] = {"n": [int(m) for m in grid],
                          "mean": [float(df[df.n == m].loss_value.mean()) for m in grid]}
    last = df["n"].eq(grid[-1])
    df.loc[last & df["rep"].ge(left), "loss_value"] = np.nan
    df.loc[last & df["rep"].lt(left), "loss_value"] *= 10
    (row,) = rates_table(df, certificates=certs, n_boot=300).itertuples()
    assert row.n_used == len(grid) - 1 and row.dropped_n == f"{grid[-1]:g}"
    assert row.overlay_from_n == grid[0]


@pytest.mark.parametrize("column", ["converged", "certified", "bound_active"])
def test_a_flag_without_a_value_is_named_not_read_as_true(column):
    """NaN is truthy: a table merged from shards with and without a flag column would count
    those fits as converged (or drop them as on the box) silently."""
    df = results_table({("sigmoid", "D3"): -0.5})
    df[column] = df.get(column, False)
    df[column] = df[column].astype(object)
    df.loc[df.index[:3], column] = np.nan
    with pytest.raises(ValueError, match=f"^{column}: 3 row\\(s\\) hold neither true nor false"):
        rates_table(df)


@pytest.mark.parametrize("status", [None, "error", ""])
def test_a_status_that_is_neither_pass_nor_fail_blocks_the_verdict(status):
    """A malformed check.json's status (None, a word) passed straight to the verdict, which
    blocked only fail and not run."""
    fit = narrow_fit()
    label, reason = curve_verdict(-0.5, fit, {**ALL_PASS, "optimiser": Status(status)})
    assert label == "not measurable (optimiser not run)"


def test_the_rates_do_not_depend_on_the_order_of_the_tables_rows():
    """The bootstrap draws positions within each n: a caller's shuffled frame gave other last
    digits of every CI than the sorted table it came from."""
    df = results_table({("sigmoid", "D3"): -0.5, ("softmax", "D1"): -0.25}).assign(
        bound_active=False)
    df.loc[df["rep"] == 5, "bound_active"] = True  # the drop must follow its row, too
    certs = passing_certificates(df)
    table = rates_table(df, certificates=certs)
    shuffled = df.sample(frac=1.0, random_state=3)
    assert not shuffled["rep"].is_monotonic_increasing
    pd.testing.assert_frame_equal(rates_table(shuffled, certificates=certs), table)


# ---- the gap between the gates ----------------------------------------------------------------

GAP_THEORY = stub_theory({("sigmoid", "D3"): -0.5, ("softmax", "err_eta_over"): -0.25,
                          ("softmax", "D1"): -0.5})


def gap_rates(softmax_exponent, *, certify_softmax=True, sigma=SIGMA, plotted=True):
    """A rates table of a sigmoid D3 curve falling as n^-1/2 and softmax err_eta_over and D1
    curves falling as ``n^softmax_exponent`` (theory: -1/2, -1/4 and -1/2), every curve
    certified unless ``certify_softmax`` is False (the softmax fit's reference certificate then
    absent), all plotted."""
    df = results_table({("sigmoid", "D3"): -0.5, ("softmax", "err_eta_over"): softmax_exponent,
                        ("softmax", "D1"): softmax_exponent}, sigma=sigma)
    certificates = passing_certificates(df)
    if not certify_softmax:
        certificates.reference.pop(("toy-dense", "softmax"))
    table = rates_table(df, GAP_THEORY, n_boot=200, certificates=certificates)
    if plotted:
        table["plotted"] = True
    return table


def test_the_gap_pairs_only_curves_that_measure_the_experts_alike():
    """The claim is about experts: a Voronoi loss (every atom's expert in it) pairs with an
    expert group's error; two parameter errors pair only within one group and cell type (an
    exact cell's n^-1/2 against an over-specified one's n^-1/4 differs within one gate); a
    gate's parameters (beta1, A, attention's W) pair with nothing. attention-teacher's table
    had paired the sigmoid fit's err_V_over with the softmax fit's err_W_over."""
    assert gap_comparable("D3", "err_eta_over") and gap_comparable("D3", "D1_matched")
    assert gap_comparable("err_eta_over", "err_eta_over")
    assert gap_comparable("err_V_over", "err_V_over") and gap_comparable("D1", "err_V_over")
    assert not gap_comparable("err_V_over", "err_W_over")
    assert not gap_comparable("err_eta_exact", "err_eta_over")
    assert not gap_comparable("D3", "err_beta1_over") and not gap_comparable("err_A_exact", "D1")
    curves = [("sigmoid", "D3", -0.5), ("sigmoid", "err_eta_exact", -0.5),
              ("sigmoid", "err_V_over", -0.5), ("softmax", "err_eta_over", -0.25),
              ("softmax", "err_W_over", -0.25), ("softmax", "err_beta1_over", -0.25)]
    table = pd.DataFrame([{"setting": "s", "fit_gate": g, "loss_name": loss, "plotted": True,
                           "theory_exponent": e, "slope": e, "ci_low": e - 0.05,
                           "ci_high": e + 0.05, "verdict": "consistent"}
                          for g, loss, e in curves])
    gaps = gap_table(table)
    pairs = set(zip(gaps["sigmoid_loss"], gaps["softmax_loss"], strict=True))
    assert pairs == {("D3", "err_eta_over")}


def test_the_gap_is_exhibited_only_between_certified_slopes_whose_cis_are_apart():
    """Sigmoid D3 at n^-1/2 against softmax err_eta_over at n^0 (SIGMA 0.3 over 20 replications
    and two decades: half-widths near 0.03, so the slopes, 1/2 apart, lie some 15 half-widths
    apart): exhibited, with the difference's range from the CIs' ends; D1 (-1/2 in theory, like
    D3) is no pair."""
    table = gap_rates(0.0)
    gaps = gap_table(table)
    assert list(gaps["softmax_loss"]) == ["err_eta_over"]
    g = gaps.iloc[0]
    assert g["gap"] == GAP_EXHIBITED
    sig = table[table.fit_gate.eq("sigmoid")].iloc[0]
    soft = table[table.loss_name.eq("err_eta_over")].iloc[0]
    assert g["difference_low"] == soft["ci_low"] - sig["ci_high"] > 0
    assert g["difference_high"] == soft["ci_high"] - sig["ci_low"]
    assert g["difference_low"] < 0.5 < g["difference_high"]
    text = format_rates_table(table)
    section = text.split("gap between the gates", 1)[1]
    assert "toy-dense" in section
    for loss, r in (("D3", sig), ("err_eta_over", soft)):  # as the table above prints them
        assert f"{loss} {r['slope']:+.2f} ± {r['ci_half_width']:.2f}" in section
    assert "exhibited (softmax slope minus sigmoid slope in [" in section


@pytest.mark.parametrize("exponent, outcome", [(-1.0, GAP_REVERSED), (-0.5, GAP_UNRESOLVED)])
def test_a_softmax_slope_as_fast_or_faster_is_said_so(exponent, outcome):
    """Certified softmax slopes at n^-1 (CIs apart the other way: against the theory, said
    plainly) and at n^-1/2 (the CIs overlap)."""
    gaps = gap_table(gap_rates(exponent))
    assert list(gaps["gap"]) == [outcome]


def test_a_gap_with_a_curve_without_a_ci_does_not_say_the_cis_overlap():
    """A softmax loss stuck at one value has no CI (NaN ends): both comparisons failed and the
    pair read "the two CIs overlap", of an interval that does not exist."""
    df = results_table({("sigmoid", "D3"): -0.5, ("softmax", "err_eta_over"): 0.0}, sigma=0.05)
    df.loc[df["loss_name"].eq("err_eta_over"), "loss_value"] = 0.7
    table = rates_table(df, GAP_THEORY, n_boot=200, certificates=passing_certificates(df))
    table["plotted"] = True
    (gap,) = gap_table(table)["gap"]
    assert gap == GAP_NO_CI.format("softmax") != GAP_UNRESOLVED
    assert "no CI for the softmax curve" in format_rates_table(table)


def test_a_gap_with_a_curve_that_is_not_measurable_says_which_and_why():
    gaps = gap_table(gap_rates(0.0, certify_softmax=False))
    assert list(gaps["gap"]) == ["not measurable: softmax err_eta_over (reference, overfit not run)"]


def test_a_ci_too_wide_for_a_verdict_still_shows_a_gap_its_cis_clear():
    """Noise 4x (half-widths near 0.1): each curve is inconclusive against its own exponent,
    but n^-1/2 against n^+1/2 leaves the CIs apart: the gap's test is the two CIs, not their
    width."""
    table = gap_rates(0.5, sigma=1.2)
    assert set(table["verdict"]) == {"inconclusive (CI too wide)"}
    assert list(gap_table(table)["gap"]) == [GAP_EXHIBITED]


def test_no_gap_section_without_the_figures_choice_of_curves():
    table = gap_rates(0.0, plotted=False)
    assert len(gap_table(table)) == 0
    assert "gap between the gates" not in format_rates_table(table)
    table["plotted"] = table["fit_gate"].eq("softmax")  # one gate drawn: no pair
    assert len(gap_table(table)) == 0


def test_converged_share_counts_as_the_converged_certificate_does():
    # a fit whose short-step stop a restart lowered by more than 1 nu is not converged for the
    # certificate: the table's share said 100% beside the certificate's FAIL
    df = results_table(CURVES).assign(stop_reason="tolerance", restart_drop=0.0, converged=True)
    moved = (df["fit_gate"] == "softmax") & (df["rep"] < 3)
    df.loc[moved, "restart_drop"] = 5.0
    table = rates_table(df, THEORY, n_boot=50).set_index(["fit_gate", "loss_name"])
    assert table.loc[("softmax", "D3"), "converged_share"] == pytest.approx(1 - 3 / REPS)
    assert table.loc[("softmax", "D3"), "cert_converged"] == FAIL
    assert table.loc[("sigmoid", "D3"), "converged_share"] == 1.0


def test_a_fit_from_before_the_stop_reason_column_counts_by_its_own_converged_flag():
    # a table merged from shards written before and after stop_reason existed has NaN there
    # for the older fits: read as "nan", not "tolerance", they counted as not converged though
    # their converged flag says they were (the share and the certificate both)
    df = results_table(CURVES).assign(converged=True, stop_reason="tolerance")
    df.loc[df["rep"] % 2 == 0, "stop_reason"] = np.nan
    table = rates_table(df, THEORY, n_boot=50)
    assert (table["converged_share"] == 1.0).all()
    assert (table["cert_converged"] == PASS).all()


def test_a_table_resumed_across_the_restarts_names_its_unchecked_stops():
    # a sweep resumed across the restarts' introduction keeps its older fits, whose tolerance
    # stops have no restart record: the certificate passes them by their stop, and the table's
    # notes say how many (a passed certificate printed nothing)
    df = results_table(CURVES).assign(stop_reason="tolerance", restart_drop=0.0, converged=True)
    older = (df["fit_gate"] == "softmax") & (df["rep"] < 3)
    df.loc[older, "restart_drop"] = np.nan
    table = rates_table(df, THEORY, n_boot=50).set_index(["fit_gate", "loss_name"])
    softmax = table.loc[("softmax", "D3")]
    assert softmax["cert_converged"] == PASS
    fits = 3 * df["n"].nunique()
    assert f"converged: pass ({fits} of " in softmax["reason"]
    assert "converged" not in str(table.loc[("sigmoid", "D3"), "reason"])


def test_uneven_replications_give_no_firm_verdict():
    """One n with 2 usable replications of 60 (58 fits there on the box, dropped): its variance
    rests on one degree of freedom and, when its two values lie close, looks small, and Welch-
    Satterthwaite then counts many; the narrow CI called a true n^-1/2 'inconsistent' with no
    reason given (on this draw; the CI covered -1/2 86% of the time). Every value kept, the
    same curve is consistent."""
    from moe_theory.rates import UNEVEN_REPS_RATIO, UNEVEN_VERDICT

    passed = {k: Status(PASS) for k in ("reference", "converged", "optimiser", "overfit")}
    n = np.geomspace(1e3, 1e5, 6)
    rng = np.random.default_rng(30)
    values = [2 * m**-0.5 * np.exp(0.5 * rng.standard_normal(60)) for m in n]
    bound = [np.zeros(60, bool) for _ in n]
    bound[-1][2:] = True
    fit = fit_rate(n, values, bound_per_n=bound)
    assert fit.reps_per_n == (60, 60, 60, 60, 60, 2)
    assert fit.half_width < CI_HALF_WIDTH_MAX and not fit.ci_low <= -0.5 - 0.05  # too narrow
    label, reason = curve_verdict(-0.5, fit, passed)
    assert label == UNEVEN_VERDICT
    assert reason.startswith("replications uneven: n=100000 keeps 2 usable, another n 60")
    assert curve_verdict(-0.5, fit_rate(n, values), passed)[0] == "consistent"
    # at half the most usable replications or more the verdict is firm
    bound[-1][:] = False
    bound[-1][30:] = True
    assert fit_rate(n, values, bound_per_n=bound).reps_per_n[-1] == 30 == UNEVEN_REPS_RATIO * 60
    assert curve_verdict(-0.5, fit_rate(n, values, bound_per_n=bound), passed)[0] in (
        "consistent", "inconsistent")


def test_a_median_most_replications_share_gives_no_median_ci():
    """10 of 11 replications at one n share a value (not all: no tie): every resampled median is
    that value, its bootstrap variance 0, and that n narrowed the median's interval as no tie
    may; it now leaves the median without a CI, as a tie does."""
    rng = np.random.default_rng(3)
    n = np.array([1e3, 3e3, 1e4, 3e4, 1e5])
    values = [m**-0.5 * np.exp(0.9 * rng.standard_normal(11)) for m in n]
    values[0][:10] = values[0][0]
    fit = fit_rate(n, values)
    assert np.isnan(fit.median.ci_low) and np.isnan(fit.median.ci_high)
    assert np.isfinite(fit.ci_low)  # the mean moves when a resample takes the odd value


def test_a_curve_with_a_nan_sample_size_is_refused_not_shortened():
    df = results_table({("sigmoid", "D3"): -0.5})
    df.loc[df["n"] == df["n"].max(), "n"] = np.nan
    with pytest.raises(ValueError, match="^n: .* without a positive finite sample size"):
        curve_fit(df)


def test_a_gap_with_a_curve_of_uneven_replications_is_not_measurable():
    """A CI that uneven replications make too narrow cannot tell two slopes apart: the pair
    that the CIs alone call exhibited is not measurable, naming the curve."""
    from moe_theory.rates import UNEVEN_VERDICT

    table = gap_rates(0.0)
    assert list(gap_table(table)["gap"]) == [GAP_EXHIBITED]
    table.loc[table["fit_gate"].eq("softmax"), "verdict"] = UNEVEN_VERDICT
    assert list(gap_table(table)["gap"]) == [
        "not measurable: softmax err_eta_over (replications uneven: its CI is too narrow)"]


def test_a_bending_curve_gives_no_firm_verdict():
    """A broken power law, n^-3/4 up to n = 10^4 and n^-1/4 beyond, averages a slope near -1/2
    over 10^3..10^5 with a narrow CI: a straight line read it 'consistent' with -1/2, a rate it
    has at no n. Its quadratic term is far past 1% (sd 0.3 in log, 20 replications), and its
    local slope moves by more than twice the verdict's widening (0.94 on this draw: a quadratic
    through a kink of +1/2 bends more than the kink, as its ends follow the straight parts)."""
    from moe_theory.rates import BENDS_VERDICT

    passed = {k: Status(PASS) for k in ("reference", "converged", "optimiser", "overfit")}
    n = np.geomspace(1e3, 1e5, 7)
    rng = np.random.default_rng(5)
    truth = np.where(n <= 1e4, (n / 1e4) ** -0.75, (n / 1e4) ** -0.25)
    fit = fit_rate(n, [t * np.exp(0.3 * rng.standard_normal(20)) for t in truth])
    assert fit.half_width < CI_HALF_WIDTH_MAX and fit.ci_low - 0.05 <= -0.5 <= fit.ci_high + 0.05
    assert fit.bend_p < 1e-6 and 0.3 < fit.bend < 1.2
    label, reason = curve_verdict(-0.5, fit, passed)
    assert label == BENDS_VERDICT
    assert reason.startswith(f"curve bends: the log-mean's local slope moves by {fit.bend:+.2f} "
                             "from n=1000 to n=100000 (quadratic term p = ")
    # the same noise on a straight n^-1/2 is firm
    straight = fit_rate(n, [m**-0.5 * np.exp(0.3 * rng.standard_normal(20)) for m in n])
    assert curve_verdict(-0.5, straight, passed)[0] == "consistent"


def test_a_straight_curve_is_called_bent_about_one_time_in_a_hundred():
    """The bend test's false alarms: 400 straight n^-1/2 curves (6 n, 20 replications, sd 0.5
    in log). Its p is Student's under a straight line, so about 1% fall under BEND_P_MAX = 0.01
    and fewer are flagged (the slope must also move by more than 0.1); 12 of 400 or more would
    have probability about 3e-4 at a true 1% (binomial). And its power: a slope that goes from
    -3/2 to -1/2 at n = 10^4 is flagged in at least 190 of 200 draws (200 of 200 measured)."""
    from moe_theory.rates import bends

    n = np.geomspace(1e3, 1e5, 6)
    rng = np.random.default_rng(1)
    straight = sum(bool(bends(fit_rate(n, [m**-0.5 * np.exp(0.5 * rng.standard_normal(20))
                                           for m in n], n_boot=500))) for _ in range(400))
    assert straight < 12
    broken = np.minimum(n / 1e4, 1) ** -1.0 * n**-0.5
    flagged = sum(bool(bends(fit_rate(n, [t * np.exp(0.5 * rng.standard_normal(20))
                                          for t in broken], n_boot=500))) for _ in range(200))
    assert flagged >= 190


def test_a_curve_with_many_fits_left_out_gives_no_firm_verdict():
    """Fits on the box or with a NaN loss are rarely a random share: past 10% of the curve's
    values left out, the kept ones are a selection and the verdict is not firm; at 10% it is."""
    from moe_theory.rates import LEFT_OUT_SHARE_MAX, LEFT_OUT_VERDICT

    passed = {k: Status(PASS) for k in ("reference", "converged", "optimiser", "overfit")}
    n = np.geomspace(1e3, 1e5, 5)
    rng = np.random.default_rng(8)
    values = [m**-0.5 * np.exp(0.3 * rng.standard_normal(40)) for m in n]
    bound = [np.zeros(40, bool) for _ in n]
    for b in bound:
        b[:4] = True  # 20 of 200: at the bound
    fit = fit_rate(n, values, bound_per_n=bound)
    assert fit.n_values - sum(fit.reps_per_n) == LEFT_OUT_SHARE_MAX * fit.n_values
    assert curve_verdict(-0.5, fit, passed)[0] == "consistent"
    values[0][4] = np.nan  # one more: 21 of 200
    label, reason = curve_verdict(-0.5, fit_rate(n, values, bound_per_n=bound), passed)
    assert label == LEFT_OUT_VERDICT
    assert reason.startswith("fits left out: 21 of 200 values (1 NaN, 20 fits on the box), "
                             "more than 10%")
    # an n left out whole for too few usable values counts its usable ones too
    few = [v.copy() for v in values[:4]] + [np.append(values[4][:1], np.full(39, np.nan))]
    label, reason = curve_verdict(-0.5, fit_rate(n, few), passed)
    assert label == LEFT_OUT_VERDICT
    assert reason.startswith("fits left out: 41 of 200 values (40 NaN, 1 at n with < 2 usable)")


@pytest.mark.parametrize("guarded", ["inconclusive (replications uneven)",
                                     "inconclusive (fits left out)",
                                     "inconclusive (curve bends)"])
def test_a_gap_with_a_guarded_curve_is_not_measurable_and_names_it(guarded):
    """A narrow CI that does not measure the rate cannot tell two rates apart: the pair is not
    measurable, and a figure's legend (no reasons) names the curve as well as the table does."""
    from moe_theory.rates import GUARDED_VERDICTS, gap_outcome

    table = gap_rates(0.0)
    table.loc[table["fit_gate"].eq("softmax"), "verdict"] = guarded
    gap = gap_table(table).iloc[0]
    assert gap["gap"] == f"not measurable: softmax err_eta_over ({GUARDED_VERDICTS[guarded]})"
    assert gap_outcome(gap, reasons=False) == "not measurable (the softmax curve)"
