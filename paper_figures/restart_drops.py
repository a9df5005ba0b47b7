"""How far are short-step stops from stationary? (docs/theory.md#stopping-rule)

LM's ``ftol`` and ``xtol`` tests see a short accepted step; a large damping makes any step short,
so a fit can stop there before it is stationary. Since 2026-12-07 every such fit is started again
from its end with a fresh damping, and ``restart_drop`` records how much that lowers its sum of
squared residuals, in units of the noise variance nu (the converged certificate does not count a
fit whose drop exceeds 1 nu). This script fits one committed folder's settings at one n, exactly
as its sweep's shards do (data, starts, box, iteration cap, references from its manifest), and
reports per (setting, gate) how the kept fits stopped and what their restarts found.

    python paper_figures/restart_drops.py [FOLDER] [--n 2000] [--reps 50] [--json OUT]

Default: nguyen2024-measurable's ReLU truth, where the short-step stops were found. CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from moe_theory.certificates import RESTART_DROP_MAX
from moe_theory.estimators import fit_lse
from moe_theory.estimators.levenberg_marquardt import SHORT_STEP_TESTS
from moe_theory.store import folder_references, read_manifest_config
from moe_theory.sweep import shard_box, shard_data, shard_init

HERE = Path(__file__).resolve().parent


def restart_drops(folder: Path, n: int, reps: int, only: str | None, log=print) -> list[dict]:
    config = read_manifest_config(folder)
    rows = []
    for (name, gate), ref in sorted(folder_references(folder, config).items()):
        if only is not None and only not in name:
            continue
        setting = config.setting(name)
        start = time.perf_counter()
        X, Y = shard_data(config, setting, n, 0, reps)
        fit = fit_lse(X, Y, setting.k_fit, gate, setting.expert, setting.score,
                      init=shard_init(config, setting, n, gate, ref), reference=ref,
                      bounds=shard_box(config, setting, gate, ref), noise_var=setting.noise_var,
                      max_iter=config.max_iter, rep_ids=list(range(reps)))
        drop = fit.restart_drop.numpy()
        short = np.isin(fit.stop_test, SHORT_STEP_TESTS)
        tests, counts = np.unique(fit.stop_test, return_counts=True)
        row = {"folder": folder.relative_to(HERE).as_posix(), "setting": name, "fit_gate": gate,
               "n": n, "reps": reps, "max_iter": config.max_iter,
               "stops": {str(t): int(c) for t, c in zip(tests, counts, strict=True)},
               "short_step_stops": int(short.sum()),
               "restart_drop_nu_median": float(np.median(drop[short])) if short.any() else None,
               "restart_drop_nu_max": float(drop[short].max()) if short.any() else None,
               "not_stationary": int((drop > RESTART_DROP_MAX).sum()),
               "proj_grad_max_median": float(np.median(fit.proj_grad_max.numpy())),
               "wall_s": round(time.perf_counter() - start, 2)}
        log(f"{name}/{gate} n={n}: stops {row['stops']}; restarts lowered "
            f"{row['not_stationary']} by more than {RESTART_DROP_MAX:g} nu (largest "
            f"{row['restart_drop_nu_max']} nu) ({row['wall_s']} s)")
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", nargs="?", type=Path, default=HERE / "nguyen2024-measurable")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--only", default="relu", help="settings whose name contains this")
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args(argv)
    rows = restart_drops(args.folder.resolve(), args.n, args.reps, args.only)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
