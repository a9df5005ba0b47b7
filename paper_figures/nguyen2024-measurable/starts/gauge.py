"""Is the spread of D1 among tied starts the softmax gauge? A study of the per-start tables.

A softmax mixture is unchanged when the same affine function is added to every atom's score, so
its gate parameters are defined up to a common shift ``t = (t0, t1)`` of ``(beta0, beta1)``. The
toolkit measures a softmax fit in the pinned gauge (its last atom's score is zero,
docs/theory.md#gates-scores-and-experts), and the gate-weighted D1 compares ``exp(beta0)`` in
that gauge: a fit whose last atom is one copy of a split atom, or a light atom, is the same
function as one whose last atom is G*'s, yet is far from G* in D1. This script computes, for
every start of a table written by ``many_starts.py --estimates``, D1 in the matched gauge,

    D1_matched(G) = min over t1 of D1(G shifted by (t0(G), t1), G*),
    t0(G) = log(sum_j exp(beta0*_j) / sum_i exp(beta0_i)),

the intercepts shifted so that the fit's ``exp(beta0)`` add up to G*'s, and the slopes' common
shift chosen to bring the fit nearest G*. It depends on the regression function's parameter
class alone (shifting G shifts t0(G) back). The minimum over ``t0`` as well would not do: as
``t0 -> -inf`` every fitted weight vanishes and D1 tends to ``sum_j exp(beta0*_j)`` (3.30 on
this truth) whatever the fit, a floor that would hide every far fit. The script compares how
far apart the starts that tie within one noise variance of a data set's best SSR are in D1 and
in D1_matched.

    python paper_figures/nguyen2024-measurable/starts/gauge.py TABLE.csv.gz [TABLE ...]
    python paper_figures/nguyen2024-measurable/starts/gauge.py --sweeps FOLDER [FOLDER ...]

The second form reads sweep folders' stored estimates (``fits.csv.gz``) and fits the rate of
the softmax fit's D1 in both gauges, every fit kept (no certificates: a study).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from moe_theory.config import load_config
from moe_theory.measure import MixingMeasure
from moe_theory.rates import fit_rate
from moe_theory.store import FIT_MEASURE
from moe_theory.voronoi import voronoi_loss

SETTING = "nguyen2024-measurable-gelu-d4"
#: compass search over the shift: first step, last step (in units of the gate parameters)
STEP_FIRST, STEP_LAST = 4.0, 1e-7


def shifted(measure: MixingMeasure, t: torch.Tensor) -> MixingMeasure:
    """``measure`` with ``t`` (R, 1 + d) added to every atom's ``(beta0, beta1)``, kept in that
    gauge: the constructor would pin the last atom again, so the shifted parameters are set
    after it (the regression function is the same whatever ``t``)."""
    out = dataclasses.replace(measure)
    gp = measure.gate_params.clone()
    gp[..., : t.shape[-1]] += t[:, None, :]
    object.__setattr__(out, "gate_params", gp)
    return out


def matched_d1(fitted: MixingMeasure, reference: MixingMeasure) -> tuple[np.ndarray, np.ndarray]:
    """``(D1_matched, D1)`` per replication of ``fitted`` (R measures): D1 with the intercepts'
    common shift matching the total weight to the reference's and the smallest value over the
    slopes' common shift, by a compass search from each shift that zeroes one atom's slope (the
    fit's own among them); D1 is the fit's pinned-gauge value."""
    R, k, d = fitted.R, fitted.k, fitted.d
    d1 = voronoi_loss(fitted, reference, "D1")
    ref_total = reference.beta0.exp().sum(-1)
    t0 = (ref_total.log() - fitted.beta0.exp().sum(-1).log()).expand(R)
    # one search per (replication, atom whose slope the start zeroes)
    rows = torch.arange(R).repeat_interleave(k)
    many = fitted.select(rows)
    ref = reference.select(torch.zeros(R * k, dtype=torch.long)) if reference.R == 1 \
        else reference.select(rows)
    t1 = -fitted.gate_params[:, :, 1:1 + d].reshape(R * k, d)
    base = t0[rows][:, None]

    def value(measure, ref_, slopes, intercepts):
        return voronoi_loss(shifted(measure, torch.cat([intercepts, slopes], -1)), ref_, "D1")

    best = value(many, ref, t1, base)
    moves = torch.cat([torch.eye(d), -torch.eye(d)]).to(t1)  # (2d, d)
    step = torch.full((R * k,), STEP_FIRST, dtype=t1.dtype)
    tile = torch.arange(R * k).repeat(2 * d)
    big, big_ref, big_base = many.select(tile), ref.select(tile), base[tile]
    while (step > STEP_LAST).any():
        trial = t1.repeat(2 * d, 1) + moves.repeat_interleave(R * k, 0) * step.repeat(2 * d)[:, None]
        values = value(big, big_ref, trial, big_base).reshape(2 * d, R * k)
        low, which = values.min(0)
        better = low < best
        t1 = torch.where(better[:, None], trial.reshape(2 * d, R * k, d)[which, torch.arange(R * k)],
                         t1)
        best = torch.where(better, low, best)
        step = torch.where(better, step, step / 2)
    return best.reshape(R, k).min(1).values.numpy(), d1.numpy()


def with_matched_d1(table: pd.DataFrame, reference: MixingMeasure) -> pd.DataFrame:
    fits = MixingMeasure.from_dict([json.loads(s) for s in table[FIT_MEASURE]])
    matched, d1 = matched_d1(fits, reference)
    if not np.allclose(d1, table["D1"].to_numpy(), rtol=1e-9, atol=0):
        raise ValueError("the table's D1 is not that of its estimates against G*")
    return table.assign(D1_matched=matched)


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
    against G* of its own setting (the folders' settings are ``config``'s)."""
    frames = []
    for folder in folders:
        fits = pd.read_csv(Path(folder) / "fits.csv.gz")
        fits = fits[fits["fit_gate"] == "softmax"].reset_index(drop=True)
        for setting, part in fits.groupby("setting"):
            truth = load_config(config).setting(setting).truth()
            measures = MixingMeasure.from_dict([json.loads(v) for v in part[FIT_MEASURE]])
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
                        f"{loss}_mean_first": means.iloc[0], f"{loss}_mean_last": means.iloc[-1]})
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tables", nargs="+", help="many_starts.py tables with fit_measure (the d = 4 truth), or "
                   "with --sweeps, sweep folders (fits.csv.gz) of --config's settings")
    p.add_argument("--sweeps", action="store_true", help="the tables are sweep folders")
    p.add_argument("--config", default="nguyen2024-measurable")
    p.add_argument("--out", help="write the per-start table with D1_matched here (csv)")
    args = p.parse_args()
    setting = load_config(args.config).setting(SETTING)
    truth = setting.truth()
    if args.sweeps:
        with pd.option_context("display.width", 250, "display.max_columns", 30):
            print(sweep_slopes(args.tables, args.config).round(3).to_string(index=False))
        print("(every fit kept, no certificates: a study of the gauge, not a verdict)")
        return
    table = pd.concat([pd.read_csv(path) for path in args.tables], ignore_index=True)
    table = table.drop_duplicates(["n", "rep", "start", "ssr"])
    table = pd.concat([with_matched_d1(d, truth) for _, d in table.groupby("n")])
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
