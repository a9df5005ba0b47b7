"""How far apart two result tables of the same config are, loss by loss.

``python -m benchmarks compare-tables A/results.csv B/results.csv``: rows are matched on
(setting, fit_gate, loss_name, n, rep); prints the largest and median relative difference of
``loss_value`` overall and per curve, and the share above the 1e-3 agreement of
docs/theory.md#estimator. Used to check that a change to the kernels or the executor leaves a
figure's table alone (or moves it by rounding only).
"""

from __future__ import annotations

import argparse

from benchmarks.checks import AGREEMENT_RTOL
from moe_theory.store import read_csv

KEYS = ["setting", "fit_gate", "loss_name", "n", "rep"]


def run(args: argparse.Namespace) -> int:
    """Print the differences of ``args.a`` relative to ``args.b``."""
    a, b = read_csv(args.a), read_csv(args.b)
    m = a.merge(b, on=KEYS, suffixes=("_a", "_b"))
    rel = (m.loss_value_a - m.loss_value_b).abs() / m.loss_value_b.abs().clip(lower=1e-300)
    print(f"{args.a} vs {args.b}: {len(a)} and {len(b)} rows, {len(m)} matched")
    print(f"  max rel {rel.max():.3g}, median {rel.median():.3g}, "
          f"share > {AGREEMENT_RTOL:g} {(rel > AGREEMENT_RTOL).mean():.4f}")
    for (setting, gate), g in m.assign(rel=rel).groupby(["setting", "fit_gate"]):
        print(f"  {setting} / {gate}: max rel {g.rel.max():.3g}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``compare-tables`` subcommand."""
    p = subparsers.add_parser("compare-tables", help="loss-by-loss differences of two tables",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="results.csv of one run")
    p.add_argument("b", help="results.csv the differences are relative to")
    p.set_defaults(run=run)
