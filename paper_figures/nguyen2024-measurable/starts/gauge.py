"""Is the spread of D1 among tied starts the softmax gauge? A study of the per-start tables.

A softmax mixture is unchanged when the same affine function is added to every atom's score;
the toolkit writes a softmax fit in the gauge that pins its last atom's score to zero, and the
gate-weighted D1 compares ``exp(beta0)`` in that gauge, so a fit whose last atom is one copy of
a split atom, or a light atom, is far from G* in D1 while being the same kind of function as
one whose last atom is G*'s. This script measures every start of a table written by
``many_starts.py --estimates`` in the matched gauge as well (``D1_matched``:
:func:`moe_theory.voronoi.matched_gauge_d1`, docs/theory.md#identified-losses) and compares how
far apart the starts that tie within one noise variance of a data set's best SSR are in each.

    python paper_figures/nguyen2024-measurable/starts/gauge.py TABLE.csv.gz [TABLE ...]
    python paper_figures/nguyen2024-measurable/starts/gauge.py --sweeps FOLDER [FOLDER ...]

The second form reads sweep folders' stored estimates (``fits.csv.gz``) and fits the rate of
the softmax fit's D1 in both gauges, every fit kept (no certificates: a study).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from moe_theory.config import load_config
from moe_theory.measure import MixingMeasure
from moe_theory.rates import fit_rate
from moe_theory.store import FIT_MEASURE, load_fits, read_csv
from moe_theory.voronoi import matched_gauge_d1, voronoi_loss

SETTING = "nguyen2024-measurable-gelu-d4"


def matched_d1(fitted: MixingMeasure, reference: MixingMeasure) -> tuple[np.ndarray, np.ndarray]:
    """``(D1_matched, D1)`` per replication of ``fitted``: the matched gauge's
    (:func:`moe_theory.voronoi.matched_gauge_d1`) and the fit's pinned one."""
    return (matched_gauge_d1(fitted, reference).numpy(),
            voronoi_loss(fitted, reference, "D1").numpy())


def with_matched_d1(table: pd.DataFrame, reference: MixingMeasure) -> pd.DataFrame:
    fits = MixingMeasure.from_json_rows(table[FIT_MEASURE])
    matched, d1 = matched_d1(fits, reference)
    if not np.allclose(d1, table["D1"].to_numpy(), rtol=1e-9, atol=0):
        raise ValueError("the table's D1 is not that of its estimates against G*")
    return table.assign(D1_matched=matched)


def read_ties(paths, reference: MixingMeasure) -> pd.DataFrame:
    """The per-start tables of ``paths`` as one, each start once (the spreads' tables share
    their near-reference start, fitted alike in both), with ``D1_matched``."""
    table = pd.concat([read_csv(path) for path in paths], ignore_index=True)
    table = table.drop_duplicates(["n", "rep", "start", "ssr"])
    return pd.concat([with_matched_d1(d, reference) for _, d in table.groupby("n")])


def tie_spreads(table: pd.DataFrame, nu: float) -> pd.DataFrame:
    """Per (n, rep): how many starts lie within ``nu`` of the best SSR, and the ratio of the
    largest to the smallest D1 and D1_matched among them; D1 and D1_matched of the best start."""
    rows = []
    for (n, rep), d in table.groupby(["n", "rep"]):
        tied = d[d["ssr"] <= d["ssr"].min() + nu]
        best = d.loc[d["ssr"].idxmin()]
        rows.append({"n": n, "rep": rep, "tied": len(tied),
                     "D1_spread": tied["D1"].max() / tied["D1"].min(),
                     "D1_matched_spread": tied["D1_matched"].max() / tied["D1_matched"].min(),
                     "D1_best": best["D1"], "D1_matched_best": best["D1_matched"]})
    return pd.DataFrame(rows)


def sweep_slopes(folders: list[str], config: str = "nguyen2024-measurable") -> pd.DataFrame:
    """Per folder, and for all of them read as one curve: the slope of the softmax fit's D1 in
    the pinned gauge and in the matched one (rates.fit_rate: log-mean OLS, bootstrap 95% CI),
    every fit kept, the box's faces included (the sweeps' tables mark them, not these
    estimates), and the mean of each at the smallest and largest n. Each fit is measured
    against G* of its own setting (the folders' settings are ``config``'s). ``<loss>_verdict``
    is the folder's own verdict of that curve, from its rates table ("-" where the folder did
    not measure it; none for all folders read as one): these slopes are recomputed here without
    its certificates, and must not read as the estimator's where the folder says otherwise."""
    frames = []
    verdicts: dict[tuple[str, str], str] = {}
    for folder in folders:
        fits = load_fits(folder)
        fits = fits[fits["fit_gate"] == "softmax"].reset_index(drop=True)
        rates = Path(folder) / "rates.json"
        table = pd.read_json(rates) if rates.exists() else pd.DataFrame(
            columns=["setting", "fit_gate", "loss_name", "verdict"])
        for r in table[table["fit_gate"] == "softmax"].itertuples():
            verdicts[f"{Path(folder).name}/{r.setting}", r.loss_name] = str(r.verdict)
        for setting, part in fits.groupby("setting"):
            truth = load_config(config).setting(setting).truth()
            measures = MixingMeasure.from_json_rows(part[FIT_MEASURE])
            matched, d1 = matched_d1(measures, truth)
            frames.append(part[["n", "rep"]].assign(folder=f"{Path(folder).name}/{setting}",
                                                    D1=d1, D1_matched=matched))
    table = pd.concat(frames, ignore_index=True)
    rows = []
    groups = [*table.groupby("folder")]
    for name, d in groups + ([("all", table)] if len(groups) > 1 else []):
        ns = sorted(d["n"].unique())
        row = {"folder": name, "n_min": ns[0], "n_max": ns[-1], "n_count": len(ns),
               "fits": len(d)}
        for loss in ("D1", "D1_matched"):
            fit = fit_rate(np.array(ns, float), [d.loc[d["n"] == n, loss].to_numpy() for n in ns])
            means = d.groupby("n")[loss].mean()
            row.update({f"{loss}_slope": fit.slope, f"{loss}_ci_low": fit.ci_low,
                        f"{loss}_ci_high": fit.ci_high, f"{loss}_median_slope": fit.median.slope,
                        f"{loss}_mean_first": means.iloc[0], f"{loss}_mean_last": means.iloc[-1],
                        f"{loss}_verdict": verdicts.get((name, loss), "-")})
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tables", nargs="+",
                   help="many_starts.py tables with fit_measure (the d = 4 truth), or with "
                   "--sweeps, sweep folders (fits.csv.gz) of --config's settings")
    p.add_argument("--sweeps", action="store_true", help="the tables are sweep folders")
    p.add_argument("--config", default="nguyen2024-measurable")
    p.add_argument("--out", help="write the per-start table with D1_matched here (csv)")
    args = p.parse_args()
    setting = load_config(args.config).setting(SETTING)
    truth = setting.truth()
    if args.sweeps:
        with pd.option_context("display.width", 250, "display.max_columns", 30):
            print(sweep_slopes(args.tables, args.config).round(3).to_string(index=False))
        print("(every fit kept, recomputed here without the folders' certificates: a study of "
              "the gauge, not a verdict; *_verdict is each folder's own verdict of the curve)")
        return
    table = read_ties(args.tables, truth)
    if args.out:
        table.drop(columns=FIT_MEASURE).to_csv(args.out, index=False)
    spreads = tie_spreads(table, setting.noise_var)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(spreads.round(3).to_string(index=False))
        for n, s in spreads.groupby("n"):
            several = s[s["tied"] > 1]
            print(f"n = {n}: data sets with >1 tied start {len(several)} of {len(s)}; spread > 10 "
                  f"in D1 {int((several['D1_spread'] > 10).sum())}, in D1_matched "
                  f"{int((several['D1_matched_spread'] > 10).sum())}; > 2: "
                  f"{int((several['D1_spread'] > 2).sum())} and "
                  f"{int((several['D1_matched_spread'] > 2).sum())}; median spread "
                  f"{several['D1_spread'].median():.3g} and {several['D1_matched_spread'].median():.3g};"
                  f" best start's D1 median {s['D1_best'].median():.3g}, D1_matched "
                  f"{s['D1_matched_best'].median():.3g}")


if __name__ == "__main__":
    main()
