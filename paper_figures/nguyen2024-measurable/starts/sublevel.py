"""How far apart are the fits the data cannot reject against the reference? A study of the
per-start tables (paper_figures/README.md, nguyen2024-measurable, "Every fit as good as the
reference").

The argument behind a least-squares rate (van de Geer's, which N24's regression-function rate
follows) uses one property of the estimate: its sum of squared residuals is no larger than the
reference's. Every point of the compact set with ``SSR <= SSR(reference)`` has it, so the bound
the theorems derive holds for all of them at once, not for the global minimiser alone. Every
start of a multi-start fit that ends there is such a point, found or not by the same optimiser
that misses the LSE: the largest loss among them is a lower bound on what the theorems bound,
whatever the LSE is. Where that envelope shrinks at the theory's rate with n, the bound is
informative at these n; where it does not, no estimate from that set, the LSE included, is
predicted to show the rate with a constant of order one.

    python paper_figures/nguyen2024-measurable/starts/sublevel.py TABLE.csv.gz [TABLE ...]
        [--loss D3] [--first 32] [--box 3]
    python paper_figures/nguyen2024-measurable/starts/sublevel.py --figure STEM

A table of ``many_starts.py``; several tables are one study's spreads of starts on the same data
sets (each start once). ``--loss D1_matched`` (the default for softmax tables, which must hold
the estimates: ``many_starts.py --estimates``) is measured from the estimates against G*;
``--first m`` keeps each table's first m starts, so that every n has as many.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from moe_theory.config import load_config
from moe_theory.rates import fit_rate
from moe_theory.store import FIT_MEASURE, read_csv

#: the statistics of a data set's certified starts whose rate against n is fitted
ENVELOPE = ("best", "median", "max")


@functools.cache
def _gauge():
    """The sibling study script that measures D1 in the matched gauge (loaded once)."""
    spec = importlib.util.spec_from_file_location("gauge", Path(__file__).with_name("gauge.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_starts(paths, loss: str, first: int | None = None,
                config: str = "nguyen2024-measurable", box: float | None = None) -> pd.DataFrame:
    """The tables of ``paths`` as one, each start once (spreads share their near-reference
    start), the first ``first`` starts of each, those fitted in the box of multiple ``box``
    where the tables hold several (``splits.py``'s); ``D1_matched`` measured where it is the
    loss. SSRs in noise variances (``splits.py``'s ``ssr_nu``) serve as well: only their order
    against the reference's is read."""
    tables = [read_csv(path).rename(columns={"ssr_nu": "ssr", "ref_ssr_nu": "ref_ssr"})
              for path in paths]
    if box is not None:
        column = next((c for c in ("box", "bound_scale") if c in tables[0]), None)
        if column is None:
            raise ValueError(f"--box: {paths[0]} records no box")
        tables = [t[t[column] == box] for t in tables]
    if first is not None:
        tables = [t[t["start"] < first] for t in tables]
    table = pd.concat(tables, ignore_index=True).drop_duplicates(["n", "rep", "start", "ssr"])
    if table.empty:
        raise ValueError(f"{paths}: no start left (--box, --first)")
    if loss == "D1_matched" and loss not in table:
        if FIT_MEASURE not in table:
            raise ValueError(f"{paths}: D1_matched needs the estimates (many_starts.py "
                             "--estimates)")
        gauge = _gauge()
        truth = load_config(config).setting(table["setting"].iloc[0]).truth()
        table = pd.concat([gauge.with_matched_d1(d, truth) for _, d in table.groupby("n")])
    if loss not in table:
        raise ValueError(f"--loss: {loss!r} is not a column of {paths}")
    return table.drop(columns=[FIT_MEASURE], errors="ignore")


def sublevel(table: pd.DataFrame, loss: str) -> pd.DataFrame:
    """Per (n, rep): the starts, those no worse than the reference (``ssr <= ref_ssr``), the
    loss of the best one and the median and largest loss among the certified ones."""
    rows = []
    for (n, rep), d in table.groupby(["n", "rep"]):
        certified = d.loc[d["ssr"] <= d["ref_ssr"], loss]
        rows.append({"n": n, "rep": rep, "starts": len(d), "certified": len(certified),
                     "best": d.loc[d["ssr"].idxmin(), loss],
                     "median": certified.median() if len(certified) else np.nan,
                     "max": certified.max() if len(certified) else np.nan})
    return pd.DataFrame(rows)


def envelope_slopes(per: pd.DataFrame) -> pd.DataFrame:
    """Per statistic of :data:`ENVELOPE`: its mean over data sets at the smallest and largest n
    and the slope of its log-mean on log n with the bootstrap 95% CI (rates.fit_rate)."""
    ns = sorted(per["n"].unique())
    rows = []
    for stat in ENVELOPE:
        fit = fit_rate(np.array(ns, float), [per.loc[per["n"] == n, stat].to_numpy() for n in ns])
        means = per.groupby("n")[stat].mean()
        rows.append({"statistic": stat, "mean_first": means.iloc[0], "mean_last": means.iloc[-1],
                     "slope": fit.slope, "ci_low": fit.ci_low, "ci_high": fit.ci_high})
    return pd.DataFrame(rows)


#: the n of the d = 4 softmax fit's per-start tables (``d4_ties_{n}{,_jitter10}_softmax``)
D4_SOFTMAX_N = ("128k", "256k", "512k", "1024k")
#: the committed figure's panels, two by two (the d = 4 truth's two fits of the same data sets
#: first): title, tables (relative to this folder), loss, axis label,
#: read_starts' first and box, the gate's colour, the theory's exponent (N24: n^-1/2 for D3 and
#: D1, n^-1/4 for an over-specified softmax expert)
PANELS = (
    ("Sigmoid fit, d = 4, GELU experts, 10x box\n16 starts per data set",
     ("d4_ties_128k_sigmoid.csv.gz", "d4_ties_large_n_sigmoid.csv.gz"), "D3",
     "D3 against $\\bar G$", None, None, "sigmoid", -0.5),
    ("Softmax fit of the same data, 3x box\n64 starts per data set (two spreads)",
     tuple(f"d4_ties_{n}{tag}_softmax.csv.gz" for n in D4_SOFTMAX_N
           for tag in ("", "_jitter10")), "D1_matched",
     "D1 in the matched gauge against $G_*$", 32, None, "softmax", -0.5),
    ("Sigmoid fit, d = 8, ReLU experts, 10x box\n64 starts per data set",
     ("many_starts_sigmoid.csv.gz",), "D3", "D3 against $\\bar G$", None, None, "sigmoid",
     -0.5),
    ("Softmax fit, d = 8, GELU experts, 3x box\n96 starts per data set, in every cell",
     ("splits_gelu_softmax.csv.gz",), "err_eta_over",
     "over-specified expert error against $G_*$", None, 3.0, "softmax", -0.25),
)
#: how each statistic of the starts in the set is drawn
STYLES = {"best": ("o-", "the best-SSR start"), "median": ("s--", "their median"),
          "max": ("^:", "their largest (a lower bound\non what the theorem's bound covers)")}


def figure(stem: str, panels=PANELS, folder: Path | None = None) -> list:
    """One panel per table set: the mean over data sets of each statistic of
    :data:`STYLES` against n, log-log, with the theory's rate through the best start's first
    point. Returns the written paths (``STEM.png`` and ``.pdf``)."""
    import matplotlib.pyplot as plt

    from moe_theory.plotting import GATE_COLORS, save_figure, use_style

    folder = folder or Path(__file__).parent
    with use_style():
        cols = min(len(panels), 2)
        rows = -(-len(panels) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.7 * rows), squeeze=False)
        for ax in axes.ravel()[len(panels):]:  # an odd count's empty corner
            ax.set_axis_off()
        for ax, (title, tables, loss, label, first, box, gate, theory) in zip(
                axes.ravel(), panels, strict=False):
            per = sublevel(read_starts([folder / t for t in tables], loss, first, box=box), loss)
            means = per.groupby("n")[list(STYLES)].mean()
            slopes = envelope_slopes(per).set_index("statistic")["slope"]
            for stat, (fmt, words) in STYLES.items():
                if stat == "max" and gate != "softmax":  # N24's bound is about the softmax fit
                    words = "their largest"
                ax.plot(means.index, means[stat], fmt, color=GATE_COLORS[gate], ms=4,
                        mfc="white" if stat != "best" else GATE_COLORS[gate],
                        label=f"{words}: $n^{{{slopes[stat]:+.2f}}}$")
            n = means.index.to_numpy(float)
            ax.plot(n, means["best"].iloc[0] * (n / n[0]) ** theory, color="0.4", lw=0.8,
                    label=f"theory $n^{{{theory:g}}}$")
            ax.set(xscale="log", yscale="log", xlabel="sample size n", ylabel=label,
                   title=title)
            ax.legend(fontsize=7, loc="best")
        fig.suptitle("The starts at least as good as the reference in SSR (for a softmax fit "
                     "of its own truth, the set N24's bound\ncovers whatever the LSE is); means "
                     "over 20 data sets. A study of sets of starts: its slopes are not the "
                     "estimator's rates\n(not measurable as rates: no certificates), and "
                     "carry no verdict")
        paths = save_figure(fig, stem)
        plt.close(fig)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tables", nargs="*", help="many_starts.py tables of one study")
    p.add_argument("--figure", metavar="STEM",
                   help="draw the committed figure (PANELS) into STEM.png and .pdf instead")
    p.add_argument("--loss", help="default: D1_matched for softmax tables, D3 for sigmoid ones")
    p.add_argument("--first", type=int, help="keep each table's first m starts")
    p.add_argument("--box", type=float, help="keep the starts fitted in this box (tables of "
                   "several boxes)")
    p.add_argument("--config", default="nguyen2024-measurable")
    args = p.parse_args()
    if args.figure:
        for path in figure(args.figure):
            print(path)
        return
    if not args.tables:
        p.error("give the tables of a study, or --figure STEM")
    head = read_csv(args.tables[0], nrows=1)
    gate = head["gate"].iloc[0] if "gate" in head else "softmax"  # splits.py's: softmax only
    loss = args.loss or ("D1_matched" if gate == "softmax" else "D3")
    per = sublevel(read_starts(args.tables, loss, args.first, args.config, args.box), loss)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        counts = per.groupby("n")[["starts", "certified"]].sum()
        print(f"{gate} fit, {loss}; starts no worse than the reference, per n (all data sets):")
        print(counts.to_string())
        print(envelope_slopes(per).round(3).to_string(index=False))
        print("(a study of sets of starts: these slopes carry no certificates and no verdict; "
              "the sweeps' curves have theirs in their folders' rates.txt)")


if __name__ == "__main__":
    main()
