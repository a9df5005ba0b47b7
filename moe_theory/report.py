"""The verdict report of a results folder: every curve's rate against the theory, in one file.

``moe-theory report DIR`` reads a folder written by a sweep or ``reproduce`` (``results.parquet``,
``shards/`` or ``results.csv``; the config from ``manifest.json``; ``run.json`` when present) and
writes ``DIR/report.md``, which links the figures next to it, and with ``html=True`` also
``DIR/report.html``, which embeds them, so that the one file can be mailed or archived.

Rates, verdicts and figures come from :func:`moe_theory.rates.rates_table`,
:func:`moe_theory.outputs.figure_panels` and :func:`moe_theory.plotting.plot_panels`; this module
only gathers and lays them out.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from moe_theory import certificates as cert
from moe_theory.certificates import FolderCertificates, ReferenceCertificate
from moe_theory.config import SweepConfig, named_config, named_configs
from moe_theory.layout import MANIFEST_FILE, REPORT_HTML, REPORT_MD, RUN_FILE
from moe_theory.outputs import figure_panels, mark_plotted
from moe_theory.plotting import figure_title, plot_panels, setting_words
from moe_theory.population import GBAR_STARTS
from moe_theory.rates import (
    BEND_P_MAX,
    CERT_COLUMNS,
    CERT_SHORT,
    CI_HALF_WIDTH_MAX,
    CI_LEVEL,
    CURVE_KEYS,
    LEFT_OUT_SHARE_MAX,
    MIN_POINTS,
    MIN_REPS_PER_N,
    PLUS_MINUS,
    REQUIRED_COLUMNS,
    VERDICT_WIDEN,
    check_columns,
    gap_outcome,
    gap_table,
    rates_table,
)
from moe_theory.store import atomic_write, load_results, read_manifest_config
from moe_theory.sublevel import format_ratio

#: A run record's wall time and what it timed, in the order a report looks for them.
RUN_WALL_TIMES = (("wall_s_this_call", "from the call"), ("wall_s_process", "the process"),
                  ("sweep_wall_s", "the sweep"))

#: Suffix of the figure that shows every curve, one panel per (setting, fitted gate, loss family).
CURVES_FIGURE_SUFFIX = "-curves"
#: Panels per row of that figure: four 2.3 in panels fill a 9 in wide page or screen.
CURVES_FIGURE_NCOLS = 4
# Per-fit columns the report needs besides the rates table's (docs/theory.md#results-table).
REPORT_COLUMNS = REQUIRED_COLUMNS + ("device", "backend", "config_hash")


@dataclass(frozen=True)
class FolderReport:
    """Everything the report shows about one results folder.

    Attributes
    ----------
    folder : the results folder.
    config : the sweep config that produced the results.
    config_source : where the config was found (``manifest.json`` or a named config).
    results : tidy results table (docs/theory.md#results-table).
    rates : :func:`~moe_theory.rates.rates_table` plus ``device`` and ``backend`` per curve and
        ``plotted``, the curves the config's figure draws (:func:`~moe_theory.outputs.mark_plotted`):
        the report lists them first, the other curves below.
    run : the folder's ``run.json`` (written by ``reproduce``), or empty.
    figures : PNG files written for the report, each with a caption.
    certificates : the folder's reference certificates and optimiser check.
    """

    folder: Path
    config: SweepConfig
    config_source: str
    results: pd.DataFrame
    rates: pd.DataFrame
    run: dict
    figures: list[tuple[Path, str]]
    certificates: FolderCertificates


def read_results(folder: Path) -> pd.DataFrame:
    """The tidy table of ``folder``: ``results.parquet`` or ``shards/``, else ``results.csv``."""
    if not folder.is_dir():
        raise ValueError(f"DIR: {folder} is not a folder")
    return load_results(folder)


def read_config(folder: Path, results: pd.DataFrame) -> tuple[SweepConfig, str]:
    """The config of ``folder``: ``manifest.json`` (presented as its named config is now:
    :func:`moe_theory.store.read_manifest_config`), else the named config (plain or ``--fast``)
    whose hash the results carry (folders committed before manifests were: the hash still ties
    them to their config)."""
    if (folder / MANIFEST_FILE).exists():
        return read_manifest_config(folder), MANIFEST_FILE
    hashes = set(results["config_hash"].astype(str))
    named = named_config(hashes, named_configs())
    if named is not None:
        return named
    raise ValueError(f"DIR: {folder} has no manifest.json and its config_hash "
                     f"{', '.join(sorted(hashes))} matches no named config")


def read_run(path: Path) -> dict:
    """``run.json`` as ``reproduce`` writes it (device name, wall time, torch), or empty."""
    if not path.exists():
        return {}
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError: the file named
        raise ValueError(f"DIR: {path} is not valid JSON ({err})") from None
    if not isinstance(run, dict):
        raise ValueError(f"DIR: {path} must hold a JSON object, got {type(run).__name__}")
    return run


def curve_devices(results: pd.DataFrame) -> pd.DataFrame:
    """``device`` and ``backend`` of each curve (values joined by ``/`` when a curve mixes them)."""
    joined = results.groupby(list(CURVE_KEYS), sort=True)[["device", "backend"]].agg(
        lambda values: "/".join(sorted(set(map(str, values)))))
    return joined.reset_index()


def curves_figure_panels(rates: pd.DataFrame) -> list[tuple[str, str, list]]:
    """One panel per (setting, fitted gate, loss family): Voronoi losses apart from parameter
    errors, whose scales differ. Curves with fewer than two usable sample sizes have no rate and
    are left out of the figure (the table still lists them). Titles are words: the setting
    (:func:`~moe_theory.plotting.setting_words`), then the fitted gate and the loss family."""
    panels = []
    drawable = rates[rates["n_used"] >= 2]
    for (setting, gate), group in drawable.groupby(["setting", "fit_gate"], sort=True):
        is_error = group["loss_name"].str.startswith("err_")
        for family, losses in (("Voronoi losses", group[~is_error]),
                               ("parameter errors", group[is_error])):
            if not losses.empty:
                curves = [(gate, loss, loss) for loss in losses["loss_name"]]
                panels.append((f"{setting_words(losses)}\n{gate} fit, {family}", setting,
                               curves))
    return panels


def build_report(folder: str | Path) -> FolderReport:
    """Read ``folder``, fit every curve's rate and write the report's figures into it.

    Returns
    -------
    FolderReport
        The figures are ``DIR/<config name>.png`` (the config's own figure, as ``reproduce`` and
        ``moe-theory plot`` draw it) and ``DIR/<config name>-curves.png`` (every curve), each
        with its PDF.
    """
    folder = Path(folder)
    results = read_results(folder)
    if results.empty:
        raise ValueError(f"DIR: {folder} has no results (the results table is empty)")
    check_columns(results, REPORT_COLUMNS)
    config, source = read_config(folder, results)
    certificates = FolderCertificates.load(folder)
    rates = rates_table(results, certificates=certificates).merge(
        curve_devices(results), on=list(CURVE_KEYS), how="left")
    run = read_run(folder / RUN_FILE)
    figures = []
    # The figures get every row, as the table does: their legends' certificates and left-out
    # counts are read from the same fits (figure_panels and plot_panels skip a loss undefined in
    # every fit, an over-specified error without an over-specified cell, themselves).
    panels = figure_panels(results, config)
    mark_plotted(rates, panels)
    title = figure_title(config.description or config.name)
    if panels:
        png = plot_panels(results, panels, folder / config.name, title=title,
                          certificates=certificates)[0]
        figures.append((png, f"{config.name}: the curves the config plots (listed first in the "
                             "table): means with bars 2 sd either way (a bar cut at a "
                             "tenth of its mean marked) and medians, fitted rates (solid when "
                             "certified, dashed when not measurable), theory guides (dash-dot) "
                             "and the asymptotic overlay (dotted)"))
    panels = curves_figure_panels(rates)
    if panels:
        png = plot_panels(results, panels, folder / f"{config.name}{CURVES_FIGURE_SUFFIX}",
                          ncols=min(len(panels), CURVES_FIGURE_NCOLS), title=title,
                          certificates=certificates)[0]
        figures.append((png, "every curve with a rate, one panel per setting, fitted gate and "
                             "loss family"))
    return FolderReport(folder, config, source, results, rates, run, figures, certificates)


# ---- the document: blocks rendered to Markdown or HTML ----------------------------------------

Table = tuple[list[str], list[list[str]]]


def _share(value: float) -> str:
    return "-" if pd.isna(value) else f"{value:.0%}"


def _signed(value: float) -> str:
    return "-" if pd.isna(value) else f"{value:+.2f}"


def _sublevel(r: pd.Series) -> str:
    """A curve's sublevel reading: the largest ratio, then how many of its data sets are loose."""
    if "sublevel_max" not in r or pd.isna(r["sublevel_max"]):
        return "-"
    return (f"{format_ratio(r['sublevel_max'])} ({int(r['sublevel_loose'])} / "
            f"{int(r['sublevel_data_sets'])})")


def curve_rows(rates: pd.DataFrame) -> Table:
    """The per-curve table: rates (mean and median), theory, certificates, verdict, the overlay,
    optimisation health (the sublevel reading among it: moe_theory.sublevel), time and
    device."""
    header = ["setting", "fit", "loss", f"slope (± {CI_LEVEL:.0%} CI)", "median slope", "R²",
              "n (used) × reps", "dropped", "theory", "source", "verdict", "reference",
              "converged", "optimiser", "over-fit", "follows overlay from n", "certified",
              "sublevel (loose / data sets)", "fit time (s)", "device"]
    rows = []
    for _, r in rates.iterrows():
        slope = _signed(r["slope"]) + ("" if pd.isna(r["ci_half_width"])
                                       else f" ± {r['ci_half_width']:.2f}")
        theory = "-" if pd.isna(r["theory_exponent"]) else (
            f"{r['theory_exponent']:+.2f} ({r['theory_label']})")
        rows.append([
            str(r["setting"]), str(r["fit_gate"]), str(r["loss_name"]), slope,
            _signed(r["slope_median"]), "-" if pd.isna(r["r2"]) else f"{r['r2']:.3f}",
            f"{r['n_min']}–{r['n_max']} ({r['n_used']}) × {r['reps_used']}", str(r["n_dropped"]),
            theory, str(r["theory_source"] or "-"), str(r["verdict"]),
            *(CERT_SHORT.get(r[c], str(r[c])) for c in CERT_COLUMNS),
            "-" if pd.isna(r["overlay_from_n"]) else f"{r['overlay_from_n']:g}",
            _share(r["certified_share"]), _sublevel(r), f"{r['wall_s']:.1f}",
            f"{r['device']} ({r['backend']})",
        ])
    return header, rows


GAP_NOTE = ("Each plotted curve of the sigmoid fit against each plotted curve of the softmax "
            "fit whose theory rate is slower: exhibited only where both slopes are the "
            "estimator's (not measurable otherwise, naming the curve and why) and their 95% "
            "intervals lie apart (docs/theory.md#the-gap-between-the-gates).")


def gap_rows(gaps: pd.DataFrame) -> Table:
    """The gap between the gates (:func:`moe_theory.rates.gap_table`), one row per pair: the two
    slopes with their intervals, and the outcome as the rates table words it
    (:func:`moe_theory.rates.gap_outcome`: the difference's range where exhibited or reversed)."""
    header = ["setting", "sigmoid fit", "softmax fit", "theory", "gap"]
    rows = []
    for _, g in gaps.iterrows():
        sides = [f"{g[f'{gate}_loss']} {_signed(g[f'{gate}_slope'])} "
                 f"[{_signed(g[f'{gate}_ci_low'])}, {_signed(g[f'{gate}_ci_high'])}]"
                 for gate in ("sigmoid", "softmax")]
        rows.append([str(g["setting"]), *sides,
                     f"{g['theory_sigmoid']:+.2f} vs {g['theory_softmax']:+.2f}", gap_outcome(g)])
    return header, rows


def reference_rows(certificates: FolderCertificates) -> Table:
    """One row per reference certificate: what identifies the reference, and the outcome."""
    header = ["setting", "fit", "reference", "p", "Fisher cond", "min eig", "error at n_min / "
              "atom distance", "misspecification / (nu p / n_max)", "design error", "refits "
              "(better/tied/worse)", "status", "why"]
    rows = []
    for (setting, gate), c in sorted(certificates.reference.items()):
        refits = "-"
        if c.restarts:
            refits = (f"{c.restarts['better']}/{c.restarts['tied']}/{c.restarts['worse']}, "
                      f"spread {c.restarts['spread']:.2g} (≤ {c.restart_tolerance:.2g})")
        rows.append([
            setting, gate, f"{c.kind} ({c.model['k']} atoms, {c.covariance})", str(c.p),
            f"{c.fisher_cond:.1e}", f"{c.fisher_min_eig:.1e}", f"{_ratio(c):.2g}",
            f"{c.misspecification / c.misspecification_scale:.2g}",
            "-" if c.design_error_ratio is None else f"{c.design_error_ratio:.2f}", refits,
            c.status, "; ".join(c.reasons) or "-",
        ])
    return header, rows


def _ratio(c: ReferenceCertificate) -> float:
    return c.error_ratio if c.min_atom_distance > 0 else float("inf")


def note_lines(rates: pd.DataFrame) -> list[str]:
    """One line per curve whose verdict comes with a reason (a failed or missing certificate,
    a dropped n, or a note on a curve that passed: a passed certificate's reason, the fits as
    good as the reference, fits of more than one version of the code)."""
    return [f"`{r.setting} / {r.fit_gate} / {r.loss_name}`: {r.verdict}. {r.reason}."
            for r in rates.itertuples() if isinstance(r.reason, str) and r.reason]


def setting_rows(results: pd.DataFrame) -> Table:
    """One row per (setting, fitted gate): the truth, the fitted model and its reference."""
    header = ["setting", "truth gate", "fit", "score", "expert", "regime", "d", "k*", "k",
              "reference"]
    columns = ["setting", "truth_gate", "fit_gate", "score", "expert", "regime", "d", "k_true",
               "k_fit"]
    has_reference = "reference" in results.columns
    fits = results.drop_duplicates(columns + (["reference"] if has_reference else []))
    rows = [[str(r[c]) for c in columns] + [str(r["reference"]) if has_reference else "-"]
            for _, r in fits.sort_values(["setting", "fit_gate"]).iterrows()]
    return header, rows


def summary_lines(report: FolderReport) -> list[str]:
    """The run in a few sentences: config, grid, verdict counts, optimisation health, time."""
    config, rates, results = report.config, report.rates, report.results
    fits = results.drop_duplicates(["setting", "fit_gate", "n", "rep"])
    counts = rates["verdict"].value_counts()
    verdicts = ", ".join(f"{counts[v]} {v}" for v in sorted(counts.index))
    n_grid = sorted(results["n"].unique())
    lines = [
        f"Config `{config.name}` (hash `{config.hash}`, from {report.config_source})"
        + (f": {config.description}" if config.description else "") + ".",
        f"{len(fits)} fits ({results['setting'].nunique()} setting(s), "
        f"{len(n_grid)} sample sizes from {n_grid[0]} to {n_grid[-1]}, up to "
        f"{results['rep'].nunique()} replications, algorithm {config.algorithm}); "
        f"{len(rates)} curves: {verdicts}.",
        f"Optimisation health: {fits['certified'].astype(float).mean():.1%} of fits certified "
        f"(fit loss no worse than the reference measure's), "
        f"{cert.stationary_stops(fits)[0].astype(float).mean():.1%} converged.",
    ]
    timing = f"Fit time {fits['wall_s'].sum():.1f} s on {', '.join(sorted(set(results['device'])))}"
    if report.run:
        run = report.run
        # the record's own wall time, whichever a run wrote (a study's G_bar search records its
        # process's, a sweep resumed by hand its sweep's): "nan s" said none was found
        wall = next(((run[key], what) for key, what in RUN_WALL_TIMES
                     if isinstance(run.get(key), (int, float))), None)
        took = "" if wall is None else f" took {wall[0]:.1f} s wall time ({wall[1]})"
        timing += (f"; the run{took} on {run.get('device_name', run.get('device', '?'))} "
                   f"(torch {run.get('torch', '?')})")
    lines.append(timing + ".")
    # Certification belongs to a fit, which every loss of its (setting, fitted gate) shares.
    uncertified = fits.groupby(["setting", "fit_gate"], sort=True)["certified"].agg(
        lambda c: (int((~c.astype(bool)).sum()), len(c)))
    failing = [f"{setting} / {gate} ({bad} of {total})"
               for (setting, gate), (bad, total) in uncertified.items() if bad]
    if failing:
        lines.append("Uncertified fits, optimisation failures rather than rates: "
                     f"{', '.join(failing)}.")
    return lines


VERDICT_NOTE = (
    "Slope: OLS slope of log(mean loss over replications) on log n (N24's), beside the slope of "
    f"log(median); {PLUS_MINUS} (docs/theory.md#rate-estimation). Sample sizes with fewer than "
    f"{MIN_REPS_PER_N} usable replications are dropped; `dropped` counts NaN, infinite, "
    "non-positive and at-bound values. Verdict (docs/theory.md#verdicts): `not measurable` "
    f"unless every certificate passes and at least {MIN_POINTS} sample sizes are used; "
    f"`inconclusive (CI too wide)` unless the half-width is below {CI_HALF_WIDTH_MAX}, "
    "`inconclusive (replications uneven)` where some n keeps fewer than half the most usable "
    "replications at an n, `inconclusive (fits left out)` where more than "
    f"{LEFT_OUT_SHARE_MAX:.0%} of the curve's values are, `inconclusive (curve bends)` where the "
    f"log-mean's quadratic term is significant at {BEND_P_MAX} and moves the slope by more than "
    f"{2 * VERDICT_WIDEN}; else "
    f"`consistent` when the theory exponent lies in the CI widened by ±{VERDICT_WIDEN}, "
    "`inconsistent` otherwise; a curve without an exponent is judged alike and reads `no theory` "
    "only where it passes every check. Exponent 0 stands for \"slower than any polynomial\"."
)
CERTIFICATE_NOTE = (
    "Certificates (docs/theory.md#certificates): reference identified (Fisher condition number "
    f"≤ {cert.FISHER_COND_MAX:.0e}, positive-definite Hessian, predicted parameter error at the "
    f"smallest n ≤ {cert.ERROR_RATIO_MAX} × the smallest distance between atoms; for G_bar "
    f"refits from {cert.RESTARTS} near and the {cert.SEARCH_REFINED} best of "
    f"{sum(c for _, c in GBAR_STARTS)} wide other starts neither better nor apart by more than "
    f"{cert.RESTART_RATIO_MAX} × the predicted D3 at the largest n, design error ≤ "
    f"{cert.DESIGN_ERROR_RATIO_MAX}); converged (≥ {cert.CONVERGED_SHARE_MIN:.0%} of fits per "
    "n stopped on tolerance); optimiser (fits no worse than the reference, their best SSR "
    f"reached twice and inside the parameter box, per n ≥ {cert.OPTIMISER_SHARE_MIN:.0%}; "
    "`moe-theory check`: SSR within "
    f"{cert.SSR_GAP_MAX:g} nu of every refit, per-n means and slope unmoved within their CI "
    f"under {cert.CHECK_MAX_ITER_FACTOR}× max_iter and {cert.CHECK_JITTER_FACTOR}× jitter); "
    f"over-fit (mean ΔSSR / (nu p) in [{cert.OVERFIT_RATIO_MIN}, {cert.OVERFIT_RATIO_MAX}] at "
    f"every n ≥ {cert.OVERFIT_MIN_N_PER_P} p). `-`: not run."
)


def _blocks(report: FolderReport) -> list[tuple]:
    title = f"Verdict report: {report.config.name}"
    blocks: list[tuple] = [("h1", title)]
    blocks += [("p", line) for line in summary_lines(report)]
    blocks += [("h2", "Curves"), ("p", VERDICT_NOTE)]
    shown = report.rates["plotted"].to_numpy(dtype=bool)
    if shown.any():
        # the curves a reader sees in the figure come first; the rest follow
        blocks += [("p", f"Plotted in `{report.config.name}.png`:"),
                   ("table", curve_rows(report.rates[shown]))]
        if not shown.all():
            blocks += [("p", "The other curves (all are drawn in "
                             f"`{report.config.name}{CURVES_FIGURE_SUFFIX}.png`):"),
                       ("table", curve_rows(report.rates[~shown]))]
    else:
        blocks.append(("table", curve_rows(report.rates)))
    notes = note_lines(report.rates)
    if notes:
        blocks += [("h2", "Notes")] + [("p", line) for line in notes]
    gaps = gap_table(report.rates)
    if len(gaps):
        blocks += [("h2", "The gap between the gates"), ("p", GAP_NOTE), ("table", gap_rows(gaps))]
    blocks += [("h2", "Certificates"), ("p", CERTIFICATE_NOTE)]
    if report.certificates.reference:
        blocks.append(("table", reference_rows(report.certificates)))
    else:
        blocks.append(("p", "No reference certificates in this folder: run `moe-theory check "
                            "DIR`."))
    check = report.certificates.check
    blocks.append(("p", "Optimiser check: not run (`moe-theory check DIR`)." if check is None
                   else f"Optimiser check: {check.get('reps')} replication(s) per (setting, n) "
                        f"refitted under {', '.join(check.get('variants', {}))}"
                        + (f" ({check['wall_s']:.0f} s)." if isinstance(check.get("wall_s"),
                                                                         (int, float)) else ".")))
    blocks += [("h2", "Settings"), ("table", setting_rows(report.results))]
    if report.figures:
        blocks.append(("h2", "Figures"))
        blocks += [("figure", path, caption) for path, caption in report.figures]
    return blocks


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: FolderReport) -> str:
    """The report as Markdown; figures are linked by file name (they sit next to ``report.md``)."""
    out = []
    for block in _blocks(report):
        kind = block[0]
        if kind == "h1":
            out.append(f"# {block[1]}")
        elif kind == "h2":
            out.append(f"## {block[1]}")
        elif kind == "p":
            out.append(block[1])
        elif kind == "table":
            header, rows = block[1]
            lines = ["| " + " | ".join(map(_md_cell, header)) + " |",
                     "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]
            out.append("\n".join(lines))
        else:
            path, caption = block[1], block[2]
            out.append(f"![{caption}]({path.name})\n\n*{caption}* (PDF: `{path.with_suffix('.pdf').name}`)")
    return "\n\n".join(out) + "\n"


HTML_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 80rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; font-size: 0.8rem; margin: 1rem 0; }
/* cells wrap at spaces and hyphens, so that a table of a dozen columns fits a 1400 px window;
   the last column (verdict, reason) keeps room for its words */
th, td { border-bottom: 1px solid #ddd; padding: 0.2rem 0.4rem; text-align: left;
         vertical-align: top; }
td:last-child { min-width: 14em; }
th { background: #f4f4f4; }
details { margin: -0.5rem 0 1rem; }
summary { cursor: pointer; color: #555; font-size: 0.85rem; }
/* a table still wider than the window scrolls on its own, not the page */
.table { max-width: 100%; overflow-x: auto; }
td.inconsistent { color: #b00020; font-weight: 600; }
td.consistent { color: #1b5e20; }
td.not-measurable, td.inconclusive { color: #777; }
figure { margin: 1.5rem 0; }
img { max-width: 100%; }
code { background: #f4f4f4; padding: 0 0.2rem; }
"""


def _inline_html(text: str) -> str:
    # The only inline markup of the report's prose is `code`.
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The table; its columns after the verdict (fit health, provenance) go to a second table
    under <details>, keyed by the first three (setting, fit, loss), so that the page fits a
    1400 px window."""
    cut = header.index("verdict") + 1 if "verdict" in header else len(header)
    if cut == len(header):
        return _plain_html_table(header, rows)
    more = _plain_html_table([*header[:3], *header[cut:]], [[*r[:3], *r[cut:]] for r in rows])
    return (_plain_html_table(header[:cut], [r[:cut] for r in rows])
            + f"<details><summary>more columns: {html.escape(', '.join(header[cut:]))}</summary>"
            + f"{more}</details>")


def _plain_html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    verdict_col = header.index("verdict") if "verdict" in header else -1
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            # the verdict's kind, without its reason: consistent, not-measurable, ...
            kind = cell.split(" (")[0].replace(" ", "-")
            cls = f' class="{html.escape(kind)}"' if i == verdict_col else ""
            cells.append(f"<td{cls}>{html.escape(cell)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (f'<div class="table"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}'
            "</tbody></table></div>")


def render_html(report: FolderReport) -> str:
    """The report as one HTML file with every figure embedded as a base64 PNG."""
    out = []
    for block in _blocks(report):
        kind = block[0]
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline_html(block[1])}</p>")
        elif kind == "table":
            out.append(_html_table(*block[1]))
        else:
            path, caption = block[1], block[2]
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            out.append(f'<figure><img src="data:image/png;base64,{data}" '
                       f'alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}'
                       "</figcaption></figure>")
    title = html.escape(f"Verdict report: {report.config.name}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{HTML_STYLE}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def make_report(folder: str | Path, *, html: bool = False) -> list[Path]:
    """Write ``DIR/report.md`` and, with ``html``, ``DIR/report.html`` (figures embedded).

    Parameters
    ----------
    folder : results folder of a sweep or of ``moe-theory reproduce``.
    html : also write the self-contained HTML report.

    Returns
    -------
    list of Path
        The report files, then the figures (PNG and PDF) written for them.
    """
    report = build_report(folder)
    written = [report.folder / REPORT_MD]
    markdown = render_markdown(report)
    atomic_write(written[0], lambda tmp: Path(tmp).write_text(markdown, encoding="utf-8"))
    if html:
        page = render_html(report)
        written.append(report.folder / REPORT_HTML)
        atomic_write(written[1], lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    for png, _ in report.figures:
        written += [png, png.with_suffix(".pdf")]
    return written

