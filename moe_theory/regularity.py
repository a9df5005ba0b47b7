"""Regularity of attention (R25; docs/theory.md#regularity): the local Lipschitz constant of ``X -> Attn(X)``.

The local Lipschitz constant at a sequence ``X`` (N tokens of dimension d) is the spectral norm of
the Jacobian of the map, estimated by power iteration on ``J^T J`` with forward- and reverse-mode
products (:func:`torch.func.jvp`, :func:`torch.func.vjp`) through the attention kernels' dense
float64 reference. A local constant at random inputs is a lower bound for the Lipschitz constant
over a ball of inputs, never an upper one.

What R25 (Ramapuram et al., ICLR 2025) bound, as far as we reconstruct it (the body of the paper
was not available): for tokens of norm at most ``R``, the Lipschitz constant of sigmoid attention
is bounded by a quantity polynomial in ``R`` (through ``sigma' <= 1/4``) that grows with the
sequence length N, linearly for a fixed bias; softmax attention's known bounds grow faster in
``R``. :func:`sigmoid_local_bound` is a bound of that form that we derive here (docstring), so
that the data can be checked against a bound that certainly holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from moe_theory import models
from moe_theory.attention_moe import check_projections
from moe_theory.validation import check_finite, check_positive_int

#: Bias of each attention variant drawn: R25's sigmoid bias -log N, the unnormalised sigmoid
#: (b = 0, whose row sums grow with N) and softmax (where a bias cancels).
VARIANTS = (("sigmoid", "-log N"), ("sigmoid", "0"), ("softmax", "-"))
VARIANT_COLORS = {("sigmoid", "-log N"): "#0072b2", ("sigmoid", "0"): "#56b4e9",
                  ("softmax", "-"): "#d55e00"}


def _bias(kind: str, N: int) -> float:
    return -math.log(N) if kind == "-log N" else 0.0


def attention_map(X: torch.Tensor, W_Q: torch.Tensor, W_K: torch.Tensor, W_V: torch.Tensor, *,
                  gate: str, bias: float, scale: float) -> torch.Tensor:
    """Single-head attention of a batch of sequences, ``X: (B, N, d) -> (B, N, D)``.

    ``W_V`` is zero-padded to the head dimension D of ``W_Q`` when narrower.
    """
    from kernels.attention.torch_attention import sigmoid_attention_reference

    D = W_Q.shape[1]
    V = torch.nn.functional.pad(W_V, (0, D - W_V.shape[1]))
    q, k, v = ((X @ W)[:, None] for W in (W_Q, W_K, V))
    return sigmoid_attention_reference(q, k, v, bias=bias, scale=scale, gate=gate)[:, 0]


def local_lipschitz(X: torch.Tensor, W_Q: torch.Tensor, W_K: torch.Tensor, W_V: torch.Tensor, *,
                    gate: str = "sigmoid", bias: float | None = None, scale: float | None = None,
                    iters: int = 200, rtol: float = 1e-7, seed: int = 0) -> torch.Tensor:
    """Spectral norm of the Jacobian of attention at each sequence, by power iteration.

    Parameters
    ----------
    X : (B, N, d) sequences (the Jacobian of the batched map is block-diagonal, so the B power
        iterations run side by side, each normalised on its own)
    W_Q, W_K : (d, D), W_V : (d, D_v)
    gate : ``sigmoid`` or ``softmax``
    bias : logit bias, ``-log N`` when None; scale : ``1/sqrt(D)`` when None
    iters : at most this many products with ``J^T J``
    rtol : stop once every Rayleigh quotient changes by less than this, relatively

    Returns
    -------
    (B,) local Lipschitz constants (Euclidean norms on ``vec(X)`` and ``vec(Attn(X))``)
    """
    models.check_gate(gate)
    _, D = check_projections(W_Q, W_K, W_V)
    if not isinstance(X, torch.Tensor) or X.dim() != 3 or X.shape[1] < 1:
        shape = tuple(X.shape) if isinstance(X, torch.Tensor) else type(X).__name__
        raise ValueError(f"X: must have shape (B, N, d) with N >= 1, got {shape}")
    check_finite("X", X)
    iters = check_positive_int("iters", iters)
    N = X.shape[1]
    bias = -math.log(N) if bias is None else float(bias)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)

    def f(Z: torch.Tensor) -> torch.Tensor:
        return attention_map(Z, W_Q, W_K, W_V, gate=gate, bias=bias, scale=scale)

    _, vjp = torch.func.vjp(f, X)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(X.shape, generator=gen, dtype=X.dtype).to(X.device)
    v = v / v.flatten(1).norm(dim=1).view(-1, 1, 1)
    rayleigh = torch.zeros(X.shape[0], dtype=X.dtype, device=X.device)
    for _ in range(iters):
        _, Jv = torch.func.jvp(f, (X,), (v,))
        (JtJv,) = vjp(Jv)
        new = (v * JtJv).flatten(1).sum(1)
        v = JtJv / JtJv.flatten(1).norm(dim=1).clamp_min(torch.finfo(X.dtype).tiny).view(-1, 1, 1)
        done = bool(((new - rayleigh).abs() <= rtol * new.abs()).all())
        rayleigh = new
        if done:
            break
    return rayleigh.clamp_min(0).sqrt()


def sigmoid_local_bound(X: torch.Tensor, W_Q: torch.Tensor, W_K: torch.Tensor,
                        W_V: torch.Tensor, *, bias: float, scale: float | None = None
                        ) -> torch.Tensor:
    """An upper bound on the local Lipschitz constant of sigmoid attention at each sequence.

    With ``A = scale W_Q W_K^T``, ``S = sigma(X A X^T + b)``, ``S' = sigma'(X A X^T + b)`` and
    ``R = max_i ||x_i||``, differentiating ``o_i = sum_j S_ij W_V^T x_j`` along ``H`` gives
    ``||do_i|| <= ||W_V|| (sum_j S_ij ||h_j|| + ||A|| R^2 (||h_i|| sum_j S'_ij + sum_j S'_ij ||h_j||))``
    and, since S and S' are entrywise non-negative,

        ``L(X) <= ||W_V|| (||S|| + ||A|| R^2 (max_i sum_j S'_ij + ||S'||))`` (spectral norms).

    Over a ball (``S <= sigma(||A|| R^2 + b)``, ``S' <= 1/4``) this is at most
    ``||W_V|| N (sigma(||A|| R^2 + b) + ||A|| R^2 / 2)``: linear in N for a fixed bias and
    quadratic in R, the shape of R25's bound (reconstruction). With ``b = -log N`` the weights
    are ``O(1/N)`` and the local bound stays bounded in N.

    Parameters
    ----------
    X : (B, N, d); W_Q, W_K : (d, D); W_V : (d, D_v)

    Returns
    -------
    (B,)
    """
    _, D = check_projections(W_Q, W_K, W_V)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    A = scale * W_Q @ W_K.T
    logits = X @ A @ X.transpose(1, 2) + bias
    S = torch.sigmoid(logits)
    S_prime = S * (1 - S)
    R = X.norm(dim=-1).amax(-1)
    spectral = torch.linalg.matrix_norm
    return spectral(W_V, ord=2) * (
        spectral(S, ord=2) + spectral(A, ord=2) * R**2
        * (S_prime.sum(-1).amax(-1) + spectral(S_prime, ord=2)))


# ---- the study behind paper_figures/attention-regularity ----------------------------------------

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


def growth_table(df: pd.DataFrame) -> pd.DataFrame:
    """OLS slope of log(mean local Lipschitz constant) on log N and on log R, per variant, with
    the share of points under the sigmoid bound."""
    from moe_theory.rates import fit_rate

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
    """The figure's caption: R25's bound (as reconstructed) and whether the data agrees."""
    by = {(r.gate, r.bias): r for r in table.itertuples()}
    sig, sig0, soft = by[("sigmoid", "-log N")], by[("sigmoid", "0")], by[("softmax", "-")]
    under = min(sig.share_under_bound, sig0.share_under_bound)
    agree = "agrees" if under == 1.0 and sig0.slope_vs_seq_len <= 1.0 + 0.05 else "does not agree"
    return (
        f"R25 bound (reconstruction): for tokens of norm <= R the Lipschitz constant of sigmoid "
        f"attention is at most of order ||W_V|| N (1 + ||W_Q W_K^T|| R^2): linear in N for a fixed "
        f"bias, quadratic in R. Dashed: the local bound ||W_V||(||S|| + ||A|| R^2 (max row sum S' + "
        f"||S'||)) derived the same way.\nData {agree}: {under:.0%} of the sigmoid points lie under "
        f"it; growth in N at R = {study.radius_for_n:g}: sigmoid b = -log N "
        f"N^{sig.slope_vs_seq_len:+.2f}, sigmoid b = 0 N^{sig0.slope_vs_seq_len:+.2f}, softmax "
        f"N^{soft.slope_vs_seq_len:+.2f}; growth in R at N = {study.n_for_radius}: "
        f"R^{sig.slope_vs_radius:+.2f}, R^{sig0.slope_vs_radius:+.2f}, "
        f"R^{soft.slope_vs_radius:+.2f}. Local constants at random inputs (mean and range over "
        f"{study.sequences} sequences) bound the Lipschitz constant from below."
    )


def plot(df: pd.DataFrame, study: RegularityStudy, table: pd.DataFrame, path_stem: Path
         ) -> list[Path]:
    """Two log-log panels: against N at fixed R, against R at fixed N; caption underneath."""
    import textwrap

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    from moe_theory.plotting import PNG_DPI, use_style

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
        from matplotlib.lines import Line2D

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


def reproduce(out: str | Path, *, fast: bool = False, device: str = "cpu") -> pd.DataFrame:
    """Run the study and write ``attention-regularity.png/.pdf``, ``results.csv`` and
    ``growth.csv`` (slopes in N and R, share under the bound) to ``out``."""
    from moe_theory.sweep import atomic_write

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but no CUDA device is available")
    out = Path(out)
    study = FAST_STUDY if fast else FULL_STUDY
    df = run_study(study, device=device)
    table = growth_table(df)
    atomic_write(out / "results.csv", lambda tmp: df.to_csv(tmp, index=False))
    atomic_write(out / "growth.csv", lambda tmp: table.to_csv(tmp, index=False))
    plot(df, study, table, out / "attention-regularity")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    return table
