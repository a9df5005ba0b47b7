"""What the rates, certificates and preflight print where a value sits at an edge: a spread that
vanishes at one n, a sample size of more than six digits, a failed share or ratio that rounds
onto its bound. Every check here is deterministic (no sampling), so each holds exactly."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from moe_theory.certificates import (
    PASS,
    Status,
    converged_certificate,
    free_parameters,
    optimiser_certificate,
    overfit_certificate,
)
from moe_theory.preflight import INCONCLUSIVE, curve_outlook
from moe_theory.rates import (
    CI_HALF_WIDTH_MAX,
    RateFit,
    curve_verdict,
    fit_rate,
    predicted_half_width,
    sample_size_words,
)
from moe_theory.sublevel import note
from tests.moe_theory.test_certificates import REGULAR
from tests.moe_theory.test_preflight import (
    certificate,
    config,
    registered,  # noqa: F401 (autouse: REGULAR known)
)

ALL_PASS = {name: Status(PASS) for name in ("reference", "converged", "optimiser", "overfit")}


# ---- the preflight's CI where the limit's spread vanishes at one n -----------------------------

def test_a_limit_without_spread_at_one_n_predicts_no_ci():
    """docs/theory.md#planning: "A limit whose spread is zero or undefined at some n predicts no
    CI": the fits would tie there, and a curve tied at an n has no interval. The other n's
    variances kept the sum positive, and a finite half-width was promised (0.043 here)."""
    n = [1e3, 1e4, 1e5, 1e6]
    mean = [1.0, 0.3, 0.1, 0.03]
    slope, half = predicted_half_width(n, mean, [0.5, 0.0, 0.05, 0.015], 20)
    assert math.isnan(half)
    # the slope is the means' own, spread or not (exact: the same OLS on the same means)
    assert slope == predicted_half_width(n, mean, [0.5, 0.15, 0.05, 0.015], 20)[0]
    # as a measured curve tied at that n has no CI
    rng = np.random.default_rng(0)
    values = [m * np.exp(0.3 * rng.standard_normal(20)) for m in mean]
    values[1] = np.full(20, 0.3)
    assert math.isnan(fit_rate(n, values).ci_low)
    # and the preflight reads it as the rates would: inconclusive, not measurable-if
    cert = certificate()
    d3 = cert.overlay["D3"]
    cert.overlay["D3"] = {**d3, "sd": [d3["sd"][0], 0.0, *d3["sd"][2:]]}
    row = curve_outlook(config(), REGULAR, "sigmoid", "D3", cert)
    assert row["outlook"] == INCONCLUSIVE and "no CI predicted" in row["reasons"]


# ---- sample sizes named in reasons and the dropped_n column -----------------------------------

def test_a_dropped_sample_size_is_named_by_its_own_digits():
    """An n of seven digits was named "1.77828e+06" (``:g`` keeps six), a sample size the table
    does not hold; those that ``:g`` writes exactly keep their form ("1.6e+06" in committed
    tables)."""
    n = [1e5, 316228, 1e6, 1778279, 3162278]
    rng = np.random.default_rng(0)
    values = [m**-0.5 * np.exp(0.3 * rng.standard_normal(10)) for m in n]
    values[3] = np.array([1e-3, np.nan, np.nan])
    fit = fit_rate(n, values)
    assert fit.dropped_n == (1778279.0,)
    reason = curve_verdict(-0.5, fit, ALL_PASS)[1]
    assert reason.endswith("usable replications: 1778279")
    assert [sample_size_words(m) for m in (1000.0, 21544.0, 1.6e6, 2048000.0, 1778279.0)] == [
        "1000", "21544", "1.6e+06", "2.048e+06", "1778279"]
    assert float(sample_size_words(3162.2776601683795)) == 3162.2776601683795


# ---- failed values printed on the failing side of their bound ---------------------------------

def fits_of_one_n(reps: int, failing: int) -> pd.DataFrame:
    """``reps`` fits at one n, the first ``failing`` stopped on the cap and worse than the
    reference."""
    return pd.DataFrame([{"n": 1000, "rep": r, "stop_reason": "max_iter" if r < failing
                          else "tolerance", "certified": r >= failing, "bound_active": False}
                         for r in range(reps)])


def test_a_failed_share_is_not_printed_as_the_share_it_failed():
    """18 of 19 fits (94.7%) fail the 95% rule; the reason read "(n=1000: 95%)" and "5% of
    fits", the bound itself, as if they had passed."""
    converged = converged_certificate(fits_of_one_n(19, 1))
    assert converged.status == "fail" and converged.reason.endswith("(n=1000: 94.7%)")
    optimiser = optimiser_certificate(fits_of_one_n(19, 1), None)
    assert optimiser.status == "fail" and "(n=1000: 5.3% of fits)" in optimiser.reason
    # a share rounding clear of its bound keeps its form (committed tables: "n=20000: 90%")
    assert converged_certificate(fits_of_one_n(20, 2)).reason.endswith("(n=1000: 90%)")


def overfit_fits(ratio: float, nu: float = 0.01, n: int = 100_000) -> pd.DataFrame:
    """8 fits whose Delta SSR / (nu p) is ``ratio``."""
    p = free_parameters("sigmoid", "linear", "relu", 2, 3)
    return pd.DataFrame([{"n": n, "rep": r, "fit_gate": "sigmoid", "score": "linear",
                          "expert": "relu", "d": 2, "k_fit": 3, "fit_loss": nu,
                          "ref_loss": nu + ratio * nu * p / n} for r in range(8)])


def test_a_failed_overfit_ratio_is_printed_outside_its_band():
    """Ratios just past [0.5, 2.0] read "= 2 ... above [0.5, 2.0]" and "= 0.5 ... below" at two
    significant digits."""
    above = overfit_certificate(overfit_fits(2.004), 0.01)
    assert above.status == "fail" and "= 2.004 at n=100000, above [0.5, 2.0]" in above.reason
    below = overfit_certificate(overfit_fits(0.4996), 0.01)
    assert below.status == "fail" and "= 0.4996 at n=100000, below [0.5, 2.0]" in below.reason
    # about a misspecified reference the band's printed end stays below the ratio too
    scaled = overfit_certificate(overfit_fits(4.26), 0.01, expected=2.12745)
    assert "= 4.3 at n=100000, above [1.1, 4.25]" in scaled.reason
    assert "= 2.3 at n=100000, above [0.5, 2.0]" in overfit_certificate(
        overfit_fits(2.3), 0.01).reason  # as committed tables print it


def test_an_inconclusive_half_width_is_printed_above_the_bound():
    """yan2025/large_n_sigmoid's sigmoid D3 (half-width 0.0754) read "CI half-width 0.075 >
    0.075"."""
    fit = RateFit(slope=-0.52, intercept=0.0, slope_se=0.03, ci_low=-0.52 - 0.0754,
                  ci_high=-0.52 + 0.0754, r2=0.99, n_points=5, n_dropped=0)
    label, reason = curve_verdict(-0.5, fit, ALL_PASS)
    assert label == "inconclusive (CI too wide)"
    assert reason == f"CI half-width 0.0754 > {CI_HALF_WIDTH_MAX}"
    wide = RateFit(-0.52, 0.0, 0.04, -0.597, -0.443, 0.99, 5, 0)
    assert curve_verdict(-0.5, wide, ALL_PASS)[1] == "CI half-width 0.077 > 0.075"


def test_a_loose_data_sets_ratio_is_printed_above_loose():
    """A loose data set has a ratio above 2; 2.003 read "2.00x ..., over 2x"."""
    entry = {"loose": 1, "ratio_max": 2.003, "ratio_max_n": 1000, "data_sets": 20}
    assert note(entry).startswith("sublevel: a fit at least as good as the reference has "
                                  "2.003x the kept fit's loss")
    assert "3.50x" in note({**entry, "ratio_max": 3.5})
