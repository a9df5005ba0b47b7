"""Log-log figures of loss curves: replication means, fitted rates and theory guides.

Every figure of the project goes through :func:`use_style` (the packaged ``moe_theory.mplstyle``)
and is drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas: nothing is
registered with pyplot, so no display is needed and no figure is left open.

Layout rules (each tested in tests/moe_theory/test_plotting.py): the y axis names the loss it
shows; the legend sits below its panel, outside the data, and the figure grows to hold it; the
shared key (below the panels) defines the error bars, the median marker, the line styles and
what ``±`` means, in the words of the rates table (:data:`moe_theory.rates.PLUS_MINUS`); the
y-limits span the drawn data (means, their bars, medians) and no more; a panel without a drawable
curve is left out; titles are words (a setting id becomes its description from the results table).
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import matplotlib
import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter
from matplotlib.transforms import offset_copy

from moe_theory.certificates import FolderCertificates
from moe_theory.rates import (
    DROP_WORDS,
    MEASURED_VERDICTS,
    MIN_REPS_PER_N,
    NOT_MEASURABLE_PREFIX,
    PLUS_MINUS,
    RateFit,
    TheoryLookup,
    check_columns,
    check_flags,
    check_n,
    curve_fit,
    curve_rate,
    curve_verdict,
    gap_outcome,
    gap_table,
    kept_by_n,
    resolve_theory,
    uncertified,
)
from moe_theory.sublevel import format_ratio

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
#: characters per line of a legend entry's "(not measurable: ...)" reason, so that the legend
#: stays as wide as its rate line (the legend sits under the axes, inside the figure)
LEGEND_REASON_WIDTH = 40
#: visible characters of a curve's name past which its rate goes to the next line (the rate
#: takes ~14)
LEGEND_NAME_WIDTH = 26
#: sample sizes a legend entry lists by name when they are left out; more are counted instead
LEGEND_MAX_SIZES = 3
MEDIAN_MARKER = "x"
#: The legend's title: what "±" means, in the rates table's own words (one convention everywhere).
LEGEND_TITLE = PLUS_MINUS
#: What the error bars are (the shared key's entry; "±" is the CI's, the key's title).
BARS_LABEL = "mean, bars 2 sd either way"

# mean - 2 sd is negative whenever the spread exceeds half the mean (common at small n); on a
# log axis the bar would then run off the plot, so its lower end stops one decade below the mean,
# marked (CUT_MARKER) so that the cut end is not read as the spread.
ERRORBAR_FLOOR = 0.1
CUT_MARKER = "v"
CUT_GID = "bar-cut"
#: the key's entry of a cut bar (styles carries it as a pseudo line style)
CUT_STYLE = "cut"
CUT_LABEL = "bar cut at mean/10"
#: Room left above and below the drawn data on the log y axis, as a fraction of its log range
#: (at least Y_MARGIN_MIN_DECADES): markers and bar caps stay inside the axes, and nothing else
#: (a theory guide or overlay running off the data) widens the axis.
Y_MARGIN = 0.06
Y_MARGIN_MIN_DECADES = 0.05

#: An x range holding fewer powers of ten than this has too few labelled ticks to read a sample
#: size off; its sample sizes (up to SHORT_GRID_TICKS of them, else the ends and the middle)
#: are labelled instead. Counted, not judged by width: 4e3..6.4e4 spans 1.2 decades and holds
#: 10^4 alone.
SHORT_GRID_POWERS = 2
SHORT_GRID_TICKS = 5

PNG_DPI = 200
# One panel of a multi-panel figure: three side by side fill a two-column page (~7 in). The
# height is the axes' share; each panel's legend below it adds its own height (:func:`save_figure`).
PANEL_SIZE_IN = (2.3, 2.0)
#: The narrowest multi-panel figure: one panel alone would leave the shared key (two entries a
#: row, ~1.7 in each) and the panel's own legend entries (a rate with its CI) wider than the
#: page, and cut at its edges.
MIN_FIGURE_WIDTH_IN = 3.6
#: The width of one entry of the shared key.
KEY_ENTRY_IN = 1.7

PLOT_COLUMNS = ("setting", "fit_gate", "loss_name", "score", "regime", "expert", "n", "loss_value")

#: The longest line of a y label: a panel's axes are ~1.5 in tall once its title, ticks and x
#: label are placed, which holds ~24 characters at 8 pt; longer lines would run into the title.
AXIS_LABEL_CHARS = 22
#: ... and the most lines it takes (the axis names its losses where they fit in these)
AXIS_LABEL_LINES = 3
NBSP = "\u00a0"
#: Short names of the losses (docs/theory.md#voronoi-losses), for axis labels.
LOSS_WORDS = {
    "D1": "Voronoi loss D1", "D2": "Voronoi loss D2", "D3": "Voronoi loss D3",
    "D1_matched": "Voronoi loss D1\n(gates matched)",
}
PARAMETER_WORDS = {"eta": "expert", "beta1": "gate-slope", "A": "gate-form", "W": "W", "V": "V"}
CELL_WORDS = {"exact": "exact cells", "over": "over-specified cells"}
CELL_ADJECTIVES = {"exact": "exact", "over": "over-specified"}
EXPERT_WORDS = {"relu": "ReLU", "gelu": "GELU"}
REFERENCE_WORDS = {"G_bar": r"$\bar G$", "G*": r"$G^*$"}

Curve = tuple[str, str] | tuple[str, str, str]
Panel = tuple[str | None, str, Sequence[Curve]]


@contextmanager
def use_style() -> Iterator[None]:
    """Apply the project style (packaged ``moe_theory.mplstyle``) within a ``with`` block."""
    style = resources.files("moe_theory") / STYLE_FILE
    with resources.as_file(style) as path, matplotlib.style.context(str(path)):
        yield


def _parse_curve(curve: Curve) -> tuple[str, str, str | None]:
    if not isinstance(curve, tuple | list) or len(curve) not in (2, 3):
        raise ValueError(
            f"curves: each entry must be (fit_gate, loss_name) or (fit_gate, loss_name, label), "
            f"got {curve!r}"
        )
    return curve[0], curve[1], curve[2] if len(curve) == 3 else None


def _parameter_error(loss: str) -> tuple[str, str] | None:
    """``err_<group>_<cell>``: the group in words and the cell (``exact`` or ``over``); None
    for any other loss."""
    match = re.fullmatch(r"err_([A-Za-z0-9]+)_(exact|over)", loss)
    if match is None:
        return None
    group, cell = match.groups()
    return PARAMETER_WORDS.get(group, group), cell


def loss_words(loss: str) -> str:
    """A loss in words for an axis label: ``D3`` -> "Voronoi loss D3", ``err_eta_over`` ->
    "expert error" over "over-specified cells" (two lines); other names are returned as they
    are."""
    if loss in LOSS_WORDS:
        return LOSS_WORDS[loss]
    error = _parameter_error(loss)
    if error:
        return f"{error[0]} error\n{CELL_WORDS[error[1]]}"
    return loss


def legend_words(loss: str) -> str:
    """A loss as a legend names it, on one line: a parameter error in words
    (``err_eta_over`` -> "over-specified expert error", ``err_beta1_exact`` -> "exact
    gate-slope error"), a Voronoi loss by its name (``D3``: the legend adds its reference)."""
    error = _parameter_error(loss)
    if error:
        return f"{CELL_ADJECTIVES[error[1]]} {error[0]} error"
    if loss == "D1_matched":
        return "D1 (gates matched)"
    return loss


def axis_label(loss_names: Sequence[str]) -> str:
    """The y label of an axes showing ``loss_names``: the loss in words when there is one, else
    the losses as the legend names them (:func:`legend_words`) joined by commas where they fit
    in ``AXIS_LABEL_LINES`` lines ("D3, D1, over-specified expert error": the axis says which
    losses share it), else the family ("Voronoi losses", "parameter errors", "losses") with the
    names left to the legend. No line is longer than ``AXIS_LABEL_CHARS``."""
    names = list(dict.fromkeys(loss_names))
    if len(names) == 1:
        return loss_words(names[0])
    # as the legend names them (a parameter error in words), with commas: "D1 / D3" read as a
    # ratio
    # a name that fits a line is not broken ("D1 (gates matched)"), a longer one is
    words = [w if len(w) > AXIS_LABEL_CHARS else w.replace(" ", NBSP)
             for w in map(legend_words, names)]
    lines = [line.replace(NBSP, " ") for line in
             textwrap.wrap(", ".join(words), AXIS_LABEL_CHARS, break_on_hyphens=False,
                           break_long_words=False)]
    if len(lines) <= AXIS_LABEL_LINES:
        return "\n".join(lines)
    if all(re.fullmatch(r"D[123].*", name) for name in names):
        family = "Voronoi losses"
    elif all(name.startswith("err_") for name in names):
        family = "parameter errors"
    else:
        family = "losses"
    return f"{family}\n(see legend)"


def setting_words(rows: pd.DataFrame) -> str:
    """One setting in words, two lines, from the descriptive columns of its results rows:
    "ReLU experts, linear score" / "dense softmax truth, d=32, k*=8, k=9"."""
    first = rows.iloc[0]
    expert = EXPERT_WORDS.get(str(first["expert"]), str(first["expert"]))
    line1 = f"{expert} experts, {first['score']} score"
    line2 = f"{first['regime']}"
    if "truth_gate" in rows.columns:
        line2 += f" {first['truth_gate']} truth"
    sizes = [f.format(first[c]) for c, f in (("d", "d={}"), ("k_true", "k*={}"),
                                              ("k_fit", "k={}")) if c in rows.columns]
    return f"{line1}\n{line2}" + (f", {', '.join(sizes)}" if sizes else "")


def curve_label(gate: str, loss: str, rows: pd.DataFrame) -> str:
    """A curve's default legend name: fitted gate, loss (:func:`legend_words`), and its reference
    measure when the results table has one ("sigmoid D3 vs G_bar", "softmax over-specified
    expert error vs G*")."""
    label = f"{gate} {legend_words(loss)}"
    if "reference" in rows.columns:
        refs = rows["reference"].dropna().unique()
        if len(refs) == 1:
            label += f" vs {REFERENCE_WORDS.get(str(refs[0]), str(refs[0]))}"
    return label


def _rate_label(label: str, fit: RateFit, certified: bool = True, verdict: str = "",
                reach: Mapping | None = None, values: int | None = None) -> str:
    """A curve's legend entry: its rate, and why it has no verdict where it has none: "not
    measurable" with the certificates that failed or were not run, or, certified, "inconclusive" when
    :func:`~moe_theory.rates.curve_verdict` says so (docs/theory.md#verdicts); and, where the
    sweep or the optimiser check recorded it (``reach``, :func:`moe_theory.sublevel.curve_summary`),
    how far the fits as good as the reference lie, over the kept fit's loss
    (docs/theory.md#optimiser-independent): 1.00 where the data pin the estimate down, far above
    where the theorem's bound is loose. ``values``: the curve's number of loss values, of which
    the entry counts those left out."""
    suffix = "" if certified else "\n(not measurable)"
    if verdict.startswith(NOT_MEASURABLE_PREFIX):
        # why, as the printed table says (failed certificates, or too few sample sizes for a
        # certified curve): a reader of the figure alone should not have to look it up
        suffix = "\n" + textwrap.fill("(not measurable: " + verdict[len(NOT_MEASURABLE_PREFIX):],
                                      width=LEGEND_REASON_WIDTH)
    if certified and verdict.startswith("inconclusive ("):
        suffix = f"\n(inconclusive: {verdict[len('inconclusive ('):-1]})"
    elif certified and verdict in MEASURED_VERDICTS:
        suffix = f"\n(certified, {verdict} with theory)"
    elif certified and verdict == "no theory":
        # the estimator's rate (every check passed), with no exponent to hold it to
        suffix = "\n(certified; no theory to compare)"
    if reach:
        suffix += "\n" + textwrap.fill(
            f"(fits as good as the reference: up to {ratio_label(reach['ratio_max'])}x the "
            "loss)", width=LEGEND_REASON_WIDTH)
    left_out = [f"{count} {DROP_WORDS[reason]}" for reason, count in fit.dropped.items() if count]
    if left_out:
        # the standard of the printed table's "dropped" column: a point drawn from fewer fits
        # than the config ran says how many it lost and why (docs/theory.md#rate-estimation)
        of = "" if values is None else f" of {values}"
        suffix += "\n" + textwrap.fill(f"(left out{of}: {', '.join(left_out)})",
                                       width=LEGEND_REASON_WIDTH)
    if fit.dropped_n and fit.n_points:
        # a sample size with too few usable values is no point of the curve, however many of
        # its values the line above counts: the table's dropped_n
        which = (f"n = {', '.join(sample_size_label(m) for m in fit.dropped_n)}"
                 if len(fit.dropped_n) <= LEGEND_MAX_SIZES else
                 f"{len(fit.dropped_n)} of {len(fit.dropped_n) + fit.n_points} sample sizes")
        suffix += "\n" + textwrap.fill(
            f"({which} left out: fewer than {MIN_REPS_PER_N} usable values)",
            width=LEGEND_REASON_WIDTH)
    rate = ("no rate (< 2 sample sizes)" if math.isnan(fit.slope)
            else rf"$n^{{{fit.slope:+.2f} \pm {fit.half_width:.2f}}}$")
    # a long name (a parameter error in words) takes a line of its own, so that the entry stays
    # as wide as its reason lines and the panels keep their width
    sep = "\n" if len(re.sub(r"\$[^$]*\$", "xx", label)) > LEGEND_NAME_WIDTH else " "
    return f"{label}:{sep}{rate}{suffix}"


def _gap_label(gaps: pd.DataFrame, labels: dict | None = None) -> str:
    """The legend entry of a panel's gap between the gates: per pair of its curves, the two
    losses and the outcome (which curve is not measurable, not why: their own entries say).
    A curve given its own label (``labels[(gate, loss)]``) is named by it, as its entry is."""
    labels = labels or {}

    def name(gate: str, loss: str) -> str:
        return labels.get((gate, loss)) or f"{gate} {legend_words(loss)}"

    lines = ["gap between the gates:"]
    for _, g in gaps.iterrows():
        pair = f"{name('sigmoid', g['sigmoid_loss'])} vs {name('softmax', g['softmax_loss'])}"
        lines.append(textwrap.fill(f"{pair}: {gap_outcome(g, reasons=False)}",
                                   width=LEGEND_REASON_WIDTH))
    return "\n".join(lines)


def _below_axes(ax: Axes):
    """A transform whose origin sits under the x axis's tick labels and label, so that a legend
    anchored there at "upper center" clears them. The offset is computed from the style (tick
    length and pad, tick-label and label sizes, label pad), so it holds before layout."""
    rc = matplotlib.rcParams
    size = lambda key: matplotlib.font_manager.FontProperties(size=rc[key]).get_size_in_points()  # noqa: E731
    points = (rc["xtick.major.size"] + rc["xtick.major.pad"] + 1.2 * size("xtick.labelsize")
              + rc["axes.labelpad"] + 1.15 * size("axes.labelsize"))
    return offset_copy(ax.transAxes, fig=ax.figure, y=-points, units="points")


def powers_of_ten(low: float, high: float) -> int:
    """How many powers of ten lie in ``[low, high]`` (both positive): the labelled major ticks
    of a log axis over that range. Rounded first, so that 1000 given as 999.9999 counts."""
    first = math.ceil(round(math.log10(low), 9))
    last = math.floor(round(math.log10(high), 9))
    return max(last - first + 1, 0)


def sample_size_label(n: float) -> str:
    """A tick label for sample size ``n``: its digits up to 99999, beyond as a mantissa times a
    power of ten ("1.28·10^5", mathtext), which a reader takes in where "1.28e+05" or "128000"
    is read digit by digit."""
    return f"{n:g}" if n < 1e5 else power_of_ten_label(n, digits=4)


def power_of_ten_label(value: float, digits: int) -> str:
    """``value`` (positive) as a mantissa of ``digits`` significant digits times a power of ten,
    in mathtext: "1.28·10^5", "10^6" where the mantissa is 1."""
    exponent = math.floor(math.log10(value))
    mantissa = float(f"{value / 10**exponent:.{digits}g}")
    if mantissa == 10:  # rounded up to the next power
        mantissa, exponent = 1.0, exponent + 1
    if mantissa == 1:
        return rf"$10^{{{exponent}}}$"
    return rf"${mantissa:g}\cdot10^{{{exponent}}}$"


#: A legend's ratio of losses from this on reads as a power of ten ("8.8·10^5", not "878321").
RATIO_POWER_FROM = 1e4


def ratio_label(value: float) -> str:
    """A ratio of losses in a legend: the tables' digits (:func:`moe_theory.sublevel.format_ratio`)
    below :data:`RATIO_POWER_FROM`, two significant digits times a power of ten above, where
    the digits past the second say nothing."""
    if value is not None and math.isfinite(value) and value >= RATIO_POWER_FROM:
        return power_of_ten_label(value, digits=2)
    return format_ratio(value)


def data_extent(ax: Axes) -> tuple[float, float] | None:
    """Smallest and largest y of the data drawn by :func:`draw_rates` on ``ax``: means and their
    error bars, and medians (not fitted lines, guides or overlays); None when nothing is drawn."""
    ys: list[np.ndarray] = []
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer):
            data_line, _, barcols = container.lines
            ys.append(np.asarray(data_line.get_ydata(), dtype=float))
            for coll in barcols:
                ys += [np.asarray(seg, dtype=float)[:, 1] for seg in coll.get_segments()]
    ys += [np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()
           if line.get_gid() == "median"]
    values = np.concatenate(ys) if ys else np.array([])
    values = values[np.isfinite(values) & (values > 0)]
    if not values.size:
        return None
    return float(values.min()), float(values.max())


def fit_ylim(ax: Axes) -> None:
    """Set the log y-limits of ``ax`` to its data extent (:func:`data_extent`) plus a margin of
    ``Y_MARGIN`` of the log range (at least ``Y_MARGIN_MIN_DECADES`` decades) on each side."""
    extent = data_extent(ax)
    if extent is None:
        return
    lo, hi = np.log10(extent)
    margin = max(Y_MARGIN * (hi - lo), Y_MARGIN_MIN_DECADES)
    ax.set_ylim(10.0 ** (lo - margin), 10.0 ** (hi + margin))


def drawable_curve(df: pd.DataFrame, gate: str, loss: str) -> bool:
    """Whether a curve has a point to draw: a sample size with ``MIN_REPS_PER_N`` usable values
    (finite, positive, not at a bound)."""
    curve = df[(df["fit_gate"] == gate) & (df["loss_name"] == loss)]
    if curve.empty:
        return False
    return any(v.size >= MIN_REPS_PER_N for v in kept_by_n(curve)[1])


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
    sample sizes are dropped as in :func:`moe_theory.rates.fit_rate`. The legend goes below the
    axes (under the x label), the y-limits fit the drawn data (:func:`fit_ylim`).

    Parameters
    ----------
    ax : axes to draw on.
    df : tidy results table (docs/theory.md#results-table) of a single setting.
    curves : ``(fit_gate, loss_name)`` or ``(fit_gate, loss_name, label)`` entries; the label
        defaults to :func:`curve_label` ("sigmoid D3 vs G_bar").
    theory : ``(fit_gate, score, regime, expert, loss_name) -> obj`` with ``exponent``; defaults
        to ``moe_theory.theory.predicted_rate``.
    ylabel : y-axis label; defaults to :func:`axis_label` of the curves' losses.
    certificates : the results folder's certificates (:meth:`FolderCertificates.load`); without
        them no curve is certified.
    key : also put the shared entries (:func:`key_handles`) and the meaning of ``±`` (its title)
        in this legend; :func:`plot_panels` puts them once below the panels instead.

    Returns
    -------
    list of RateFit
        The fit of each curve, in the order of ``curves``.
    """
    check_columns(df, PLOT_COLUMNS)
    check_n(df)
    check_flags(df)
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
    styles: set[str] = set()
    drawn: list[dict] = []  # each curve as the rates table has it, for the gap between the gates
    for gate, loss, label in parsed:
        curve = df[(df["fit_gate"] == gate) & (df["loss_name"] == loss)]
        if curve.empty:
            raise ValueError(
                f"curves: no rows for fit_gate={gate!r}, loss_name={loss!r} in setting "
                f"{settings[0]!r}"
            )
        label = curve_label(gate, loss, curve) if label is None else label
        if gate not in GATE_COLORS and gate not in other_gates:
            other_gates.append(gate)
        color = GATE_COLORS.get(gate) or OTHER_COLORS[other_gates.index(gate) % len(OTHER_COLORS)]
        nth = gate_seen[gate] = gate_seen.get(gate, -1) + 1
        marker = MARKERS[nth % len(MARKERS)]
        face = color if nth == 0 else "white"

        fit = curve_fit(curve)
        fits.append(fit)
        name = (settings[0], gate, loss)
        statuses = certificates.evaluate(curve, name)
        certified = all(s.passed for s in statuses.values())
        kept = dict(zip(*kept_by_n(curve), strict=True))
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
            cut = mean - 2 * sd < ERRORBAR_FLOOR * mean
            if cut.any():
                ax.plot(n[cut], lower[cut], ls="None", marker=CUT_MARKER, color=color, ms=3,
                        alpha=0.8, zorder=3, gid=CUT_GID)
                styles.add(CUT_STYLE)
            ax.plot(n, [np.median(kept[m]) for m in n], ls="None", marker=MEDIAN_MARKER,
                    color=color, ms=4, zorder=4, gid="median")
        rate = curve_rate(lookup, curve, name, loss)
        verdict = curve_verdict(rate.exponent, fit, statuses)[0]
        # solid only for a curve with a verdict or a certified rate without theory: too few
        # sample sizes leave a certified curve as unmeasurable as a failed certificate does
        measurable = certified and not verdict.startswith("not measurable")
        line_style = "-" if measurable else UNCERTIFIED_LINESTYLE
        if not math.isnan(fit.slope):
            styles.add(line_style)
            ends = n[[0, -1]]
            ax.plot(ends, np.exp(fit.intercept) * ends**fit.slope, color=color, zorder=2,
                    ls=line_style)
        if n.size and rate.exponent is not None and not math.isnan(rate.exponent):
            styles.add(THEORY_LINESTYLE)
            ends = n[[0, -1]]
            guide = mean[0] * (ends / n[0]) ** rate.exponent
            ax.plot(ends, guide, color=color, lw=0.8, ls=THEORY_LINESTYLE, alpha=0.8, zorder=1)
        overlay = _overlay(certificates, name)
        if overlay is not None:
            styles.add(OVERLAY_LINESTYLE)
            ax.plot(*overlay, color=color, lw=1.0, ls=OVERLAY_LINESTYLE, zorder=1)
        # a curve without a theory has no verdict, but its legend still says why it is not
        # measurable (a study's curves said only "(not measurable)")
        shown = verdict if certified or verdict.startswith(NOT_MEASURABLE_PREFIX) else (
            f"{NOT_MEASURABLE_PREFIX}{uncertified(statuses)})")
        handles.append(Line2D([], [], color=color, marker=marker, mfc=face, ls=line_style,
                              label=_rate_label(label, fit, certified, shown,
                                                certificates.sublevel(curve, name),
                                                len(curve))))
        drawn.append({"setting": settings[0], "fit_gate": gate, "loss_name": loss,
                      "slope": fit.slope, "ci_low": fit.ci_low, "ci_high": fit.ci_high,
                      "verdict": verdict, "plotted": True,
                      "theory_exponent": math.nan if rate.exponent is None else rate.exponent})
    gaps = gap_table(pd.DataFrame(drawn))
    if len(gaps):
        # the comparison the figure is drawn for, in the panel's own legend: as the rates table's
        # gap section says it (docs/theory.md#the-gap-between-the-gates)
        handles.append(Line2D([], [], ls="None", label=_gap_label(
            gaps, {(gate, loss): label for gate, loss, label in parsed if label is not None})))
    if key:
        handles += key_handles(styles=styles)
    ax.set_xscale("log")
    ax.set_yscale("log")
    # grids under a decade get labelled minor ticks, which collide on a narrow panel
    ax.xaxis.set_minor_formatter(NullFormatter())
    grid = sorted({m for fit in fits for m in fit.n_used})
    if grid and powers_of_ten(grid[0], grid[-1]) < SHORT_GRID_POWERS:
        # a short grid shows at most one power of ten: label its sample sizes instead
        ticks = grid if len(grid) <= SHORT_GRID_TICKS else [grid[0], grid[len(grid) // 2],
                                                              grid[-1]]
        ax.set_xticks(ticks, [sample_size_label(m) for m in ticks])
    ax.set_xlabel(r"sample size $n$")
    ax.set_ylabel(ylabel if ylabel is not None else axis_label([loss for _, loss, _ in parsed]))
    fit_ylim(ax)
    # Below the axes: a legend inside would cover data (or push the y-limits apart to clear it).
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0),
              bbox_transform=_below_axes(ax), title=LEGEND_TITLE if key else None)
    return fits


def key_handles(*, styles: set[str] | frozenset[str] = frozenset(), theory: bool = False,
                overlay: bool = False) -> list:
    """Legend entries for what every curve shares: the error bars (mean, 2 sd either way), the
    median, a cut bar's mark (``CUT_STYLE`` in ``styles``), and each line style in ``styles`` that
    was drawn (certified and not-measurable fits, theory
    guide, local prediction); ``theory`` and ``overlay`` add those two styles."""
    styles = set(styles) | ({THEORY_LINESTYLE} if theory else set()) | (
        {OVERLAY_LINESTYLE} if overlay else set())
    grey = "0.4"
    bars = ErrorbarContainer(
        (Line2D([], [], color=grey, marker="o", ls="None"), (),
         (LineCollection([], colors=grey, linewidths=0.5),)),
        has_xerr=False, has_yerr=True, label=BARS_LABEL)
    handles: list = [bars, Line2D([], [], color=grey, marker=MEDIAN_MARKER, ms=4, ls="None",
                                  label="median")]
    if CUT_STYLE in styles:
        handles.append(Line2D([], [], color=grey, marker=CUT_MARKER, ms=3, ls="None",
                              label=CUT_LABEL))
    for style, label, lw in (("-", "fitted rate, certified", 1.0),
                             (UNCERTIFIED_LINESTYLE, "fitted rate, not measurable", 1.0),
                             (THEORY_LINESTYLE, "theory exponent", 0.8),
                             (OVERLAY_LINESTYLE, "local prediction", 1.0)):
        if style in styles:
            handles.append(Line2D([], [], color=grey, lw=lw, ls=style, label=label))
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


def fit_figure_height(fig: Figure) -> None:
    """Grow ``fig`` by the height of the legends below its panels (the tallest of each row) and
    of its own legends, so that the axes keep the height they were given instead of being
    squeezed by constrained layout. Call after drawing (later calls do nothing);
    :func:`plot_rates` and :func:`plot_panels` do."""
    if getattr(fig, "_moe_theory_fitted", False):
        return
    fig._moe_theory_fitted = True
    width, height = fig.get_size_inches()
    fig.set_size_inches(width, height + _legends_height(fig))


def _legends_height(fig: Figure) -> float:
    """Inches the legends below ``fig``'s panels (the tallest of each row), its panel titles'
    lines past the first and its own legends take beyond the panels' height."""
    renderer = fig.canvas.get_renderer()
    rows: dict[int, float] = {}
    # a panel's size allows one line of title: each further line adds its height
    line = 1.2 * matplotlib.font_manager.FontProperties(
        size=matplotlib.rcParams["axes.titlesize"]).get_size_in_points() / 72
    for ax in fig.axes:
        legend = ax.get_legend()
        spec = ax.get_subplotspec()
        if spec is None:
            continue
        height = 0.0 if legend is None else legend.get_window_extent(renderer).height / fig.dpi
        lines = ax.get_title().count("\n") + 1 if ax.get_title() else 1
        height += (lines - 1) * line
        row = spec.rowspan.start
        rows[row] = max(rows.get(row, 0.0), height)
    return sum(rows.values()) + sum(lg.get_window_extent(renderer).height / fig.dpi
                                    for lg in fig.legends)


def save_figure(fig: Figure, path_stem: str | Path) -> list[Path]:
    """``STEM.png`` and ``STEM.pdf`` of ``fig``, its height grown to fit the legends below its
    panels; the PDF without a creation date, so that the same data give the same bytes."""
    fit_figure_height(fig)
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.pdf"
    fig.savefig(png, dpi=PNG_DPI)
    # No creation date: the same results give the same bytes, so regenerated figures diff clean.
    fig.savefig(pdf, metadata={"CreationDate": None})
    return [png, pdf]


#: share of a title's room it may fill (see _wrap_titles)
TITLE_ROOM = 0.97


def _wrap_titles(fig: Figure, ncols: int) -> None:
    """Re-wrap each panel title wider than the room it has (centred over its axes, up to halfway
    to the neighbouring axes, or to the figure's edge) at spaces, line by line, so that
    neighbouring titles neither overlap nor leave the figure."""
    engine = fig.get_layout_engine()
    if engine is not None:
        # Laid out at the height the legends below the panels will be given (fit_figure_height
        # grows the figure once the titles are final): at the panels' own height tall legends
        # leave the axes no room, the layout is not applied and matplotlib warns. Only the
        # panels' horizontal extents are read here, and the height does not change them.
        width, height = fig.get_size_inches()
        fig.set_size_inches(width, height + _legends_height(fig))
        engine.execute(fig)
        fig.set_size_inches(width, height)
    renderer = fig.canvas.get_renderer()
    by_cell = {(ax.get_subplotspec().rowspan.start, ax.get_subplotspec().colspan.start): ax
               for ax in fig.axes if ax.get_subplotspec() is not None}
    for (row, col), ax in by_cell.items():
        title = ax.get_title()
        if not title:
            continue
        width = ax.title.get_window_extent(renderer).width
        left, right = by_cell.get((row, col - 1)), by_cell.get((row, col + 1))
        lo = fig.bbox.x0 if left is None else (left.bbox.x1 + ax.bbox.x0) / 2
        hi = fig.bbox.x1 if right is None else (ax.bbox.x1 + right.bbox.x0) / 2
        centre = (ax.bbox.x0 + ax.bbox.x1) / 2
        # with a margin: the title is measured at the screen's resolution and saved at another,
        # where its hinted glyphs came out 1.8 px past the figure's edge
        room = TITLE_ROOM * 2 * min(centre - lo, hi - centre)
        if width <= room:
            continue
        chars = max(len(line) for line in title.splitlines())
        # characters per line that fit, from the measured width per character
        fit = max(8, int(chars * room / width))
        ax.set_title("\n".join(textwrap.fill(line, fit) for line in title.splitlines()))


def figure_title(title: str) -> str:
    """A figure title in words: the name of a config of ``simulations/configs/`` becomes that
    config's description (a config id tells a reader nothing); other titles are kept."""
    # Imported here: plotting is used without the configs (studies, notebooks).
    from moe_theory.config import CONFIG_DIR, load_config

    path = CONFIG_DIR / f"{title}.toml"
    if re.fullmatch(r"[A-Za-z0-9_.-]+", title) and path.is_file():
        # the path, not the name: load_config would read a folder of that name in the cwd
        return load_config(path).description or title
    return title


#: A number in e-notation within words ("1.6e6", "4.1e+06"), not part of a name ("gelu_d4e6"),
#: or a whole number of seven digits or more ("2000000": its zeros are counted, not read).
_E_NOTATION = re.compile(
    r"(?<!\w)(?<!\d\.)(?:\d+(?:\.\d+)?e\+?\d+|[1-9]\d{6,})(?!\w|\.\d)")


def readable_numbers(text: str) -> str:
    """``text`` with its numbers in e-notation, and its whole numbers from 10^6 on, written as the
    axes write them ("n = 1.6e6" -> "n = 1.6·10^6", "2000000" -> "2·10^6",
    :func:`power_of_ten_label`): a description's own text cannot change without changing its
    config's hash."""
    return _E_NOTATION.sub(lambda m: power_of_ten_label(float(m.group(0)), digits=4), text)


#: The references' names as a description writes them in plain text (a config's text cannot
#: change without changing its hash), to be drawn as the legends draw them (REFERENCE_WORDS).
_SYMBOLS = tuple((re.compile(rf"(?<!\w){re.escape(name)}(?!\w)"), symbol)
                 for name, symbol in REFERENCE_WORDS.items())


def readable_text(text: str) -> str:
    """``text`` as a title draws it: numbers as the axes write them (:func:`readable_numbers`)
    and the references as the legends name them (``REFERENCE_WORDS``)."""
    text = readable_numbers(text)
    for pattern, symbol in _SYMBOLS:
        text = pattern.sub(lambda _, s=symbol: s, text)
    return text


def _suptitle(fig: Figure, title: str) -> None:
    """The figure title in words, wrapped to the figure's width."""
    size = matplotlib.font_manager.FontProperties(
        size=matplotlib.rcParams["figure.titlesize"]).get_size_in_points()
    # an average glyph of DejaVu Sans is ~0.55 em wide
    chars = max(20, int(fig.get_size_inches()[0] * 72 / (0.55 * size)))
    # wrapped before its numbers become mathtext, whose source is longer than what it draws
    lines = textwrap.wrap(figure_title(title), chars)
    fig.suptitle("\n".join(map(readable_text, lines)))


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
    title : axes title (a config name becomes its description, :func:`figure_title`).
    theory, ylabel, certificates : see :func:`draw_rates`.

    Returns
    -------
    list of Path
        ``path_stem.png`` (200 dpi) and ``path_stem.pdf``: the style's width, its height plus
        the legend's below the axes.
    """
    with use_style():
        fig = Figure()
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        draw_rates(ax, df, curves, theory=theory, ylabel=ylabel, certificates=certificates)
        if title is not None:
            ax.set_title(readable_text(figure_title(title)))
        return save_figure(fig, path_stem)


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
    """Write a multi-panel figure, one log-log axes of :func:`draw_rates` per panel (see
    :func:`panels_figure` for the parameters).

    Returns
    -------
    list of Path
        ``path_stem.png`` (200 dpi) and ``path_stem.pdf``.
    """
    with use_style():
        fig = panels_figure(df, panels, ncols=ncols, title=title, theory=theory, ylabel=ylabel,
                            certificates=certificates)
        return save_figure(fig, path_stem)


def panels_figure(
    df: pd.DataFrame,
    panels: Sequence[Panel],
    *,
    ncols: int | None = None,
    title: str | None = None,
    theory: TheoryLookup | None = None,
    ylabel: str | None = None,
    certificates: FolderCertificates | None = None,
) -> Figure:
    """The multi-panel figure of :func:`plot_panels`, laid out and sized (draw it inside
    :func:`use_style`).

    Curves without a drawable point (:func:`drawable_curve`) are left out, and so are panels left
    without a curve: a figure has no empty panel.

    Parameters
    ----------
    df : tidy results table (docs/theory.md#results-table); may hold several settings.
    panels : ``(title, setting, curves)`` entries, drawn row by row. A title that is None or the
        setting's id is replaced by the setting in words (:func:`setting_words`).
    ncols : panels per row; defaults to all in one row, at most 3.
    title : figure title (a config name becomes its description, :func:`figure_title`), wrapped
        to the figure's width.
    theory, ylabel, certificates : see :func:`draw_rates`; the y label is shown on the left
        column only when every panel has the same one.
    """
    check_columns(df, PLOT_COLUMNS)
    if not panels:
        raise ValueError("panels: give at least one (title, setting, curves) entry")
    if ncols is not None and (isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1):
        raise ValueError(f"ncols: must be a positive integer, got {ncols!r}")
    kept = []
    for panel_title, setting, curves in panels:
        rows = df[df["setting"] == setting]
        if rows.empty:
            raise ValueError(f"panels: setting {setting!r} (panel {panel_title!r}) has no rows")
        drawable = [c for c in curves if drawable_curve(rows, *_parse_curve(c)[:2])]
        if drawable:
            words = setting_words(rows) if panel_title in (None, setting) else panel_title
            kept.append((words, rows, drawable))
    if not kept:
        raise ValueError("panels: no panel has a curve with a drawable point (every loss value "
                         "NaN, infinite, non-positive or at a bound)")
    ncols = min(len(kept), 3) if ncols is None else min(ncols, len(kept))
    nrows = math.ceil(len(kept) / ncols)
    ylabels = {ylabel or axis_label([_parse_curve(c)[1] for c in curves])
               for _, _, curves in kept}
    fig = Figure(figsize=(max(PANEL_SIZE_IN[0] * ncols, MIN_FIGURE_WIDTH_IN),
                          PANEL_SIZE_IN[1] * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i, (ax, (panel_title, rows, curves)) in enumerate(zip(axes, kept, strict=False)):
        draw_rates(ax, rows, curves, theory=theory, ylabel=ylabel, certificates=certificates,
                   key=False)
        ax.set_title(panel_title)
        # One shared y label on the left column when every panel plots the same losses.
        if len(ylabels) == 1 and i % ncols != 0:
            ax.set_ylabel("")
    for ax in axes[len(kept):]:
        fig.delaxes(ax)
    _wrap_titles(fig, ncols)
    lines = [line for ax in axes[: len(kept)] for line in ax.get_lines()]
    styles = {line.get_linestyle() for line in lines} | (
        {CUT_STYLE} if any(line.get_gid() == CUT_GID for line in lines) else set())
    handles = key_handles(styles=styles)
    # as many key entries per row as fit the figure's width
    per_row = max(1, min(len(handles), int(fig.get_size_inches()[0] / KEY_ENTRY_IN)))
    fig.legend(handles=handles, loc="outside lower center", ncols=per_row, title=LEGEND_TITLE)
    if title is not None:
        _suptitle(fig, title)
    fit_figure_height(fig)
    return fig
