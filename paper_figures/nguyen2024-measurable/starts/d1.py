"""The smallest model: the softmax fit of a d = 1 truth from many starts (paper_figures/README.md,
nguyen2024-measurable, "The smallest model: d = 1").

    python paper_figures/nguyen2024-measurable/starts/d1.py OUT.csv.gz --truth drawn|hand
        [--n 4000,16000] [--reps 10] [--starts 16]
    python paper_figures/nguyen2024-measurable/starts/d1.py --summary OUT.csv.gz [OUT2.csv.gz ...]
    python paper_figures/nguyen2024-measurable/starts/d1.py --kept SWEEP_FOLDER [...]
    python paper_figures/nguyen2024-measurable/starts/d1.py --certify FOLDER
    python paper_figures/nguyen2024-measurable/starts/d1.py --conditioning [--summary] OUT.json

(``--kept``: the same medians for a sweep's kept softmax fits; ``--certify``: both truths'
reference certificates into ``FOLDER/certificates/``; ``--conditioning``: the certificate's
criteria over the recipe's draws at d = 1, 2, 3, 4 and 8.)

Does a smaller model still make the softmax fit's over-specified losses measurable? The d = 4
truth (``nguyen2024-measurable-gelu-d4``) was the smaller-d lever; this asks the same of d = 1,
where the fit has 14 free parameters and a CPU fits many starts. Two truths with the d = 4
recipe's k* = 3, k = 4, GELU experts and noise (nu = 0.02): ``drawn``, the recipe's own draw at
d = 1 (seed 1), and ``hand``, three atoms chosen separated (opposite gate slopes and experts).
Every start is fitted as its own problem in the study config's 3x box (``gelu_d1.toml``;
``many_starts.fit_every_start``) and the table keeps, besides its losses, ``D1_matched`` and the
mean square distance of the fitted regression function from the truth's over ``DESIGN`` points
of the certificate's design (``l2``): the fit's error as a function, against its error as
parameters.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import time
from pathlib import Path

import numpy as np
import pandas as pd

from moe_theory.certificates import design, reference_certificate, write_reference_certificate
from moe_theory.config import load_config
from moe_theory.measure import MixingMeasure
from moe_theory.settings import Setting, get_setting, list_settings, register
from moe_theory.store import FIT_MEASURE, load_fits, read_csv
from moe_theory.sweep import shard_box
from moe_theory.voronoi import matched_gauge_d1, voronoi_loss

CONFIG = Path(__file__).with_name("gelu_d1.toml")
#: the d = 4 truth whose recipe the study takes to other d (moe_theory/settings.py) and the
#: variance of its gate scores, which sets its gate slopes' sd, sqrt(GATE_VAR / d)
D4, GATE_VAR = "nguyen2024-measurable-gelu-d4", 5.0


def recipe(name: str, d: int, truth_seed: int, description: str = "") -> Setting:
    """The d = 4 truth's recipe (its k*, k, experts, scales and noise) drawn at ``d``."""
    return dataclasses.replace(get_setting(D4), name=name, d=d, truth_seed=truth_seed,
                               beta1_sd=float(np.sqrt(GATE_VAR / d)), description=description,
                               source="paper_figures/nguyen2024-measurable/starts/d1.py")


TRUTHS = {
    "drawn": recipe("nguyen2024-measurable-gelu-d1", 1, 1,
                    "d=1, k*=3, k=4: the d = 4 GELU truth's recipe at d = 1"),
    # rows: beta0, beta1 | a, b; the last atom's gate is the softmax gauge's zero
    "hand": dataclasses.replace(
        recipe("nguyen2024-measurable-gelu-d1-hand", 1, 0,
               "d=1, k*=3, k=4: three separated atoms chosen by hand"),
        atoms=((0.0, 3.0, 2.0, -1.0), (0.0, -3.0, -2.0, 1.0), (0.0, 0.0, 0.5, 1.5))),
}
#: design points of the function-space error (the certificate's design: the covariates' law)
DESIGN = 200_000


@functools.cache
def _many_starts():
    """The sibling study script that fits every start as its own problem (loaded once)."""
    path = Path(__file__).with_name("many_starts.py")
    spec = importlib.util.spec_from_file_location("many_starts", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def register_truths() -> None:
    for setting in TRUTHS.values():
        if setting.name not in list_settings():
            register(setting)


def study_config():
    """The study's config (``CONFIG``), which names the truths: registered first."""
    register_truths()
    return load_config(CONFIG)


def function_error(fits: MixingMeasure, setting: Setting) -> np.ndarray:
    """Mean square of ``f_fit - f_truth`` over ``DESIGN`` points of the setting's covariates (the
    certificate's design), per fit."""
    X = design(setting, DESIGN)
    f_truth = setting.truth()(X)
    out = [((fits.select([r])(X) - f_truth) ** 2).mean().item() for r in range(fits.R)]
    return np.asarray(out)


def run(truth: str, ns: list[int], reps: int, starts: int, out: Path) -> pd.DataFrame:
    register_truths()
    setting = TRUTHS[truth]
    tables = []
    for n in ns:
        table = _many_starts().fit_every_start(n, reps, starts, starts, "cpu", "softmax",
                                               config_name=CONFIG, setting_name=setting.name,
                                               estimates=True)
        fits = MixingMeasure.from_json_rows(table[FIT_MEASURE])
        tables.append(table.assign(D1_matched=matched_gauge_d1(fits, setting.truth()).numpy(),
                                   l2=function_error(fits, setting)))
        pd.concat(tables).to_csv(out, index=False)  # a run cut short keeps its finished n
    return pd.concat(tables)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per setting and n, over the data sets: the best start's medians (its function error in
    units of nu / n, its over-specified expert error and ``D1_matched``), the near-truth start's
    (start 0) alike, the best start's SSR below G*'s (in nu), the share of best starts on the
    box and of data sets whose best SSR a second start reaches within nu; and over the starts at
    least as good as G*, the largest over-specified error and ``D1_matched`` over the best's."""
    out = []
    for (name, n), d in table.groupby(["setting", "n"]):
        nu = get_setting(name).noise_var
        best = d.loc[d.groupby("rep").ssr.idxmin()].set_index("rep")
        first = d[d.start == 0].set_index("rep").loc[best.index]
        sub = d[d.ssr <= d.ref_ssr]
        top = sub.groupby("rep")[["err_eta_over", "D1_matched"]].max().loc[best.index]
        near = (d.ssr - d.groupby("rep").ssr.transform("min") <= nu).groupby(d.rep).sum()
        out.append({
            "setting": name, "n": n, "reps": len(best), "starts": d.start.nunique(),
            "l2_n_over_nu": float((best.l2 * n / nu).median()),
            "err_eta_over": float(best.err_eta_over.median()),
            "D1_matched": float(best.D1_matched.median()),
            "start0_l2_n_over_nu": float((first.l2 * n / nu).median()),
            "start0_err_eta_over": float(first.err_eta_over.median()),
            "start0_D1_matched": float(first.D1_matched.median()),
            "gain_nu": float(((best.ref_ssr - best.ssr) / nu).median()),
            "on_box": float(best.bound.mean()), "second_start": float((near >= 2).mean()),
            "sublevel_err_eta_over": float((top.err_eta_over / best.err_eta_over).max()),
            "sublevel_D1_matched": float((top.D1_matched / best.D1_matched).max())})
    return pd.DataFrame(out)


def kept_summary(folder: Path) -> pd.DataFrame:
    """The same medians for the kept softmax fits of a sweep folder (its stored estimates,
    ``fits.csv.gz``): the d = 4 truth's study in the same box and n (``gelu_d4_box3/``)."""
    fits = load_fits(folder)
    fits = fits[fits.fit_gate == "softmax"]
    out = []
    for (name, n), d in fits.groupby(["setting", "n"]):
        setting, measures = get_setting(name), MixingMeasure.from_json_rows(d[FIT_MEASURE])
        star = setting.truth()
        out.append({"folder": folder.name, "setting": name, "n": n, "reps": len(d),
                    "l2_n_over_nu": float(np.median(function_error(measures, setting) * n
                                                    / setting.noise_var)),
                    "err_eta_over": float(np.median(voronoi_loss(measures, star,
                                                                 "err_eta_over").numpy())),
                    "D1_matched": float(np.median(matched_gauge_d1(measures, star).numpy()))})
    return pd.DataFrame(out)


def certify(folder: Path) -> None:
    """Each truth's reference certificate for the softmax fit (G*'s own k*-atom model, the
    study's box and n range), written to ``folder/certificates/``: does the reference pass before
    any fit is run?"""
    config = study_config()
    for setting in TRUTHS.values():
        t0 = time.perf_counter()
        cert = reference_certificate(setting, "softmax", config.n,
                                     ["err_eta_over", "D1", "D1_matched"],
                                     box=shard_box(config, setting, "softmax", setting.truth()))
        cert.wall_s = time.perf_counter() - t0
        print(f"{setting.name}: {cert.status} ({'; '.join(cert.reasons)}), written to "
              f"{write_reference_certificate(folder, cert)}")


#: the conditioning scan's dimensions and truth seeds (the recipe's draws, gate slopes ~ N(0, 5/d))
SCAN_D, SCAN_SEEDS = (1, 2, 3, 4, 8), range(8)


def conditioning(out: Path | None = None, seeds=SCAN_SEEDS) -> pd.DataFrame:
    """The recipe's truths drawn at each d of ``SCAN_D`` (``seeds``): the Fisher condition
    number of G*'s own k*-atom model and the predicted parameter error at the study's smallest n
    over the atoms' smallest distance (the reference certificate's criteria for the softmax
    fit: at most 1e10 and 0.25). Written to ``out`` (JSON records) where given, and returned."""
    config = study_config()
    rows = []
    for d in SCAN_D:
        for seed in seeds:
            setting = recipe(f"scan-d{d}-seed{seed}", d, seed)
            cert = reference_certificate(setting, "softmax", config.n, [])
            rows.append({"d": d, "truth_seed": seed, "status": cert.status,
                         "fisher_cond": cert.fisher_cond, "fisher_min_eig": cert.fisher_min_eig,
                         "error_at_n_min": cert.error_scale,
                         "min_atom_distance": cert.min_atom_distance,
                         "error_over_distance": cert.error_scale / cert.min_atom_distance})
    table = pd.DataFrame(rows)
    if out is not None:
        out.write_text(table.to_json(orient="records", indent=1))
    return table


def scan_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per d: how many truths pass the certificate, and the median and range of both criteria."""
    out = []
    for d, t in table.groupby("d"):
        out.append({"d": d, "truths": len(t), "pass": int((t.status == "pass").sum()),
                    **{f"{c}_{q}": f"{getattr(t[c], q)():.2g}"
                       for c in ("fisher_cond", "error_over_distance")
                       for q in ("median", "min", "max")}})
    return pd.DataFrame(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tables", nargs="+", help="the table to write (or, with --summary, read)")
    p.add_argument("--summary", action="store_true")
    p.add_argument("--conditioning", action="store_true",
                   help="scan the recipe's truths over d; write the JSON given")
    p.add_argument("--certify", action="store_true",
                   help="write both truths' softmax reference certificates into the folder given")
    p.add_argument("--kept", action="store_true",
                   help="the arguments are sweep folders: their kept softmax fits' medians")
    p.add_argument("--truth", choices=sorted(TRUTHS), default="drawn")
    p.add_argument("--n", default="4000,16000")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--starts", type=int, default=16)
    args = p.parse_args()
    register_truths()
    if args.conditioning and args.summary:
        print(scan_summary(pd.read_json(args.tables[0])).to_string(index=False))
        return
    if args.conditioning:
        table = conditioning(Path(args.tables[0]))
        print(scan_summary(table).to_string(index=False))
        return
    if args.certify:
        certify(Path(args.tables[0]))
        return
    if args.kept:
        table = pd.concat([kept_summary(Path(path)) for path in args.tables])
        print(table.round(3).to_string(index=False))
        return
    if args.summary:
        table = pd.concat([read_csv(path) for path in args.tables], ignore_index=True)
        with pd.option_context("display.width", 200, "display.max_columns", None):
            print(summary(table).round(3).to_string(index=False))
        return
    run(args.truth, [int(v) for v in args.n.split(",")], args.reps, args.starts,
        Path(args.tables[0]))


if __name__ == "__main__":
    main()
