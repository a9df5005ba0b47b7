"""Figures: files written at the style's size, curves drawn where the data and the fit put them,
and the layout rules a reader needs (moe_theory/plotting.py): the y axis names the loss, the key
defines the bars and "±", legends sit inside the figure and outside the data, the y-limits fit the
data, no panel is empty, and titles are words."""

from __future__ import annotations

import re
import warnings

import matplotlib
import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from moe_theory.plotting import (
    BARS_LABEL,
    CUT_GID,
    CUT_LABEL,
    GATE_COLORS,
    LEGEND_TITLE,
    OVERLAY_LINESTYLE,
    PANEL_SIZE_IN,
    PNG_DPI,
    THEORY_LINESTYLE,
    UNCERTIFIED_LINESTYLE,
    Y_MARGIN,
    Y_MARGIN_MIN_DECADES,
    data_extent,
    draw_rates,
    figure_title,
    panels_figure,
    plot_panels,
    plot_rates,
    readable_numbers,
    readable_text,
    use_style,
)
from moe_theory.rates import PLUS_MINUS, gap_outcome, gap_table, rates_table
from tests.moe_theory.test_rates import (
    GAP_THEORY,
    passing_certificates,
    results_table,
    stub_theory,
)

CURVES = {("sigmoid", "D3"): -0.5, ("softmax", "D3"): -0.25}
THEORY = stub_theory({("sigmoid", "D3"): -0.5})


@pytest.fixture(scope="module")
def df():
    return results_table(CURVES)


def draw(df, curves, theory=THEORY, certificates=None):
    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    fits = draw_rates(ax, df, curves, theory=theory, certificates=certificates)
    return ax, fits


def lines(ax, style):
    return [line for line in ax.get_lines() if line.get_linestyle() == style]


def guides(ax):
    return lines(ax, THEORY_LINESTYLE)


def check_written(paths, width_in, min_height_in):
    """PNG and PDF written, the PNG ``width_in`` wide and at least ``min_height_in`` tall (the
    legends below the panels add their height)."""
    png, pdf = paths
    assert (png.suffix, pdf.suffix) == (".png", ".pdf")
    assert png.stat().st_size > 0 and pdf.stat().st_size > 0
    assert pdf.read_bytes()[:5] == b"%PDF-"
    image = matplotlib.image.imread(png)
    assert image.shape[1] == round(width_in * PNG_DPI) and image.shape[2] == 4
    assert image.shape[0] > min_height_in * PNG_DPI
    assert image[..., :3].std() > 0.05  # something was drawn on the white background


def test_plot_rates_writes_png_and_pdf_at_column_width(df, tmp_path):
    open_before = plt.get_fignums()
    curves = [("sigmoid", "D3"), ("softmax", "D3")]
    paths = plot_rates(df, curves, tmp_path / "sub" / "rates", title="t", theory=THEORY)
    assert paths == [tmp_path / "sub" / "rates.png", tmp_path / "sub" / "rates.pdf"]
    with use_style():
        width, height = matplotlib.rcParams["figure.figsize"]
    assert width == pytest.approx(3.3)
    check_written(paths, width, height)
    assert plt.get_fignums() == open_before  # nothing left open in pyplot


def test_plot_panels_grid_size(df, tmp_path):
    other = results_table(CURVES, setting="toy-sparse", seed=1)
    both = pd.concat([df, other], ignore_index=True)
    panels = [
        ("dense", "toy-dense", [("sigmoid", "D3"), ("softmax", "D3")]),
        ("sparse", "toy-sparse", [("sigmoid", "D3", "sigmoid fit")]),
        ("dense, softmax", "toy-dense", [("softmax", "D3")]),
    ]
    paths = plot_panels(both, panels, tmp_path / "panels", ncols=2, title="toy", theory=THEORY)
    w, h = PANEL_SIZE_IN
    check_written(paths, 2 * w, 2 * h)


def test_draw_rates_legend_fit_line_and_theory_guide(df):
    ax, fits = draw(df, [("sigmoid", "D3"), ("softmax", "D3", "softmax MoE")],
                    certificates=passing_certificates(df))
    legend = ax.get_legend()
    labels = [text.get_text() for text in legend.get_texts()]
    cut = [CUT_LABEL] if any(line.get_gid() == CUT_GID for line in ax.get_lines()) else []
    assert labels[2:] == [BARS_LABEL, "median", *cut, "fitted rate, certified", "theory exponent"]
    assert legend.get_title().get_text() == LEGEND_TITLE == PLUS_MINUS
    for label, name, fit in zip(labels, ["sigmoid D3", "softmax MoE"], fits, strict=False):
        # (a second line names the verdict where there is one: the tests below)
        assert label.split("\n")[0] == rf"{name}: $n^{{{fit.slope:.2f} \pm {fit.half_width:.2f}}}$"
    assert fits[0].slope == pytest.approx(-0.5, abs=0.06)
    assert fits[1].slope == pytest.approx(-0.25, abs=0.06)

    # Only sigmoid D3 has a theory exponent: one dash-dot guide, slope -0.5 in log-log, anchored
    # at the first mean.
    (guide,) = guides(ax)
    gx, gy = (np.asarray(a, dtype=float) for a in guide.get_data())
    assert np.log(gy[1] / gy[0]) / np.log(gx[1] / gx[0]) == pytest.approx(-0.5)
    sigmoid = df[(df["fit_gate"] == "sigmoid") & (df["loss_name"] == "D3")]
    first = sigmoid[sigmoid["n"] == sigmoid["n"].min()]["loss_value"].mean()
    assert (gx[0], gy[0]) == (sigmoid["n"].min(), pytest.approx(first))
    assert to_hex(guide.get_color()) == GATE_COLORS["sigmoid"]

    # The solid lines are the OLS fits: exp(intercept) * n^slope at the ends of the n range.
    solid = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
    assert [to_hex(line.get_color()) for line in solid] == [
        GATE_COLORS["sigmoid"],
        GATE_COLORS["softmax"],
    ]
    for line, fit in zip(solid, fits, strict=True):
        x, y = (np.asarray(a, dtype=float) for a in line.get_data())
        assert y == pytest.approx(np.exp(fit.intercept) * x**fit.slope)
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert ax.get_ylabel() == "Voronoi loss D3"


def test_no_theory_draws_no_guide(df):
    ax, _ = draw(df, [("softmax", "D3")])
    assert guides(ax) == []
    assert "theory exponent" not in [text.get_text() for text in ax.get_legend().get_texts()]


def test_uncertified_curves_are_dashed_and_named_not_measurable(df):
    ax, (fit,) = draw(df, [("sigmoid", "D3")])  # no certificates: not measurable
    (line,) = lines(ax, UNCERTIFIED_LINESTYLE)
    x, y = (np.asarray(a, dtype=float) for a in line.get_data())
    assert y == pytest.approx(np.exp(fit.intercept) * x**fit.slope)
    assert lines(ax, "-") == []
    label = ax.get_legend().get_texts()[0].get_text()
    # the legend says which certificates are missing, as the printed table does
    assert label.split("\n", 1)[1].replace("\n", " ") == \
        "(not measurable: reference, optimiser, overfit not run)"


def test_a_curve_says_how_far_the_fits_as_good_as_the_reference_lie(df):
    """The optimiser check's sublevel summary reaches the legend: how far the checked fits as
    good as the reference lie, tight or loose."""
    certs = passing_certificates(df)
    certs.check["curves"]["toy-dense/softmax/D3"]["sublevel"] = {
        "data_sets": 8, "ratio_median": 1.5, "ratio_max": 26.8, "ratio_max_n": 64000,
        "by_n": {"64000": 26.8}, "loose": 3}
    certs.check["curves"]["toy-dense/sigmoid/D3"]["sublevel"] = {
        "data_sets": 8, "ratio_median": 1.0, "ratio_max": 1.01, "ratio_max_n": 1000,
        "by_n": {"1000": 1.01}, "loose": 0}
    ax, _ = draw(df, [("sigmoid", "D3"), ("softmax", "D3")], certificates=certs)
    sigmoid, softmax = (t.get_text().replace("\n", " ") for t in ax.get_legend().get_texts()[:2])
    assert "(fits as good as the reference: up to 27x the loss)" in softmax
    assert "(fits as good as the reference: up to 1.01x the loss)" in sigmoid


def test_medians_are_drawn_beside_the_means(df):
    ax, _ = draw(df, [("sigmoid", "D3")])
    sigmoid = df[(df["fit_gate"] == "sigmoid") & (df["loss_name"] == "D3")]
    (medians,) = [line for line in lines(ax, "None") if line.get_marker() == "x"]
    x, y = (np.asarray(a, dtype=float) for a in medians.get_data())
    assert y == pytest.approx(sigmoid.groupby("n")["loss_value"].median().to_numpy())


def test_overlay_is_drawn_from_the_reference_certificate(df):
    certs = passing_certificates(df)
    n = [1000, 10000, 100000]
    certs.reference[("toy-dense", "sigmoid")].overlay = {
        "D3": {"n": n, "mean": [1.0, 0.3, None], "median": [0.9, 0.28, None]}}
    ax, _ = draw(df, [("sigmoid", "D3")], certificates=certs)
    (overlay,) = lines(ax, OVERLAY_LINESTYLE)
    x, y = (np.asarray(a, dtype=float) for a in overlay.get_data())
    assert list(x) == [1000, 10000] and list(y) == [1.0, 0.3]  # the undefined point left out
    assert "local prediction" in [text.get_text() for text in ax.get_legend().get_texts()]


def test_error_bars_stay_positive_under_large_spread():
    # sigma = 1.5: the sd exceeds half the mean at every n, so mean - 2 sd < 0.
    noisy = results_table({("sigmoid", "D3"): -0.5}, sigma=1.5, seed=3)
    ax, _ = draw(noisy, [("sigmoid", "D3")])
    (bars,) = ax.containers
    lows = [segment[:, 1].min() for segment in bars.lines[2][0].get_segments()]
    means = np.asarray(bars.lines[0].get_ydata(), dtype=float)
    assert min(lows) > 0
    assert np.all(np.asarray(lows) >= 0.1 * means * (1 - 1e-12))


def test_gate_colours_are_the_head_of_the_style_cycle():
    before = matplotlib.rcParams["figure.figsize"]
    with use_style():
        cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
        assert matplotlib.rcParams["axes.spines.top"] is False
        assert matplotlib.rcParams["font.family"] == ["sans-serif"]
    assert [to_hex(c) for c in cycle[:2]] == [GATE_COLORS["sigmoid"], GATE_COLORS["softmax"]]
    assert matplotlib.rcParams["figure.figsize"] == before  # the style is undone on exit


def test_draw_rates_errors_name_the_field(df):
    two_settings = df.assign(setting=np.where(df["rep"] < 10, "a", "b"))
    with pytest.raises(ValueError, match="^setting:"):
        draw(two_settings, [("sigmoid", "D3")])
    with pytest.raises(ValueError, match="^curves:"):
        draw(df, [("sigmoid", "D9")])
    with pytest.raises(ValueError, match="^curves:"):
        draw(df, ["sigmoid"])
    with pytest.raises(ValueError, match="loss_value"):
        draw(df.drop(columns="loss_value"), [("sigmoid", "D3")])
    with pytest.raises(ValueError, match="^n:"):
        draw(df.assign(n=df["n"].where(df["rep"] != 3)), [("sigmoid", "D3")])


def test_plot_panels_unknown_setting_is_named(df, tmp_path):
    with pytest.raises(ValueError, match=re.escape("'nope'")):
        plot_panels(df, [("x", "nope", [("sigmoid", "D3")])], tmp_path / "p", theory=THEORY)


# ---- layout rules ---------------------------------------------------------------------------

MIXED = {("sigmoid", "D3"): -0.5, ("softmax", "err_eta_over"): -0.25}
# The layout tests need curves, not precise slopes: a short table keeps each figure quick.
SHORT = dict(n=np.geomspace(1e3, 1e5, 5), reps=6)


def laid_out(df, panels, **kw):
    """The figure of :func:`plot_panels`, drawn (so that every extent is final)."""
    with use_style():
        fig = panels_figure(df, panels, theory=THEORY, **kw)
        fig.canvas.draw()
    return fig


def test_y_axis_names_the_loss():
    df = results_table(MIXED, **SHORT)
    ax, _ = draw(df, [("sigmoid", "D3")])
    assert ax.get_ylabel() == "Voronoi loss D3"
    ax, _ = draw(df, [("softmax", "err_eta_over")])
    assert ax.get_ylabel() == "expert error\nover-specified cells"
    # several losses on one axis: the axis names them, with commas ("D3 / D1" read as a
    # ratio), where they fit in three lines, else their family and the legend, which names
    # them in words (no bare "loss")
    both = results_table({("sigmoid", "D3"): -0.5, ("softmax", "D1"): -0.5}, **SHORT)
    ax, _ = draw(both, [("sigmoid", "D3"), ("softmax", "D1")])
    assert ax.get_ylabel() == "D3, D1"
    ax, _ = draw(df, [("sigmoid", "D3"), ("softmax", "err_eta_over")])
    assert ax.get_ylabel() == "D3, over-specified\nexpert error"
    from moe_theory.plotting import axis_label

    # a name that fits a line stays whole
    assert axis_label(["D3", "err_eta_over", "D1", "D1_matched"]) == (
        "D3, over-specified\nexpert error, D1,\nD1 (gates matched)")
    assert axis_label(["D3", "err_eta_over", "D1", "D1_matched", "D2", "err_eta_exact"]) == (
        "losses\n(see legend)")


def test_curves_are_labelled_with_their_reference():
    df = results_table(MIXED, **SHORT).assign(reference=lambda t: np.where(t["fit_gate"] == "sigmoid",
                                                                  "G_bar", "G*"))
    ax, _ = draw(df, [("sigmoid", "D3"), ("softmax", "err_eta_over")])
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels[0].startswith(r"sigmoid D3 vs $\bar G$: $n^")
    # a long name puts its rate on the next line
    assert labels[1].startswith("softmax over-specified expert error vs $G^*$:\n$n^")


def test_key_defines_the_error_bars_and_plus_minus(df):
    fig = laid_out(df, [("dense", "toy-dense", [("sigmoid", "D3"), ("softmax", "D3")])])
    (key,) = fig.legends
    labels = [text.get_text() for text in key.get_texts()]
    # one meaning of "±" in a key: the title's (the CI's); the bars say theirs in words
    assert labels[:2] == [BARS_LABEL, "median"] and "2 sd either way" in BARS_LABEL
    assert "±" not in BARS_LABEL
    # the table's header and footnote say the same: ± is the CI's half-width
    assert key.get_title().get_text() == PLUS_MINUS == "± = half-width of the bootstrap 95% CI"
    # no certificates: the fits are dashed, and the key says what dashed means
    assert "fitted rate, not measurable" in labels and "fitted rate, certified" not in labels


@pytest.mark.parametrize("panels", [2, 1])
def test_legends_are_inside_the_figure_and_below_their_panel(panels):
    """Also for one panel alone (the CPU preset's figure), whose shared key is wider than a
    panel."""
    df = results_table(MIXED, sigma=1.0, **SHORT)
    curves = [("sigmoid", "D3"), ("softmax", "err_eta_over")]
    fig = laid_out(df, [("a", "toy-dense", curves), ("b", "toy-dense", curves[:1])][:panels],
                   title="t")
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    legends = [ax.get_legend() for ax in fig.axes] + list(fig.legends)
    for legend in legends:
        box = legend.get_window_extent(renderer)
        assert page.x0 - 1 <= box.x0 and box.x1 <= page.x1 + 1
        assert page.y0 - 1 <= box.y0 and box.y1 <= page.y1 + 1
    for ax in fig.axes:
        box = ax.get_legend().get_window_extent(renderer)
        # under the data area and under the x label: nothing drawn is covered
        assert box.y1 <= ax.bbox.y0
        assert box.y1 <= ax.xaxis.label.get_window_extent(renderer).y0 + 1
    key = fig.legends[0].get_window_extent(renderer)
    assert all(key.y1 <= ax.get_legend().get_window_extent(renderer).y0 + 1 for ax in fig.axes)


def test_axes_keep_their_height_when_the_legend_grows(df):
    # four two-line legend entries below the panel: the figure grows, not the axes shrink
    four = results_table({("sigmoid", "D3"): -0.5, ("sigmoid", "D1"): -0.5,
                          ("softmax", "D3"): -0.25, ("softmax", "D1"): -0.25}, **SHORT)
    curves = [("sigmoid", "D3"), ("sigmoid", "D1"), ("softmax", "D3"), ("softmax", "D1")]
    fig = laid_out(four, [("a", "toy-dense", curves)])
    (ax,) = fig.axes
    assert ax.bbox.height / fig.dpi > 0.6 * PANEL_SIZE_IN[1]
    assert fig.get_size_inches()[1] > PANEL_SIZE_IN[1] + ax.get_legend().get_window_extent(
        fig.canvas.get_renderer()).height / fig.dpi * 0.9


def test_y_limits_fit_the_data_not_the_guides():
    # a flat curve whose theory guide (slope -0.5) falls two decades over the grid: the axis
    # spans the means, bars and medians, not the guide
    flat = results_table({("sigmoid", "D3"): 0.0}, sigma=0.3)
    ax, _ = draw(flat, [("sigmoid", "D3")])
    lo, hi = np.log10(data_extent(ax))
    y0, y1 = np.log10(ax.get_ylim())
    margin = max(Y_MARGIN * (hi - lo), Y_MARGIN_MIN_DECADES)
    assert y0 == pytest.approx(lo - margin) and y1 == pytest.approx(hi + margin)
    assert y1 - y0 < 2.0  # the guide alone would need more than two decades
    (guide,) = guides(ax)
    assert min(guide.get_ydata()) < 10**y0  # clipped by the axes, not widening them


def test_a_panel_without_drawable_curves_is_left_out():
    df = results_table(CURVES, **SHORT)
    other = results_table(CURVES, setting="toy-empty", **SHORT).assign(loss_value=np.nan)
    both = pd.concat([df, other], ignore_index=True)
    fig = laid_out(both, [("dense", "toy-dense", [("sigmoid", "D3")]),
                          ("empty", "toy-empty", [("sigmoid", "D3")]),
                          ("dense again", "toy-dense", [("softmax", "D3")])])
    assert [ax.get_title() for ax in fig.axes] == ["dense", "dense again"]
    # a panel keeps its drawable curves only
    mixed = pd.concat([df, other.assign(setting="toy-dense", loss_name="D1")], ignore_index=True)
    fig = laid_out(mixed, [("dense", "toy-dense", [("sigmoid", "D3"), ("sigmoid", "D1")])])
    (ax,) = fig.axes
    assert len(ax.get_legend().get_texts()) == 1
    with pytest.raises(ValueError, match="^panels: no panel"):
        laid_out(other, [("empty", "toy-empty", [("sigmoid", "D3")])])


def test_titles_are_words_not_ids(df):
    fig = laid_out(df, [("toy-dense", "toy-dense", [("sigmoid", "D3")]),
                        (None, "toy-dense", [("softmax", "D3")])], title="nguyen2024")
    # (wrapped where the column is too narrow: compare the words)
    titles = [ax.get_title().split() for ax in fig.axes]
    assert titles == ["ReLU experts, linear score dense softmax truth, d=4, k*=2, k=3".split()] * 2
    suptitle = fig.get_suptitle()
    assert "nguyen2024" not in suptitle and suptitle.replace("\n", " ") == figure_title(
        "nguyen2024")
    assert figure_title("my own title") == "my own title"


def test_a_title_names_the_references_as_the_legends_do(df):
    """A description's plain "G_bar" and "G*" (its text is hashed with its config) are drawn as
    the legends draw them, whole words only; a config id that contains them is left alone."""
    assert readable_text("sigmoid fits against the G_bar of the wide search, n = 1e5") == (
        r"sigmoid fits against the $\bar G$ of the wide search, n = $10^{5}$")
    assert readable_text("D1 vs G*, G*x and my_G_bar") == r"D1 vs $G^*$, G*x and my_G_bar"
    fig = laid_out(df, [("toy-dense", "toy-dense", [("sigmoid", "D3")])],
                   title="Dense truths: sigmoid fits against the G_bar of the wide search")
    assert "G_bar" not in fig.get_suptitle() and r"$\bar G$" in fig.get_suptitle()


def test_a_titles_numbers_read_as_the_axes_write_them(df):
    """A description's "n = 1.6e6" is drawn as the tick labels draw sample sizes; names and
    versions are left alone; the title wraps as its plain text does (mathtext's source is
    longer than what it draws, and a title wrapped on it took a fourth line)."""
    assert readable_numbers("sigmoid vs softmax to n = 1.6e6") == (
        r"sigmoid vs softmax to n = $1.6\cdot10^{6}$")
    assert readable_numbers("n = 4e3..3.2e4, 1e+05") == (
        r"n = $4\cdot10^{3}$..$3.2\cdot10^{4}$, $10^{5}$")
    assert readable_numbers("gelu_d4e6, v1.2e3x, 1.2.3e4") == "gelu_d4e6, v1.2e3x, 1.2.3e4"
    # whole numbers from seven digits on; a year, a count and a name's digits left alone
    assert readable_numbers("on 2000000 design points, 1234567 fits") == (
        r"on $2\cdot10^{6}$ design points, $1.235\cdot10^{6}$ fits")
    assert readable_numbers("2026, 999999 fits, run_20000000, 1.2000000") == (
        "2026, 999999 fits, run_20000000, 1.2000000")
    title = ("Softmax MoE on a d = 4 dense softmax truth, GELU experts, box 10x in beta0 and 3x "
             "in the rest, 2000 iterations, 32 wide starts, n 5.1e5 to 4.1e6")
    fig = laid_out(df, [("toy-dense", "toy-dense", [("sigmoid", "D3")])], title=title)
    lines = fig.get_suptitle().split("\n")
    assert lines[-1].endswith(r"$5.1\cdot10^{5}$ to $4.1\cdot10^{6}$") and "e6" not in lines[-1]
    plain = laid_out(df, [("toy-dense", "toy-dense", [("sigmoid", "D3")])],
                     title=title.replace("5.1e5", "5.1x").replace("4.1e6", "4.1y"))
    assert len(lines) == len(plain.get_suptitle().split("\n"))


def test_titles_of_neighbouring_panels_do_not_overlap():
    # the longest words a Y25 setting gets, three panels to a row
    long = results_table(CURVES, **SHORT).assign(expert="poly2", score="quadratic", regime="sparse")
    fig = laid_out(long, [(None, "toy-dense", [("sigmoid", "D3")])] * 3, ncols=3)
    renderer = fig.canvas.get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes]
    for left, right in zip(boxes, boxes[1:], strict=False):
        assert left.x1 <= right.x0
    assert boxes[0].x0 >= 0 and boxes[-1].x1 <= fig.bbox.x1 + 1


def test_a_short_grid_labels_its_sample_sizes():
    # under ~a decade of n, a log axis labels one power of ten at most: the grid's n are labelled
    short = results_table(CURVES, n=np.array([500, 1000, 2000, 4000]))
    ax, _ = draw(short, [("sigmoid", "D3")])
    ax.figure.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["500", "1000", "2000", "4000"]
    ax, _ = draw(results_table(CURVES), [("sigmoid", "D3")])  # 1e3..1e5: powers of ten
    assert "1000" not in [t.get_text() for t in ax.get_xticklabels()]
    # wider than 1.2 decades, yet 10^4 is its only power of ten: labelled by its sample sizes
    one_power = results_table(CURVES, n=np.array([4000, 8000, 16000, 32000, 64000]))
    ax, _ = draw(one_power, [("sigmoid", "D3")])
    ax.figure.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["4000", "8000", "16000", "32000",
                                                           "64000"]


def test_large_sample_sizes_are_labelled_as_powers_of_ten():
    from moe_theory.plotting import sample_size_label

    assert [sample_size_label(m) for m in (500, 64000, 128000, 1024000, 1e6)] == [
        "500", "64000", r"$1.28\cdot10^{5}$", r"$1.024\cdot10^{6}$", r"$10^{6}$"]
    wide = results_table(CURVES, n=np.array([128000, 256000, 512000, 1024000, 2048000]))
    ax, _ = draw(wide, [("sigmoid", "D3")])
    ax.figure.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()][-1] == r"$2.048\cdot10^{6}$"


def test_large_ratios_in_a_legend_read_as_powers_of_ten():
    from moe_theory.plotting import power_of_ten_label, ratio_label

    # below 10^4 the tables' digits; above, two significant digits (878321 says no more than
    # 8.8·10^5), a mantissa rounded up to 10 carried into the exponent
    assert [ratio_label(v) for v in (1.0041, 9.994, 3922.6, 878321.4, 9.96e6, float("nan"))] == [
        "1.00", "9.99", "3923", r"$8.8\cdot10^{5}$", r"$10^{7}$", "-"]
    assert power_of_ten_label(99999.0, digits=4) == r"$10^{5}$"


def test_powers_of_ten_counts_the_labelled_ticks_of_a_range():
    from moe_theory.plotting import powers_of_ten

    assert powers_of_ten(4000, 64000) == 1
    assert powers_of_ten(1000, 10000) == 2
    assert powers_of_ten(999.9999999999, 1e5) == 3
    assert powers_of_ten(2000, 9000) == 0


def test_y_labels_fit_beside_their_axes():
    # long names would run above the axes into the title: two lines, or the family name
    losses = ["err_beta1_exact", "err_eta_exact", "err_beta1_over", "err_eta_over"]
    df = results_table({("sigmoid", loss): -0.5 for loss in losses}, **SHORT)
    for shown, label in ((losses[:1], "gate-slope error\nexact cells"),
                         (losses[:2], "exact gate-slope error,\nexact expert error"),
                         (losses, "parameter errors\n(see legend)")):
        fig = laid_out(df, [(None, "toy-dense", [("sigmoid", loss) for loss in shown])])
        (ax,) = fig.axes
        assert ax.get_ylabel() == label
        box = ax.yaxis.label.get_window_extent(fig.canvas.get_renderer())
        assert ax.bbox.y0 - 1 <= box.y0 and box.y1 <= ax.bbox.y1 + 1


def test_legends_taller_than_their_panel_leave_the_layout_applied():
    """Four curves' legend below one panel is taller than the panel: the titles are wrapped on a
    layout at the height the figure will have, so constrained layout applies (it warned, and
    the titles were wrapped to the unlaid-out axes' widths) and the title stays inside its
    axes' column."""
    losses = ["err_beta1_exact", "err_eta_exact", "err_beta1_over", "err_eta_over"]
    df = results_table({("sigmoid", loss): -0.5 for loss in losses}, **SHORT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = laid_out(df, [(None, "toy-dense", [("sigmoid", loss) for loss in losses])])
    (ax,) = fig.axes
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    assert legend.height > ax.bbox.height  # the case that warned
    title = ax.title.get_window_extent(renderer)
    assert 0 <= title.x0 and title.x1 <= fig.bbox.width


def test_a_certified_curve_with_a_wide_ci_is_named_inconclusive():
    """Every certificate passes, but the CI is wider than a verdict allows: the legend says
    so, as the verdict table does, instead of showing a bare certified rate."""
    from moe_theory.rates import CI_HALF_WIDTH_MAX

    noisy = results_table(CURVES, sigma=3.0, seed=1)
    ax, (fit,) = draw(noisy, [("sigmoid", "D3")], certificates=passing_certificates(noisy))
    assert fit.half_width > CI_HALF_WIDTH_MAX
    assert len(lines(ax, "-")) == 1  # drawn as certified
    label = ax.get_legend().get_texts()[0].get_text()
    assert label.endswith("(inconclusive: CI too wide)")


def test_a_certified_curve_names_its_verdict():
    """Every certificate passes and the CI is narrow: the legend gives the verdict against the
    theory, as the verdict table does."""
    df = results_table(CURVES, sigma=0.05, seed=2)
    ax, (fit,) = draw(df, [("sigmoid", "D3")], certificates=passing_certificates(df))
    label = ax.get_legend().get_texts()[0].get_text()
    assert len(lines(ax, "-")) == 1
    assert label.endswith("(certified, consistent with theory)"), (label, fit)


def test_a_certified_curve_without_a_theory_exponent_says_both():
    """D2 has no exponent in the theory table: certified with a narrow CI, its legend says the
    rate is the estimator's with nothing to compare (it had said nothing, as a bare rate)."""
    df = results_table({("sigmoid", "D2"): -0.5}, sigma=0.05, seed=2)
    ax, (fit,) = draw(df, [("sigmoid", "D2")], certificates=passing_certificates(df))
    label = ax.get_legend().get_texts()[0].get_text()
    assert fit.half_width < 0.075 and len(lines(ax, "-")) == 1
    assert label.endswith("(certified; no theory to compare)"), label


def test_a_curve_says_how_many_values_it_left_out_and_why(df):
    """Values a curve cannot use (a fit on the box, a NaN loss) are counted in its legend entry,
    as the printed table's "dropped" column counts them; a curve that lost none says nothing."""
    lossy = df.assign(bound_active=False)
    softmax = (lossy["fit_gate"] == "softmax").to_numpy()
    rows = np.flatnonzero(softmax)
    lossy.loc[lossy.index[rows[:3]], "bound_active"] = True
    lossy.loc[lossy.index[rows[5]], "loss_value"] = np.nan
    ax, fits = draw(lossy, [("sigmoid", "D3"), ("softmax", "D3")])
    sigmoid, softmax_label = (t.get_text().replace("\n", " ")
                              for t in ax.get_legend().get_texts()[:2])
    assert fits[1].n_dropped == 4
    values = int(softmax.sum())
    assert f"(left out of {values}: 1 NaN, 3 fits on the box)" in softmax_label
    assert "left out" not in sigmoid


def test_a_certified_curve_on_too_few_sample_sizes_is_drawn_not_measurable():
    """Every certificate passes, but three sample sizes allow no verdict (the table says "not
    measurable (3 usable n < 4)"): the legend says why and the line is dashed, as for a
    failed certificate, instead of a solid line a reader takes for a certified rate."""
    from tests.moe_theory.test_rates import N_GRID

    short = results_table(CURVES, n=N_GRID[:3], sigma=0.05, seed=2)
    ax, (fit,) = draw(short, [("sigmoid", "D3")], certificates=passing_certificates(short))
    assert fit.n_points == 3
    assert lines(ax, "-") == [] and len(lines(ax, "--")) == 1
    label = ax.get_legend().get_texts()[0].get_text().replace("\n", " ")
    assert label.endswith("(not measurable: 3 usable n < 4)")


def test_a_sample_size_left_out_is_named_in_the_legend(df):
    """An n left with one usable value is no point of the curve: the legend names it, as the
    table's dropped_n does, beside the count of the values that were unusable."""
    first = df["n"].min()
    lossy = df.copy()
    gone = (lossy["fit_gate"] == "softmax") & (lossy["n"] == first) & (lossy["rep"] > 0)
    lossy.loc[gone, "loss_value"] = np.nan
    ax, fits = draw(lossy, [("sigmoid", "D3"), ("softmax", "D3")])
    assert fits[1].dropped_n == (float(first),)
    sigmoid, softmax = (t.get_text().replace("\n", " ") for t in ax.get_legend().get_texts()[:2])
    assert f"(n = {first:g} left out: fewer than 2 usable values)" in softmax
    assert "left out" not in sigmoid


def test_many_sample_sizes_left_out_are_counted_not_listed(df):
    """More than LEGEND_MAX_SIZES sample sizes left out would take a legend line each: the entry
    counts them against the grid instead."""
    from moe_theory.plotting import LEGEND_MAX_SIZES

    grid = sorted(df["n"].unique())
    lost = grid[: LEGEND_MAX_SIZES + 1]
    lossy = df.copy()
    gone = (lossy["fit_gate"] == "softmax") & lossy["n"].isin(lost) & (lossy["rep"] > 0)
    lossy.loc[gone, "loss_value"] = np.nan
    ax, fits = draw(lossy, [("softmax", "D3")])
    assert len(fits[0].dropped_n) == len(lost)
    label = ax.get_legend().get_texts()[0].get_text().replace("\n", " ")
    assert (f"({len(lost)} of {len(grid)} sample sizes left out: fewer than 2 usable values)"
            in label)


# ---- the gap between the gates in a panel's legend ---------------------------------------------

def gap_entry(ax):
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    gap = [label for label in labels if label.startswith("gap between the gates:")]
    assert len(gap) <= 1
    return gap[0] if gap else None


def test_a_panel_says_the_gap_between_its_gates_as_the_table_does():
    """Sigmoid D3 at n^-1/2 against softmax err_eta_over at n^0 (theory -1/4), every curve
    certified: the table's gap section calls it exhibited (SIGMA 0.3 over 20 replications: the
    slopes lie some 15 half-widths apart, tests/moe_theory/test_rates.py), and so does the panel,
    with the same range of the difference; softmax D1 (theory -1/2, as D3's) is no pair."""
    curves = {("sigmoid", "D3"): -0.5, ("softmax", "err_eta_over"): 0.0, ("softmax", "D1"): 0.0}
    table_df = results_table(curves)
    ax, _ = draw(table_df, list(curves), theory=GAP_THEORY,
                 certificates=passing_certificates(table_df))
    entry = gap_entry(ax)
    assert entry is not None and entry.count("\n") >= 1
    words = " ".join(entry.split())
    assert words.startswith("gap between the gates: sigmoid D3 vs softmax over-specified expert "
                            "error: exhibited (softmax slope minus sigmoid slope in [")
    assert "D1" not in words
    # the same curves through the rates table, with the figure's bootstrap (curve_fit's
    # defaults): the panel's words are the table's, to every digit they print
    table = rates_table(table_df, GAP_THEORY, certificates=passing_certificates(table_df))
    (g,) = [g for _, g in gap_table(table.assign(plotted=True)).iterrows()]
    assert words.endswith(f"expert error: {gap_outcome(g, reasons=False)}")
    assert gap_outcome(g).startswith("exhibited (softmax slope minus sigmoid slope in [")


def test_a_panel_names_the_curve_that_keeps_its_gap_unmeasured():
    curves = {("sigmoid", "D3"): -0.5, ("softmax", "err_eta_over"): 0.0}
    table_df = results_table(curves)
    ax, _ = draw(table_df, list(curves), theory=GAP_THEORY)  # no certificates
    assert " ".join(gap_entry(ax).split()).endswith(
        "not measurable (the sigmoid and the softmax curves)")
    certificates = passing_certificates(table_df)
    certificates.reference.pop(("toy-dense", "softmax"))
    ax, _ = draw(table_df, list(curves), theory=GAP_THEORY, certificates=certificates)
    assert " ".join(gap_entry(ax).split()).endswith("not measurable (the softmax curve)")


def test_a_panel_of_one_gate_or_without_a_slower_softmax_curve_has_no_gap_entry(df):
    ax, _ = draw(df, [("sigmoid", "D3")], certificates=passing_certificates(df))
    assert gap_entry(ax) is None
    # softmax D3 has no theory exponent here: nothing to compare the sigmoid rate with
    ax, _ = draw(df, [("sigmoid", "D3"), ("softmax", "D3")], certificates=passing_certificates(df))
    assert gap_entry(ax) is None


def test_a_curve_given_its_own_label_is_named_by_it_in_the_gap_entry():
    """A panel whose curves carry their own labels names them so in its gap entry too: the
    reader matches the gap's pair to the curves' entries above it by those words."""
    curves = {("sigmoid", "D3"): -0.5, ("softmax", "err_eta_over"): 0.0}
    table_df = results_table(curves)
    ax, _ = draw(table_df, [("sigmoid", "D3", "sigmoid atoms"),
                            ("softmax", "err_eta_over", "softmax split experts")],
                 theory=GAP_THEORY)
    words = " ".join(gap_entry(ax).split())
    assert words.startswith("gap between the gates: sigmoid atoms vs softmax split experts: "
                            "not measurable")
    # one curve labelled, the other named by its loss as before
    ax, _ = draw(table_df, [("sigmoid", "D3"), ("softmax", "err_eta_over", "split experts")],
                 theory=GAP_THEORY)
    assert " ".join(gap_entry(ax).split()).startswith(
        "gap between the gates: sigmoid D3 vs split experts: not measurable")


def test_a_lower_bar_cut_at_the_floor_is_marked_and_keyed():
    """mean - 2 sd below a tenth of the mean: the bar stops there (a log axis), which a reader
    took for the spread; the cut ends are marked and the key says what the mark means."""
    df = results_table({("sigmoid", "D3"): -0.5}, **SHORT)
    first = df["n"] == df["n"].min()
    df.loc[first & (df["rep"] == 0), "loss_value"] *= 30  # one fit far above: sd > mean / 2
    ax, (fit,) = draw(df, [("sigmoid", "D3")])
    (cut,) = [line for line in ax.get_lines() if line.get_gid() == CUT_GID]
    n, y = cut.get_data()
    values = df.loc[first, "loss_value"]
    assert list(n) == [df["n"].min()]
    assert y[0] == pytest.approx(0.1 * values.mean())
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert CUT_LABEL in labels
    calm = results_table({("sigmoid", "D3"): -0.5}, sigma=0.05, **SHORT)
    ax, _ = draw(calm, [("sigmoid", "D3")])
    assert not [line for line in ax.get_lines() if line.get_gid() == CUT_GID]
    assert CUT_LABEL not in [text.get_text() for text in ax.get_legend().get_texts()]


def test_a_curve_without_theory_says_why_it_is_not_measurable():
    """A study's curves (no theorem, so no verdict) said only "(not measurable)" in the legend
    while its table named the certificates not run."""
    from types import SimpleNamespace

    df = results_table({("sigmoid", "D3"): -0.5}, **SHORT)
    ax, _ = draw(df, [("sigmoid", "D3")],
                 theory=lambda *_: SimpleNamespace(exponent=None, label="none", source=""))
    (entry,) = [t.get_text() for t in ax.get_legend().get_texts() if t.get_text().startswith("sigmoid")]
    assert "(not measurable: converged, optimiser\nfailed; reference, overfit not run)" in entry
