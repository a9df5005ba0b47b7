"""The set a rate bound covers, read from the fits a sweep and its check make
(docs/theory.md#optimiser-independent).

The argument behind a least-squares rate bounds the loss of every point of the compact set whose
sum of squared residuals is at most the reference's, not only the LSE's. Every start of a
multi-start fit that ends there, and every refit of the optimiser check that does, is such a
point: the largest loss among them, over the kept fit's, is a lower bound on how far beyond the
plotted point the bound must reach on that data set. About 1 where the data pin the estimate
down at that n; far above 1 where the set is wide and the bound does not bind there. It is
evidence beside the certificates, not one of them: a wide set says nothing against the LSE's
rate, only that the theorem's guarantee is loose at those n.

Three places compute it, each from what it has:

- a sweep, per fit and loss (:func:`start_sublevel`): the largest loss among the fit's starts
  that end no worse than the reference, the results table's :data:`SUBLEVEL_LOSS` column;
- the optimiser check, per checked data set (:func:`data_set_ratios`): the sweep's fit and the
  two refits, each with its own starts, in ``check.json``;
- the rates table, per curve (:func:`curve_summary`): every data set of the sweep, with the
  check's where it ran.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from moe_theory.console import past_bound

#: The results table's column: per fit and loss, the largest loss among the fit's starts that end
#: at least as good as the reference (NaN where none does).
SUBLEVEL_LOSS = "sublevel_loss"
#: A data set counts as loose when a fit of it at least as good as the reference has a loss this
#: many times the kept fit's. The rate bound covers every such fit; at 2x the bound must reach
#: twice as far as the plotted point, a factor no per-n CI of a few replications mistakes for
#: noise.
LOOSE = 2.0


def start_sublevel(per_start: np.ndarray, certified: np.ndarray) -> np.ndarray:
    """Per replication, the largest finite loss among its starts that are ``certified`` (no
    worse than the reference), NaN where there is none: the :data:`SUBLEVEL_LOSS` column.

    Parameters
    ----------
    per_start : (R, S) each start's loss
    certified : (R, S) each start's end is at least as good as the reference
    """
    inside = certified.astype(bool) & np.isfinite(per_start)
    largest = np.where(inside, per_start, -np.inf).max(axis=1)
    return np.where(inside.any(axis=1), largest, np.nan)


def largest_certified(rows: pd.DataFrame) -> np.ndarray:
    """Per row (one fit's loss), the largest loss it knows among fits at least as good as the
    reference: its :data:`SUBLEVEL_LOSS` (every start) where the table records it, else its own
    loss if the fit is ``certified``, else NaN. A table written before the column has only the
    kept start to offer."""
    own = rows["loss_value"].to_numpy(float)
    certified = rows["certified"].astype(bool).to_numpy() if "certified" in rows else (
        np.zeros(len(rows), dtype=bool))
    best = np.where(certified & np.isfinite(own), own, np.nan)
    if SUBLEVEL_LOSS in rows:
        starts = rows[SUBLEVEL_LOSS].to_numpy(float)
        best = np.where(np.isfinite(starts), starts, best)
    return best


def data_set_ratios(base: pd.DataFrame, others: pd.DataFrame | None = None,
                    keys: Sequence[str] = ("n", "rep")) -> pd.DataFrame:
    """Per data set of ``base`` (``keys``; the kept fits, one row each), the kept fit's loss
    (``sweep``), the largest loss among the fits of the data set at least as good as the
    reference (``largest``: :func:`largest_certified` of the kept fit's row and of the rows of
    ``others`` on the same data, e.g. the check's refits), and their ratio; NaN where the kept
    loss is not finite and positive or no fit qualifies. With ``others``, only the data sets
    they cover."""
    keys = list(keys)
    base = base.drop_duplicates(keys)
    if others is not None:
        base = base.merge(others[keys].drop_duplicates(), on=keys)
    frames = [base[keys].assign(largest=largest_certified(base))]
    if others is not None:
        frames.append(others[keys].assign(largest=largest_certified(others)))
    largest = pd.concat(frames, ignore_index=True).groupby(keys)["largest"].max()
    out = base.set_index(keys)["loss_value"].rename("sweep").astype(float).to_frame().join(largest)
    sweep = out["sweep"].to_numpy(float)
    ok = np.isfinite(sweep) & (sweep > 0)
    out["ratio"] = np.where(ok, out["largest"].to_numpy(float) / np.where(ok, sweep, 1.0),
                            np.nan)
    return out.reset_index()


def summary(ratios: pd.DataFrame) -> dict | None:
    """A curve's per-data-set ratios (columns ``n``, ``rep``, ``ratio``) in a few numbers, None
    without a finite ratio: ``data_sets`` with a ratio, its median and largest (``ratio_max`` at
    ``ratio_max_n``), the largest per n (``by_n``) and ``loose``, the data sets above
    :data:`LOOSE`."""
    ratios = ratios[np.isfinite(ratios["ratio"].to_numpy(float))]
    if ratios.empty:
        return None
    worst = ratios.loc[ratios["ratio"].idxmax()]
    by_n = ratios.groupby("n")["ratio"].max()
    return {"data_sets": len(ratios), "ratio_median": float(ratios["ratio"].median()),
            "ratio_max": float(worst["ratio"]), "ratio_max_n": int(worst["n"]),
            "by_n": {str(int(m)): float(r) for m, r in by_n.items()},
            "loose": int((ratios["ratio"] > LOOSE).sum())}


def check_entry(ratios: pd.DataFrame) -> dict | None:
    """The optimiser check's ``sublevel`` entry of a curve: :func:`summary` of its checked data
    sets' ratios, with the ratios themselves (``n``, ``rep``, ``ratio``) for the rates table to
    join with the sweep's."""
    out = summary(ratios)
    if out is None:
        return None
    kept = ratios[np.isfinite(ratios["ratio"].to_numpy(float))]
    return {**out, "n": [int(m) for m in kept["n"]], "rep": [int(r) for r in kept["rep"]],
            "ratio": [float(r) for r in kept["ratio"]]}


def curve_summary(curve: pd.DataFrame, check: Mapping[str, Any] | None) -> dict | None:
    """A curve's :func:`summary` over every data set the sweep recorded its starts for (its
    :data:`SUBLEVEL_LOSS`) and every data set the optimiser check covered (``check``, the
    curve's ``sublevel`` entry), the larger ratio where both saw one."""
    frames = []
    if SUBLEVEL_LOSS in curve:
        recorded = curve[np.isfinite(curve[SUBLEVEL_LOSS].to_numpy(float))]
        frames.append(data_set_ratios(recorded)[["n", "rep", "ratio"]])
    if check and "ratio" in check:
        frames.append(pd.DataFrame({"n": check["n"], "rep": check["rep"],
                                    "ratio": check["ratio"]}))
    elif check:  # an entry written before it listed its ratios: its own summary
        return dict(check)
    if not frames:
        return None
    ratios = pd.concat(frames, ignore_index=True)
    ratios = ratios[np.isfinite(ratios["ratio"].to_numpy(float))]
    return summary(ratios.groupby(["n", "rep"], as_index=False)["ratio"].max())


def note(entry: Mapping[str, Any] | None, has_theory: bool = True) -> str:
    """A curve's note where some data set is loose: fits the least-squares argument cannot
    tell from the reference lie far beyond the plotted fit, so the theorem's bound, where the
    curve has one (``has_theory``), must reach that far at those n; empty otherwise."""
    if not entry or not entry.get("loose"):
        return ""
    ratio = format_ratio(entry["ratio_max"])
    if ratio != "-" and not float(ratio) > LOOSE:
        # a loose data set's ratio is above LOOSE: 2.003 read "2.00x ..., over 2x"
        ratio = past_bound(float(entry["ratio_max"]), LOOSE, "f")
    return (f"sublevel: a fit at least as good as the reference has "
            f"{ratio}x the kept fit's loss (n={entry['ratio_max_n']}), "
            f"over {LOOSE:g}x on {entry['loose']} of {entry['data_sets']} data sets"
            + (": the rate bound must cover those fits too" if has_theory else ""))


def format_ratio(value: float) -> str:
    """A ratio of losses: two decimals near 1, where a tight curve's lies, whole numbers from 10
    on; ``-`` where there is none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"
