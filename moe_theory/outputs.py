"""What a results folder shows once its fits are in: the rates table with its verdicts (text,
CSV, JSON) and the config's figure, drawn with the certificates the folder holds
(docs/theory.md#certificates), and the run's record (``run.json``, with its provenance:
docs/design.md#provenance).

One writer for every command that finishes a folder: ``reproduce`` after a sweep, ``sweep``,
``check --stored``, ``certify``, ``remeasure --write`` and ``plot``; the studies that are not
sweeps (:mod:`moe_theory.studies`) go through :func:`write_table` and :func:`write_run` too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from moe_theory.certificates import FolderCertificates
from moe_theory.config import SweepConfig, plot_curves
from moe_theory.layout import RATES_TABLE, RUN_FILE
from moe_theory.plotting import drawable_curve, plot_panels
from moe_theory.provenance import provenance
from moe_theory.rates import format_rates_table, rates_table
from moe_theory.store import atomic_write, write_results_csv

#: Where a run goes without --out: a folder git ignores. The committed figures of paper_figures/
#: are written with an explicit ``--out paper_figures/<name>``.
DEFAULT_OUT = Path("results")


def default_folder(name: str, fast: bool) -> Path:
    """A config's or study's folder without --out: ``results/<name>[-fast]``."""
    return DEFAULT_OUT / (name + ("-fast" if fast else ""))


#: What a fitted gate is drawn with when the config's [plot] table does not say: the first loss
#: of this list that the results hold for that curve.
DEFAULT_PLOT_LOSSES = ("D3", "D1")


def plot_losses(config: SweepConfig, gate: str) -> tuple[tuple[str, ...], ...]:
    """The curves drawn for ``gate``: one tuple of candidate losses per curve, the first a
    curve has being drawn (``[plot]`` of the config: a loss, a list of candidates, or a list of
    such lists for several curves)."""
    chosen = config.plot.get(gate)
    if chosen is None:
        return (DEFAULT_PLOT_LOSSES,)
    return tuple(tuple(curve) for curve in plot_curves(chosen))


def figure_panels(df: pd.DataFrame, config: SweepConfig) -> list[tuple[str, str, list]]:
    panels = []
    for setting in config.settings:
        sub = df[df.setting == setting]
        curves = []
        for gate in sorted(sub.fit_gate.unique()):
            rows = sub[(sub.fit_gate == gate) & (sub.loss_value > 0) & np.isfinite(sub.loss_value)]
            # a loss that is NaN or 0 in every fit (no over-specified cell, say) cannot be drawn
            # on log axes, nor one without a point (every fit on the box, say), which the figure
            # would leave out while the table marked it plotted: fall through to the next candidate
            have = {name for name, g in rows.groupby("loss_name")
                    if g.n.nunique() >= 2 and drawable_curve(g, gate, name)}
            for candidates in plot_losses(config, gate):
                loss = next((loss for loss in candidates if loss in have), None)
                if loss is not None and (gate, loss) not in curves:
                    curves.append((gate, loss))
        if curves:
            panels.append((setting, setting, curves))
    return panels


def write_table(out: Path, table: pd.DataFrame, text: str, *, name: str = RATES_TABLE,
                results: pd.DataFrame | None = None) -> None:
    """A summary table as ``<name>.txt`` (``text``), ``.csv`` and ``.json`` in ``out``, and the tidy
    ``results`` as ``results.csv`` when given (a sweep's store writes its own)."""
    atomic_write(out / f"{name}.txt", lambda tmp: Path(tmp).write_text(text + "\n"))
    atomic_write(out / f"{name}.csv", lambda tmp: table.to_csv(tmp, index=False))
    atomic_write(out / f"{name}.json",
                 lambda tmp: Path(tmp).write_text(table.to_json(orient="records", indent=1)))
    if results is not None:
        write_results_csv(out, results)


def write_run(out: Path, run: dict, device: str) -> dict:
    """``run.json``: the run's own record and its provenance (commit, dirty tree, device)."""
    run = {**run, **provenance(device)}
    atomic_write(out / RUN_FILE, lambda tmp: Path(tmp).write_text(json.dumps(run, indent=2)))
    return run


def write_figure(df: pd.DataFrame, config: SweepConfig, out: Path, panels: list | None = None,
                 certificates: FolderCertificates | None = None) -> list[Path]:
    """The config's figure of a results folder, ``out/<config name>.png`` and ``.pdf``, drawn
    with the certificates the folder holds (without them every curve would be "not
    measurable"); ``panels`` and ``certificates`` when the caller has them already."""
    panels = figure_panels(df, config) if panels is None else panels
    if not panels:
        return []
    certificates = FolderCertificates.load(out) if certificates is None else certificates
    # a config read from a file has no entry in simulations/configs/ to name it in words
    return plot_panels(df, panels, out / config.name, title=config.description or config.name,
                       certificates=certificates)


def mark_plotted(table: pd.DataFrame, panels: list) -> pd.DataFrame:
    """Add the rates table's ``plotted`` column: the curves the figure's ``panels``
    (:func:`figure_panels`) draw, which the printed table lists first and pairs for the gap
    between the gates (:func:`moe_theory.rates.gap_table`)."""
    drawn = {(setting, gate, loss) for setting, _, curves in panels for gate, loss in curves}
    table["plotted"] = [(r.setting, r.fit_gate, r.loss_name) in drawn for r in table.itertuples()]
    return table


def write_report(df: pd.DataFrame, config: SweepConfig, out: Path) -> pd.DataFrame:
    """Rates table (text, CSV, JSON) and the figure of a finished sweep in ``out``, with the
    certificates the folder holds (docs/theory.md#certificates)."""
    certificates = FolderCertificates.load(out)
    table = rates_table(df, certificates=certificates)
    panels = figure_panels(df, config)
    mark_plotted(table, panels)
    write_table(out, table, format_rates_table(table))
    write_figure(df, config, out, panels, certificates)
    return table
