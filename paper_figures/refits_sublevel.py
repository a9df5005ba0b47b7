"""Across the committed figures: how far apart are the fits of one data set that fit it at least
as well as the reference? (paper_figures/README.md, "The fits as good as the reference, in
every checked figure")

The argument behind the theorems' least-squares rates holds for every point of the compact set
whose SSR is at most the reference's (docs/theory.md#optimiser-independent). Each folder's
optimiser check refitted its first replications twice (10x iterations, 10x jitter) on the
sweep's data, so every checked data set has three fits: the sweep's and two refits. Per curve
this script takes, on each checked data set, the largest loss among those of the three that are
certified (SSR at most the reference's) over the sweep fit's loss: about 1 where every fit the
data cannot reject against the reference is where the sweep's is, far above 1 where the set the
bound covers is wide at that n. Three points per data set give a lower bound on that width, not
the width (``nguyen2024-measurable/starts/sublevel.py`` reads it from 16 to 128 starts).

    python paper_figures/refits_sublevel.py [FOLDER ...] [--all-curves] [--csv OUT]

Default: every folder under paper_figures/ that holds ``check.parquet``; the figures' plotted
curves (``--all-curves``: every curve of ``rates.csv``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from moe_theory.rates import CURVE_KEYS
from moe_theory.store import load_results, read_csv
from moe_theory.sublevel import LOOSE, data_set_ratios

HERE = Path(__file__).resolve().parent
CURVE = list(CURVE_KEYS)
FIT = ["n", "rep"]


def folders(root: Path = HERE) -> list[Path]:
    """The committed folders whose optimiser check kept its refits."""
    return sorted(path.parent for path in root.rglob("check.parquet"))


def ratios(folder: Path) -> pd.DataFrame:
    """Per curve and checked data set: the sweep fit's loss, the largest loss among the
    certified fits of the data set (the sweep's and the check's refits), and their ratio
    (:func:`moe_theory.sublevel.data_set_ratios`, which the check itself reports per curve)."""
    refits = pd.read_parquet(folder / "check.parquet", columns=CURVE + FIT + [
        "loss_value", "certified"])
    sweep = load_results(folder)[CURVE + FIT + ["loss_value", "certified"]]
    return data_set_ratios(sweep, refits, CURVE + FIT)


def summary(folder: Path, all_curves: bool = False) -> pd.DataFrame:
    """Per curve of ``folder``: its verdict, the checked data sets with a ratio, the median and
    largest ratio, and how many exceed :data:`LOOSE`."""
    rates = read_csv(folder / "rates.csv")
    if not all_curves and "plotted" in rates:
        rates = rates[rates["plotted"].astype(bool)]
    per = ratios(folder)
    per = per[np.isfinite(per["ratio"])]
    stats = per.groupby(CURVE)["ratio"].agg(
        data_sets="size", ratio_median="median", ratio_max="max",
        loose=lambda r: int((r > LOOSE).sum()))
    table = rates[CURVE + ["verdict"]].merge(stats.reset_index(), on=CURVE, how="left")
    return table.assign(folder=str(folder.relative_to(HERE)))[
        ["folder"] + CURVE + ["verdict", "data_sets", "ratio_median", "ratio_max", "loose"]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="*", type=Path)
    p.add_argument("--all-curves", action="store_true")
    p.add_argument("--csv", help="also write the table here")
    args = p.parse_args()
    table = pd.concat([summary(f.resolve(), args.all_curves) for f in args.folders or folders()],
                      ignore_index=True)
    if args.csv:
        table.to_csv(args.csv, index=False)
    with pd.option_context("display.width", 250, "display.max_rows", 500,
                           "display.max_colwidth", 60):
        print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
