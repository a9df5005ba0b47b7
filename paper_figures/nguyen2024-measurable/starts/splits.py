"""The softmax fit of nguyen2024-measurable-relu from starts in every Voronoi cell: which
minimum is the least-squares estimate over the box, and does its over-specified error fall with
n (paper_figures/README.md, nguyen2024-measurable, "Starts in every cell")?

    python paper_figures/nguyen2024-measurable/starts/splits.py fit OUT.csv [--device cuda]
        [--n 10000,40000,160000] [--box 1.5,3] [--starts 1:8,10:32,100:24] [--reps 20]
    python paper_figures/nguyen2024-measurable/starts/splits.py atoms OUT.csv [same options]
    python paper_figures/nguyen2024-measurable/starts/splits.py summary OUT.csv [--figure STEM]

``fit``: the sweep's data (replications 0 to reps - 1), and per data set, for each of the
truth's 3 atoms as the one the fit's extra atom copies (``moe_theory.initialization.all_splits``;
the pinned softmax atom is re-gauged), starts with the jitters ``--starts`` names in units of
the sweep's start jitter (0.1): 8 at 1x (the sweep's own kind), 32 at 10x, 24 at 100x (clamped
to the box), 192 starts per data set, each fitted as its own problem and kept. One box for every
start (``box_bounds(..., every_split=True)``). ``summary``: per box and n, the fit kept by the
near-reference kind of start (the best of the 1x starts) and the best of all starts: how often a
second start reaches each, by how much the wider starts go deeper, and both fits' errors.
``atoms``: the same fits again, and per data set every atom of those two fits: its gate mass
over the cube, where it dominates, its ``beta0`` and its expert's distance to G*'s.
"""

from __future__ import annotations

import argparse
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from moe_theory.config import load_config
from moe_theory.data import stable_seed
from moe_theory.estimators import box_bounds, fit_lse, groups_at_bound, starting_measures
from moe_theory.initialization import all_splits, multi_start
from moe_theory.plotting import GATE_COLORS, save_figure, use_style
from moe_theory.population import reference_measure
from moe_theory.rates import fit_rate
from moe_theory.sweep import shard_data
from moe_theory.voronoi import voronoi_loss

CONFIG, SETTING, GATE = "nguyen2024-measurable", "nguyen2024-measurable-relu", "softmax"
LOSSES = ("D1", "err_eta_over", "err_eta_exact")
#: the figure's setting in words
WORDS = "N24's comparison on a truth the data identify (ReLU experts, d = 8, k* = 3, k = 4)"


def _setup():
    config = load_config(CONFIG)
    setting = config.setting(SETTING)
    _, ref = reference_measure(setting, GATE, device="cpu")
    return config, setting, ref


def _fit(config, setting, ref, scale: float, n: int, mix, reps: int, device: str):
    """Every start of every data set at (box, n): the fit of the S * reps problems (start-major)
    and each start's (cell, jitter factor)."""
    k = setting.k_fit
    box = box_bounds(ref, k, scale, gate=GATE, every_split=True)
    X, Y = shard_data(config, setting, n, 0, reps, device)
    init, labels = [], []
    for cell, split in enumerate(all_splits(ref.k, k)):
        for factor, count in mix:
            # count jittered starts (the near-reference one, item 0, is left out: the 1x starts
            # are of its kind), seeded by (cell, jitter) and the start's number
            got = multi_start(ref, k, seed=stable_seed(setting.name, config.seed, n, GATE, cell,
                                                       factor),
                              jitter=config.jitter, extra=count,
                              start_jitter=10 * config.jitter * factor, split=split)[1:]
            init += got
            labels += [(cell, factor)] * len(got)
    S = len(init)
    start = starting_measures(init, reps, GATE, setting.score, setting.expert, k, setting.d,
                              list(range(reps)), device)
    t0 = time.perf_counter()
    fit = fit_lse(X.repeat(S, 1, 1), Y.repeat(S, 1), k, GATE, setting.expert, setting.score,
                  init=start, reference=ref.to(device=device), bounds=box,
                  noise_var=setting.noise_var, max_iter=config.max_iter)
    print(f"box {scale:g}x, n = {n}: {S} starts x {reps} data sets in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    return fit, labels, box


def fit_all(ns, boxes, mix, reps: int, device: str) -> pd.DataFrame:
    config, setting, ref = _setup()
    nu = setting.noise_var
    rows = []
    for scale in boxes:
        for n in ns:
            fit, labels, box = _fit(config, setting, ref, scale, n, mix, reps, device)
            fitted = fit.measure.to(device="cpu")
            losses = {name: voronoi_loss(fitted, ref, name).numpy() for name in LOSSES}
            weights = fitted.weights
            w_min = (weights / weights.sum(-1, keepdim=True)).min(-1).values.numpy()
            faces = groups_at_bound(fitted, box)
            ssr = (fit.fit_loss * n / nu).cpu().numpy()
            ref_ssr = (fit.ref_loss * n / nu).cpu().numpy()
            bound = fit.bound_active.cpu().numpy()
            n_iter = fit.n_iter.cpu().numpy()
            for row in range(len(ssr)):
                cell, factor = labels[row // reps]
                rows.append(dict(box=scale, jf=factor, n=n, rep=row % reps, split=cell,
                                 start=row // reps, ssr_nu=ssr[row], ref_ssr_nu=ref_ssr[row],
                                 **{name: v[row] for name, v in losses.items()},
                                 w_min=w_min[row], bound=bool(bound[row]),
                                 **{f"b_{g}": bool(v[row]) for g, v in faces.items()},
                                 stop=fit.stop_reason[row], n_iter=int(n_iter[row])))
    return pd.DataFrame(rows)


#: inputs drawn to measure where an atom's gate dominates (the data's uniform cube)
REGION_POINTS = 200_000


def atoms(ns, boxes, mix, reps: int, device: str) -> pd.DataFrame:
    """Per (box, n, data set), every atom of two fits: the best of the 1x starts ("near") and
    of all starts ("all"): its gate weight averaged over the cube (``mass``), the share of the
    cube where it has the largest gate weight (``region``), and the distance of its expert
    ``(a, b)`` to the nearest expert of G* (``expert_dist``)."""
    config, setting, ref = _setup()
    gen = torch.Generator().manual_seed(0)
    U = torch.rand(REGION_POINTS, setting.d, generator=gen, dtype=torch.float64) * 2 - 1
    true_experts = ref.expert_params[0]  # (k*, d + 1)
    rows = []
    for scale in boxes:
        for n in ns:
            fit, labels, _ = _fit(config, setting, ref, scale, n, mix, reps, device)
            ssr = fit.fit_loss.cpu().numpy().reshape(-1, reps)
            smallest = min(factor for factor, _ in mix)
            is_near = np.array([factor == smallest for _, factor in labels])
            fitted = fit.measure.to(device="cpu")
            for rep in range(reps):
                for name, pick in (("near", np.where(is_near)[0]), ("all", np.arange(len(labels)))):
                    s = pick[np.argmin(ssr[pick, rep])]
                    one = fitted.select([int(s) * reps + rep])
                    gp, ep = one.gate_params[0], one.expert_params[0]
                    probs = torch.softmax(gp[:, 0] + U @ gp[:, 1:].T, dim=-1)
                    top = probs.argmax(-1)
                    dist = torch.cdist(ep, true_experts).min(-1).values
                    for atom in range(one.k):
                        rows.append(dict(box=scale, n=n, rep=rep, fit=name, atom=atom,
                                         mass=float(probs[:, atom].mean()),
                                         region=float((top == atom).double().mean()),
                                         beta0=float(gp[atom, 0]),
                                         expert_dist=float(dist[atom])))
    return pd.DataFrame(rows)


def kept(table: pd.DataFrame) -> pd.DataFrame:
    """Per (box, n, data set): the best of the 1x starts ("near") and of all starts ("all"),
    with how many starts reach each within one noise variance, and by how much all the starts
    go below the 1x starts' best."""
    rows = []
    for (scale, n, rep), d in table.groupby(["box", "n", "rep"]):
        row = dict(box=scale, n=n, rep=rep)
        for name, part in (("near", d[d.jf == d.jf.min()]), ("all", d)):
            best = part.ssr_nu.idxmin()
            row |= {f"{name}_twice": int((part.ssr_nu <= part.ssr_nu.min() + 1).sum()) >= 2,
                    f"{name}_bound": bool(part.loc[best, "bound"]),
                    f"{name}_conv": part.loc[best, "stop"] == "tolerance",
                    f"{name}_ratio": part.loc[best, "ref_ssr_nu"] - part.loc[best, "ssr_nu"],
                    f"{name}_cell": int(part.loc[best, "split"]),
                    **{f"{name}_{loss}": part.loc[best, loss] for loss in LOSSES}}
        row["deeper"] = row["near_ratio"] - row["all_ratio"]  # negative: all go deeper
        rows.append(row)
    return pd.DataFrame(rows)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    k = kept(table)
    out = k.groupby(["box", "n"]).agg(
        near_twice=("near_twice", "mean"), all_twice=("all_twice", "mean"),
        near_beaten=("deeper", lambda v: float((v < -1).mean())),
        deeper_max=("deeper", lambda v: float(-v.min())),
        near_bound=("near_bound", "mean"), all_bound=("all_bound", "mean"),
        all_conv=("all_conv", "mean"),
        near_err=("near_err_eta_over", "median"), all_err=("all_err_eta_over", "median"),
        near_D1=("near_D1", "median"), all_D1=("all_D1", "median"),
        all_exact=("all_err_eta_exact", "median"),
        all_cells=("all_cell", lambda v: "/".join(str(c) for c in np.bincount(v, minlength=3))))
    return out.reset_index()


def slopes(table: pd.DataFrame) -> pd.DataFrame:
    """Slopes of the per-n mean (bootstrap 95% CI, moe_theory.rates.fit_rate), every fit kept
    (a study of the least-squares estimate over the box: fits on its faces are that estimate)."""
    k = kept(table)
    rows = []
    for scale, d in k.groupby("box"):
        for name in ("near", "all"):
            for loss in ("err_eta_over", "D1"):
                by_n = d.groupby("n")[f"{name}_{loss}"]
                r = fit_rate(list(by_n.groups), [v.to_numpy() for _, v in by_n])
                rows.append(dict(box=scale, starts=name, loss=loss, slope=r.slope,
                                 lo=r.ci_low, hi=r.ci_high))
    return pd.DataFrame(rows)


def figure(table: pd.DataFrame, stem: str) -> list:
    s = summary(table)
    per_fit = ["box", "n", "rep"]
    near = int(table[table.jf == table.jf.min()].groupby(per_fit).size().max())
    every = int(table.groupby(per_fit).size().max())
    color = GATE_COLORS["softmax"]
    with use_style():
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
        for scale, dash in zip(sorted(s.box.unique()), ("-", "--", "-.", ":"), strict=False):
            r = s[s.box == scale].sort_values("n")
            for name, marker, words in (("near", "o", f"best of the {near} starts of the sweep's jitter"),
                                        ("all", "s", f"best of all {every} starts")):
                style = dict(ls=dash, marker=marker, color=color, ms=4,
                             mfc=color if name == "all" else "white",
                             label=f"box {scale:g}x, {words}")
                axes[0].plot(r.n, r[f"{name}_err"], **style)
                axes[1].plot(r.n, r[f"{name}_D1"], **style)
        n = np.array(sorted(s.n.unique()), float)
        first = s[s.n == n[0]].near_err.max()
        axes[0].plot(n, first * (n / n[0]) ** -0.25, color="0.4", lw=0.8, ls=":",
                     label="$n^{-1/4}$ (theory)")
        axes[1].plot(n, s[s.n == n[0]].near_D1.max() * (n / n[0]) ** -0.5, color="0.4", lw=0.8,
                     ls=":", label="$n^{-1/2}$ (theory)")
        axes[0].set(ylabel="over-specified expert error vs $G_*$\n(median over 20 data sets)",
                    title="Over-specified expert error")
        axes[1].set(ylabel="$D_1$ vs $G_*$ (median over 20 data sets)",
                    title="Gate-weighted $D_1$")
        for ax in axes:
            ax.set(xscale="log", yscale="log", xlabel="n")
            ax.legend(fontsize=6.5, loc="best")
        fig.suptitle(f"{WORDS}:\nthe softmax fit from starts in every Voronoi cell, 20 data sets "
                     "per n (a study: no certificates)")
        paths = save_figure(fig, stem)
        plt.close(fig)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("fit", "atoms", "summary"))
    parser.add_argument("table")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", default="10000,40000,160000")
    parser.add_argument("--box", default="1.5,3")
    parser.add_argument("--starts", default="1:8,10:32,100:24",
                        help="jitter factor:count per cell, comma-separated")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--figure", help="STEM of the figure (summary)")
    args = parser.parse_args()
    if args.what in ("fit", "atoms"):
        mix = [(float(f), int(c)) for f, c in (v.split(":") for v in args.starts.split(","))]
        table = (fit_all if args.what == "fit" else atoms)(
            [int(float(v)) for v in args.n.split(",")], [float(v) for v in args.box.split(",")],
            mix, args.reps, args.device)
        table.to_csv(args.table, index=False)
        return
    table = pd.read_csv(args.table)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(summary(table).round(3).to_string(index=False))
        print(slopes(table).round(3).to_string(index=False))
    if args.figure:
        for path in figure(table, args.figure):
            print(path)


if __name__ == "__main__":
    main()
