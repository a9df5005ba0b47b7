"""Every committed sweep folder's rates table is what the toolkit computes today from the folder's
own committed files (its results, certificates, optimiser check and manifest): a table a README
quotes cannot drift from the code that reads the folder, and a change to the rates, verdicts or
the gap section shows here as the folders it changes (rewrite their tables with it).

The printed table is compared to the character and the JSON to the byte (every value at full
precision): both are deterministic functions of the stored files, so there is no tolerance.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from moe_theory.certificates import FolderCertificates
from moe_theory.cli import main
from moe_theory.layout import MANIFEST_FILE, RATES_TABLE
from moe_theory.outputs import figure_panels, mark_plotted
from moe_theory.rates import format_rates_table, rates_table
from moe_theory.store import load_results, read_manifest_config

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "paper_figures"
FOLDERS = sorted(path.parent for path in FIGURES.rglob(f"{RATES_TABLE}.txt")
                 if (path.parent / MANIFEST_FILE).exists())


def test_the_committed_sweep_folders_are_found():
    # the four named figures and their studies: a glob that finds none would pass vacuously
    names = {folder.relative_to(FIGURES).as_posix() for folder in FOLDERS}
    assert {"nguyen2024", "nguyen2024-measurable", "nguyen2024-sgd", "yan2025"} <= names
    assert len(FOLDERS) >= 30


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: f.relative_to(FIGURES).as_posix())
def test_a_committed_rates_table_is_what_the_toolkit_computes(folder):
    # as `moe-theory rates DIR` computes it (and reproduce, check and report write it)
    results = load_results(folder)
    table = rates_table(results, certificates=FolderCertificates.load(folder))
    mark_plotted(table, figure_panels(results, read_manifest_config(folder)))
    assert format_rates_table(table) + "\n" == (folder / f"{RATES_TABLE}.txt").read_text()
    assert table.to_json(orient="records", indent=1) == (folder / f"{RATES_TABLE}.json").read_text()


def test_moe_theory_rates_prints_a_folders_table(capsys):
    # the command's own path (the manifest read, the plotted curves marked) on a study's folder
    folder = FIGURES / "nguyen2024-measurable" / "gelu_d4_box3"
    assert main(["rates", str(folder)]) == 0
    assert capsys.readouterr().out == (folder / f"{RATES_TABLE}.txt").read_text()
