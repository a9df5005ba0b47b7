"""Which starts reach the over-specified softmax fit's best SSR (paper_figures/README.md,
nguyen2024-measurable, "Why more or other starts do not rescue the ReLU softmax curve").

    python paper_figures/nguyen2024-measurable/starts/starts.py fit N       # per_start.csv rows
    python paper_figures/nguyen2024-measurable/starts/starts.py wide N      # wide_starts.csv rows
    python paper_figures/nguyen2024-measurable/starts/starts.py summary     # the README's table

The sweep's own data, box and start seeds (moe_theory.sweep), replications 0-7 of the ReLU
setting, one single-start fit per start (a batched multi-start fit keeps the best of the same
fits), so that any set of starts can be judged afterwards. ``fit``: the near-reference start and
jittered ones around G* split on atom 0 (the sweep's split, its starts 1-8 those of the sweep),
on atom 1, and on the pinned atom 2 (built by hand: the library splits movable atoms only);
``wide``: 8 starts with jitter 0.3 and 1.0 around the sweep's split. About 3 min per n on 2
CPU cores for ``fit``, 1 min for ``wide``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd
from scipy.stats import spearmanr

from moe_theory.config import load_config
from moe_theory.data import stable_seed
from moe_theory.estimators import box_bounds, fit_lse
from moe_theory.initialization import NearTruth
from moe_theory.measure import MixingMeasure
from moe_theory.population import reference_measure
from moe_theory.store import read_csv
from moe_theory.sweep import reference_split, shard_data
from moe_theory.voronoi import voronoi_loss

HERE = Path(__file__).resolve().parent
REPS = 8
GATE = "softmax"


def _setup(n: int):
    config = load_config("nguyen2024-measurable")
    setting = config.setting("nguyen2024-measurable-relu")
    _, ref = reference_measure(setting, GATE)
    X, Y = shard_data(config, setting, n, 0, REPS)
    box = box_bounds(ref, setting.k_fit, config.bound_scale, gate=GATE,
                     split=reference_split(setting, ref))
    return config, setting, ref, X, Y, box, stable_seed(setting.name, config.seed, n, GATE)


def _fit(setting, config, ref, X, Y, box, start: NearTruth) -> dict:
    fit = fit_lse(X, Y, setting.k_fit, GATE, setting.expert, setting.score, init=[start],
                  reference=ref, bounds=box, noise_var=setting.noise_var,
                  max_iter=config.max_iter, rep_ids=list(range(REPS)))
    return {"ssr": (fit.fit_loss * X.shape[1]).tolist(),
            "ref_ssr": (fit.ref_loss * X.shape[1]).tolist(),
            "err": voronoi_loss(fit.measure, ref, "err_eta_over").tolist(),
            "bound": fit.bound_active.tolist(), "stop": list(fit.stop_reason),
            "n_iter": fit.n_iter.tolist()}


def _pinned_split(ref: MixingMeasure) -> MixingMeasure:
    """G* with its last (pinned) atom in two halves: each copy's weight exp(beta0) halved."""
    gp = ref.gate_params[:, [0, 1, 2, 2]].clone()
    gp[:, 2:, 0] -= math.log(2)
    return MixingMeasure(GATE, ref.score, ref.expert, ref.d, gp,
                         ref.expert_params[:, [0, 1, 2, 2]].clone())


def fit_starts(n: int, extra: int = 5) -> pd.DataFrame:
    config, setting, ref, X, Y, box, seed = _setup(n)
    centres = {0: (ref, reference_split(setting, ref)), 1: (ref, (1,)), 2: (_pinned_split(ref), None)}
    rows = []
    for split, (centre, atoms) in centres.items():
        for j in range(extra + (3 if split == 0 else 0) + 1):
            start = (NearTruth(centre, setting.k_fit, seed, config.jitter, atoms) if j == 0 else
                     NearTruth(centre, setting.k_fit, stable_seed(seed, "start", j),
                               10 * config.jitter, atoms))
            out = _fit(setting, config, ref, X, Y, box, start)
            rows += [{"n": n, "rep": r, "split": split, "start": j,
                      **{k: v[r] for k, v in out.items()}} for r in range(REPS)]
    return pd.DataFrame(rows)


def wide_starts(n: int) -> pd.DataFrame:
    config, setting, ref, X, Y, box, seed = _setup(n)
    rows = []
    for jitter in (0.3, 1.0):
        for j in range(1, 5):
            start = NearTruth(ref, setting.k_fit, stable_seed(seed, "wide", j), jitter, None)
            out = _fit(setting, config, ref, X, Y, box, start)
            rows += [{"n": n, "rep": r, "jit": jitter, "start": j,
                      **{k: out[k][r] for k in ("ssr", "err", "bound", "stop")}}
                     for r in range(REPS)]
    return pd.DataFrame(rows)


#: Sets of starts judged afterwards: (name, rows of per_start.csv it keeps)
VARIANTS = {
    "near-reference + 2 jittered": lambda x: (x.split == 0) & (x.start <= 2),
    "near-reference + 5 jittered": lambda x: (x.split == 0) & (x.start <= 5),
    "near-reference + 8 jittered": lambda x: (x.split == 0) & (x.start <= 8),
    "each of G*'s 3 atoms split, 2 starts each": lambda x: x.start <= 1,
    "all 21": lambda x: x.start >= 0,
}


def summary(per_start: pd.DataFrame, nu: float) -> pd.DataFrame:
    """Per n and set of starts: fits whose kept SSR a second start reaches within nu, the kept
    fits' median error, and their SSR above the best of every start (mean, in nu)."""
    out = []
    for n, d in per_start.groupby("n"):
        oracle = d.groupby("rep").ssr.min()
        for name, keep in VARIANTS.items():
            s = d[keep(d)]
            kept = s.loc[s.groupby("rep").ssr.idxmin()].set_index("rep")
            near = s.groupby("rep").apply(lambda x: int((x.ssr - x.ssr.min() <= nu).sum()))
            out.append({"n": n, "starts": name, "second_start": f"{int((near >= 2).sum())}/"
                        f"{len(near)}", "median_err": round(float(kept.err.median()), 2),
                        "gap_nu": round(float(((kept.ssr - oracle) / nu).mean()), 1)})
    return pd.DataFrame(out)


def main(argv: list[str]) -> None:
    if argv[:1] == ["summary"]:
        nu = load_config("nguyen2024-measurable").setting("nguyen2024-measurable-relu").noise_var
        per_start = read_csv(HERE / "per_start.csv")
        print(summary(per_start, nu).to_string(index=False))
        # deeper minima, larger errors: per fit, the rank correlation over its 21 starts
        rho = per_start.groupby(["n", "rep"]).apply(
            lambda x: spearmanr(x.ssr - x.ssr.min(), x.err).statistic).groupby("n").median()
        print("median Spearman correlation of SSR gap and error:",
              ", ".join(f"{r:.2f} at n = {n}" for n, r in rho.items()))
        # the 8 wide starts beside the 21: how often they go deeper, and the best of all 29
        wide = read_csv(HERE / "wide_starts.csv")
        for n, d in pd.concat([per_start, wide.assign(split=-1)], ignore_index=True).groupby("n"):
            best21 = per_start[per_start.n == n].groupby("rep").ssr.min()
            gap = (best21 - wide[wide.n == n].groupby("rep").ssr.min()) / nu
            kept = d.loc[d.groupby("rep").ssr.idxmin()]
            near = d.groupby("rep").apply(lambda x: int((x.ssr - x.ssr.min() <= nu).sum()))
            print(f"n = {n}: wide starts beat the best of 21 by more than nu in "
                  f"{int((gap > 1).sum())}/{len(gap)} fits (by {gap[gap > 1].min():.0f}-"
                  f"{gap.max():.0f} nu); best of 29: second start {int((near >= 2).sum())}/"
                  f"{len(near)}, median err {kept.err.median():.2f}, on the box "
                  f"{kept.bound.mean():.1%}")
        return
    what, n = argv[0], int(argv[1])
    table, name = (fit_starts(n), "per_start.csv") if what == "fit" else (wide_starts(n),
                                                                          "wide_starts.csv")
    path = HERE / name
    old = read_csv(path) if path.exists() else table.iloc[:0]
    pd.concat([old[old.n != n], table]).to_csv(path, index=False)


if __name__ == "__main__":
    main(sys.argv[1:])
