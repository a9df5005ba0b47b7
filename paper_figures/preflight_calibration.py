"""The preflight's outlooks and predicted CIs against the verdicts and CIs measured here.

``moe-theory preflight`` predicts a curve's CI half-width before the sweep, from the local normal
limit about its reference (docs/theory.md#planning). This reads every committed folder whose
curves pass all four certificates (verdict consistent, inconsistent or inconclusive: the curves
whose reference has a normal limit), computes that limit about the G_bar the folder recorded, at
the folder's n and the curve's replications, and sets the prediction beside the half-width its
rates table measured. Curves fitted on the same data (the same setting, gate, grid, replications
and G_bar in several folders) are counted once. Writes ``preflight_calibration.json``.

It also reads what the preflight would have said before each of those sweeps, for every plotted
curve of every committed folder with reference certificates, from its certificates and recorded
references (``moe_theory.preflight.folder_outlook``), beside the verdict the sweep got:
``preflight_outlooks.json``. ``--summary`` prints both from the files.

    python paper_figures/preflight_calibration.py            # about 15 s on 2 CPU cores
    python paper_figures/preflight_calibration.py --summary
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from moe_theory.certificates import CERTIFICATES, load_reference_certificates, normal_limit
from moe_theory.preflight import folder_outlook
from moe_theory.rates import predicted_half_width
from moe_theory.store import folder_references, read_manifest_config

HERE = Path(__file__).resolve().parent
OUT = HERE / "preflight_calibration.json"
OUTLOOKS = HERE / "preflight_outlooks.json"
#: The verdicts of curves whose certificates all passed.
JUDGED = ("consistent", "inconsistent", "inconclusive")


def folders() -> list[Path]:
    """Every committed sweep folder with a rates table and reference certificates."""
    return sorted(m.parent for m in HERE.rglob("manifest.json")
                  if (m.parent / "rates.json").exists() and (m.parent / "certificates").is_dir())


def calibration() -> pd.DataFrame:
    rows, seen = [], {}
    for folder in folders():
        rates = [r for r in json.loads((folder / "rates.json").read_text())
                 if str(r["verdict"]).startswith(JUDGED)
                 and all(r[f"cert_{c}"] == "pass" for c in CERTIFICATES)]
        if not rates:
            continue
        config = read_manifest_config(folder)
        refs, certs = folder_references(folder, config), load_reference_certificates(folder)
        by_curve = {}
        for r in rates:
            by_curve.setdefault((r["setting"], r["fit_gate"]), []).append(r)
        for (name, gate), curves in sorted(by_curve.items()):
            setting = next(s for s in config.setting_objects() if s.name == name)
            same = (name, gate, tuple(config.n), config.reps_of(gate), refs[name, gate].to_json())
            where = str(folder.relative_to(HERE))
            if same in seen:
                seen[same].append(where)
                continue
            seen[same] = [where]
            limit = normal_limit(setting, gate, refs[name, gate], config.n,
                                 [r["loss_name"] for r in curves],
                                 design_size=certs[name, gate].design_size)
            for r in curves:
                if int(r["n_used"]) != len(config.n):
                    continue  # a dropped n: the measured CI is of another grid
                entry = limit[r["loss_name"]]
                slope, half = predicted_half_width(entry["n"], entry["mean"], entry["sd"],
                                                   int(r["reps_used"]))
                rows.append({"folder": where, "also": seen[same], "setting": name,
                             "fit_gate": gate, "loss_name": r["loss_name"],
                             "n_min": min(config.n), "n_max": max(config.n),
                             "n_points": len(config.n), "reps": int(r["reps_used"]),
                             "measured_slope": r["slope"], "limit_slope": slope,
                             "measured_half_width": r["ci_half_width"],
                             "predicted_half_width": half,
                             "ratio": r["ci_half_width"] / half, "verdict": r["verdict"]})
    return pd.DataFrame(rows)


def outlooks() -> pd.DataFrame:
    """Every committed folder's preflight table beside its rates table's verdicts."""
    tables = []
    for folder in folders():
        rates = pd.DataFrame(json.loads((folder / "rates.json").read_text()))
        table = folder_outlook(folder).merge(
            rates[["setting", "fit_gate", "loss_name", "verdict", "ci_half_width", "reps_used"]],
            on=["setting", "fit_gate", "loss_name"], how="left", validate="one_to_one")
        tables.append(table.assign(folder=str(folder.relative_to(HERE))))
    out = pd.concat(tables, ignore_index=True)
    return out[["folder", *[c for c in out.columns if c != "folder"]]]


def verdict_kind(verdict: str) -> str:
    """A verdict without its reason: consistent, inconsistent, inconclusive, not measurable."""
    return str(verdict).split(" (")[0]


def outlook_summary(table: pd.DataFrame) -> str:
    counts = pd.crosstab(table["outlook"], table["verdict"].map(verdict_kind))
    return (f"{len(table)} plotted curves of {table['folder'].nunique()} folders: the preflight's "
            "outlook (rows) against the sweep's verdict (columns)\n\n" + counts.to_string())


def summary(table: pd.DataFrame) -> str:
    cols = ["folder", "setting", "fit_gate", "loss_name", "reps", "measured_half_width",
            "predicted_half_width", "ratio", "verdict"]
    q = table["ratio"].quantile([0, 0.5, 1]).round(2).tolist()
    return (table[cols].round(3).to_string(index=False) + "\n\n"
            f"{len(table)} curves; measured / predicted half-width: min {q[0]}, median {q[1]}, "
            f"max {q[2]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--summary", action="store_true", help="print the committed table")
    args = p.parse_args()
    if not args.summary:
        for path, table in ((OUT, calibration()), (OUTLOOKS, outlooks())):
            path.write_text(table.to_json(orient="records", indent=1, double_precision=15)
                            + "\n")
    print(summary(pd.read_json(OUT)) + "\n\n" + outlook_summary(pd.read_json(OUTLOOKS)))


if __name__ == "__main__":
    main()
