"""Empirical convergence rates of loss curves, and verdicts that noise cannot win
(docs/theory.md#rate-estimation, docs/theory.md#verdicts).

A *curve* is one ``(setting, fit_gate, loss_name)`` group of the tidy results table
(docs/theory.md#results-table). Its rate is the OLS slope of ``log(mean over replications)`` on
``log n`` (N24's choice), reported beside the slope of ``log(median)``; a loss decaying as
``n^-1/2`` has slope ``-0.5``. Theory exponents use the same sign: ``-0.5`` for the parametric
rate, ``-0.25`` for over-specified atoms, and ``0.0`` for "slower than any polynomial".

One "±" convention everywhere (tables, report, figure legends): ``±`` is the half-width of the
bootstrap 95% confidence interval of the slope (:data:`PLUS_MINUS`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import stdtr, stdtrit

from moe_theory import sublevel
from moe_theory.certificates import (
    CERTIFICATES,
    FAIL,
    NOT_RUN,
    PASS,
    FolderCertificates,
    Status,
    fits_of,
    overlay_agreement,
    stationary_stops,
)
from moe_theory.console import past_bound
from moe_theory.kept_values import (
    DROP_REASONS,
    MIN_REPS_PER_N,
    check_n,
    drop_reasons,
    kept_by_n,
    split_by_n,
    usable,
)
from moe_theory.voronoi import parameter_error_parts

# The theory gives asymptotic exponents; at n = 10^3..10^5 the loss still carries lower-order
# terms (log factors, the n^-1/4 parts of a mixed loss, a reference G_bar that is itself only
# approximate), so the finite-n slope is a misspecified model of the asymptotics. Widening the
# CI by this much on each side keeps that bias from turning into false rejections while still
# separating n^-1/2 from n^-1/4.
VERDICT_WIDEN = 0.05
#: The theory's exponents of one loss are 1/4 apart (n^-1/2 against n^-1/4): a verdict must not
#: be "consistent" with both, so the widened CI, 2 (h + VERDICT_WIDEN) long, must be shorter than
#: 1/4, i.e. the half-width h below 1/8 - 0.05 = 0.075. Wider CIs give "inconclusive".
CI_HALF_WIDTH_MAX = 0.075
#: Replications at one n whose values agree to this relative spread are tied (a loss stuck at
#: one value, up to float32 rounding, 1.2e-7): no spread is no evidence of a precise slope. The
#: losses of different data sets spread by about their own size, so no measured curve comes near.
TIE_RTOL = 1e-6
#: A curve gets a verdict only with this many usable sample sizes: a slope through 2 points has
#: R^2 = 1 whatever the data, and 3 points leave one residual degree of freedom.
MIN_POINTS = 4
CI_LEVEL = 0.95
#: A curve whose log-mean bends at this level (the quadratic term's two-sided p) is no straight
#: line: 1% rather than the CI's 5%, as a false alarm withholds a verdict the data support and
#: every firm curve takes the test (docs/theory.md#verdicts).
BEND_P_MAX = 0.01
PLUS_MINUS = f"± = half-width of the bootstrap {CI_LEVEL:.0%} CI"

CURVE_KEYS = ("setting", "fit_gate", "loss_name")
# Constant within a curve (checked), copied into its row of the rates table.
DESCRIPTIVE_COLUMNS = ("truth_gate", "score", "expert", "regime", "d", "k_true", "k_fit")
ROW_COLUMNS = ("n", "rep", "loss_value", "converged", "certified", "wall_s")
REQUIRED_COLUMNS = CURVE_KEYS + DESCRIPTIVE_COLUMNS + ROW_COLUMNS
#: each reason in a reader's words (figure legends: "left out of 300: 289 fits on the box")
DROP_WORDS = {"nan": "NaN", "inf": "infinite", "nonpositive": "zero or negative",
              "bound": "fits on the box"}
CERT_COLUMNS = tuple(f"cert_{name}" for name in CERTIFICATES)
#: The set a rate bound covers (moe_theory.sublevel.curve_summary): per curve, the largest and
#: median ratio over its data sets (every sweep fit's starts, the check's refits), how many are
#: loose and how many have a ratio; NaN where neither the sweep nor a check recorded one.
SUBLEVEL_COLUMNS = ("sublevel_max", "sublevel_median", "sublevel_loose", "sublevel_data_sets")
RATES_COLUMNS = (
    "setting", "truth_gate", "fit_gate", "score", "expert", "regime", "d", "k_true", "k_fit",
    "loss_name",
    "slope", "slope_se", "ci_low", "ci_high", "ci_half_width", "r2",
    "slope_median", "slope_se_median", "ci_low_median", "ci_high_median",
    "n_used", "n_min", "n_max", "reps_used", "reps",
    "n_dropped", *(f"dropped_{r}" for r in DROP_REASONS), "dropped_n",
    "theory_exponent", "theory_label", "theory_source",
    *CERT_COLUMNS, "verdict", "reason", "overlay_from_n",
    "certified_share", "converged_share", "wall_s",
    *SUBLEVEL_COLUMNS,
)

# (fit_gate, score, regime, expert, loss_name) -> object with exponent, label, source.
TheoryLookup = Callable[[str, str, str, str, str], Any]


@dataclass(frozen=True)
class SlopeFit:
    """OLS slope of ``log(statistic over replications)`` on ``log n``, with its bootstrap SE
    and 95% CI.

    Attributes
    ----------
    slope, intercept : OLS coefficients.
    se : standard error of the slope from the bootstrap variances of each n's log-statistic.
    ci_low, ci_high : ``slope -+ t * se``, t the Student quantile at the Welch-Satterthwaite
        degrees of freedom of the per-n variances (see :func:`fit_rate`).
    """

    slope: float
    intercept: float
    se: float
    ci_low: float
    ci_high: float

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


NAN_SLOPE = SlopeFit(*(5 * [float("nan")]))


@dataclass(frozen=True)
class RateFit:
    """Fitted power laws ``mean loss ~ exp(intercept) * n^slope`` and the same for the median.

    Attributes
    ----------
    slope, intercept, slope_se, ci_low, ci_high : of ``log(mean)`` (N24's choice).
    r2 : coefficient of determination of the log-mean fit.
    median : the :class:`SlopeFit` of ``log(median)``.
    n_points : sample sizes used (with >= ``MIN_REPS_PER_N`` usable values).
    reps_used : usable replications at the used n (the smallest count).
    n_dropped : loss values left out, ``dropped`` the count per reason of ``DROP_REASONS``.
    dropped_n : sample sizes left out for having fewer than ``MIN_REPS_PER_N`` usable values.
    n_used : the sample sizes used; ``reps_per_n`` their usable replications.
    n_values : every value the curve holds, used or not.
    bend : how far the log-mean's local slope moves across the used n, from its least-squares
        quadratic in ``log n`` (NaN below 3 used n); ``bend_p`` the two-sided p of its quadratic
        term, from the same per-n variances and Welch-Satterthwaite degrees of freedom as the
        slope's CI (:func:`_bend`).
    """

    slope: float
    intercept: float
    slope_se: float
    ci_low: float
    ci_high: float
    r2: float
    n_points: int
    n_dropped: int
    median: SlopeFit = NAN_SLOPE
    reps_used: int = 0
    dropped: Mapping[str, int] = field(default_factory=dict)
    dropped_n: tuple[float, ...] = ()
    n_used: tuple[float, ...] = ()
    reps_per_n: tuple[int, ...] = ()
    n_values: int = 0
    bend: float = float("nan")
    bend_p: float = float("nan")

    @property
    def half_width(self) -> float:
        """``±`` of the slope: half-width of its bootstrap 95% CI."""
        return (self.ci_high - self.ci_low) / 2


def _ols_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Slopes of ``y`` on ``x`` for every row of ``y``: x ``(P,)``, y ``(B, P)`` -> ``(B,)``."""
    xc = x - x.mean()
    return (y - y.mean(axis=-1, keepdims=True)) @ xc / (xc @ xc)


def _slope_fit(x: np.ndarray, y: np.ndarray, variances: np.ndarray, reps: np.ndarray) -> SlopeFit:
    """OLS of ``y`` on ``x`` and a t interval from the per-point variances of ``y``.

    The slope is ``sum_j c_j y_j`` with ``c_j = (x_j - xbar) / Sxx`` and independent ``y_j``,
    so ``Var = sum_j c_j^2 V_j``; its degrees of freedom follow Welch and Satterthwaite from
    the ``reps_j - 1`` of each ``V_j``.
    """
    slope = float(_ols_slopes(x, y[None, :])[0])
    intercept = float(y.mean() - slope * x.mean())
    var, df = _welch((x - x.mean()) / ((x - x.mean()) ** 2).sum(), variances, reps)
    if not var > 0:
        # replications tied at some n (a NaN variance) or at every n: no spread is no evidence
        # of a precise slope (a zero-width CI would give a firm verdict on ties), so no CI
        nan = float("nan")
        return SlopeFit(slope, intercept, nan, nan, nan)
    half = float(stdtrit(df, 0.5 + CI_LEVEL / 2)) * np.sqrt(var)
    return SlopeFit(slope, intercept, float(np.sqrt(var)), slope - half, slope + half)


def _welch(c: np.ndarray, variances: np.ndarray, reps: np.ndarray) -> tuple[float, float]:
    """Variance of ``sum_j c_j y_j`` for independent ``y_j`` of variances ``V_j``, and its
    Welch-Satterthwaite degrees of freedom from the ``reps_j - 1`` of each ``V_j`` (NaN
    variance where some ``V_j`` is)."""
    w = c**2 * variances
    var = float(w.sum())
    if not var > 0:
        return var, float("nan")
    return var, var**2 / float((w**2 / (reps - 1)).sum())


def _bend(x: np.ndarray, y: np.ndarray, variances: np.ndarray,
          reps: np.ndarray) -> tuple[float, float]:
    """How far a curve's local slope moves across its ``x`` range, and the two-sided p of that
    move being 0 (a straight line).

    The least-squares quadratic ``a + b x + c (x - xbar)^2`` has local slope ``b + 2 c
    (x - xbar)``, which moves by ``2 c (x_max - x_min)`` across the range. ``c = sum_j d_j y_j``
    with ``d`` the quadratic row of the design's pseudo-inverse, so its variance and degrees of
    freedom follow from the per-n variances as the slope's do (:func:`_welch`); ``c / se`` is
    then Student's t under a straight line. NaN below 3 points or without a variance."""
    if x.size < 3:
        return float("nan"), float("nan")
    xc = x - x.mean()
    design = np.column_stack([np.ones_like(xc), xc, xc**2])
    d = np.linalg.pinv(design)[2]
    c = float(d @ y)
    move = 2 * c * float(np.ptp(x))
    var, df = _welch(d, variances, reps)
    if not var > 0:
        return move, float("nan")
    return move, float(2 * stdtr(df, -abs(c) / np.sqrt(var)))


def predicted_half_width(n: Sequence[float], mean: Sequence[float], sd: Sequence[float],
                         reps: int) -> tuple[float, float]:
    """The slope and CI half-width a curve would get from ``reps`` replications per n whose
    loss has this ``mean`` and standard deviation ``sd`` (a prediction, e.g. the local normal
    limit's: docs/theory.md#planning): the log-mean of R values has variance about
    ``(sd / mean)^2 / R`` (the delta method), which enters the same t interval as a measured
    curve's bootstrap variances. NaN where a value is missing, where the spread is zero at some
    n, or where ``reps`` < MIN_REPS_PER_N."""
    mean, sd = np.asarray(mean, dtype=float), np.asarray(sd, dtype=float)
    if reps < MIN_REPS_PER_N or len(mean) < 2 or not (
            np.isfinite(mean).all() and (mean > 0).all() and np.isfinite(sd).all()):
        return float("nan"), float("nan")
    # a zero spread at one n only: the fits would tie there, and a measured curve tied at any n
    # has no CI (fit_rate, as a NaN variance), where the other n's variances kept this sum
    # positive and the preflight called the curve measurable
    variances = np.where(sd > 0, (sd / mean) ** 2 / reps, np.nan)
    fit = _slope_fit(np.log(np.asarray(n, dtype=float)), np.log(mean), variances,
                     np.full(len(mean), float(reps)))
    return fit.slope, (fit.ci_high - fit.ci_low) / 2


def log_stat_variance(values: np.ndarray, draws: np.ndarray, statistic: str) -> float:
    """Bootstrap variance of ``log(statistic(values))``, scaled by ``R / (R - 1)``: resampling
    R values spreads them by the plug-in variance, ``(R - 1) / R`` of the unbiased one, and the
    scaling makes the CI's coverage nominal for the mean (docs/theory.md#rate-estimation)."""
    resampled = values[draws]
    stat = resampled.mean(1) if statistic == "mean" else np.median(resampled, axis=1)
    R = values.size
    return float(np.log(stat).var(ddof=1)) * R / (R - 1)


def fit_rate(
    n: Sequence[float] | np.ndarray,
    values_per_n: Sequence[Sequence[float] | np.ndarray],
    *,
    bound_per_n: Sequence[Sequence[bool] | np.ndarray] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> RateFit:
    """Estimate the rate exponent of a loss curve.

    Parameters
    ----------
    n : (P,) sample sizes, positive and finite (a NaN is an error, never a silent drop).
    values_per_n : P arrays; entry ``j`` holds the loss of every replication at ``n[j]``.
        NaN, infinite and non-positive values are dropped and counted per reason; a sample size
        left with fewer than ``MIN_REPS_PER_N`` values is dropped as a whole and listed.
    bound_per_n : P boolean arrays, true where the fit had a parameter at its box bound
        (dropped and counted as ``bound``); default none.
    n_boot : bootstrap resamples.
    seed : seed of the ``numpy.random.Generator`` that draws the resamples.

    Returns
    -------
    RateFit
        Slope fields NaN when fewer than two sample sizes remain (no slope is defined).

    Notes
    -----
    At each used n the bootstrap resamples the replications with replacement and gives the
    variance of the log-mean (and log-median) there, scaled by R / (R - 1); the slope's CI is
    ``slope -+ t_df se`` with ``se^2 = sum_j c_j^2 V_j`` and Welch-Satterthwaite ``df``. In
    simulations with a known slope it covers at the nominal 95% (tests/moe_theory/test_rates.py),
    where the percentile interval of the resampled slopes covered ~90% with 8 replications.
    """
    n_arr = np.asarray(n, dtype=float)
    if n_arr.ndim != 1:
        raise ValueError(f"n: must be one-dimensional, got shape {n_arr.shape}")
    if not (np.isfinite(n_arr).all() and (n_arr > 0).all()):
        raise ValueError(f"n: every sample size must be positive and finite, got {n_arr.tolist()}")
    if len(values_per_n) != len(n_arr):
        raise ValueError(
            f"values_per_n: has {len(values_per_n)} entries but n has {len(n_arr)}; "
            "give one array of replications per sample size"
        )
    if bound_per_n is not None and len(bound_per_n) != len(n_arr):
        raise ValueError(f"bound_per_n: has {len(bound_per_n)} entries but n has {len(n_arr)}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 2:
        raise ValueError(f"n_boot: must be an integer >= 2, got {n_boot!r}")

    dropped = dict.fromkeys(DROP_REASONS, 0)
    kept: list[np.ndarray] = []
    for j, v in enumerate(values_per_n):
        v = np.asarray(v, dtype=float)
        reasons = drop_reasons(v, None if bound_per_n is None else bound_per_n[j])
        for name in DROP_REASONS:
            dropped[name] += int((reasons == name).sum())
        kept.append(v[reasons == ""])
    enough = np.array([v.size >= MIN_REPS_PER_N for v in kept], dtype=bool)
    dropped_n = tuple(float(m) for m in n_arr[~enough])
    used = n_arr[enough]
    kept = [v for v, ok in zip(kept, enough, strict=True) if ok]
    n_points = len(kept)
    n_dropped = sum(dropped.values())
    reps_used = min((v.size for v in kept), default=0)
    n_values = sum(np.size(v) for v in values_per_n)
    if n_points < 2:
        nan = float("nan")
        return RateFit(nan, nan, nan, nan, nan, nan, n_points, n_dropped, NAN_SLOPE, reps_used,
                       dropped, dropped_n, tuple(used), n_values=n_values)

    x = np.log(used)
    reps = np.array([v.size for v in kept], dtype=float)
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, v.size, size=(n_boot, v.size)) for v in kept]
    fits = {}
    for statistic in ("mean", "median"):
        y = np.log([v.mean() if statistic == "mean" else np.median(v) for v in kept])
        # an n whose replications are tied has no measured variance: it leaves the curve
        # without a CI (NaN), as one value at an n would have entered with zero variance
        variances = np.array([np.nan if tied(v) else log_stat_variance(v, d, statistic)
                              for v, d in zip(kept, draws, strict=True)])
        # nor has one whose resamples never moved the statistic: a median most replications
        # share (not all: no tie) has bootstrap variance 0, and that n narrowed the interval
        variances[~(variances > 0)] = np.nan
        fits[statistic] = (_slope_fit(x, y, variances, reps), y, variances)
    mean, y, variances = fits["mean"]
    bend, bend_p = _bend(x, y, variances, reps)
    resid = y - (mean.intercept + mean.slope * x)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else float("nan")
    return RateFit(
        slope=mean.slope, intercept=mean.intercept, slope_se=mean.se, ci_low=mean.ci_low,
        ci_high=mean.ci_high, r2=float(r2), n_points=n_points, n_dropped=n_dropped,
        median=fits["median"][0], reps_used=reps_used, dropped=dropped, dropped_n=dropped_n,
        n_used=tuple(used), reps_per_n=tuple(int(r) for r in reps), n_values=n_values,
        bend=bend, bend_p=bend_p,
    )


def tied(values: np.ndarray) -> bool:
    """Whether usable replications agree to a relative ``TIE_RTOL`` (rounding included)."""
    return bool(np.ptp(values) <= TIE_RTOL * np.max(np.abs(values)))


def log_mean_half_width(values: np.ndarray, *, n_boot: int = 2000, seed: int = 0) -> float:
    """Half-width of the 95% CI of ``log(mean(values))`` (usable values only), by the same
    bootstrap variance and Student quantile as the slope's CI; NaN below MIN_REPS_PER_N and
    where the values are :func:`tied` (no spread to size it with, as in the slope's CI)."""
    v = usable(values)
    if v.size < MIN_REPS_PER_N or tied(v):
        return float("nan")
    draws = np.random.default_rng(seed).integers(0, v.size, size=(n_boot, v.size))
    var = log_stat_variance(v, draws, "mean")
    return float(stdtrit(v.size - 1, 0.5 + CI_LEVEL / 2)) * float(np.sqrt(var))


def verdict(
    theory_exponent: float | None,
    ci_low: float,
    ci_high: float,
    widen: float = VERDICT_WIDEN,
) -> str:
    """Compare a theory exponent with a slope CI widened by ``widen`` on each side.

    This is only the last step of a curve's verdict; :func:`curve_verdict` first requires every
    certificate, enough sample sizes and a narrow CI.

    Returns
    -------
    str
        ``"no theory"`` when the exponent is None or NaN; ``"insufficient data"`` when the CI is
        not finite (fewer than two usable sample sizes); ``"consistent"`` when
        ``ci_low - widen <= theory_exponent <= ci_high + widen``; ``"inconsistent"`` otherwise.
    """
    if theory_exponent is None or np.isnan(theory_exponent):
        return "no theory"
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return "insufficient data"
    if ci_low - widen <= theory_exponent <= ci_high + widen:
        return "consistent"
    return "inconsistent"


#: The verdicts of a curve whose slope is the estimator's: every certificate passed, enough sample
#: sizes, a narrow CI (whether or not the theory's exponent lies in it).
MEASURED_VERDICTS = ("consistent", "inconsistent")
#: How the verdict of a curve whose slope is not the estimator's begins (the reason follows in
#: parentheses).
NOT_MEASURABLE_PREFIX = "not measurable ("


def uncertified(certificates: Mapping[str, Status]) -> str:
    """The certificates that keep a curve from being the estimator's, as its verdict names them
    ("reference, converged failed; overfit not run"); "" when every one passed."""
    failed = [name for name, s in certificates.items() if s.status == FAIL]
    # anything but pass or fail (not run, or a status a malformed file holds) is no evidence
    missing = [name for name, s in certificates.items() if s.status not in (PASS, FAIL)]
    parts = ([f"{', '.join(failed)} failed"] if failed else []) + (
        [f"{', '.join(missing)} not run"] if missing else [])
    return "; ".join(parts)


#: A firm verdict needs every used n to keep at least this share of the largest number of usable
#: replications at an n (:func:`uneven_replications`).
UNEVEN_REPS_RATIO = 0.5
#: The verdict of a curve whose CI the uneven replications make too narrow to trust.
UNEVEN_VERDICT = "inconclusive (replications uneven)"
#: A firm verdict needs the fit to use all but this share of the curve's values: the values left
#: out (fits on the box, NaN losses, sample sizes with too few usable ones) are rarely a random
#: share, and the kept ones' mean is then a selection's, not the estimator's
#: (:func:`left_out`).
LEFT_OUT_SHARE_MAX = 0.1
LEFT_OUT_VERDICT = "inconclusive (fits left out)"
#: The verdict of a curve whose log-mean bends (:func:`bends`): its straight line's slope
#: averages a rate that changes across the n, and is not the curve's rate.
BENDS_VERDICT = "inconclusive (curve bends)"
#: The verdicts of curves whose slope has a narrow CI that still does not measure the rate, so
#: that a gap pair holding one is not measurable (:func:`gap_table`), each with why in a gap's
#: words.
GUARDED_VERDICTS = {UNEVEN_VERDICT: "replications uneven: its CI is too narrow",
                    LEFT_OUT_VERDICT: "fits left out: its mean is a selection's",
                    BENDS_VERDICT: "its curve bends: its slope is no rate"}


def curve_verdict(
    theory_exponent: float | None,
    fit: RateFit,
    certificates: Mapping[str, Status],
    *,
    half_width_max: float = CI_HALF_WIDTH_MAX,
    widen: float = VERDICT_WIDEN,
) -> tuple[str, str]:
    """A curve's verdict and the reason behind it (docs/theory.md#verdicts).

    In order: ``not measurable (...)`` with fewer than ``MIN_POINTS`` usable sample sizes or
    any certificate failed or not run; ``inconclusive (CI too wide)`` unless the CI half-width is
    below ``half_width_max``; then the guards of a narrow CI that does not measure the rate, in
    this order: :data:`UNEVEN_VERDICT` (:func:`uneven_replications`), :data:`LEFT_OUT_VERDICT`
    (:func:`left_out`), :data:`BENDS_VERDICT` (:func:`bends`); else ``no theory`` without an
    exponent, ``consistent`` or ``inconsistent`` by :func:`verdict` with one. A curve without
    an exponent is judged as the others are up to the comparison: its slope is printed, and a
    ``no theory`` before the checks read as a measured rate that had failed them. The reason
    names every failed or missing certificate, and a passed one that carries a reason (the
    converged certificate's unrestarted fits).
    """
    # a passed certificate is named only where it says something (a reading the reader
    # should know of, such as fits it could not check alike)
    notes = [f"{name}: {s.status}" + (f" ({s.reason})" if s.reason else "")
             for name, s in certificates.items() if s.status != PASS or s.reason]
    if fit.dropped_n:
        notes.append(f"dropped n with < {MIN_REPS_PER_N} usable replications: "
                     + ", ".join(sample_size_words(m) for m in fit.dropped_n))
    reason = "; ".join(notes)
    if fit.n_points < MIN_POINTS:
        return f"{NOT_MEASURABLE_PREFIX}{fit.n_points} usable n < {MIN_POINTS})", reason
    why = uncertified(certificates)
    if why:
        return f"{NOT_MEASURABLE_PREFIX}{why})", reason
    if not fit.half_width < half_width_max:
        # with the digits that keep it above the bound: 0.0754 read "0.075 > 0.075"
        why = (f"CI half-width {past_bound(fit.half_width, half_width_max, 'f', 3)} > "
               f"{half_width_max}"
               if np.isfinite(fit.half_width) else
               "no CI: the replications are tied at some n, so their spread is unknown")
        return "inconclusive (CI too wide)", why + (f"; {reason}" if reason else "")
    for label, guard in ((UNEVEN_VERDICT, uneven_replications), (LEFT_OUT_VERDICT, left_out),
                         (BENDS_VERDICT, lambda f: bends(f, widen))):
        why = guard(fit)
        if why:
            return label, why + (f"; {reason}" if reason else "")
    # no theory last: the slope is the estimator's rate, with nothing to hold it to
    return verdict(theory_exponent, fit.ci_low, fit.ci_high, widen), reason


def uneven_replications(fit: RateFit) -> str:
    """Why a curve's CI cannot carry a verdict where some used n keeps fewer than
    :data:`UNEVEN_REPS_RATIO` of the most usable replications at any n ("" otherwise): its
    variance then rests on few degrees of freedom and, when its few values happen to lie close,
    looks small; Welch-Satterthwaite then counts many degrees of freedom, the interval comes out
    narrow, and it covered a true slope of -1/2 86% of the time with 2 of 60 usable at one n
    (docs/theory.md#verdicts)."""
    if not fit.reps_per_n:
        return ""
    fewest, most = min(fit.reps_per_n), max(fit.reps_per_n)
    if fewest >= UNEVEN_REPS_RATIO * most:
        return ""
    at = fit.n_used[fit.reps_per_n.index(fewest)]
    return (f"replications uneven: n={sample_size_words(at)} keeps {fewest} usable, another n "
            f"{most} (fewer than {UNEVEN_REPS_RATIO:.0%}): the CI's degrees of freedom "
            "overstate what the few values measure")


def left_out(fit: RateFit) -> str:
    """Why a curve's slope is a selection's where the fit leaves out more than
    :data:`LEFT_OUT_SHARE_MAX` of its values ("" otherwise): fits on the box and NaN losses
    come more often from some data sets than others (those whose fit wandered), and from some n
    more than others, so the kept values' mean is not the estimator's and their slope is not its
    rate."""
    used = sum(fit.reps_per_n)
    if not fit.n_values or fit.n_values - used <= LEFT_OUT_SHARE_MAX * fit.n_values:
        return ""
    words = [f"{count} {DROP_WORDS[name]}" for name, count in fit.dropped.items() if count]
    # the usable values at an n left out whole: too few of them
    at_dropped_n = fit.n_values - used - fit.n_dropped
    if at_dropped_n:
        words.append(f"{at_dropped_n} at n with < {MIN_REPS_PER_N} usable")
    return (f"fits left out: {fit.n_values - used} of {fit.n_values} values "
            f"({', '.join(words)}), more than {LEFT_OUT_SHARE_MAX:.0%}: the kept fits are a "
            "selection, their mean not the estimator's")


def bends(fit: RateFit, widen: float = VERDICT_WIDEN) -> str:
    """Why a curve's straight line does not give its rate where its log-mean bends ("" where
    not): the quadratic term is significant at :data:`BEND_P_MAX` and the local slope moves by
    more than ``2 widen`` across the used n, so that the slope at the largest n lies more than
    the verdict's widening from the fitted one (which is about the local slope at the middle of
    the range). A broken power law, -1 then -1/2, otherwise read as a slope near -3/4 with a
    narrow CI (docs/theory.md#verdicts)."""
    if not (fit.bend_p < BEND_P_MAX and abs(fit.bend) > 2 * widen):
        return ""
    return (f"curve bends: the log-mean's local slope moves by {_signed(fit.bend)} from "
            f"n={sample_size_words(min(fit.n_used))} to n={sample_size_words(max(fit.n_used))} "
            f"(quadratic term p = {fit.bend_p:.2g} < {BEND_P_MAX}): the straight line's slope "
            "averages a changing rate")


def code_versions_note(curve: pd.DataFrame) -> str:
    """A curve's note where its fits were computed by more than one version of the code (the
    results' ``code``; "unrecorded" for rows written before it was kept): a sweep resumed after
    the code changed keeps its finished shards, so its table is no single version's, and a run of
    one version may differ. "" where one version (or none recorded) fitted every fit."""
    if "code" not in curve.columns:
        return ""
    fits = fits_of(curve)
    codes = fits["code"].map(lambda c: c if isinstance(c, str) else "unrecorded")
    counts = sorted(codes.value_counts().items(), key=lambda kv: (-kv[1], kv[0]))
    if len(counts) < 2:
        return ""
    listed = ", ".join(f"{count} by {code}" for code, count in counts)
    return (f"fits computed by {len(counts)} versions of the code ({listed}): a sweep resumed "
            "after the code changed; a run of one version may differ")


def sample_size_words(n: float) -> str:
    """A sample size as a table names it: its shortest ``g`` form ("1000", "1.6e+06") where that
    is the number itself, else every digit."""
    short = f"{n:g}"
    if float(short) == n:
        return short
    # six significant digits named n = 1778279 "1.77828e+06", a sample size the results table
    # does not hold
    return f"{n:.0f}" if float(n).is_integer() else repr(float(n))


def check_columns(df: pd.DataFrame, columns: Sequence[str]) -> None:
    """Raise ValueError naming every column of ``columns`` missing from ``df``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"results table: missing column(s) {', '.join(missing)}")


#: Per-fit flags the certificates and the slope's drops read as booleans.
FLAG_COLUMNS = ("converged", "certified", "bound_active")


def check_flags(df: pd.DataFrame) -> None:
    """Raise ValueError naming a flag column of :data:`FLAG_COLUMNS` with a row that holds
    neither true nor false: a missing flag (a table merged from shards written with and without
    the column) would read as true, so a fit of unknown state would count as converged, or be
    dropped as if it sat on the box, without a word."""
    for column in FLAG_COLUMNS:
        if column not in df.columns:
            continue
        values = df[column]
        bad = values.isna() | ~values.isin([True, False, 0, 1])
        if bad.any():
            raise ValueError(f"{column}: {int(bad.sum())} row(s) hold neither true nor false "
                             f"(first: {values[bad].iloc[0]!r}); the table mixes rows with and "
                             "without this flag")


def curve_fit(curve: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> RateFit:
    """:func:`fit_rate` of one curve's rows (bound-active fits dropped and counted)."""
    n, values, bounds = split_by_n(curve)
    return fit_rate(n, values, bound_per_n=bounds, n_boot=n_boot, seed=seed)


def resolve_theory(theory: TheoryLookup | None) -> TheoryLookup:
    """Return ``theory``, or the project's theory table when it is None."""
    if theory is not None:
        return theory
    # Imported here: the theory table is optional for callers that pass their own lookup.
    from moe_theory.theory import predicted_rate

    return predicted_rate


def curve_rate(lookup: TheoryLookup, curve: pd.DataFrame, name: tuple, loss_name: str) -> Any:
    """The theory's rate for one curve. A lookup flagged ``accepts_reference`` (the project's own
    table) also gets the curve's reference measure, ``G*`` or ``G_bar``, when the table has it."""
    kwargs = {}
    if getattr(lookup, "accepts_reference", False) and "reference" in curve.columns:
        kwargs["reference"] = curve_constant(curve, "reference", name)
    return lookup(
        *(curve_constant(curve, c, name) for c in ("fit_gate", "score", "regime", "expert")),
        loss_name, **kwargs,
    )


def curve_constant(curve: pd.DataFrame, column: str, name: tuple) -> Any:
    """The value of ``column``, which must be constant within the curve called ``name``."""
    values = curve[column].drop_duplicates()
    if len(values) != 1:
        raise ValueError(
            f"{column}: must be constant within curve {name} but takes values "
            f"{sorted(map(str, values))}"
        )
    value = values.iloc[0]
    return value.item() if isinstance(value, np.generic) else value


def _check_duplicates(curve: pd.DataFrame, name: tuple) -> None:
    duplicated = curve.duplicated(["n", "rep"])
    if duplicated.any():
        first = curve.loc[duplicated, ["n", "rep"]].iloc[0]
        raise ValueError(
            f"rep: curve {name} has {int(duplicated.sum())} duplicate (n, rep) row(s), "
            f"first at n={first['n']}, rep={first['rep']} (results of several sweeps mixed? "
            "keep one config_hash per table)"
        )


def rates_table(
    df: pd.DataFrame,
    theory: TheoryLookup | None = None,
    *,
    certificates: FolderCertificates | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per curve ``(setting, fit_gate, loss_name)``: rates, CIs, certificates, verdict.

    Parameters
    ----------
    df : tidy results table (docs/theory.md#results-table), one row per (replication, n,
        fitted gate, loss).
    theory : ``(fit_gate, score, regime, expert, loss_name) -> obj`` with attributes
        ``exponent`` (float or None), ``label`` and ``source``; defaults to
        ``moe_theory.theory.predicted_rate``.
    certificates : what the results folder holds for certification (reference certificates,
        the optimiser check), :meth:`FolderCertificates.load`; default none, so that the
        reference and optimiser certificates are ``not run`` and no curve gets a firm verdict.
    n_boot, seed : passed to :func:`fit_rate` for every curve.

    Returns
    -------
    pandas.DataFrame
        Columns ``RATES_COLUMNS``, sorted by setting, fit_gate, loss_name. ``reps`` and
        ``reps_used`` are the usable replications at the used n (the smallest count), ``n_used``
        the used sample sizes; ``n_dropped`` and ``dropped_<reason>`` count the values left out,
        ``dropped_n`` lists the sample sizes left out; ``cert_*`` are ``pass``, ``fail`` or
        ``not run``; ``reason`` explains the verdict; ``overlay_from_n`` is the smallest n from
        which the measured mean follows the asymptotic overlay (NaN without one);
        ``certified_share``, ``converged_share`` and ``wall_s`` (a sum) are taken over the
        curve's distinct fits ``(n, rep)``.
    """
    check_columns(df, REQUIRED_COLUMNS)
    check_n(df)
    check_flags(df)
    lookup = resolve_theory(theory)
    certificates = certificates or FolderCertificates()
    rows = []
    for name, curve in df.groupby(list(CURVE_KEYS), sort=True):
        _check_duplicates(curve, name)
        row: dict[str, Any] = dict(zip(CURVE_KEYS, name, strict=True))
        row.update({c: curve_constant(curve, c, name) for c in DESCRIPTIVE_COLUMNS})
        fit = curve_fit(curve, n_boot=n_boot, seed=seed)
        rate = curve_rate(lookup, curve, name, name[2])
        exponent = None if rate.exponent is None else float(rate.exponent)
        statuses = certificates.evaluate(curve, name)
        label, reason = curve_verdict(exponent, fit, statuses)
        reach = certificates.sublevel(curve, name) or {}
        reason = "; ".join(filter(None, [reason, sublevel.note(
            reach, exponent is not None and not math.isnan(exponent)), code_versions_note(curve)]))
        n_all, kept = kept_by_n(curve)
        used = np.asarray(fit.n_used if fit.n_used else n_all)
        cert = certificates.reference.get(name[:2])
        overlay = None if cert is None else cert.overlay.get(name[2])
        # Within a curve each (n, rep) is one fit (duplicates were rejected above), so the
        # per-fit columns, repeated over that fit's other losses, are counted once here.
        row.update(
            slope=fit.slope, slope_se=fit.slope_se, ci_low=fit.ci_low, ci_high=fit.ci_high,
            ci_half_width=fit.half_width, r2=fit.r2,
            slope_median=fit.median.slope, slope_se_median=fit.median.se,
            ci_low_median=fit.median.ci_low, ci_high_median=fit.median.ci_high,
            n_used=fit.n_points, n_min=int(used.min()), n_max=int(used.max()),
            reps_used=fit.reps_used, reps=fit.reps_used, n_dropped=fit.n_dropped,
            **{f"dropped_{r}": fit.dropped.get(r, 0) for r in DROP_REASONS},
            dropped_n=",".join(sample_size_words(m) for m in fit.dropped_n),
            theory_exponent=exponent, theory_label=rate.label, theory_source=rate.source,
            **{f"cert_{k}": s.status for k, s in statuses.items()},
            verdict=label, reason=reason,
            overlay_from_n=overlay_agreement(n_all, kept, overlay),
            certified_share=float(curve["certified"].astype(float).mean()),
            # as the converged certificate counts them: a restart that lowered a fit is not one
            converged_share=float(stationary_stops(curve)[0].mean()),
            wall_s=float(curve["wall_s"].sum()),
            sublevel_max=reach.get("ratio_max", math.nan),
            sublevel_median=reach.get("ratio_median", math.nan),
            sublevel_loose=reach.get("loose", math.nan),
            sublevel_data_sets=reach.get("data_sets", math.nan),
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=list(RATES_COLUMNS))


FORMAT_COLUMNS = (
    "setting", "fit_gate", "loss_name", "slope", "ci_half_width", "slope_median", "r2",
    "n_used", "reps_used", "n_dropped", "theory_exponent", "theory_label", *CERT_COLUMNS,
    "sublevel_max", "verdict", "reason",
)
#: The table's legend of its ``sublevel`` column.
SUBLEVEL_LEGEND = ("sublevel: on the worst data set, the largest loss among the recorded fits at "
                   "least as good as the reference (the kept fit and the check's refits, every "
                   "start of each where the sweep recorded its starts), over the kept fit's; the "
                   "rate bound covers them too; - where none was recorded")
CERT_SHORT = {PASS: "pass", FAIL: "FAIL", NOT_RUN: "-"}


def _signed(value: float, digits: int = 2) -> str:
    return "-" if pd.isna(value) else f"{value:+.{digits}f}"


def format_rates_table(table: pd.DataFrame) -> str:
    """Render a rates table as fixed-width text for the terminal.

    Columns: setting, fit gate, loss, slope of the log-mean ``±`` its CI half-width (the header
    says so), slope of the log-median, R^2, used sample sizes x replications, dropped values,
    theory exponent (label), the four certificates, the largest sublevel ratio (the sweep's
    starts and the optimiser check's refits, :data:`SUBLEVEL_LEGEND`) and the verdict; rows
    sorted by setting,
    fit_gate, loss_name. Where the table has a boolean ``plotted`` column (the curves a figure
    draws, set by :func:`moe_theory.outputs.write_report`), those rows come first and a rule
    separates them from the other curves. Below the table, one note per curve whose verdict has
    a reason.
    """
    check_columns(table, FORMAT_COLUMNS)
    header = ["setting", "fit", "loss", f"slope (± {CI_LEVEL:.0%} CI)", "median",
              "R^2", "n x reps", "dropped", "theory", "ref", "conv", "opt", "fit", "sublevel",
              "verdict"]
    lines = [header]
    notes: dict[str, list[str]] = {}  # reason -> the curves it explains
    order = table.sort_values(list(CURVE_KEYS))
    n_plotted = 0
    if "plotted" in table.columns and table["plotted"].any():
        plotted = order["plotted"].astype(bool)
        order, n_plotted = pd.concat([order[plotted], order[~plotted]]), int(plotted.sum())
    for _, r in order.iterrows():
        slope = _signed(r["slope"])
        if not pd.isna(r["ci_half_width"]):
            slope += f" ± {r['ci_half_width']:.2f}"
        theory = "-"
        if not pd.isna(r["theory_exponent"]):
            theory = f"{r['theory_exponent']:+.2f} ({r['theory_label']})"
        lines.append([
            str(r["setting"]), str(r["fit_gate"]), str(r["loss_name"]), slope,
            _signed(r["slope_median"]), "-" if pd.isna(r["r2"]) else f"{r['r2']:.3f}",
            f"{r['n_used']} x {r['reps_used']}", str(r["n_dropped"]), theory,
            *(CERT_SHORT.get(r[c], str(r[c])) for c in CERT_COLUMNS),
            sublevel.format_ratio(r["sublevel_max"]), str(r["verdict"]),
        ])
        if isinstance(r["reason"], str) and r["reason"]:
            notes.setdefault(r["reason"], []).append(
                f"{r['setting']} / {r['fit_gate']} / {r['loss_name']}")
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    rule = "  ".join("-" * w for w in widths)
    text.insert(1, rule)
    if n_plotted and n_plotted < len(order):
        # header, rule, the plotted rows, then a rule before the curves the figure leaves out
        text.insert(2 + n_plotted, "  ".join("·" * w for w in widths))
    text.append("")
    if n_plotted:
        text.append(f"the first {n_plotted} curves are the figure's; the rest, below the dotted "
                    "rule, are measured but not drawn")
    text.append(f"{PLUS_MINUS} (t interval on bootstrap variances); median: slope of "
                "log(median); certificates ref(erence), conv(erged), opt(imiser), (over-)fit: "
                "pass, FAIL or - (not run)")
    text.append(SUBLEVEL_LEGEND)
    if notes:
        text += ["", "notes:"]
        for reason, curves in notes.items():
            text += [f"  {', '.join(curves)}:", f"    {reason}"]
    gaps = gap_table(table)
    if len(gaps):
        text += ["", format_gap_table(gaps)]
    return "\n".join(text)


# ---- the gap between the gates ----------------------------------------------------------------

GAP_COLUMNS = ("setting", "sigmoid_loss", "softmax_loss", "theory_sigmoid", "theory_softmax",
               "sigmoid_slope", "sigmoid_ci_low", "sigmoid_ci_high", "sigmoid_verdict",
               "softmax_slope", "softmax_ci_low", "softmax_ci_high", "softmax_verdict",
               "difference_low", "difference_high", "gap")
#: The gap's outcomes (docs/theory.md#the-gap-between-the-gates).
GAP_EXHIBITED = "exhibited"
GAP_REVERSED = "reversed: softmax faster, against the theory"
GAP_UNRESOLVED = "not resolved: the two CIs overlap"
#: ... where a curve has no CI to compare (its replications tied at some n: :func:`tied`)
GAP_NO_CI = "not resolved: no CI for the {} curve (replications tied)"
GAP_NOT_MEASURABLE = "not measurable"
#: The parameter groups that are the experts' (the claim is about estimating experts): an MoE's
#: ``eta`` and, in attention rows read as an MoE, the values ``V`` (docs/theory.md#attention-rows-as-moe);
#: the gates' groups (``beta1``, ``A``, the attention's ``W``) are not.
EXPERT_GROUPS = ("eta", "V")


def gap_comparable(sigmoid_loss: str, softmax_loss: str) -> bool:
    """Whether two curves can show the gap between the gates: both measure the experts (a
    Voronoi loss, which holds every atom's expert, or an expert group's error) and, where both
    are parameter errors, the same group in the same cell type. An exact cell's error against
    an over-specified one's differs in rate within one gate, and a gate's parameters against an
    expert's compare two objects, so neither pair says which gate estimates its experts faster
    (docs/theory.md#the-gap-between-the-gates)."""
    errors = [parameter_error_parts(loss) for loss in (sigmoid_loss, softmax_loss)]
    if any(e is not None and e[0] not in EXPERT_GROUPS for e in errors):
        return False
    return None in errors or errors[0] == errors[1]


def gap_table(table: pd.DataFrame) -> pd.DataFrame:
    """The gap between the gates that a rates table shows (docs/theory.md#the-gap-between-the-gates).

    One row per setting and pair of plotted curves, one of the sigmoid fit and one of the softmax
    fit, that measure the experts alike (:func:`gap_comparable`) and whose theory exponents say
    the sigmoid fit's loss falls faster. ``gap`` is
    ``not measurable: ...`` where either curve is not measurable (a certificate failed or was not
    run, or too few sample sizes) or has a narrow CI that does not measure its rate
    (:data:`GUARDED_VERDICTS`), naming it and why; otherwise both slopes are the estimator's
    (a CI too wide for a verdict against one exponent included: the gap's test is the two CIs
    apart, not either CI's width) and ``gap`` is :data:`GAP_EXHIBITED` where the sigmoid slope's
    CI lies wholly below the softmax slope's, :data:`GAP_REVERSED` where the softmax one lies
    wholly below, :data:`GAP_UNRESOLVED` where they overlap, and :data:`GAP_NO_CI` where a curve
    has no CI. ``difference_low``/``high`` bound the
    softmax slope minus the sigmoid one from the two CIs' ends: wherever the two CIs do not
    overlap the difference differs from 0 at more than their level, whatever the two slopes'
    correlation (the standard error of a difference is at most the sum of the two). A table
    without a ``plotted`` column (no figure chose its curves) has no pairs."""
    if "plotted" not in table.columns:
        return pd.DataFrame(columns=list(GAP_COLUMNS))
    rows = []
    drawn = table[table["plotted"].astype(bool) & table["theory_exponent"].notna()]
    for setting, curves in drawn.groupby("setting", sort=True):
        sigmoid = curves[curves["fit_gate"] == "sigmoid"].sort_values("loss_name")
        softmax = curves[curves["fit_gate"] == "softmax"].sort_values("loss_name")
        for _, sig in sigmoid.iterrows():
            for _, soft in softmax.iterrows():
                if not (sig["theory_exponent"] < soft["theory_exponent"]
                        and gap_comparable(sig["loss_name"], soft["loss_name"])):
                    continue
                rows.append(_gap_row(str(setting), sig, soft))
    return pd.DataFrame(rows, columns=list(GAP_COLUMNS))


def no_rate(verdict: str) -> str:
    """Why a curve with this verdict has no slope a gap may compare ("" where it has): not
    measurable, or a narrow CI that does not measure the rate (:data:`GUARDED_VERDICTS`). An
    inconclusive (CI too wide) curve still enters: its CI, too wide to tell n^-1/2 from n^-1/4
    against one exponent, may still lie apart from the other's."""
    if verdict.startswith(NOT_MEASURABLE_PREFIX):
        return verdict[len(NOT_MEASURABLE_PREFIX):-1]
    return GUARDED_VERDICTS.get(verdict, "")


def _gap_row(setting: str, sig: pd.Series, soft: pd.Series) -> dict[str, Any]:
    row = {"setting": setting, "sigmoid_loss": sig["loss_name"], "softmax_loss": soft["loss_name"],
           "theory_sigmoid": float(sig["theory_exponent"]),
           "theory_softmax": float(soft["theory_exponent"])}
    for gate, r in (("sigmoid", sig), ("softmax", soft)):
        row.update({f"{gate}_slope": float(r["slope"]), f"{gate}_ci_low": float(r["ci_low"]),
                    f"{gate}_ci_high": float(r["ci_high"]), f"{gate}_verdict": str(r["verdict"])})
    row["difference_low"] = row["softmax_ci_low"] - row["sigmoid_ci_high"]
    row["difference_high"] = row["softmax_ci_high"] - row["sigmoid_ci_low"]
    unmeasured = [f"{gate} {r['loss_name']} ({why})" for gate, r in (("sigmoid", sig),
                                                                      ("softmax", soft))
                  if (why := no_rate(str(r["verdict"])))]
    no_ci = [gate for gate in ("sigmoid", "softmax")
             if not (math.isfinite(row[f"{gate}_ci_low"]) and math.isfinite(row[f"{gate}_ci_high"]))]
    if unmeasured:
        row["gap"] = f"{GAP_NOT_MEASURABLE}: {'; '.join(unmeasured)}"
    elif no_ci:
        # NaN ends compare false both ways: "the two CIs overlap" would name an interval that
        # does not exist
        row["gap"] = GAP_NO_CI.format(" and the ".join(no_ci))
    elif row["difference_low"] > 0:
        row["gap"] = GAP_EXHIBITED
    elif row["difference_high"] < 0:
        row["gap"] = GAP_REVERSED
    else:
        row["gap"] = GAP_UNRESOLVED
    return row


def gap_outcome(g: pd.Series, *, reasons: bool = True) -> str:
    """A gap row's outcome in words: with the range of the difference where it is exhibited or
    reversed; where it is not measurable, the curves that are not, each with why (``reasons``)
    or only which (a figure's legend, whose curve entries give the why)."""
    outcome = str(g["gap"])
    if outcome in (GAP_EXHIBITED, GAP_REVERSED):
        return outcome + (f" (softmax slope minus sigmoid slope in [{g['difference_low']:+.2f}, "
                          f"{g['difference_high']:+.2f}])")
    if reasons or not outcome.startswith(GAP_NOT_MEASURABLE):
        return outcome
    which = [gate for gate in ("sigmoid", "softmax") if no_rate(str(g[f"{gate}_verdict"]))]
    return (f"{GAP_NOT_MEASURABLE} (the "
            f"{' and the '.join(which)} curve{'s' if len(which) > 1 else ''})")


def _gap_curve(g: pd.Series, gate: str) -> str:
    """``loss slope ± half-width`` of one side of a gap row (its CI is symmetric)."""
    half = (g[f"{gate}_ci_high"] - g[f"{gate}_ci_low"]) / 2
    text = f"{g[f'{gate}_loss']} {_signed(g[f'{gate}_slope'])}"
    return text + (f" ± {half:.2f}" if math.isfinite(half) else "")


def format_gap_table(gaps: pd.DataFrame) -> str:
    """The gap rows as text: per pair, both slopes with their CI half-widths, the theory's two
    exponents, and the outcome (with the range of the difference where it is exhibited or
    reversed)."""
    lines = [["setting", "sigmoid fit", "softmax fit", "theory", "gap"]]
    for _, g in gaps.iterrows():
        lines.append([str(g["setting"]), _gap_curve(g, "sigmoid"), _gap_curve(g, "softmax"),
                      f"{g['theory_sigmoid']:+.2f} vs {g['theory_softmax']:+.2f}",
                      gap_outcome(g)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]) - 1)]
    text = ["  ".join([*(cell.ljust(w) for cell, w in zip(line[:-1], widths, strict=True)),
                       line[-1]]).rstrip() for line in lines]
    return "\n".join(["gap between the gates (the plotted curves the theory says the sigmoid fit "
                      "estimates faster; exhibited only where both slopes are the estimator's and "
                      "their CIs lie apart):", *text])
