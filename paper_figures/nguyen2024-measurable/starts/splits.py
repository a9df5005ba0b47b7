"""The softmax fit of nguyen2024-measurable-relu from starts in every Voronoi cell: which
minimum is the least-squares estimate over the box, and does its over-specified error fall with
n (paper_figures/README.md, nguyen2024-measurable, "Starts in every cell")?

    python paper_figures/nguyen2024-measurable/starts/splits.py fit OUT.csv [--device cuda]
        [--n 10000,40000,160000] [--box 1.5,3] [--starts 1:8,10:32,100:24] [--reps 20]
    python paper_figures/nguyen2024-measurable/starts/splits.py atoms OUT.csv [same options]
    (``fit`` with ``--atoms ATOMS.csv`` writes both tables from one set of fits; ``--block B``
    fits B starts at a time, where all of them at once do not fit in memory)
    python paper_figures/nguyen2024-measurable/starts/splits.py summary OUT.csv [--figure STEM]
    (``--setting`` fits another setting of the config, ``--nu`` replaces its noise variance:
    the same data sets' inputs and noise draws, rescaled)

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
import dataclasses
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
from moe_theory.store import read_csv
from moe_theory.sweep import shard_data
from moe_theory.voronoi import voronoi_loss

CONFIG, SETTING, GATE = "nguyen2024-measurable", "nguyen2024-measurable-relu", "softmax"
LOSSES = ("D1", "err_eta_over", "err_eta_exact")
#: the figure's setting in words
WORDS = "N24's comparison on a truth the data identify (ReLU experts, d = 8, k* = 3, k = 4)"


def _setup(name: str = SETTING, nu: float | None = None):
    config = load_config(CONFIG)
    setting = config.setting(name)
    if nu is not None:
        setting = dataclasses.replace(setting, noise_var=nu)
    _, ref = reference_measure(setting, GATE, device="cpu")
    return config, setting, ref


def _fit(config, setting, ref, scale: float, n: int, mix, reps: int, device: str,
         block: int | None = None) -> dict:
    """Every start of every data set at (box, n), in batches of at most ``block`` starts (all at
    once by default): per problem (start-major, row ``s * reps + r``) its SSR and reference
    SSR in noise variances, box, stop and iterations, the fitted measures (on the CPU), each
    start's (cell, jitter factor), and the box."""
    k, nu = setting.k_fit, setting.noise_var
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
    block = block or len(init)
    parts = []
    t0 = time.perf_counter()
    for first in range(0, len(init), block):
        chunk = init[first:first + block]
        S = len(chunk)
        start = starting_measures(chunk, reps, GATE, setting.score, setting.expert, k, setting.d,
                                  list(range(reps)), device)
        parts.append(fit_lse(X.repeat(S, 1, 1), Y.repeat(S, 1), k, GATE, setting.expert,
                             setting.score, init=start, reference=ref.to(device=device),
                             bounds=box, noise_var=nu, max_iter=config.max_iter))
    print(f"box {scale:g}x, n = {n}: {len(init)} starts x {reps} data sets in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    measures = [f.measure.to(device="cpu") for f in parts]
    return dict(
        ssr=np.concatenate([(f.fit_loss * n / nu).cpu().numpy() for f in parts]),
        ref_ssr=np.concatenate([(f.ref_loss * n / nu).cpu().numpy() for f in parts]),
        bound=np.concatenate([f.bound_active.cpu().numpy() for f in parts]),
        n_iter=np.concatenate([f.n_iter.cpu().numpy() for f in parts]),
        stop=[reason for f in parts for reason in f.stop_reason],
        measure=measures[0].replace(torch.cat([m.gate_params for m in measures]),
                                    torch.cat([m.expert_params for m in measures])),
        labels=labels, box=box)


def _start_rows(fit: dict, ref, scale: float, n: int, reps: int) -> list[dict]:
    fitted = fit["measure"]
    losses = {name: voronoi_loss(fitted, ref, name).numpy() for name in LOSSES}
    weights = fitted.weights
    w_min = (weights / weights.sum(-1, keepdim=True)).min(-1).values.numpy()
    faces = groups_at_bound(fitted, fit["box"])
    rows = []
    for row in range(len(fit["ssr"])):
        cell, factor = fit["labels"][row // reps]
        rows.append(dict(box=scale, jf=factor, n=n, rep=row % reps, split=cell,
                         start=row // reps, ssr_nu=fit["ssr"][row],
                         ref_ssr_nu=fit["ref_ssr"][row],
                         **{name: v[row] for name, v in losses.items()},
                         w_min=w_min[row], bound=bool(fit["bound"][row]),
                         **{f"b_{g}": bool(v[row]) for g, v in faces.items()},
                         stop=fit["stop"][row], n_iter=int(fit["n_iter"][row])))
    return rows


#: inputs drawn to measure where an atom's gate dominates (the data's uniform cube)
REGION_POINTS = 200_000


def _atom_rows(fit: dict, ref, scale: float, n: int, reps: int, U) -> list[dict]:
    """Every atom of two fits per data set: the best of the 1x starts ("near") and of all
    starts ("all"): its gate weight averaged over the cube (``mass``), the share of the cube
    where it has the largest gate weight (``region``), its ``beta0`` and the distance of its
    expert ``(a, b)`` to the nearest expert of G* (``expert_dist``)."""
    ssr = fit["ssr"].reshape(-1, reps)
    factors = np.array([factor for _, factor in fit["labels"]])
    is_near = factors == factors.min()  # as kept(): the starts of the smallest jitter
    true_experts = ref.expert_params[0]  # (k*, d + 1)
    rows = []
    for rep in range(reps):
        for name, pick in (("near", np.where(is_near)[0]), ("all", np.arange(len(is_near)))):
            s = pick[np.argmin(ssr[pick, rep])]
            one = fit["measure"].select([int(s) * reps + rep])
            gp, ep = one.gate_params[0], one.expert_params[0]
            probs = torch.softmax(gp[:, 0] + U @ gp[:, 1:].T, dim=-1)
            top = probs.argmax(-1)
            dist = torch.cdist(ep, true_experts).min(-1).values
            for atom in range(one.k):
                rows.append(dict(box=scale, n=n, rep=rep, fit=name, atom=atom,
                                 mass=float(probs[:, atom].mean()),
                                 region=float((top == atom).double().mean()),
                                 beta0=float(gp[atom, 0]), expert_dist=float(dist[atom])))
    return rows


def fit_all(ns, boxes, mix, reps: int, device: str, block: int | None = None,
            name: str = SETTING, nu: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every start's row (``fit``'s table) and the two kept fits' atoms (``atoms``' table), of
    setting ``name`` (its noise variance replaced by ``nu`` if given)."""
    config, setting, ref = _setup(name, nu)
    gen = torch.Generator().manual_seed(0)
    U = torch.rand(REGION_POINTS, setting.d, generator=gen, dtype=torch.float64) * 2 - 1
    starts, atoms = [], []
    for scale in boxes:
        for n in ns:
            fit = _fit(config, setting, ref, scale, n, mix, reps, device, block)
            starts += _start_rows(fit, ref, scale, n, reps)
            atoms += _atom_rows(fit, ref, scale, n, reps, U)
    return pd.DataFrame(starts), pd.DataFrame(atoms)


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
    parser.add_argument("--block", type=int, help="starts fitted at once (default all)")
    parser.add_argument("--atoms", help="fit: also write the atoms table here")
    parser.add_argument("--figure", help="STEM of the figure (summary)")
    parser.add_argument("--setting", default=SETTING, help=f"setting of {CONFIG} (default %(default)s)")
    parser.add_argument("--nu", type=float, help="noise variance (default the setting's)")
    args = parser.parse_args()
    if args.what in ("fit", "atoms"):
        mix = [(float(f), int(c)) for f, c in (v.split(":") for v in args.starts.split(","))]
        starts, atoms = fit_all([int(float(v)) for v in args.n.split(",")],
                                [float(v) for v in args.box.split(",")], mix, args.reps,
                                args.device, args.block, args.setting, args.nu)
        (starts if args.what == "fit" else atoms).to_csv(args.table, index=False)
        if args.atoms:
            atoms.to_csv(args.atoms, index=False)
        return
    table = read_csv(args.table)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(summary(table).round(3).to_string(index=False))
        print("slopes of the per-n mean, every fit kept (bootstrap 95% CI): a study of starts, "
              "no certificates, so no verdict (docs/theory.md#certificates)")
        print(slopes(table).round(3).to_string(index=False))
    if args.figure:
        for path in figure(table, args.figure):
            print(path)


if __name__ == "__main__":
    main()
