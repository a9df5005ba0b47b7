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
from matplotlib.ticker import NullFormatter

from moe_theory.certificates import FolderCertificates
from moe_theory.rates import (
    CI_LEVEL,
    RateFit,
    TheoryLookup,
    bounds_by_n,
    check_columns,
    check_n,
    curve_fit,
    curve_rate,
    drop_reasons,
    resolve_theory,
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
# Theory guides dash-dot, the asymptotic overlay dotted; a fitted power law is solid when its
# curve passes every certificate, dashed ("not measurable" in the legend) when not.
THEORY_LINESTYLE = "-."
OVERLAY_LINESTYLE = ":"
UNCERTIFIED_LINESTYLE = "--"
MEDIAN_MARKER = "x"
#: The legend's title: what "±" means (the one convention of tables, report and figures).
LEGEND_TITLE = f"slope ± {CI_LEVEL:.0%} CI half-width"

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


def _rate_label(label: str, fit: RateFit, certified: bool = True) -> str:
    suffix = "" if certified else "\n(not measurable)"
    if math.isnan(fit.slope):
        return f"{label}: no rate (< 2 sample sizes){suffix}"
    return rf"{label}: $n^{{{fit.slope:.2f} \pm {fit.half_width:.2f}}}${suffix}"


def draw_rates(
    ax: Axes,
    df: pd.DataFrame,
    curves: Sequence[Curve],
    *,
    theory: TheoryLookup | None = None,
    ylabel: str | None = None,
    certificates: FolderCertificates | None = None,
    key: bool = True,
) -> list[RateFit]:
    """Draw loss curves of one setting on log-log axes.

    Per curve: the mean over replications at each used n (markers) with error bars of
    mean ± 2 sd, the median (a bar marker), the fitted OLS power law of the mean, solid when the
    curve passes every certificate (docs/theory.md#certificates) and dashed, with
    "(not measurable)" in its legend entry, when not; where the theory gives an exponent, a
    dash-dot guide of that exponent through the curve's first point; where the reference is
    identified, the asymptotic overlay (docs/theory.md#asymptotic-overlay), dotted. Values and
    sample sizes are dropped as in :func:`moe_theory.rates.fit_rate`. The legend's title says
    what ``±`` is.

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
    certificates : the results folder's certificates (:meth:`FolderCertificates.load`); without
        them no curve is certified.
    key : also put the shared entries (mean ± 2 sd, median, theory, local prediction) and the
        meaning of ``±`` (its title) in this legend; :func:`plot_panels` puts them once below
        the panels instead.

    Returns
    -------
    list of RateFit
        The fit of each curve, in the order of ``curves``.
    """
    check_columns(df, PLOT_COLUMNS)
    check_n(df)
    settings = df["setting"].unique()
    if len(settings) != 1:
        raise ValueError(f"setting: draw one setting per axes, got {sorted(map(str, settings))}")
    if not curves:
        raise ValueError("curves: give at least one (fit_gate, loss_name) pair")
    lookup = resolve_theory(theory)
    certificates = certificates or FolderCertificates()
    parsed = [_parse_curve(c) for c in curves]
    handles: list[Line2D] = []
    fits: list[RateFit] = []
    gate_seen: dict[str, int] = {}
    other_gates: list[str] = []
    any_theory = any_overlay = False
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

        fit = curve_fit(curve)
        fits.append(fit)
        name = (settings[0], gate, loss)
        certified = all(s.passed for s in certificates.evaluate(curve, name).values())
        n_all, values = values_by_n(curve)
        bounds = bounds_by_n(curve) or [None] * len(values)
        kept = {m: v[drop_reasons(v, b) == ""] for m, v, b in zip(n_all, values, bounds,
                                                                  strict=True)}
        n = np.asarray(fit.n_used, dtype=float)
        if n.size:
            mean = np.array([kept[m].mean() for m in n])
            sd = np.array([kept[m].std(ddof=1) for m in n])
            lower = np.maximum(mean - 2 * sd, ERRORBAR_FLOOR * mean)
            bars = ax.errorbar(n, mean, yerr=[mean - lower, 2 * sd], fmt=marker, color=color,
                               mfc=face, elinewidth=0.5, capthick=0.5, zorder=3)
            # Lighter bars keep the means and the fitted lines, which carry the rate, in front.
            for artist in (*bars[1], *bars[2]):
                artist.set_alpha(0.55)
            ax.plot(n, [np.median(kept[m]) for m in n], ls="None", marker=MEDIAN_MARKER,
                    color=color, ms=4, zorder=4)
        if not math.isnan(fit.slope):
            ends = n[[0, -1]]
            ax.plot(ends, np.exp(fit.intercept) * ends**fit.slope, color=color, zorder=2,
                    ls="-" if certified else UNCERTIFIED_LINESTYLE)
        rate = curve_rate(lookup, curve, name, loss)
        if n.size and rate.exponent is not None and not math.isnan(rate.exponent):
            any_theory = True
            ends = n[[0, -1]]
            guide = mean[0] * (ends / n[0]) ** rate.exponent
            ax.plot(ends, guide, color=color, lw=0.8, ls=THEORY_LINESTYLE, alpha=0.8, zorder=1)
        overlay = _overlay(certificates, name)
        if overlay is not None:
            any_overlay = True
            ax.plot(*overlay, color=color, lw=1.0, ls=OVERLAY_LINESTYLE, zorder=1)
        handles.append(Line2D([], [], color=color, marker=marker, mfc=face,
                              ls="-" if certified else UNCERTIFIED_LINESTYLE,
                              label=_rate_label(label, fit, certified)))
    if key:
        handles += key_handles(theory=any_theory, overlay=any_overlay)
    ax.set_xscale("log")
    ax.set_yscale("log")
    # grids under a decade get labelled minor ticks, which collide on a narrow panel
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(r"sample size $n$")
    ax.set_ylabel(ylabel if ylabel is not None else _ylabel([loss for _, loss, _ in parsed]))
    # Losses decay, so the lower left is the emptiest corner; make_room_for_legend then lowers
    # the axis until the legend clears the data.
    ax.legend(handles=handles, loc="lower left", title=LEGEND_TITLE if key else None)
    return fits


def key_handles(*, theory: bool, overlay: bool) -> list[Line2D]:
    """Legend entries for what every curve shares: bars, median, theory guide, overlay."""
    handles = [Line2D([], [], color="0.4", marker="o", ls="None", label="mean ± 2 sd"),
               Line2D([], [], color="0.4", marker=MEDIAN_MARKER, ms=4, ls="None",
                      label="median")]
    if overlay:
        handles.append(Line2D([], [], color="0.4", lw=1.0, ls=OVERLAY_LINESTYLE,
                              label="local prediction"))
    if theory:
        handles.append(Line2D([], [], color="0.4", lw=0.8, ls=THEORY_LINESTYLE, label="theory"))
    return handles


def _overlay(certificates: FolderCertificates, name: tuple[str, str, str]
             ) -> tuple[np.ndarray, np.ndarray] | None:
    """The asymptotic overlay's (n, mean loss) of a curve, finite points only; None without."""
    cert = certificates.reference.get(name[:2])
    entry = None if cert is None else cert.overlay.get(name[2])
    if not entry:
        return None
    n = np.asarray(entry["n"], dtype=float)
    mean = np.asarray([np.nan if v is None else v for v in entry["mean"]], dtype=float)
    keep = np.isfinite(mean) & (mean > 0)
    return (n[keep], mean[keep]) if keep.sum() >= 2 else None


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
    certificates: FolderCertificates | None = None,
) -> list[Path]:
    """Write a one-axes log-log figure of loss curves of one setting (see :func:`draw_rates`).

    Parameters
    ----------
    df : tidy results table (docs/theory.md#results-table) of a single setting.
    curves : ``(fit_gate, loss_name)`` or ``(fit_gate, loss_name, label)`` entries.
    path_stem : output path without suffix; parent folders are created.
    title : axes title.
    theory, ylabel, certificates : see :func:`draw_rates`.

    Returns
    -------
    list of Path
        ``path_stem.png`` (200 dpi) and ``path_stem.pdf``.
    """
    with use_style():
        fig = Figure()
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        draw_rates(ax, df, curves, theory=theory, ylabel=ylabel, certificates=certificates)
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
    certificates: FolderCertificates | None = None,
) -> list[Path]:
    """Write a multi-panel figure, one log-log axes of :func:`draw_rates` per panel.

    Parameters
    ----------
    df : tidy results table (docs/theory.md#results-table); may hold several settings.
    panels : ``(title, setting, curves)`` entries, drawn row by row.
    path_stem : output path without suffix; parent folders are created.
    ncols : panels per row; defaults to all in one row, at most 3.
    title : figure title.
    theory, ylabel, certificates : see :func:`draw_rates`; the y label is shown on the left
        column only when every panel has the same one.

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
            draw_rates(ax, rows, curves, theory=theory, ylabel=ylabel, certificates=certificates,
                       key=False)
            ax.set_title(panel_title)
            # One shared y label on the left column when every panel plots the same kind of loss.
            if len(ylabels) == 1 and i % ncols != 0:
                ax.set_ylabel("")
        for ax in axes[len(panels) :]:
            fig.delaxes(ax)
        styles = {line.get_linestyle() for ax in axes[: len(panels)] for line in ax.get_lines()}
        fig.legend(handles=key_handles(theory=THEORY_LINESTYLE in styles,
                                       overlay=OVERLAY_LINESTYLE in styles),
                   loc="outside lower center", ncols=4, title=LEGEND_TITLE)
        if title is not None:
            fig.suptitle(title)
        return _save(fig, path_stem)
