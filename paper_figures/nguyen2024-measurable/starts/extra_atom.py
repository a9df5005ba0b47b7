"""What does the softmax fit's extra atom do: split one of G*'s atoms, or go light?

N24's n^-1/4 for the over-specified softmax fit's parameters is a bound; it is reached where
the fit *splits* an atom of G*, two fitted atoms in its Voronoi cell each carrying a fixed share
of the cell's weight, so that D1's term ``exp(beta0_i) ||omega_i - omega*_j||^2 ~ n^-1/2``
holds each of them to n^-1/4. An extra atom whose weight the fit shrinks instead (a *light*
atom) leaves the other atoms exactly specified, and D1 then counts the light one by its
weight alone. This script reads sweep folders' stored estimates (``fits.csv.gz``) and
classifies each softmax fit by the smallest share of its cell's weight that an atom of an
over-specified cell carries (cells and shares do not depend on the softmax gauge: a common
shift multiplies every weight by one factor):

- ``split``: at least SPLIT_SHARE (10%);
- ``light``: below LIGHT_SHARE (1%);
- ``between``: in between (in a box of 3x the reference's scale, the lower face of ``beta0``
  holds a light atom at a few percent of its cell);
- ``cell empty``: some atom of G* has no fitted atom near it.

    python paper_figures/nguyen2024-measurable/starts/extra_atom.py FOLDER [FOLDER ...]

No certificates: a study of the sweeps' fits, which the optimiser certificate says are not
always the least-squares estimate (paper_figures/README.md, nguyen2024-measurable).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from moe_theory.config import load_config
from moe_theory.measure import MixingMeasure
from moe_theory.store import FIT_MEASURE, load_fits
from moe_theory.voronoi import voronoi_cells

#: an over-specified cell's atom with at least this share of the cell's weight is a copy
SPLIT_SHARE = 0.1
#: ... and one below this share a light atom
LIGHT_SHARE = 0.01
KINDS = ("split", "between", "light", "cell empty")


def extra_atom_kinds(folder: str | Path, config: str = "nguyen2024-measurable") -> pd.DataFrame:
    """One row per softmax fit of ``folder`` (``setting, n, rep``): ``min_share``, the smallest
    share of its cell's weight that an atom of an over-specified cell carries (1 where no cell
    is over-specified), and ``kind`` (:data:`KINDS`). Each fit is read against G* of its own
    setting (``config``'s)."""
    fits = load_fits(folder)
    fits = fits[fits["fit_gate"] == "softmax"].reset_index(drop=True)
    frames = []
    for setting, part in fits.groupby("setting", sort=True):
        truth = load_config(config).setting(setting).truth()
        fitted = MixingMeasure.from_json_rows(part[FIT_MEASURE])
        cells = voronoi_cells(fitted, truth)
        weight = fitted.beta0.exp()
        cell_weight = torch.zeros(fitted.R, truth.k, dtype=weight.dtype).scatter_add(
            1, cells.assign, weight)
        share = weight / torch.gather(cell_weight, 1, cells.assign)
        min_share = torch.where(cells.over, share, torch.ones_like(share)).amin(1).numpy()
        empty = (cells.count == 0).any(1).numpy()
        kind = np.where(empty, "cell empty", np.where(
            min_share >= SPLIT_SHARE, "split", np.where(min_share < LIGHT_SHARE, "light",
                                                        "between")))
        frames.append(part[["setting", "n", "rep"]].assign(min_share=min_share, kind=kind))
    return pd.concat(frames, ignore_index=True)


def shares_by_n(table: pd.DataFrame) -> pd.DataFrame:
    """Per (setting, n): the share of fits of each kind (:data:`KINDS` columns)."""
    counts = pd.crosstab([table["setting"], table["n"]], table["kind"], normalize="index")
    return counts.reindex(columns=list(KINDS), fill_value=0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", help="sweep folders with fits.csv.gz")
    p.add_argument("--config", default="nguyen2024-measurable")
    args = p.parse_args()
    for folder in args.folders:
        print(folder)
        print(shares_by_n(extra_atom_kinds(folder, args.config)).round(2).to_string())
        print()
    print("(the sweeps' fits, no certificates: a study, not a verdict)")


if __name__ == "__main__":
    main()
