"""The regularity study behind ``paper_figures/attention-regularity`` (R25;
docs/theory.md#regularity): local Lipschitz constants of single-head attention
(:mod:`moe_theory.regularity`) against the sequence length N at a fixed token norm R, and
against R at a fixed N, for three variants, with the sigmoid bound alongside; the growth table
holds the slopes in N and R.
"""

from __future__ import annotations

import functools
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter

from moe_theory.plotting import PNG_DPI, use_style
from moe_theory.rates import fit_rate
from moe_theory.regularity import local_lipschitz, sigmoid_local_bound
from moe_theory.studies import StudyOutput

#: Bias of each attention variant drawn: R25's sigmoid bias -log N, the unnormalised sigmoid
#: (b = 0, whose row sums grow with N) and softmax (where a bias cancels).
VARIANTS = (("sigmoid", "-log N"), ("sigmoid", "0"), ("softmax", "-"))
VARIANT_COLORS = {("sigmoid", "-log N"): "#0072b2", ("sigmoid", "0"): "#56b4e9",
                  ("softmax", "-"): "#d55e00"}


def _bias(kind: str, N: int) -> float:
    return -math.log(N) if kind == "-log N" else 0.0


@dataclass(frozen=True)
class RegularityStudy:
    """Grid of the regularity figure: sequence lengths at ``radius_for_n``, radii at ``n_for_radius``.

    Tokens are ``radius * u`` with ``u`` uniform on the unit sphere; ``W_Q, W_K, W_V`` have
    ``N(0, 1/d)`` entries (drawn once), so that projections keep token norms on average.
    """

    d: int = 16
    seq_lens: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024)
    radii: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    radius_for_n: float = 2.0
    n_for_radius: int = 64
    sequences: int = 8
    seed: int = 2025
    iters: int = 200


FAST_STUDY = RegularityStudy(d=8, seq_lens=(4, 8, 16, 32, 64, 128), radii=(0.5, 1.0, 2.0, 4.0),
                             n_for_radius=32, sequences=4, iters=100)
FULL_STUDY = RegularityStudy()


def _tokens(study: RegularityStudy, N: int, radius: float, device: str) -> torch.Tensor:
    rng = np.random.default_rng([study.seed, N, int(round(radius * 1000))])
    u = rng.standard_normal((study.sequences, N, study.d))
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    return torch.as_tensor(radius * u, dtype=torch.float64, device=device)


def run_study(study: RegularityStudy, *, device: str = "cpu") -> pd.DataFrame:
    """Local Lipschitz constants (and the sigmoid bound) over the study's grid: a tidy table."""
    rng = np.random.default_rng(study.seed)
    W_Q, W_K, W_V = (torch.as_tensor(rng.standard_normal((study.d, study.d)) / math.sqrt(study.d),
                                     device=device) for _ in range(3))
    grid = [("seq_len", N, study.radius_for_n) for N in study.seq_lens]
    grid += [("radius", study.n_for_radius, r) for r in study.radii]
    rows = []
    for sweep, N, radius in grid:
        X = _tokens(study, N, radius, device)
        for gate, bias_kind in VARIANTS:
            bias = _bias(bias_kind, N)
            lip = local_lipschitz(X, W_Q, W_K, W_V, gate=gate, bias=bias, iters=study.iters)
            bound = (sigmoid_local_bound(X, W_Q, W_K, W_V, bias=bias) if gate == "sigmoid"
                     else torch.full_like(lip, float("nan")))
            for s in range(study.sequences):
                rows.append({"sweep": sweep, "gate": gate, "bias": bias_kind, "seq_len": N,
                             "radius": radius, "sequence": s, "lipschitz": float(lip[s]),
                             "bound": float(bound[s]), "device": device})
    return pd.DataFrame(rows)


#: What the growth table is, above it: its slopes are no estimator's rates, and carry no verdict.
GROWTH_HEADER = ("growth of local Lipschitz constants at random inputs (a study, not an "
                 "estimator's loss curve: no certificates, no verdict); slope: OLS of log(mean over "
                 "sequences) on log N or log R, with its 95% CI")


def growth_table(df: pd.DataFrame) -> pd.DataFrame:
    """OLS slope of log(mean local Lipschitz constant) on log N and on log R, per variant, with
    the share of points under the sigmoid bound."""
    rows = []
    for (gate, bias), sub in df.groupby(["gate", "bias"], sort=False):
        row = {"gate": gate, "bias": bias}
        for sweep, x in (("seq_len", "seq_len"), ("radius", "radius")):
            part = sub[sub.sweep == sweep]
            groups = part.groupby(x)["lipschitz"]
            fit = fit_rate(np.asarray(list(groups.groups), dtype=float),
                           [g.to_numpy() for _, g in groups], n_boot=500)
            row.update({f"slope_vs_{x}": fit.slope, f"ci_low_{x}": fit.ci_low,
                        f"ci_high_{x}": fit.ci_high})
        under = sub.lipschitz <= sub.bound * (1 + 1e-9)
        row["share_under_bound"] = float(under.mean()) if gate == "sigmoid" else float("nan")
        row["max_lipschitz"] = float(sub.lipschitz.max())
        rows.append(row)
    return pd.DataFrame(rows)


def caption(study: RegularityStudy, table: pd.DataFrame) -> str:
    """The figure's caption: R25's bound (as reconstructed), and what the data show beside it:
    the share of sigmoid points under the local bound and the growth slopes with their CIs (a
    study's reading, no verdict)."""
    by = {(r.gate, r.bias): r for r in table.itertuples()}
    sig, sig0, soft = by[("sigmoid", "-log N")], by[("sigmoid", "0")], by[("softmax", "-")]
    under = min(sig.share_under_bound, sig0.share_under_bound)

    def growth(r, x: str, symbol: str) -> str:
        # the slope with its 95% CI: the caption reads the data, it gives no verdict
        return (f"{symbol}^{getattr(r, f'slope_vs_{x}'):+.2f} [{getattr(r, f'ci_low_{x}'):+.2f}, "
                f"{getattr(r, f'ci_high_{x}'):+.2f}]")

    return (
        f"R25 bound (reconstruction): for tokens of norm <= R the Lipschitz constant of sigmoid "
        f"attention is at most of order ||W_V|| N (1 + ||W_Q W_K^T|| R^2): linear in N for a fixed "
        f"bias, quadratic in R. Dashed: the local bound ||W_V||(||S|| + ||A|| R^2 (max row sum S' + "
        f"||S'||)) derived the same way.\nA study of local constants at random inputs, not an "
        f"estimator's loss curve (no certificates, no verdict): {under:.0%} of the sigmoid points "
        f"lie under the local bound; growth in N at R = {study.radius_for_n:g} (95% CI): sigmoid "
        f"b = -log N {growth(sig, 'seq_len', 'N')}, sigmoid b = 0 {growth(sig0, 'seq_len', 'N')}, "
        f"softmax {growth(soft, 'seq_len', 'N')}; growth in R at N = {study.n_for_radius}: "
        f"{growth(sig, 'radius', 'R')}, {growth(sig0, 'radius', 'R')}, "
        f"{growth(soft, 'radius', 'R')}. Local constants (mean and range over "
        f"{study.sequences} sequences) bound the Lipschitz constant from below."
    )


def plot(df: pd.DataFrame, study: RegularityStudy, table: pd.DataFrame, path_stem: Path
         ) -> list[Path]:
    """Two log-log panels: against N at fixed R, against R at fixed N; caption underneath."""
    text = "\n".join(textwrap.fill(part, 160) for part in caption(study, table).split("\n"))
    with use_style():
        fig = Figure(figsize=(7.0, 3.6))
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 2)
        for ax, (sweep, x, label) in zip(axes, (
                ("seq_len", "seq_len", f"sequence length N (R = {study.radius_for_n:g})"),
                ("radius", "radius", f"token norm R (N = {study.n_for_radius})")), strict=True):
            part = df[df.sweep == sweep]
            for (gate, bias), color in VARIANT_COLORS.items():
                sub = part[(part.gate == gate) & (part.bias == bias)].groupby(x)
                mean, lo, hi = sub.lipschitz.mean(), sub.lipschitz.min(), sub.lipschitz.max()
                name = gate if gate == "softmax" else f"{gate}, b = {bias}"
                ax.errorbar(mean.index, mean, yerr=[mean - lo, hi - mean], color=color, marker="o",
                            ms=3, label=name)
                if gate == "sigmoid":
                    ax.plot(mean.index, sub.bound.mean(), color=color, ls=(0, (3, 2)), lw=0.8)
            ax.set_xscale("log")
            ax.set_yscale("log")
            # label the grid's own values: log-axis minor labels overlap at these ranges
            values = sorted(part[x].unique())
            ax.set_xticks(values, [f"{v:g}" for v in values], minor=False)
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(label)
            ax.set_ylabel("local Lipschitz constant")
        handles, _ = axes[0].get_legend_handles_labels()
        handles.append(Line2D([], [], color="0.4", lw=0.8, ls=(0, (3, 2)),
                              label="sigmoid bound (local)"))
        axes[0].legend(handles=handles, loc="upper left")
        fig.suptitle("Regularity of single-head attention (R25)")
        fig.text(0.01, 0.0, text, fontsize=5.5, va="bottom", ha="left")
        fig.get_layout_engine().set(rect=(0, 0.17, 1, 0.83))
        path_stem.parent.mkdir(parents=True, exist_ok=True)
        paths = [path_stem.with_suffix(".png"), path_stem.with_suffix(".pdf")]
        fig.savefig(paths[0], dpi=PNG_DPI)
        fig.savefig(paths[1], metadata={"CreationDate": None})
    return paths


def run(*, fast: bool = False, device: str = "cpu") -> StudyOutput:
    """Run the study (``FAST_STUDY`` or ``FULL_STUDY``): local constants, the growth table
    (slopes in N and R, share under the bound) and figure ``attention-regularity``."""
    study = FAST_STUDY if fast else FULL_STUDY
    df = run_study(study, device=device)
    table = growth_table(df)
    return StudyOutput(results=df, table=table, table_name="growth",
                       text=GROWTH_HEADER + "\n" + table.to_string(
                           index=False, float_format=lambda v: f"{v:.3g}"),
                       draw=functools.partial(plot, df, study, table))
