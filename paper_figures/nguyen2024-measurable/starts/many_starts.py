"""Both fits of nguyen2024-measurable-relu from up to 256 starts per data set
(paper_figures/README.md, nguyen2024-measurable, "Up to 256 starts").

    python paper_figures/nguyen2024-measurable/starts/many_starts.py OUT.csv [--device cuda]
        [--gate softmax] [--n 10000,20000] [--reps 20] [--starts 64] [--block 16]
        [--bound-scale 2] [--max-iter 2000]

The sweep's own data, box and starts (moe_theory.sweep.shard_init with ``starts - 1`` extra
starts: start s is seeded by (setting, seed, n, gate, s, rep), so the first 5 are the sweep's).
Each start is fitted as its own problem (the data of a replication repeated for a block of
starts, every start's fit kept), so that the table holds every start's SSR, losses, the weight
of its lightest atom and which parameter groups sit on the box (``--bound-scale`` changes the
box, ``--n`` may go beyond the sweep's), and any set of starts can be judged afterwards
(``--summary``: the table; ``--figure STEM``: the start study's figure, ``--n-figure STEM``
the softmax fit against n and box, ``--gap-figure STEM`` both fits of one box with the fits
on the box dropped and kept; from one or more tables):

    python paper_figures/nguyen2024-measurable/starts/many_starts.py --summary OUT.csv
        [OUT2.csv] [--figure STEM]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from moe_theory.certificates import stationary_stops
from moe_theory.config import load_config
from moe_theory.estimators import fit_lse, groups_at_bound, starting_measures
from moe_theory.plotting import GATE_COLORS, draw_rates, save_figure, use_style
from moe_theory.population import reference_measure
from moe_theory.rates import fit_rate
from moe_theory.settings import get_setting
from moe_theory.store import FIT_MEASURE, read_csv
from moe_theory.sweep import shard_box, shard_data, shard_init
from moe_theory.theory import predicted_rate
from moe_theory.voronoi import applicable_losses, voronoi_loss

CONFIG, SETTING = "nguyen2024-measurable", "nguyen2024-measurable-relu"
#: the losses kept for every start, those of them the fit's reference defines: against G* the
#: over-specified and exact experts' errors and N24's gate-weighted D1, against G_bar the
#: certified curves' D3
LOSSES = ("D3", "D1", "err_eta_over", "err_eta_exact", "err_beta1_exact")


def fit_every_start(n: int, reps: int, starts: int, block: int, device: str, gate: str,
                    config_name: str = CONFIG, setting_name: str = SETTING,
                    bound_scale: float | None = None, max_iter: int | None = None,
                    on_block=None, estimates: bool = False) -> pd.DataFrame:
    """Every start's fit at n; ``on_block(table)``, if given, receives the rows so far after
    each block of starts (main writes them, so that a run cut short keeps what it fitted).
    ``estimates``: each row also keeps its fitted measure (the sweeps' ``fit_measure`` JSON), so
    that other losses of every start can be computed later without refitting."""
    config = dataclasses.replace(load_config(config_name), starts=starts - 1)
    # the box the data and starts are fitted in, and the iteration cap; both stay the sweep's
    # unless given (the data and starts do not depend on them)
    if bound_scale is not None:
        config = dataclasses.replace(config, bound_scale=float(bound_scale))
    if max_iter is not None:
        config = dataclasses.replace(config, max_iter=int(max_iter))
    setting = config.setting(setting_name)
    kind, ref = reference_measure(setting, gate, device=device)
    losses_kept = applicable_losses(setting, kind, LOSSES)
    X, Y = shard_data(config, setting, n, 0, reps, device)
    box = shard_box(config, setting, gate, ref)
    init = shard_init(config, setting, n, gate, ref)
    rows = []
    for first in range(0, starts, block):
        chunk = init[first:first + block]
        S = len(chunk)
        start = starting_measures(chunk, reps, gate, setting.score, setting.expert,
                                  setting.k_fit, setting.d, list(range(reps)), device)
        t0 = time.perf_counter()
        fit = fit_lse(X.repeat(S, 1, 1), Y.repeat(S, 1), setting.k_fit, gate, setting.expert,
                      setting.score, init=start, reference=ref.to(device=device), bounds=box,
                      noise_var=setting.noise_var, max_iter=config.max_iter)
        wall = time.perf_counter() - t0
        fitted = fit.measure.to(device="cpu")
        # each atom's gate weight at a zero score: the lightest atom's says whether a start
        # parked an atom where it fits a few points
        weights = fitted.weights
        if gate == "softmax":  # exp(beta0) as a share of the gate
            weights = weights / weights.sum(-1, keepdim=True)
        losses = {name: voronoi_loss(fitted, ref.to(device="cpu"), name) for name in losses_kept}
        on_face = groups_at_bound(fitted, box)
        for row in range(S * reps):
            rows.append({
                "setting": setting.name, "gate": gate, "n": n, "rep": row % reps,
                "start": first + row // reps,
                "ssr": float(fit.fit_loss[row]) * n, "ref_ssr": float(fit.ref_loss[row]) * n,
                **{name: float(v[row]) for name, v in losses.items()},
                "w_min": float(weights[row].min()), "bound": bool(fit.bound_active[row]),
                "bound_scale": config.bound_scale, "max_iter": config.max_iter,
                **{f"bound_{g}": bool(v[row]) for g, v in on_face.items()},
                "stop": fit.stop_reason[row], "restart_drop": float(fit.restart_drop[row]),
                "n_iter": int(fit.n_iter[row]),
                "wall_s": wall / (S * reps),
                **({FIT_MEASURE: fitted.select(row).to_json_rows()[0]} if estimates else {})})
        print(f"n = {n}: starts {first}-{first + S - 1} in {wall:.1f} s", flush=True)
        if on_block is not None:
            on_block(pd.DataFrame(rows))
    return pd.DataFrame(rows)


#: the figures' setting in words (their titles name no config)
WORDS = "N24's comparison on a truth the data identify (ReLU experts, d = 8, k* = 3, k = 4)"
#: numbers of starts judged: the sweep's 5, then about doubling
SIZES = (5, 9, 17, 33, 64, 128, 256)
#: the curves whose slope is followed as starts are added: (gate, loss, theory exponent of the
#: measurable N24 setting; a table that names its setting gets that setting's, predicted_rate)
CURVES = (("sigmoid", "D3", -0.5), ("softmax", "err_eta_over", -0.25), ("softmax", "D1", -0.5),
          ("softmax", "D3", -0.5))


def _theory(d: pd.DataFrame, gate: str, loss: str, default: float) -> float:
    """The theory table's exponent for the curve of the table's setting (NaN for no
    prediction); ``default`` for tables without a setting column."""
    if "setting" not in d or d.setting.nunique() != 1:
        return default
    setting = get_setting(d.setting.iloc[0])
    rate = predicted_rate(gate, setting.score, setting.regime, setting.expert, loss,
                          setting.reference_kind(gate))
    return float("nan") if rate.exponent is None else rate.exponent


def _with_box_and_cap(table: pd.DataFrame, scale: float = float("nan")) -> pd.DataFrame:
    """Tables written before the box was a column (the 256- and 64-start ones) were fitted in
    the config's box: ``scale`` where it is missing. The iteration cap, a later column, is NaN
    where missing (those tables ran the config's)."""
    if "bound_scale" in table:
        table = table.assign(bound_scale=table.bound_scale.fillna(scale))
    else:
        table = table.assign(bound_scale=scale)
    if "max_iter" not in table:
        table = table.assign(max_iter=float("nan"))
    return table


def read_tables(paths, scale: float) -> tuple[pd.DataFrame, int]:
    """The tables at ``paths`` as one (``scale``: the box of those without the column), each
    start-fit once: tables that share fits (a start of one n, box and replication is the same
    problem in every table, from the same seeds) count it from the first table given. Returns
    the table and how many rows were shared."""
    table = pd.concat([_with_box_and_cap(read_csv(path), scale) for path in paths],
                      ignore_index=True)
    shared = table.duplicated(["gate", "bound_scale", "max_iter", "n", "rep", "start"])
    return table[~shared].reset_index(drop=True), int(shared.sum())


def _first(d: pd.DataFrame, m: int, nu: float) -> tuple[pd.DataFrame, pd.Series]:
    """The kept fit of every replication when only the first m starts are run, and how many
    of those m starts end within nu of its SSR."""
    s = d[d.start < m]
    kept = s.loc[s.groupby("rep").ssr.idxmin()].set_index("rep")
    near = s.groupby("rep").ssr.apply(lambda x: int((x - x.min() <= nu).sum()))
    return kept, near


def summary(table: pd.DataFrame, nu: float, sizes=SIZES) -> pd.DataFrame:
    """Per gate, box (``bound_scale``), iteration cap, n and number m of starts (the first m;
    the sizes up to the table's starts, and all of them): fits whose best SSR a second start
    reaches within nu, the best start's median losses and lightest weight, its SSR above the
    best of all starts (mean, in nu), the share of kept fits stopped on a tolerance and on the
    box and, where the table records it, on each group's face (``box_beta0``: an atom's weight
    sent to the box)."""
    out = []
    table = _with_box_and_cap(table)
    faces = [c for c in table.columns if c.startswith("bound_") and c != "bound_scale"]
    for (gate, scale, cap, n), d in table.groupby(["gate", "bound_scale", "max_iter", "n"],
                                                 dropna=False):
        best_all = d.groupby("rep").ssr.min()
        total = d.start.nunique()
        for m in sorted({m for m in sizes if m <= total} | ({total} if total > min(sizes) else set())):
            kept, near = _first(d, m, nu)
            out.append({"gate": gate, "bound_scale": scale, "max_iter": cap, "n": n, "starts": m,
                        "second_start": float((near >= 2).mean()),
                        "gap_nu": float(((kept.ssr - best_all) / nu).mean()),
                        "on_box": float(kept.bound.mean()),
                        # kept fits stopped on a tolerance at a stationary point, as the
                        # converged certificate counts them (tables written before the
                        # restarts, without restart_drop, by the stop alone)
                        **({"on_tolerance": float(stationary_stops(
                            kept.rename(columns={"stop": "stop_reason"}))[0].mean())}
                           if "stop" in kept else {}),
                        **{f"box_{c[6:]}": float(kept[c].mean()) for c in faces
                           if kept[c].notna().all()},
                        **{name: float(kept[name].median()) for name in LOSSES
                           if name in kept and kept[name].notna().any()},
                        "w_min": float(kept.w_min.median())})
    return pd.DataFrame(out)


def slopes(table: pd.DataFrame, nu: float, sizes=SIZES) -> pd.DataFrame:
    """The slope (rates.fit_rate: log-mean OLS, bootstrap 95% CI, box fits dropped) of every
    curve of ``CURVES`` per box when each fit keeps the best of its first m starts (``sizes``
    and every n's own number of starts), over the n fitted from at least m starts (3 or more).
    Beside it, ``*_box_kept``: the same slope with the fits on the box kept, the least-squares
    estimate over the box taken as the compact set (the certified protocol drops them,
    docs/theory.md#rate-estimation)."""
    out = []
    table = _with_box_and_cap(table)
    for (gate, loss, theory), ((scale, cap), d) in itertools.product(
            CURVES, table.groupby(["bound_scale", "max_iter"], dropna=False)):
        d = d[d.gate == gate]
        if loss not in d or d[loss].isna().all():
            continue
        starts_per_n = d.groupby("n").start.nunique()
        for m in sorted(set(sizes) | set(starts_per_n)):
            # the n fitted from at least m starts (tables of different n may hold different
            # numbers of starts)
            ns_m = starts_per_n.index[starts_per_n >= m]
            if len(ns_m) < 3:
                continue
            ns, values, bound = [], [], []
            for n in ns_m:
                kept, _ = _first(d[d.n == n], m, nu)
                ns.append(n)
                values.append(kept[loss].to_numpy())
                bound.append(kept.bound.to_numpy())
            fit = fit_rate(np.array(ns, float), values, bound_per_n=bound)
            kept_all = fit_rate(np.array(ns, float), values)
            out.append({"gate": gate, "loss": loss, "theory": _theory(d, gate, loss, theory),
                        "bound_scale": scale,
                        "max_iter": cap, "starts": m, "n_min": min(ns), "n_max": max(ns), "n_count": len(ns),
                        "slope": fit.slope, "ci_low": fit.ci_low, "ci_high": fit.ci_high,
                        "slope_median": fit.median.slope, "dropped": fit.n_dropped,
                        "slope_box_kept": kept_all.slope, "ci_low_box_kept": kept_all.ci_low,
                        "ci_high_box_kept": kept_all.ci_high})
    return pd.DataFrame(out)


LOSS_WORDS = {"D3": r"sigmoid, $D_3$ vs $\bar G$",
              "err_eta_over": "softmax, over-specified expert error",
              "D1": r"softmax, $D_1$ vs $G^*$"}


def figure(table: pd.DataFrame, nu: float, stem: str) -> list:
    """Three panels against the number of starts: the smallest share over n of fits whose best
    SSR a second start reaches (the optimiser certificate wants 95%), the kept fit's SSR above
    the best of every start tried, and each curve's slope with its 95% CI and theory."""
    table_s = summary(table, nu)
    table_r = slopes(table, nu)
    with use_style():
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
        for gate, d in table_s.groupby("gate"):
            per_m = d.groupby("starts")
            axes[0].plot(per_m.second_start.min(), "o-", color=GATE_COLORS[gate],
                         label=f"{gate} fit (smallest over the 5 n)")
            axes[1].plot(per_m.gap_nu.mean(), "o-", color=GATE_COLORS[gate],
                         label=f"{gate} fit (mean over n and replications)")
        axes[0].axhline(0.95, color="0.4", lw=0.8, ls="--", label="certificate's bar (95%)")
        axes[0].set(ylabel="fits whose best SSR a second\nstart reaches within $\\nu$",
                    ylim=(0, 1.05), title="Is the least-squares fit found twice?")
        axes[1].set(ylabel="kept SSR above the best of every\nstart tried (256 softmax, 64 sigmoid; $\\nu$)",
                    title="How far the kept fit is from the best found")
        styles = {"D3": "o-", "err_eta_over": "s-", "D1": "^--"}
        # the curves side by side at each m (a small shift on the log axis), so the bars stay apart
        shift = {"D3": 1.0, "err_eta_over": 0.93, "D1": 1.07}
        for (gate, loss), d in table_r.groupby(["gate", "loss"], sort=False):
            color = GATE_COLORS[gate]
            m = d.starts.to_numpy() * shift[loss]
            axes[2].errorbar(m, d.slope, yerr=[d.slope - d.ci_low, d.ci_high - d.slope],
                             fmt=styles[loss], color=color, capsize=2, ms=4,
                             mfc=color if loss != "D1" else "white", label=LOSS_WORDS[loss])
        for value, words in ((-0.5, "theory -1/2"), (-0.25, "theory -1/4 (over-specified)")):
            axes[2].axhline(value, color="0.4", lw=0.8, ls=":")
            axes[2].annotate(words, (1.0, value), xycoords=("axes fraction", "data"),
                             ha="right", va="bottom", fontsize=7, color="0.3")
        axes[2].set(ylabel="slope of log(mean loss) on log n\n(bars: 95% CI)",
                    title="The slope each set of starts gives\n(a study: no certificates, no verdict)")
        for ax in axes:
            ax.set_xscale("log", base=2)
            ax.set_xticks(SIZES, [str(m) for m in SIZES])
            ax.set_xlabel("starts per data set (the sweep runs 5)")
            ax.legend(fontsize=7, loc="best")
        fig.suptitle(f"{WORDS}: 20 data sets at each of 5 n ($10^4$ to $1.6\\cdot 10^5$); each "
                     "fit keeps the best of its first m starts")
        paths = save_figure(fig, stem)
        plt.close(fig)
    return paths


#: the larger set of starts of the n figure (the 10^7 tables hold 8)
MANY = 16


def n_figure(table: pd.DataFrame, nu: float, stem: str) -> list:
    """The softmax fit against n, one line per box and per set of starts (the sweep's 5, and
    16, or all the table holds at an n with fewer): the share of fits whose best SSR a second
    start reaches, the share of kept fits on the box, and the over-specified expert error's and
    D1's medians. The same number of starts at every n, so that no line's trend is one of
    starts."""
    d = summary(table[table.gate == "softmax"], nu, sizes=(5, MANY))
    first = d[d.starts == 5]
    last = d[d.starts <= MANY]
    last = last.loc[last.groupby(["bound_scale", "n"]).starts.idxmax()]
    color = GATE_COLORS["softmax"]
    with use_style():
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
        for scale, dash in ((10.0, "-"), (2.0, "--"), (1.5, "-.")):
            for rows, marker, words in ((first, "o", "5 starts"), (last, "s", f"{MANY} starts")):
                r = rows[rows.bound_scale == scale].sort_values("n")
                if r.empty:
                    continue
                style = dict(ls=dash, marker=marker, color=color, ms=4,
                             mfc=color if marker == "s" else "white",
                             label=f"box {scale:g}x, {words}")
                axes[0].plot(r.n, r.second_start, **style)
                axes[1].plot(r.n, r.on_box, **style)
                axes[2].plot(r.n, r.err_eta_over, **style)
                if marker == "s":
                    axes[2].plot(r.n, r.D1, ls=dash, marker="^", color="0.35", ms=4, mfc="white",
                                 label=f"$D_1$, box {scale:g}x, {MANY} starts")
        axes[0].axhline(0.95, color="0.4", lw=0.8, ls=":", label="certificate's bar (95%)")
        axes[0].set(ylabel="fits whose best SSR a second\nstart reaches within $\\nu$",
                    ylim=(0, 1.05), title="Is the least-squares fit found twice?")
        axes[1].set(ylabel="kept fits with a parameter on the box\n(an atom's $\\beta_0$ wherever recorded)",
                    ylim=(-0.03, 1.0), title="Does the box hold the fit?")
        n = np.array(sorted(d.n.unique()), float)
        guide = last[last.bound_scale == 10.0].sort_values("n").err_eta_over.iloc[0] * (n / n[0]) ** -0.25
        axes[2].plot(n, guide, color="0.4", lw=0.8, ls=":", label="$n^{-1/4}$ (theory, over-specified)")
        axes[2].set(yscale="log", ylabel="median over 20 data sets",
                    title="Over-specified expert error (orange)\nand $D_1$ (grey) of the kept fit")
        for ax in axes:
            ax.set_xscale("log")
            ax.set_xlabel("n")
            ax.legend(fontsize=6.5, loc="best")
        fig.suptitle(f"{WORDS}, softmax fit: 20 data sets per n; {MANY} starts: the first "
                     f"{MANY} of each data set's (8 at $10^7$) (a study: no certificates)")
        paths = save_figure(fig, stem)
        plt.close(fig)
    return paths


#: the curves of the gap figure: (gate, loss) as the sweep's figure plots them
GAP_CURVES = (("sigmoid", "D3"), ("softmax", "err_eta_over"), ("softmax", "D1"))


def tidy(table: pd.DataFrame, nu: float, starts: int, box: bool = True) -> pd.DataFrame:
    """The kept fits (each data set's best of its first ``starts``) as rows of the sweep's
    results table (docs/theory.md#results-table), one per (gate, n, replication, loss of
    ``GAP_CURVES``), for :func:`moe_theory.plotting.draw_rates`. ``box``: with the
    ``bound_active`` column (fits on the box dropped from the slopes, as the certified protocol
    does); otherwise without it (the least-squares estimate over the box, every fit kept)."""
    setting = get_setting(table.setting.iloc[0] if "setting" in table else SETTING)
    rows = []
    for (gate, n), d in table.groupby(["gate", "n"]):
        losses = [loss for g, loss in GAP_CURVES
                  if g == gate and loss in d and d[loss].notna().any()]
        if not losses:
            continue
        kept, _ = _first(d, starts, nu)  # once per data set, whatever the number of losses
        for loss in losses:
            rows.append(pd.DataFrame({
                "setting": setting.name, "truth_gate": setting.truth_gate, "fit_gate": gate,
                "score": setting.score, "regime": setting.regime, "expert": setting.expert,
                "d": setting.d, "k_true": setting.k_true, "k_fit": setting.k_fit,
                "reference": setting.reference_kind(gate), "n": n, "rep": kept.index,
                "loss_name": loss, "loss_value": kept[loss].to_numpy(),
                **({"bound_active": kept.bound.to_numpy()} if box else {})}))
    return pd.concat(rows, ignore_index=True)


def gap_figure(table: pd.DataFrame, nu: float, stem: str, starts: int = 16) -> list:
    """The ReLU gap in one box: the sigmoid fit's D3 against G_bar beside the softmax fit's
    over-specified expert error and D1 against G*, every fit the best of its first ``starts``,
    two panels: fits on the box dropped from the slopes (the certified protocol's reading) and
    kept (the least-squares estimate over the box as the compact set). A study: no curve
    carries certificates here, so every fitted line is drawn as not measurable."""
    scales = table.bound_scale.dropna().unique()
    if len(scales) != 1:
        raise ValueError(f"bound_scale: the gap figure draws one box, got {sorted(scales)}")
    with use_style():
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
        for ax, box, words in ((axes[0], True, "fits on the box dropped (the protocol's reading)"),
                               (axes[1], False, "fits on the box kept (the LSE over the box)")):
            draw_rates(ax, tidy(table, nu, starts, box), GAP_CURVES,
                       ylabel="loss (see legend)")
            ax.set_title(words, fontsize=8)
        fig.suptitle(f"{WORDS}, box {scales[0]:g}x the reference's scale\n20 data sets "
                     f"per n, each fit the best of {starts} starts (a study: no certificates)",
                     fontsize=9)
        paths = save_figure(fig, stem)
        plt.close(fig)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="+", help="the table to write (one), or tables to read")
    p.add_argument("--summary", action="store_true")
    p.add_argument("--figure", metavar="STEM", help="with --summary: draw STEM.png and .pdf")
    p.add_argument("--n-figure", metavar="STEM",
                   help="with --summary: the softmax fit against n and box (STEM.png and .pdf)")
    p.add_argument("--gap-figure", metavar="STEM",
                   help="with --summary: the sigmoid and softmax fits of one box, best of 16 "
                   "starts, fits on the box dropped and kept (STEM.png and .pdf)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--gate", default="softmax", choices=("sigmoid", "softmax"))
    p.add_argument("--config", default=CONFIG, help="the sweep config whose data and starts")
    p.add_argument("--setting", default=SETTING)
    p.add_argument("--n", default="10000,20000,40000,80000,160000")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--starts", type=int, default=64)
    p.add_argument("--block", type=int, default=16)
    p.add_argument("--bound-scale", type=float, help="the box's multiple (default the config's)")
    p.add_argument("--max-iter", type=int, help="the iteration cap (default the config's)")
    p.add_argument("--estimates", action="store_true",
                   help="keep every start's fitted measure in the table (fit_measure, JSON)")
    args = p.parse_args()
    config = load_config(args.config)
    nu = config.setting(args.setting).noise_var
    if not args.summary:
        if len(args.out) != 1:
            raise SystemExit("out: give one table to write")
        tables = []

        def write(rows_of_n: pd.DataFrame) -> None:
            # after every block (the last one of an n writes its whole table): a run cut short
            # by a device call's time limit keeps its starts
            pd.concat(tables + [rows_of_n]).to_csv(args.out[0], index=False)

        for n in (int(v) for v in args.n.split(",")):
            tables.append(fit_every_start(n, args.reps, args.starts, args.block, args.device,
                                          args.gate, args.config, args.setting,
                                          args.bound_scale, args.max_iter, on_block=write,
                                          estimates=args.estimates))
    table, shared = read_tables(args.out, config.bound_scale)
    if shared:
        print(f"{shared} start-fits held by two tables counted once (the first table's)")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary(table, nu).round(3).to_string(index=False))
        print(slopes(table, nu).round(3).to_string(index=False))
        print("(a study of sets of starts: these slopes carry no certificates; the verdicts of "
              "the sweep's curves are in the folder's rates.txt)")
    if args.figure:
        for path in figure(table, nu, args.figure):
            print(path)
    if args.n_figure:
        for path in n_figure(table, nu, args.n_figure):
            print(path)
    if args.gap_figure:
        for path in gap_figure(table, nu, args.gap_figure):
            print(path)


if __name__ == "__main__":
    main()
