"""How close to its minimum is the matched gauge's D1? (docs/theory.md#voronoi-losses)

``D1_matched`` is D1 at the shift of the softmax gates' slopes that a compass search finds
(:func:`moe_theory.voronoi.matched_gauge_search`). D1 is not smooth in that shift (its norms,
and Voronoi cells that change with it), so the search ends on a local minimum. This script
measures how far below it a Nelder-Mead search from the compass's end point gets, on every
stored softmax fit of the given folders: the ratio of the two values per fit, the fits whose
ratio passes 1%, and the worst fit.

    python paper_figures/matched_gauge_search.py [FOLDER ...] [--json OUT]

Default: the folders of docs/theory.md's measurement, written to ``matched_gauge_search.json``
beside this script.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.optimize
import torch

from moe_theory.measure import MixingMeasure
from moe_theory.store import folder_references, load_fits, read_manifest_config
from moe_theory.voronoi import MATCH_D_MAX, has_matched_gauge, matched_gauge_search, voronoi_loss

HERE = Path(__file__).resolve().parent
FOLDERS = ("nguyen2024-measurable/gelu_d4_box10", "nguyen2024-measurable/gelu_d4_box3",
           "nguyen2024-measurable", "nguyen2024-measurable/starts/gelu_every")
#: a fit whose value the finer search lowers by more than this (relative) is counted
MOVED = 0.01
#: Nelder-Mead's stopping tolerances on the shift and on D1: below the compass's last step
#: (MATCH_STEP_LAST, 1e-7) and the losses' rounding
XATOL, FATOL, MAXITER = 1e-9, 1e-13, 20_000


def finer(fitted: MixingMeasure, reference: MixingMeasure) -> tuple[np.ndarray, np.ndarray]:
    """Per replication: the compass's matched D1, and the lowest D1 of a Nelder-Mead search of
    the slopes' shift from where the compass ended (the intercepts' shift kept, as the loss
    defines it)."""
    compass, base, slopes = matched_gauge_search(fitted, reference)
    polished = []
    for r in range(fitted.R):
        one, ref = fitted.select(r), reference.select(r if reference.R > 1 else 0)

        def d1(shift: np.ndarray, one=one, ref=ref, r=r) -> float:
            slope = torch.as_tensor(shift, dtype=torch.float64)[None]
            return float(voronoi_loss(one.in_gauge(torch.cat([base[r:r + 1], slope], -1)),
                                      ref, "D1")[0])

        start = slopes[r].numpy()
        found = scipy.optimize.minimize(d1, start, method="Nelder-Mead", options={
            "xatol": XATOL, "fatol": FATOL, "maxiter": MAXITER, "adaptive": True})
        polished.append(min(found.fun, d1(start)))
    return compass.numpy(), np.array(polished)


def measure(folder: Path) -> list[dict]:
    """One record per softmax setting of ``folder`` measured in the matched gauge."""
    config = read_manifest_config(folder)
    references = folder_references(folder, config)
    records = []
    for (setting, gate), rows in load_fits(folder).groupby(["setting", "fit_gate"]):
        if (setting, gate) not in references:
            continue
        fitted = MixingMeasure.from_json_rows(rows["fit_measure"])
        if not has_matched_gauge(fitted.gate, fitted.score) or fitted.d > MATCH_D_MAX:
            continue
        finite = fitted.finite().numpy()
        fitted = fitted.select(torch.from_numpy(np.flatnonzero(finite)))
        compass, polished = finer(fitted, references[setting, gate])
        ratio = compass / polished
        worst = int(np.argmax(ratio))
        keys = rows[finite].iloc[worst]
        records.append({
            "folder": folder.relative_to(HERE).as_posix(), "setting": setting,
            "d": fitted.d, "fits": int(len(ratio)), "diverged_fits_left_out": int((~finite).sum()),
            "median_ratio": float(np.median(ratio)), "max_ratio": float(ratio.max()),
            f"fits_above_{MOVED:g}": int((ratio > 1 + MOVED).sum()),
            "worst": {"n": int(keys["n"]), "rep": int(keys["rep"]),
                      "compass": float(compass[worst]), "nelder_mead": float(polished[worst])},
        })
        print(f"{records[-1]['folder']} / {setting}: {len(ratio)} fits, compass over "
              f"Nelder-Mead median {np.median(ratio):.4f}, max {ratio.max():.3f}, "
              f"{(ratio > 1 + MOVED).sum()} above {1 + MOVED:g}", flush=True)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path,
                        default=[HERE / name for name in FOLDERS])
    parser.add_argument("--json", type=Path, default=HERE / "matched_gauge_search.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    records = [r for folder in args.folders for r in measure(folder.resolve())]
    table = pd.DataFrame(records)
    total = {"fits": int(table["fits"].sum()),
             f"fits_above_{MOVED:g}": int(table[f"fits_above_{MOVED:g}"].sum()),
             "max_ratio": float(table["max_ratio"].max())}
    args.json.write_text(json.dumps({"settings": records, "total": total}, indent=1) + "\n")
    print(f"{total}; written to {args.json.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
