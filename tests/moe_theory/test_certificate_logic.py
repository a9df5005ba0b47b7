"""The certificates' logic at the edges of docs/theory.md#certificates: each passes and fails
exactly where the docs say, and a test that could not be run is never a pass."""

from __future__ import annotations

import json
import math

import pandas as pd

from moe_theory import certificates
from moe_theory.certificates import (
    FAIL,
    NOT_RUN,
    PASS,
    ReferenceCertificate,
    Status,
    converged_certificate,
    fits_of,
    optimiser_certificate,
    reference_status,
)
from moe_theory.check import curve_check
from tests.moe_theory.test_rates import NU, passing_certificates, results_table

VARIANTS = ("max_iter x10", "jitter x10")


def _curve():
    """One softmax D3 curve whose fits all converged and passed, 20 replications at 9 n."""
    return results_table({("softmax", "D3"): -0.5}).assign(converged=True, certified=True)


def test_a_variant_missing_one_checked_fit_is_not_run_not_compared_on_other_replications():
    """A variant without a row of one checked fit (n, rep) had its mean at that n taken over
    the other replications only: compared with the sweep's mean over all of them, it hid a fit
    the variant moved (pass), or failed an n nothing moved on the replications' own spread."""
    df = _curve()
    base = df[df["rep"] < 2]
    first = base["n"].min()
    hole = (base["n"] == first) & (base["rep"] == 1)
    # unmoved, rep 1 three times rep 0: the mean of rep 0 alone is log 2 below both's
    base.loc[hole, "loss_value"] = 3 * base.loc[(base["n"] == first) & (base["rep"] == 0),
                                                "loss_value"].iloc[0]
    df.loc[(df["n"] == first) & (df["rep"] == 1), "loss_value"] = base.loc[hole, "loss_value"]
    same = pd.concat([base.assign(variant=v) for v in VARIANTS])
    assert curve_check(df, base, same, NU, expected=VARIANTS)["status"] == PASS
    holed = pd.concat([base.assign(variant=VARIANTS[0]), base[~hole].assign(variant=VARIANTS[1])])
    entry = curve_check(df, base, holed, NU, expected=VARIANTS)
    assert entry["status"] == NOT_RUN
    assert entry["reasons"] == [f"no refit of this curve by jitter x10 at n = {first:g} (rep 1)"]
    # the hole is where the other variant moved the fit a hundredfold: no pass either
    moved = base.assign(variant=VARIANTS[0])
    moved.loc[hole, "loss_value"] *= 100
    entry = curve_check(df, base, pd.concat([moved, base[~hole].assign(variant=VARIANTS[1])]),
                        NU, expected=VARIANTS)
    assert entry["status"] == NOT_RUN


def test_sweep_fits_beaten_by_the_refits_fail_the_check_without_a_usable_loss():
    """Every sweep fit beaten by a refit by 1000 nu was "not run" where the checked fits had no
    usable loss (an over-specified cell's error of fits that have none): the SSR test ran and
    failed."""
    df = _curve()
    df.loc[df["rep"] < 2, "loss_value"] = math.nan
    base = df[df["rep"] < 2]
    beaten = base.assign(fit_loss=base["fit_loss"] - 1000 * NU / base["n"])
    entry = curve_check(df, base, pd.concat([beaten.assign(variant=v) for v in VARIANTS]), NU,
                        expected=VARIANTS)
    assert entry["status"] == FAIL and "refitted fits beaten by a refit" in entry["reasons"][0]
    # not beaten: nothing to compare, not run as before
    entry = curve_check(df, base, pd.concat([base.assign(variant=v) for v in VARIANTS]), NU,
                        expected=VARIANTS)
    assert entry["status"] == NOT_RUN
    assert entry["reasons"] == ["no usable loss among the refitted fits"]


def test_an_optimiser_test_whose_column_is_missing_is_not_run_not_passed():
    """Without `certified` (or, for multi-start fits, `starts_near_best`) the test was skipped
    and the certificate passed on the check alone, though every fit was worse than its
    reference or had no second start at its best SSR."""
    check = {"status": PASS}
    df = results_table({("sigmoid", "D3"): -0.5})
    assert optimiser_certificate(df.assign(certified=False), check).status == FAIL
    status = optimiser_certificate(df.drop(columns="certified"), check)
    assert status.status == NOT_RUN and "certified" in status.reason
    multi = df.assign(n_starts=5, starts_near_best=1)
    assert optimiser_certificate(multi, check).status == FAIL
    status = optimiser_certificate(multi.drop(columns="starts_near_best"), check)
    assert status.status == NOT_RUN and "starts_near_best" in status.reason
    # one start throughout: no second start to ask for, the certificate stands
    assert optimiser_certificate(df.assign(n_starts=1), check).status == PASS
    # a test that ran and failed still fails where another column is missing
    worse = df.drop(columns="certified").assign(bound_active=True)
    assert optimiser_certificate(worse, check).status == FAIL


def test_an_infinite_unidentified_value_read_back_from_json_fails_its_curve():
    """An unidentified loss's value goes to JSON as the string "inf" (json_ready); read back,
    comparing it with the curve's scale raised TypeError."""
    df = _curve()
    cert = passing_certificates(df).reference[("toy-dense", "softmax")]
    cert.unidentified = {"D3": {"value": math.inf, "reason": "D3 not identified: x"}}
    back = ReferenceCertificate.from_dict(json.loads(json.dumps(cert.to_dict())))
    assert back.unidentified["D3"]["value"] == "inf"
    for c in (cert, back):
        status = reference_status(c, loss="D3", smallest=1.0, over_specified=True)
        assert status.status == FAIL and "D3 not identified" in status.reason
    back.unidentified["D3"]["value"] = None  # NaN written: unknown, fails at any scale
    assert reference_status(back, loss="D3", smallest=1.0).status == FAIL
    back.unidentified["D3"]["value"] = 0.05
    assert reference_status(back, loss="D3", smallest=1.0).status == PASS
    assert certificates.UNIDENTIFIED_SHARE == 0.1
    back.unidentified["D3"]["value"] = 0.1  # at least the share: fails
    assert reference_status(back, loss="D3", smallest=1.0).status == FAIL


def test_a_short_step_stop_that_a_restart_lowered_is_not_converged():
    """ftol and xtol stop on a short step, which a large damping makes of any step: a fit
    whose restart lowered its SSR by more than 1 nu stopped short of a stationary point and
    does not count as converged, though its stop reason says tolerance."""
    df = _curve().assign(stop_reason="tolerance", restart_drop=0.0)
    assert converged_certificate(df).status == PASS
    first = df["n"].min()
    # 2 of 20 fits at the smallest n: 90%, under the 95% the certificate asks
    moved = (df["n"] == first) & df["rep"].isin([3, 4])
    df.loc[moved, "restart_drop"] = 2.5
    status = converged_certificate(df)
    assert status.status == FAIL
    assert f"n={first}: 90%" in status.reason and "2 fit(s)" in status.reason
    # a drop within the certificate's unit is the same stationary point to the losses
    df.loc[moved, "restart_drop"] = certificates.RESTART_DROP_MAX
    assert converged_certificate(df).status == PASS
    # a table written before the restart (NaN, or no column) is read by the stop alone, and
    # a table that mixes the two (a sweep resumed across the restarts) says how many
    df.loc[moved, "restart_drop"] = math.nan
    status = converged_certificate(df)
    assert status.status == PASS
    assert status.reason.startswith(f"2 of {len(fits_of(df))} tolerance stop(s) have no "
                                    "restart record")
    assert converged_certificate(df.drop(columns="restart_drop")) == Status(PASS)
    assert converged_certificate(df.assign(restart_drop=0.0)) == Status(PASS)
    # and says it beside a failure too, of every stop on tolerance as the stop column counts
    # them (a restarted one included)
    df.loc[(df["n"] == first) & df["rep"].isin([5, 6]), "stop_reason"] = "max_iter"
    df.loc[(df["n"] == first) & (df["rep"] == 7), "restart_drop"] = 2.5
    status = converged_certificate(df)
    assert status.status == FAIL and status.reason.endswith("read by their stop alone")
    assert f"; 2 of {len(fits_of(df)) - 2} tolerance stop(s)" in status.reason


def test_a_refit_that_lost_the_loss_on_some_fits_is_not_compared_over_the_others():
    """A refit as good as the sweep's fit whose loss is not usable (an over-specified cell that
    has no atom left) on one of the checked fits at an n: its log-mean there was taken over the
    other fit alone, against the sweep's mean over both, so a fit the variant moved out of the
    mean passed unseen. Like a refit that lost the loss on every fit, it is an infinite move."""
    df = _curve()
    base = df[df["rep"] < 2]
    first = base["n"].min()
    lost = (base["n"] == first) & (base["rep"] == 1)
    # rep 1 equal to rep 0, so that dropping it leaves the log-mean where it was
    value = base.loc[(base["n"] == first) & (base["rep"] == 0), "loss_value"].iloc[0]
    base.loc[lost, "loss_value"] = value
    df.loc[(df["n"] == first) & (df["rep"] == 1), "loss_value"] = value
    same = pd.concat([base.assign(variant=v) for v in VARIANTS])
    assert curve_check(df, base, same, NU, expected=VARIANTS)["status"] == PASS
    variant = base.assign(variant=VARIANTS[0])
    variant.loc[lost, "loss_value"] = math.nan
    entry = curve_check(df, base, pd.concat([variant, base.assign(variant=VARIANTS[1])]), NU,
                        expected=VARIANTS)
    assert entry["status"] == FAIL
    assert entry["mean_shift"][VARIANTS[0]] == math.inf
    assert any(r.startswith(f"{VARIANTS[0]}: the log-mean at 1 n moves") for r in entry["reasons"])


def test_the_check_compares_slopes_over_the_n_the_rate_uses_on_both_sides():
    """At an n the curve's rate drops (one usable value: no CI) a refit that moved the value
    failed the slope test, though nothing the table reports moved, and one that lost it passed
    with the sweep's slope over one n more than the variant's. Both are judged over the n with
    a CI alone."""
    import numpy as np

    df = _curve()
    top = df["n"].max()
    df.loc[(df["n"] == top) & (df["rep"] > 0), "loss_value"] = np.nan
    base = df[df["rep"] < 2]
    for change in (3.0, np.nan):  # moved threefold, or lost, where the rate has no CI
        changed = base.copy()
        changed.loc[(changed["n"] == top) & (changed["rep"] == 0), "loss_value"] *= change
        refits = pd.concat([changed.assign(variant=VARIANTS[0]),
                            base.assign(variant=VARIANTS[1])])
        entry = curve_check(df, base, refits, NU, expected=VARIANTS)
        assert entry["status"] == PASS, entry["reasons"]
        assert entry["slope_shift"][VARIANTS[0]] == 0.0


def test_the_checks_tolerance_does_not_depend_on_the_rows_order():
    """The per-n tolerance is the rates table's bootstrap interval, drawn in replication order:
    drawn in the table's row order, the same rows in another order judged a shift between the
    two intervals once a fail, once a pass."""
    import numpy as np

    from moe_theory.rates import log_mean_half_width

    df = _curve()
    m = sorted(df["n"].unique())[4]
    values = df.loc[df["n"] == m].sort_values("rep")["loss_value"].to_numpy()
    halves = log_mean_half_width(values), log_mean_half_width(values[::-1])
    assert halves[0] != halves[1]  # the bootstrap does depend on the order it is given
    base = df[df["rep"] < 2]
    moved = base.copy()
    moved.loc[moved["n"] == m, "loss_value"] *= np.exp(sum(halves) / 2)
    refits = pd.concat([moved.assign(variant=VARIANTS[0]), base.assign(variant=VARIANTS[1])])
    reversed_rows = pd.concat([df[df["n"] != m], df[df["n"] == m].iloc[::-1]])
    entries = [curve_check(full, base, refits, NU, expected=VARIANTS)
               for full in (df, reversed_rows)]
    assert entries[0]["status"] == entries[1]["status"]
    assert entries[0]["mean_tolerance"] == entries[1]["mean_tolerance"]
