"""Empirical convergence rates of loss curves, and verdicts against the theory table
(docs/theory.md#rate-estimation, docs/theory.md#verdicts).

A *curve* is one ``(setting, fit_gate, loss_name)`` group of the tidy results table
(docs/theory.md#results-table).
Its rate is the OLS slope of ``log(mean over replications)`` on ``log n``; a loss decaying as
``n^-1/2`` has slope ``-0.5``. Theory exponents use the same sign: ``-0.5`` for the parametric
rate, ``-0.25`` for over-specified atoms, and ``0.0`` for "slower than any polynomial".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

# The theory gives asymptotic exponents; at n = 10^3..10^5 the loss still carries lower-order
# terms (log factors, the n^-1/4 parts of a mixed loss, a reference G_bar that is itself only
# approximate), so the finite-n slope is a misspecified model of the asymptotics. Widening the
# bootstrap CI by this much on each side keeps that bias from turning into false rejections while
# still separating n^-1/2 from n^-1/4.
VERDICT_WIDEN = 0.05

CI_LEVEL = 0.95

CURVE_KEYS = ("setting", "fit_gate", "loss_name")
# Constant within a curve (checked), copied into its row of the rates table.
DESCRIPTIVE_COLUMNS = ("truth_gate", "score", "expert", "regime", "d", "k_true", "k_fit")
ROW_COLUMNS = ("n", "rep", "loss_value", "converged", "certified", "wall_s")
REQUIRED_COLUMNS = CURVE_KEYS + DESCRIPTIVE_COLUMNS + ROW_COLUMNS
RATES_COLUMNS = (
    "setting",
    "truth_gate",
    "fit_gate",
    "score",
    "expert",
    "regime",
    "d",
    "k_true",
    "k_fit",
    "loss_name",
    "slope",
    "slope_se",
    "ci_low",
    "ci_high",
    "r2",
    "n_points",
    "n_min",
    "n_max",
    "reps",
    "theory_exponent",
    "theory_label",
    "theory_source",
    "verdict",
    "certified_share",
    "converged_share",
    "wall_s",
    "n_dropped",
)

# (fit_gate, score, regime, expert, loss_name) -> object with exponent, label, source.
TheoryLookup = Callable[[str, str, str, str, str], Any]


@dataclass(frozen=True)
class RateFit:
    """Fitted power law ``mean loss ~ exp(intercept) * n^slope``.

    Attributes
    ----------
    slope, intercept : OLS coefficients of ``log(mean loss)`` on ``log n``.
    slope_se : classical OLS standard error of the slope; NaN with fewer than 3 points.
    ci_low, ci_high : bootstrap percentile CI of the slope at level ``CI_LEVEL``.
    r2 : coefficient of determination of the log-log fit.
    n_points : number of sample sizes used.
    n_dropped : loss values dropped for being non-positive or non-finite.
    """

    slope: float
    intercept: float
    slope_se: float
    ci_low: float
    ci_high: float
    r2: float
    n_points: int
    n_dropped: int


def usable(values: np.ndarray) -> np.ndarray:
    """Return the entries of ``values`` that a log-log fit can use: finite and positive."""
    values = np.asarray(values, dtype=float)
    return values[np.isfinite(values) & (values > 0)]


def _ols_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Slopes of ``y`` on ``x`` for every row of ``y``: x ``(P,)``, y ``(B, P)`` -> ``(B,)``."""
    xc = x - x.mean()
    return (y - y.mean(axis=-1, keepdims=True)) @ xc / (xc @ xc)


def fit_rate(
    n: Sequence[float] | np.ndarray,
    values_per_n: Sequence[Sequence[float] | np.ndarray],
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> RateFit:
    """Estimate the rate exponent of a loss curve.

    Parameters
    ----------
    n : (P,) sample sizes, positive.
    values_per_n : P arrays; entry ``j`` holds the loss of every replication at ``n[j]``.
        Non-positive and non-finite values are dropped and counted in ``n_dropped``; a sample
        size left with no value is dropped as a whole.
    n_boot : bootstrap resamples.
    seed : seed of the ``numpy.random.Generator`` that draws the resamples.

    Returns
    -------
    RateFit
        All fields NaN (``n_points`` and ``n_dropped`` still set) when fewer than two sample
        sizes remain, since no slope is defined.

    Notes
    -----
    The bootstrap resamples replications with replacement within each ``n``, recomputes the mean
    at every ``n`` and refits the slope; the CI is the percentile interval
    (docs/theory.md#rate-estimation).
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
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot: must be a positive integer, got {n_boot!r}")

    kept = [usable(v) for v in values_per_n]
    n_dropped = sum(np.size(v) for v in values_per_n) - sum(v.size for v in kept)
    has_data = np.array([v.size > 0 for v in kept], dtype=bool)
    x = np.log(n_arr[has_data])
    kept = [v for v in kept if v.size > 0]
    n_points = len(kept)
    if n_points < 2:
        nan = float("nan")
        return RateFit(nan, nan, nan, nan, nan, nan, n_points, int(n_dropped))

    y = np.log([v.mean() for v in kept])
    slope = float(_ols_slopes(x, y[None, :])[0])
    intercept = float(y.mean() - slope * x.mean())
    resid = y - (intercept + slope * x)
    ss_res = float(resid @ resid)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    sxx = float(((x - x.mean()) ** 2).sum())
    slope_se = float(np.sqrt(ss_res / (n_points - 2) / sxx)) if n_points >= 3 else float("nan")

    # One (n_boot, m_j) index draw per sample size: the loop runs over the P sample sizes only,
    # each resample's mean is vectorised over all n_boot resamples.
    rng = np.random.default_rng(seed)
    boot_log_means = np.empty((n_boot, n_points))
    for j, v in enumerate(kept):
        boot_log_means[:, j] = np.log(v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(1))
    tail = 100 * (1 - CI_LEVEL) / 2
    ci_low, ci_high = np.percentile(_ols_slopes(x, boot_log_means), [tail, 100 - tail])
    return RateFit(
        slope=slope,
        intercept=intercept,
        slope_se=slope_se,
        ci_low=float(ci_low),
        ci_high=float(ci_high),
        r2=float(r2),
        n_points=n_points,
        n_dropped=int(n_dropped),
    )


def verdict(
    theory_exponent: float | None,
    ci_low: float,
    ci_high: float,
    widen: float = VERDICT_WIDEN,
) -> str:
    """Compare a theory exponent with a slope CI widened by ``widen`` on each side.

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


def check_columns(df: pd.DataFrame, columns: Sequence[str]) -> None:
    """Raise ValueError naming every column of ``columns`` missing from ``df``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"results table: missing column(s) {', '.join(missing)}")


def values_by_n(curve: pd.DataFrame) -> tuple[np.ndarray, list[np.ndarray]]:
    """Split one curve's rows by sample size.

    Returns
    -------
    n : (P,) sorted sample sizes.
    values : P arrays of ``loss_value``, one entry per replication (unfiltered).
    """
    groups = curve.groupby("n", sort=True)["loss_value"]
    return (
        np.asarray(list(groups.groups), dtype=float),
        [g.to_numpy(dtype=float) for _, g in groups],
    )


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


def rates_table(
    df: pd.DataFrame,
    theory: TheoryLookup | None = None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per curve ``(setting, fit_gate, loss_name)``: rate, CI, theory and verdict.

    Parameters
    ----------
    df : tidy results table (docs/theory.md#results-table), one row per (replication, n, fitted
        gate, loss).
    theory : ``(fit_gate, score, regime, expert, loss_name) -> obj`` with attributes
        ``exponent`` (float or None), ``label`` and ``source``; defaults to
        ``moe_theory.theory.predicted_rate``.
    n_boot, seed : passed to :func:`fit_rate` for every curve.

    Returns
    -------
    pandas.DataFrame
        Columns ``RATES_COLUMNS``, sorted by setting, fit_gate, loss_name. ``reps`` is the
        smallest number of replications at any n; ``certified_share``, ``converged_share`` and
        ``wall_s`` (a sum) are taken over the curve's distinct fits ``(n, rep)``;
        ``n_dropped`` counts losses left out of the fit for being non-positive or non-finite.
    """
    check_columns(df, REQUIRED_COLUMNS)
    lookup = resolve_theory(theory)
    rows = []
    for name, curve in df.groupby(list(CURVE_KEYS), sort=True):
        duplicated = curve.duplicated(["n", "rep"])
        if duplicated.any():
            first = curve.loc[duplicated, ["n", "rep"]].iloc[0]
            raise ValueError(
                f"rep: curve {name} has {int(duplicated.sum())} duplicate (n, rep) row(s), "
                f"first at n={first['n']}, rep={first['rep']} (results of several sweeps mixed? "
                "keep one config_hash per table)"
            )
        row: dict[str, Any] = dict(zip(CURVE_KEYS, name, strict=True))
        row.update({c: curve_constant(curve, c, name) for c in DESCRIPTIVE_COLUMNS})
        n, values = values_by_n(curve)
        fit = fit_rate(n, values, n_boot=n_boot, seed=seed)
        rate = curve_rate(lookup, curve, name, name[2])
        exponent = None if rate.exponent is None else float(rate.exponent)
        # Within a curve each (n, rep) is one fit (duplicates were rejected above), so the
        # per-fit columns, repeated over that fit's other losses, are counted once here.
        row.update(
            slope=fit.slope,
            slope_se=fit.slope_se,
            ci_low=fit.ci_low,
            ci_high=fit.ci_high,
            r2=fit.r2,
            n_points=fit.n_points,
            n_min=int(n.min()),
            n_max=int(n.max()),
            reps=min(v.size for v in values),
            theory_exponent=exponent,
            theory_label=rate.label,
            theory_source=rate.source,
            verdict=verdict(exponent, fit.ci_low, fit.ci_high),
            certified_share=float(curve["certified"].astype(float).mean()),
            converged_share=float(curve["converged"].astype(float).mean()),
            wall_s=float(curve["wall_s"].sum()),
            n_dropped=fit.n_dropped,
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=list(RATES_COLUMNS))


FORMAT_COLUMNS = (
    "setting",
    "fit_gate",
    "loss_name",
    "slope",
    "slope_se",
    "ci_low",
    "ci_high",
    "r2",
    "theory_exponent",
    "theory_label",
    "verdict",
    "certified_share",
)


def format_rates_table(table: pd.DataFrame) -> str:
    """Render a rates table as fixed-width text for the terminal.

    Columns: setting, fit gate, loss, slope ± 2 se, CI, R^2, theory exponent (label), verdict,
    and the certified share of the fits; rows sorted by setting, fit_gate, loss_name.
    """
    check_columns(table, FORMAT_COLUMNS)
    header = ["setting", "fit", "loss", "slope ± 2se", f"{CI_LEVEL:.0%} CI", "R^2", "theory"]
    header += ["verdict", "certified"]
    lines = [header]
    for _, r in table.sort_values(list(CURVE_KEYS)).iterrows():
        se = "" if np.isnan(r["slope_se"]) else f" ± {2 * r['slope_se']:.2f}"
        theory = "-"
        if not pd.isna(r["theory_exponent"]):
            theory = f"{r['theory_exponent']:+.2f} ({r['theory_label']})"
        lines.append(
            [
                str(r["setting"]),
                str(r["fit_gate"]),
                str(r["loss_name"]),
                f"{r['slope']:+.2f}{se}",
                f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]",
                f"{r['r2']:.3f}",
                theory,
                str(r["verdict"]),
                f"{r['certified_share']:.0%}",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)
