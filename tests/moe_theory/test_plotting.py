"""Figures: files written at the style's size, curves drawn where the data and the fit put them."""

from __future__ import annotations

import re

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
    GATE_COLORS,
    LEGEND_TITLE,
    OVERLAY_LINESTYLE,
    PANEL_SIZE_IN,
    PNG_DPI,
    THEORY_LINESTYLE,
    UNCERTIFIED_LINESTYLE,
    draw_rates,
    make_room_for_legend,
    plot_panels,
    plot_rates,
    use_style,
)
from tests.moe_theory.test_rates import passing_certificates, results_table, stub_theory

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


def check_written(paths, shape):
    png, pdf = paths
    assert (png.suffix, pdf.suffix) == (".png", ".pdf")
    assert png.stat().st_size > 0 and pdf.stat().st_size > 0
    assert pdf.read_bytes()[:5] == b"%PDF-"
    image = matplotlib.image.imread(png)
    assert image.shape == shape
    assert image[..., :3].std() > 0.05  # something was drawn on the white background


def test_plot_rates_writes_png_and_pdf_at_column_width(df, tmp_path):
    open_before = plt.get_fignums()
    curves = [("sigmoid", "D3"), ("softmax", "D3")]
    paths = plot_rates(df, curves, tmp_path / "sub" / "rates", title="t", theory=THEORY)
    assert paths == [tmp_path / "sub" / "rates.png", tmp_path / "sub" / "rates.pdf"]
    with use_style():
        width, height = matplotlib.rcParams["figure.figsize"]
    assert width == pytest.approx(3.3)
    check_written(paths, (round(height * PNG_DPI), round(width * PNG_DPI), 4))
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
    check_written(paths, (round(2 * h * PNG_DPI), round(2 * w * PNG_DPI), 4))


def test_draw_rates_legend_fit_line_and_theory_guide(df):
    ax, fits = draw(df, [("sigmoid", "D3"), ("softmax", "D3", "softmax MoE")],
                    certificates=passing_certificates(df))
    legend = ax.get_legend()
    labels = [text.get_text() for text in legend.get_texts()]
    assert labels[2:] == ["mean ± 2 sd", "median", "theory"]
    assert legend.get_title().get_text() == LEGEND_TITLE == "slope ± 95% CI half-width"
    for label, name, fit in zip(labels, ["sigmoid D3", "softmax MoE"], fits, strict=False):
        assert label == rf"{name}: $n^{{{fit.slope:.2f} \pm {fit.half_width:.2f}}}$"
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
    assert ax.get_ylabel() == "Voronoi loss"


def test_no_theory_draws_no_guide(df):
    ax, _ = draw(df, [("softmax", "D3")])
    assert guides(ax) == []
    assert "theory" not in [text.get_text() for text in ax.get_legend().get_texts()]


def test_uncertified_curves_are_dashed_and_named_not_measurable(df):
    ax, (fit,) = draw(df, [("sigmoid", "D3")])  # no certificates: not measurable
    (line,) = lines(ax, UNCERTIFIED_LINESTYLE)
    x, y = (np.asarray(a, dtype=float) for a in line.get_data())
    assert y == pytest.approx(np.exp(fit.intercept) * x**fit.slope)
    assert lines(ax, "-") == []
    label = ax.get_legend().get_texts()[0].get_text()
    assert label.endswith("(not measurable)")


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


def legend_gap(ax):
    """Display-space gap from the legend's top to the lowest error bar above it (< 0: overlap)."""
    ax.figure.canvas.draw()
    box = ax.get_legend().get_window_extent()
    bars = ax.containers[0].lines[2][0].get_segments()
    bottoms = np.array([ax.transData.transform(segment[0]) for segment in bars])
    covered = bottoms[bottoms[:, 0] <= box.x1]
    assert len(covered) > 0
    return covered[:, 1].min() - box.y1


def test_legend_is_moved_clear_of_the_data():
    # Wide error bars (sigma = 1) reach into the lower-left corner where the legend goes.
    noisy = results_table(CURVES, sigma=1.0)
    with use_style():
        fig = Figure()
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        draw_rates(ax, noisy, [("sigmoid", "D3"), ("softmax", "D3")], theory=THEORY)
        fig.get_layout_engine().execute(fig)
        assert legend_gap(ax) < 0
        top = ax.get_ylim()[1]
        make_room_for_legend(ax)
        assert legend_gap(ax) > 0
    assert ax.get_ylim()[1] == top  # only the bottom moves


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
