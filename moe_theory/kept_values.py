"""Which loss values a rate uses (docs/theory.md#rate-estimation): the one rule that the slope,
its figure, the overlay's agreement and the certificates' scale of a curve share, below both
:mod:`moe_theory.rates` and :mod:`moe_theory.certificates` so that each reads the same values."""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Why a loss value is left out of a slope, in the order they are tested.
DROP_REASONS = ("nan", "inf", "nonpositive", "bound")
#: Fewest usable replications at a sample size for it to enter a slope: one value has no spread,
#: and would enter the CI with zero variance.
MIN_REPS_PER_N = 2


def drop_reasons(values: np.ndarray, bound: np.ndarray | None = None) -> np.ndarray:
    """Per value, the first reason of ``DROP_REASONS`` it is left out for, or ``""`` (usable):
    NaN, infinite, non-positive (no logarithm), or fitted with a parameter at its box bound
    (an estimate on the edge of the compact set is not the interior LSE the theorems describe)."""
    values = np.asarray(values, dtype=float)
    reason = np.full(values.shape, "", dtype=object)
    bound = np.zeros(values.shape, dtype=bool) if bound is None else np.asarray(bound, dtype=bool)
    for name, mask in (("bound", bound), ("nonpositive", values <= 0), ("inf", np.isinf(values)),
                       ("nan", np.isnan(values))):
        reason[mask] = name  # tested last wins: NaN before inf before <= 0 before bound
    return reason


def usable_mask(values: np.ndarray) -> np.ndarray:
    """Which entries of ``values`` a log-log fit can use: finite and positive."""
    values = np.asarray(values, dtype=float)
    return np.isfinite(values) & (values > 0)


def usable(values: np.ndarray) -> np.ndarray:
    """Return the entries of ``values`` that a log-log fit can use (:func:`usable_mask`)."""
    values = np.asarray(values, dtype=float)
    return values[usable_mask(values)]


def check_n(df: pd.DataFrame) -> None:
    """Raise ValueError when a row's ``n`` is not a positive finite number (grouping by n would
    drop NaN rows silently)."""
    n = pd.to_numeric(df["n"], errors="coerce").to_numpy(dtype=float)
    bad = ~(np.isfinite(n) & (n > 0))
    if bad.any():
        raise ValueError(f"n: {int(bad.sum())} row(s) without a positive finite sample size "
                         f"(first: {df['n'].iloc[int(np.argmax(bad))]!r})")


def _in_rep_order(curve: pd.DataFrame) -> pd.DataFrame:
    """The curve's rows by replication within each n: the bootstrap draws index positions, so a
    caller's unsorted frame would otherwise get other CIs than the table it came from."""
    return curve.sort_values("rep", kind="stable") if "rep" in curve.columns else curve


def split_by_n(curve: pd.DataFrame) -> tuple[np.ndarray, list[np.ndarray],
                                              list[np.ndarray] | None]:
    """Split one curve's rows by sample size, in one pass.

    Returns
    -------
    n : (P,) sorted sample sizes.
    values : P arrays of ``loss_value``, one entry per replication (unfiltered), in replication
        order.
    bounds : P arrays of ``bound_active`` in the same order (whether each fit had a parameter at
        its bound); None for tables without that column.
    """
    check_n(curve)  # a NaN n would leave its rows out of every group unsaid
    groups = [g for _, g in _in_rep_order(curve).groupby("n", sort=True)]
    n = np.asarray([g["n"].iloc[0] for g in groups], dtype=float)
    values = [g["loss_value"].to_numpy(dtype=float) for g in groups]
    if "bound_active" not in curve.columns:
        return n, values, None
    return n, values, [g["bound_active"].to_numpy(dtype=bool) for g in groups]


def kept_by_n(curve: pd.DataFrame) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per sample size, the loss values a rate fit of the curve uses: :func:`drop_reasons` finds
    nothing against them (finite, positive, not at a bound), and none where fewer than
    ``MIN_REPS_PER_N`` are left (the slope drops that n). Everything measured along a curve (its
    figure's means, the overlay's agreement, the scale the identified-losses test judges
    against) uses these, so that it describes the fits the slope describes: a lone value at a
    dropped n set that scale and failed the curve."""
    n, values, bounds = split_by_n(curve)
    bounds = bounds or [None] * len(values)
    kept = [v[drop_reasons(v, b) == ""] for v, b in zip(values, bounds, strict=True)]
    return n, [v if v.size >= MIN_REPS_PER_N else v[:0] for v in kept]
