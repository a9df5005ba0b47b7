"""Log-log figures of loss curves: replication means, fitted rates and theory guides.

Every figure of the project goes through :func:`use_style` (the packaged ``moe_theory.mplstyle``)
and is drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas: nothing is
registered with pyplot, so no display is needed and no figure is left open.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from moe_theory.rates import (
    RateFit,
    TheoryLookup,
    check_columns,
    curve_rate,
    fit_rate,
    resolve_theory,
    usable,
    values_by_n,
)

STYLE_FILE = "moe_theory.mplstyle"

# The first two colours of the style's cycle (Okabe-Ito blue and vermillion), fixed per gate so
# that sigmoid and softmax read the same in every figure.
GATE_COLORS = {"sigmoid": "#0072b2", "softmax": "#d55e00"}
# Gates without a fixed colour take the rest of the cycle, in order of appearance.
OTHER_COLORS = ("#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000")
# Curves sharing a gate in one axes are told apart by marker; the first is filled, later ones
# open.
MARKERS = ("o", "s", "^", "D", "v", "P")
THEORY_LINESTYLE = (0, (3, 2))

# mean - 2 sd is negative whenever the spread exceeds half the mean (common at small n); on a
# log axis the bar would then run off the plot, so its lower end stops one decade below the mean.
ERRORBAR_FLOOR = 0.1

# Room kept between the legend and the data (fraction of the axes height; constrained layout may
# still resize the axes a little after the legend is measured), and the tallest legend worth
# making room for: beyond it the data would be squeezed into too little of the axes.
LEGEND_PAD = 0.05
LEGEND_MAX_HEIGHT = 0.6

PNG_DPI = 200
# One panel of a multi-panel figure: three side by side fill a two-column page (~7 in).
PANEL_SIZE_IN = (2.3, 2.0)

PLOT_COLUMNS = ("setting", "fit_gate", "loss_name", "score", "regime", "expert", "n", "loss_value")

Curve = tuple[str, str] | tuple[str, str, str]
Panel = tuple[str, str, Sequence[Curve]]


@contextmanager
def use_style() -> Iterator[None]:
    """Apply the project style (packaged ``moe_theory.mplstyle``) within a ``with`` block."""
    style = resources.files("moe_theory") / STYLE_FILE
    with resources.as_file(style) as path, matplotlib.style.context(str(path)):
        yield


def _parse_curve(curve: Curve) -> tuple[str, str, str]:
    if not isinstance(curve, tuple | list) or len(curve) not in (2, 3):
        raise ValueError(
            f"curves: each entry must be (fit_gate, loss_name) or (fit_gate, loss_name, label), "
            f"got {curve!r}"
        )
    gate, loss = curve[0], curve[1]
    return gate, loss, curve[2] if len(curve) == 3 else f"{gate} {loss}"


def _ylabel(loss_names: Sequence[str]) -> str:
    # D1, D2(r), D3 are the Voronoi losses (docs/theory.md#voronoi-losses); err_<group>_<cell> the
    # per-parameter errors.
    if all(re.fullmatch(r"D[123].*", name) for name in loss_names):
        return "Voronoi loss"
    if all(name.startswith("err_") for name in loss_names):
        return "parameter error"
    return "loss"


def _rate_label(label: str, fit: RateFit) -> str:
    if math.isnan(fit.slope):
        return f"{label}: no rate (< 2 sample sizes)"
    half_width = (fit.ci_high - fit.ci_low) / 2
    return rf"{label}: $n^{{{fit.slope:.2f} \pm {half_width:.2f}}}$"


def draw_rates(
    ax: Axes,
    df: pd.DataFrame,
    curves: Sequence[Curve],
    *,
    theory: TheoryLookup | None = None,
    ylabel: str | None = None,
) -> list[RateFit]:
    """Draw loss curves of one setting on log-log axes.

    Per curve: the mean over replications at each n (markers), error bars of mean ± 2 sd, the
    fitted OLS power law (solid) and, where the theory gives an exponent, a dashed guide of
    that exponent through the curve's first point. Non-positive and non-finite losses are left
    out, as in :func:`moe_theory.rates.fit_rate`.

    Parameters
    ----------
    ax : axes to draw on.
    df : tidy results table (docs/theory.md#results-table) of a single setting.
    curves : ``(fit_gate, loss_name)`` or ``(fit_gate, loss_name, label)`` entries; the label
        defaults to ``"{fit_gate} {loss_name}"``.
    theory : ``(fit_gate, score, regime, expert, loss_name) -> obj`` with ``exponent``; defaults
        to ``moe_theory.theory.predicted_rate``.
    ylabel : y-axis label; defaults to "Voronoi loss" when every loss is D1, D2(r) or D3,
        "parameter error" when every one is an ``err_*`` error, else "loss".

    Returns
    -------
    list of RateFit
        The fit of each curve, in the order of ``curves``.
    """
    check_columns(df, PLOT_COLUMNS)
    settings = df["setting"].unique()
    if len(settings) != 1:
        raise ValueError(f"setting: draw one setting per axes, got {sorted(map(str, settings))}")
    if not curves:
        raise ValueError("curves: give at least one (fit_gate, loss_name) pair")
    lookup = resolve_theory(theory)
    parsed = [_parse_curve(c) for c in curves]
    handles: list[Line2D] = []
    fits: list[RateFit] = []
    gate_seen: dict[str, int] = {}
    other_gates: list[str] = []
    any_theory = False
    for gate, loss, label in parsed:
        curve = df[(df["fit_gate"] == gate) & (df["loss_name"] == loss)]
        if curve.empty:
            raise ValueError(
                f"curves: no rows for fit_gate={gate!r}, loss_name={loss!r} in setting "
                f"{settings[0]!r}"
            )
        if gate not in GATE_COLORS and gate not in other_gates:
            other_gates.append(gate)
        color = GATE_COLORS.get(gate) or OTHER_COLORS[other_gates.index(gate) % len(OTHER_COLORS)]
        nth = gate_seen[gate] = gate_seen.get(gate, -1) + 1
        marker = MARKERS[nth % len(MARKERS)]
        face = color if nth == 0 else "white"

        n_all, values = values_by_n(curve)
        fit = fit_rate(n_all, values)
        fits.append(fit)
        kept = [usable(v) for v in values]
        has_data = np.array([v.size > 0 for v in kept])
        n = n_all[has_data]
        kept = [v for v in kept if v.size > 0]
        mean = np.array([v.mean() for v in kept])
        sd = np.array([v.std(ddof=1) if v.size > 1 else 0.0 for v in kept])
        lower = np.maximum(mean - 2 * sd, ERRORBAR_FLOOR * mean)
        bars = ax.errorbar(
            n,
            mean,
            yerr=[mean - lower, 2 * sd],
            fmt=marker,
            color=color,
            mfc=face,
            elinewidth=0.5,
            capthick=0.5,
            zorder=3,
        )
        # Lighter bars keep the means and the fitted lines, which carry the rate, in front.
        for artist in (*bars[1], *bars[2]):
            artist.set_alpha(0.55)
        ends = n[[0, -1]]
        if not math.isnan(fit.slope):
            ax.plot(ends, np.exp(fit.intercept) * ends**fit.slope, color=color, zorder=2)
        name = (settings[0], gate, loss)
        rate = curve_rate(lookup, curve, name, loss)
        if rate.exponent is not None and not math.isnan(rate.exponent):
            any_theory = True
            guide = mean[0] * (ends / n[0]) ** rate.exponent
            ax.plot(ends, guide, color=color, lw=0.8, ls=THEORY_LINESTYLE, alpha=0.8, zorder=1)
        handles.append(
            Line2D([], [], color=color, marker=marker, mfc=face, label=_rate_label(label, fit))
        )
    if any_theory:
        handles.append(Line2D([], [], color="0.4", lw=0.8, ls=THEORY_LINESTYLE, label="theory"))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(r"sample size $n$")
    ax.set_ylabel(ylabel if ylabel is not None else _ylabel([loss for _, loss, _ in parsed]))
    # Losses decay, so the lower left is the emptiest corner; make_room_for_legend then lowers
    # the axis until the legend clears the data.
    ax.legend(handles=handles, loc="lower left")
    return fits


def make_room_for_legend(ax: Axes) -> None:
    """Lower the y-axis bottom of log-log ``ax`` until its lower-left legend clears the data.

    Call once the figure is laid out (the legend's share of the axes depends on the final axes
    size). Only data over the legend's horizontal extent count: markers, error bars, and lines
    (straight between their vertices, as the fits and guides are on log-log axes). Does nothing
    if the legend is already clear or too tall to make room for (``LEGEND_MAX_HEIGHT``).
    """
    legend = ax.get_legend()
    if legend is None:
        return
    renderer = ax.figure.canvas.get_renderer()
    box = legend.get_window_extent(renderer).transformed(ax.transAxes.inverted())
    height = box.y1 + LEGEND_PAD
    if height >= LEGEND_MAX_HEIGHT:
        return
    x_right = ax.transData.inverted().transform(ax.transAxes.transform((box.x1, 0.0)))[0]
    lowest = [np.inf]
    polylines = [line.get_xydata() for line in ax.get_lines() if line.get_linestyle() != "None"]
    points = [line.get_xydata() for line in ax.get_lines() if line.get_linestyle() == "None"]
    points += [seg for coll in ax.collections for seg in coll.get_segments()]
    for xy in points:
        xy = np.asarray(xy, dtype=float)
        lowest.append(xy[xy[:, 0] <= x_right, 1].min(initial=np.inf))
    for xy in polylines:
        log_xy = np.log10(np.asarray(xy, dtype=float))
        for (x0, y0), (x1, y1) in zip(log_xy[:-1], log_xy[1:], strict=True):
            end = min(x1, np.log10(x_right))
            if x0 <= end:
                y_end = y1 if x1 == x0 else y0 + (y1 - y0) * (end - x0) / (x1 - x0)
                lowest.append(10.0 ** min(y0, y_end))
    if not np.isfinite(min(lowest)):
        return
    lo, hi = np.log10(ax.get_ylim())
    # Put the lowest covered value at fraction `height` of the axis: solve for the new bottom.
    bottom = (np.log10(min(lowest)) - height * hi) / (1.0 - height)
    if bottom < lo:
        ax.set_ylim(10.0**bottom, 10.0**hi)


def _save(fig: Figure, path_stem: str | Path) -> list[Path]:
    fig.get_layout_engine().execute(fig)
    for ax in fig.axes:
        make_room_for_legend(ax)
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.pdf"
    fig.savefig(png, dpi=PNG_DPI)
    # No creation date: the same results give the same bytes, so regenerated figures diff clean.
    fig.savefig(pdf, metadata={"CreationDate": None})
    return [png, pdf]


def plot_rates(
    df: pd.DataFrame,
    curves: Sequence[Curve],
    path_stem: str | Path,
    *,
    title: str | None = None,
    theory: TheoryLookup | None = None,
    ylabel: str | None = None,
) -> list[Path]:
    """Write a one-axes log-log figure of loss curves of one setting (see :func:`draw_rates`).

    Parameters
    ----------
    df : tidy results table (docs/theory.md#results-table) of a single setting.
    curves : ``(fit_gate, loss_name)`` or ``(fit_gate, loss_name, label)`` entries.
    path_stem : output path without suffix; parent folders are created.
    title : axes title.
    theory, ylabel : see :func:`draw_rates`.

    Returns
    -------
    list of Path
        ``path_stem.png`` (200 dpi) and ``path_stem.pdf``.
    """
    with use_style():
        fig = Figure()
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        draw_rates(ax, df, curves, theory=theory, ylabel=ylabel)
        if title is not None:
            ax.set_title(title)
        return _save(fig, path_stem)


def plot_panels(
    df: pd.DataFrame,
    panels: Sequence[Panel],
    path_stem: str | Path,
    *,
    ncols: int | None = None,
    title: str | None = None,
    theory: TheoryLookup | None = None,
    ylabel: str | None = None,
) -> list[Path]:
    """Write a multi-panel figure, one log-log axes of :func:`draw_rates` per panel.

    Parameters
    ----------
    df : tidy results table (docs/theory.md#results-table); may hold several settings.
    panels : ``(title, setting, curves)`` entries, drawn row by row.
    path_stem : output path without suffix; parent folders are created.
    ncols : panels per row; defaults to all in one row, at most 3.
    title : figure title.
    theory, ylabel : see :func:`draw_rates`; the y label is shown on the left column only when
        every panel has the same one.

    Returns
    -------
    list of Path
        ``path_stem.png`` (200 dpi) and ``path_stem.pdf``.
    """
    check_columns(df, PLOT_COLUMNS)
    if not panels:
        raise ValueError("panels: give at least one (title, setting, curves) entry")
    ncols = min(len(panels), 3) if ncols is None else ncols
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols: must be a positive integer, got {ncols!r}")
    nrows = math.ceil(len(panels) / ncols)
    ylabels = {ylabel or _ylabel([_parse_curve(c)[1] for c in curves]) for _, _, curves in panels}
    with use_style():
        fig = Figure(figsize=(PANEL_SIZE_IN[0] * ncols, PANEL_SIZE_IN[1] * nrows))
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for i, (ax, (panel_title, setting, curves)) in enumerate(zip(axes, panels, strict=False)):
            rows = df[df["setting"] == setting]
            if rows.empty:
                raise ValueError(f"panels: setting {setting!r} (panel {panel_title!r}) has no rows")
            draw_rates(ax, rows, curves, theory=theory, ylabel=ylabel)
            ax.set_title(panel_title)
            # One shared y label on the left column when every panel plots the same kind of loss.
            if len(ylabels) == 1 and i % ncols != 0:
                ax.set_ylabel("")
        for ax in axes[len(panels) :]:
            fig.delaxes(ax)
        if title is not None:
            fig.suptitle(title)
        return _save(fig, path_stem)
