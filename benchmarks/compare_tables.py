"""How far apart two result tables of the same config are, loss by loss.

``python benchmarks/compare_tables.py A/results.csv B/results.csv``: rows are matched on
(setting, fit_gate, loss_name, n, rep); prints the largest and median relative difference of
``loss_value`` overall and per curve, and the share above the 1e-3 that GPU and CPU fits must agree
to (docs/theory.md#estimator). Used to check that a change to the kernels or the executor leaves a
figure's table alone (or moves it by rounding only).
"""

from __future__ import annotations

import argparse

import pandas as pd

KEYS = ["setting", "fit_gate", "loss_name", "n", "rep"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b", help="the table the differences are relative to")
    args = ap.parse_args()
    a, b = pd.read_csv(args.a), pd.read_csv(args.b)
    m = a.merge(b, on=KEYS, suffixes=("_a", "_b"))
    rel = (m.loss_value_a - m.loss_value_b).abs() / m.loss_value_b.abs().clip(lower=1e-300)
    print(f"{args.a} vs {args.b}: {len(a)} and {len(b)} rows, {len(m)} matched")
    print(f"  max rel {rel.max():.3g}, median {rel.median():.3g}, "
          f"share > 1e-3 {(rel > 1e-3).mean():.4f}")
    for (setting, gate), g in m.assign(rel=rel).groupby(["setting", "fit_gate"]):
        print(f"  {setting} / {gate}: max rel {g.rel.max():.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
