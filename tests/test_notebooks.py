"""The notebooks run top to bottom with ``MOE_FAST=1`` and are committed without outputs.

Each notebook runs in a fresh Jupyter kernel from its own folder, as Jupyter and ``pytest --nbmake``
run it; the kernel imports the packages of this checkout.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[dev]' (nbclient)")
nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[dev]' (nbclient)")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = ["01_gating_geometry", "02_rate_experiment", "03_over_specified",
            "04_attention_as_moe", "05_kernels"]
# A cell of a MOE_FAST notebook takes seconds on a 2-core CPU; this only stops a hung kernel.
CELL_TIMEOUT_S = 300


def test_every_notebook_is_here():
    assert [path.stem for path in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for i, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i}: outputs not stripped"
            assert cell.execution_count is None, f"{path.name} cell {i}: execution_count set"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_independent_of_the_cpu_presets_settings(path):
    # the CPU preset's small-* settings are redesigned with the preset; a notebook defines the
    # settings it needs (mt.register) or names a figure's own
    notebook = nbformat.read(path, as_version=4)
    for i, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert not re.search(r"""["']small-""", cell.source), (
                f"{path.name} cell {i}: names a small-* setting of the CPU preset")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_runs_top_to_bottom_in_fast_mode(path, monkeypatch):
    monkeypatch.setenv("MOE_FAST", "1")
    # the kernel's thread count is the package default (moe_theory.threads), as for a user: the
    # notebooks must be quick with it
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MOE_THEORY_THREADS"):
        monkeypatch.delenv(name, raising=False)
    # The kernel starts in notebooks/; put this checkout first on its path, ahead of any other
    # installed copy of the packages.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    # a notebook that reads a committed figure folder must find its table, not print the
    # fallback written for a checkout without it
    printed = "".join(output.get("text", "") for cell in notebook.cells
                      if cell.cell_type == "code" for output in cell.outputs)
    assert "is not there yet" not in printed, f"{path.name}: a committed table was not found"
