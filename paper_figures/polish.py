"""Are the certified curves' fits stationary, or only stopped on a short step? (paper_figures/
README.md, "The certified fits, polished")

A fit is ``converged`` when LM stopped on one of its tolerance tests (docs/theory.md#stopping-rule).
``ftol`` and ``xtol`` certify a short accepted step, not a small gradient: after many rejected
steps the damping is large and any accepted step is short, so such a stop need not be a
stationary point. This script restarts LM from every kept fit of every certified curve (the
verdict ``consistent`` or ``inconsistent``) of a committed folder, on the same data and in the
same box, with a fresh damping and ``--max-iter`` iterations, and reports per (curve, n) how far
that moves the fit: the drop of its sum of squared residuals in units of the noise variance
``nu``, and the relative move of the curve's loss. A drop far below 1 nu and a move far below
the curve's spread say the kept fits are where a fresh search from them stops: the printed
slope is that of stationary points.

    python paper_figures/polish.py [FOLDER ...] [--max-iter 2000] [--n-max N] [--json OUT]

Default: every committed folder with a certified curve and the fits' estimates (fits.csv.gz).
CPU; the data are the sweep's (common random numbers of (setting, seed, n, rep)).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from moe_theory.estimators import fit_lse
from moe_theory.estimators.lse import objective
from moe_theory.layout import FITS_FILE, MANIFEST_FILE
from moe_theory.measure import MixingMeasure
from moe_theory.rates import MEASURED_VERDICTS
from moe_theory.store import folder_references, read_manifest_config
from moe_theory.sweep import shard_box, shard_data
from moe_theory.voronoi import voronoi_loss

HERE = Path(__file__).resolve().parent


def folders(root: Path = HERE) -> list[Path]:
    """Committed sweep folders with a certified curve and the fits' estimates."""
    found = []
    for rates in sorted(root.rglob("rates.json")):
        folder = rates.parent
        if not ((folder / MANIFEST_FILE).exists() and (folder / FITS_FILE).exists()):
            continue
        if pd.read_json(rates)["verdict"].isin(MEASURED_VERDICTS).any():
            found.append(folder)
    return found


def polish_folder(folder: Path, *, max_iter: int, n_max: int | None,
                  log=print) -> list[dict]:
    config = read_manifest_config(folder)
    rates = pd.read_json(folder / "rates.json")
    certified = rates[rates["verdict"].isin(MEASURED_VERDICTS)]
    fits = pd.read_csv(folder / FITS_FILE)
    refs = folder_references(folder, config)
    rows = []
    for (name, gate), curves in certified.groupby(["setting", "fit_gate"], sort=True):
        setting = config.setting(name)
        ref = refs[name, gate]
        box = shard_box(config, setting, gate, ref)
        losses = sorted(set(curves["loss_name"]))
        mine = fits[(fits["setting"] == name) & (fits["fit_gate"] == gate)]
        for n, at_n in mine.groupby("n", sort=True):
            if n_max is not None and n > n_max:
                continue
            at_n = at_n.sort_values("rep")
            reps = at_n["rep"].to_numpy()
            if not np.array_equal(reps, np.arange(reps[0], reps[0] + len(reps))):
                raise ValueError(f"{folder}: {name}/{gate} n={n}: replications not contiguous")
            start = time.perf_counter()
            X, Y = shard_data(config, setting, int(n), int(reps[0]), len(reps))
            kept = MixingMeasure.from_json_rows(at_n["fit_measure"].tolist())
            fresh = fit_lse(X, Y, setting.k_fit, gate, setting.expert, setting.score, init=kept,
                            reference=ref, bounds=box, noise_var=setting.noise_var,
                            max_iter=max_iter, rep_ids=reps.tolist())
            # the mean squared residual times n is the SSR: its drop in units of nu
            drop = ((objective(X, Y, kept) - fresh.fit_loss) * n
                    / setting.noise_var).numpy()
            row = {"folder": folder.relative_to(HERE).as_posix(), "setting": name,
                   "fit_gate": gate, "n": int(n), "reps": len(reps),
                   "ssr_drop_nu_median": float(np.median(drop)),
                   "ssr_drop_nu_max": float(drop.max()),
                   "fits_dropping_over_1_nu": int((drop > 1).sum()),
                   "fresh_stops": pd.Series(fresh.stop_reason).value_counts().to_dict(),
                   "wall_s": round(time.perf_counter() - start, 2)}
            for loss in losses:
                before = voronoi_loss(kept, ref, loss).numpy()
                after = voronoi_loss(fresh.measure, ref, loss).numpy()
                move = np.abs(after / before - 1)
                row[f"{loss}_move_median"] = float(np.nanmedian(move))
                row[f"{loss}_move_max"] = float(np.nanmax(move))
            log(f"{row['folder']} {name}/{gate} n={n}: SSR drop {row['ssr_drop_nu_max']:.2g} nu "
                f"at most, loss moves {max(row[f'{l}_move_max'] for l in losses):.2g} at most "
                f"({row['wall_s']} s)")
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="*", type=Path)
    p.add_argument("--max-iter", type=int, default=2000)
    p.add_argument("--n-max", type=int, help="leave out larger sample sizes (CPU time)")
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args(argv)
    rows = []
    for folder in args.folders or folders():
        rows += polish_folder(folder.resolve(), max_iter=args.max_iter, n_max=args.n_max)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
