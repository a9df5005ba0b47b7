"""The moe-theory command line. Exit codes (moe_theory.errors, docs/design.md#exit-codes): 0
success, 1 `compare` found values that differ, 2 bad input (the message names the field), 3 the
file system or the device refused (the message names the path or device; finished shards are
kept), 130 interrupted (finished shards are kept)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from pathlib import Path

from moe_theory.config import named_configs
from moe_theory.console import log_stderr
from moe_theory.errors import (
    EXIT_BAD_INPUT,
    EXIT_BROKEN_PIPE,
    EXIT_ENVIRONMENT,
    EXIT_INTERRUPTED,
    ResourceError,
    is_out_of_memory,
)
from moe_theory.layout import MANIFEST_FILE
from moe_theory.store import StoreWarning
from moe_theory.validation import check_number
from moe_theory.voronoi import ALL_KINDS

DEVICES = ("cpu", "cuda")
#: What `moe-theory reproduce` runs without a name, with --fast --certify: the sigmoid-vs-softmax
#: comparison on the truth the data identify, whose small CPU preset prints every certificate
#: (simulations/configs/nguyen2024-measurable.toml, [fast]).
DEFAULT_FIGURE = "nguyen2024-measurable"
DIR_HELP = "results folder of a sweep (holds manifest.json and shards/)"
JSON_HELP = "print the table as JSON records instead of text"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _device(args) -> str:
    """``--device``, whose default is CUDA where ``--gpus`` pins each worker to one GPU (sweep
    and reproduce alike: reproduce --gpus alone had been refused for a device nobody asked
    for), else the CPU."""
    return args.device or ("cuda" if args.gpus is not None else "cpu")


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    """Columns padded to their widest cell, under a header and a rule (as the rates table)."""
    widths = [max(map(len, column)) for column in zip(header, *rows, strict=True)]
    for line in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def _cmd_sweep(args) -> int:
    from moe_theory.config import load_config
    from moe_theory.outputs import default_folder, write_report
    from moe_theory.sweep import run_sweep

    config = load_config(args.config, fast=args.fast)
    # results/NAME[-fast], as reproduce and preflight: the folder `preflight --fast` prepared
    # (docs/theory.md#planning); a --fast sweep in results/NAME was refused by the full one's
    out = Path(args.out) if args.out else default_folder(config.name, args.fast)
    device = _device(args)
    if args.references_from:
        from moe_theory.sweep import adopt_references, check_sweep_options

        # adopting writes into the folder (and --force sets its run aside): the sweep's own
        # options are refused first
        check_sweep_options(device=device, backend=args.backend, executor=args.executor,
                            scheduler=args.scheduler, local_workers=args.local_workers,
                            gpus=args.gpus)
        adopt_references(config, out, args.references_from, device=device, force=args.force)
    df = run_sweep(config, out, device=device, backend=args.backend, force=args.force,
                   executor=args.executor, scheduler=args.scheduler,
                   local_workers=args.local_workers, gpus=args.gpus)
    write_report(df, config, out)
    print(f"{len(df)} rows in {out / 'results.parquet'}")
    return 0


def _cmd_merge(args) -> int:
    from moe_theory.store import merge

    out = Path(args.dir)
    if not out.is_dir():
        raise ValueError(f"DIR: no folder {args.dir!r}")
    df = merge(out)
    print(f"{len(df)} rows in {out / 'results.parquet'}")
    return 0


def _cmd_rates(args) -> int:
    from moe_theory.certificates import FolderCertificates
    from moe_theory.outputs import figure_panels, mark_plotted
    from moe_theory.rates import format_rates_table, rates_table
    from moe_theory.store import load_results, read_manifest_config

    results = load_results(args.dir)
    table = rates_table(results, certificates=FolderCertificates.load(args.dir))
    if (Path(args.dir) / MANIFEST_FILE).exists():
        # a sweep's folder: its config's figure says which curves are drawn (and paired)
        mark_plotted(table, figure_panels(results, read_manifest_config(Path(args.dir))))
    if args.json:
        print(table.to_json(orient="records", indent=1))
    else:
        print(format_rates_table(table))
    return 0


def _cmd_plot(args) -> int:
    from moe_theory.outputs import write_figure
    from moe_theory.report import read_config
    from moe_theory.store import load_results

    out = Path(args.dir)
    if not (out / MANIFEST_FILE).exists():
        raise ValueError(f"DIR: {out} has no manifest.json (not a sweep folder)")
    df = load_results(out)
    config, _ = read_config(out, df)
    paths = write_figure(df, config, out)  # as reproduce draws it, certificates included
    print("\n".join(map(str, paths)))
    return 0


def _cmd_check(args) -> int:
    from moe_theory.certificates import CHECK_REPS
    from moe_theory.check import rejudge, run_check
    from moe_theory.executors import device_workers, process_options

    out = Path(args.dir)
    if not out.is_dir():
        raise ValueError(f"DIR: no folder {args.dir!r}")
    if args.stored:
        if args.reps is not None:
            raise ValueError("--reps: the stored refits fix the replications; leave it out with "
                             "--stored")
        report = rejudge(out)
    else:
        reps = CHECK_REPS if args.reps is None else args.reps
        workers = device_workers(args.workers, args.device)
        report = run_check(out, reps=reps, device=args.device, backend=args.backend,
                           log=log_stderr,
                           **process_options(workers))
    for name, curve in report["curves"].items():
        reasons = "; ".join(curve["reasons"])
        print(f"{name}: {curve['status']}" + (f" ({reasons})" if reasons else ""))
    if args.stored:
        print(f"wrote {out / 'check.json'} and the rates table and figure, judged again from "
              f"{out / 'check.parquet'}")
    else:
        print(f"wrote {out / 'check.json'} ({report['wall_s']:.0f} s)")
    return 0


def _cmd_certify(args) -> int:
    from moe_theory.measure import MixingMeasure
    from moe_theory.outputs import write_report
    from moe_theory.population import DESIGN_SIZE
    from moe_theory.report import read_config, read_results
    from moe_theory.store import read_manifest, record_references, record_rivals
    from moe_theory.sweep import certify

    out = Path(args.dir)
    manifest = read_manifest(out) if out.is_dir() else None
    if manifest is None:
        raise ValueError(f"DIR: {out} has no manifest.json (not a sweep folder)")
    df = read_results(out)
    config, _ = read_config(out, df)
    recorded = manifest.get("references", {})
    sizes = manifest.get("reference_design_sizes", {})
    missing = sorted(key for key in recorded if key not in sizes)
    if missing and args.design_size is None:
        raise ValueError(
            f"--design-size: the manifest of {out} does not record the design size the G_bar of "
            f"{', '.join(missing)} was fitted on (folders swept before it was recorded): give it "
            f"(a sweep on cuda fits {DESIGN_SIZE['cuda']} points, on cpu {DESIGN_SIZE['cpu']})")
    clash = sorted(key for key in recorded if key in sizes and args.design_size is not None
                   and sizes[key] != args.design_size)
    if clash:
        raise ValueError(f"--design-size: {args.design_size} contradicts the manifest of {out}, "
                         f"which records {sizes[clash[0]]} for {clash[0]}")
    if missing:
        # stated once, then recorded: a later certify or resumption reads it from the manifest
        record_references(out, {key: recorded[key] for key in missing},
                          {key: args.design_size for key in missing})
    rivals: dict[str, dict[str, str]] = {}
    for other in args.rivals_from:
        theirs = read_manifest(Path(other)) if Path(other).is_dir() else None
        if theirs is None:
            raise ValueError(f"--rivals-from: {other} has no manifest.json (not a sweep folder)")
        # named relative to this folder, so that the record stays true wherever it is cloned
        where = Path(os.path.relpath(Path(other).resolve(), out.resolve())).as_posix()
        for key, text in theirs.get("references", {}).items():
            # a G_bar with another number of atoms (a config's k_fit) minimises another model
            if (key in recorded and text != recorded[key] and MixingMeasure.from_json(text).k
                    == MixingMeasure.from_json(recorded[key]).k):
                rivals.setdefault(key, {})[where] = text
        if not any(where in found for found in rivals.values()):
            raise ValueError(f"--rivals-from: {other} has no G_bar of {out}'s settings that "
                             "differs from this folder's")
    if rivals:
        record_rivals(out, rivals)
    certs = certify(config, out, device=args.device, backend=args.backend,
                    log=log_stderr, force=True)
    write_report(df, config, out)
    for cert in certs:
        print(f"{cert.setting} / {cert.fit_gate} ({cert.kind}): {cert.status}"
              + (f" ({'; '.join(cert.reasons)})" if cert.reasons else ""))
    print(f"wrote {out / 'certificates'} and the rates and figure of {out}")
    return 0


def _cmd_report(args) -> int:
    from moe_theory.report import make_report

    print("\n".join(map(str, make_report(args.dir, html=args.html))))
    return 0


def _cmd_reproduce(args) -> int:
    from moe_theory.reproduce import reproduce
    from moe_theory.threads import usable_cores

    # no name: the CPU preset of the measurable comparison, certified (DEFAULT_FIGURE)
    name = args.name or DEFAULT_FIGURE
    fast = args.fast or args.name is None
    certify = args.certify if args.certify is not None else args.name is None
    workers = args.workers
    device = _device(args)
    if args.name is None and workers is None and device == "cpu" and not (
            args.gpus or args.local_workers):
        # the default preset's settings are all built in, so worker processes know them: one
        # per core (one torch thread each, moe_theory.threads). On 2 cores two processes took
        # the fits from 50 s to 27 s and the optimiser check from 58 s to 33 s, the same table
        # (2026-12-04)
        workers = usable_cores()
    reproduce(name, fast=fast, out=args.out, device=device, backend=args.backend,
              workers=workers, certify=certify, gpus=args.gpus,
              local_workers=args.local_workers, force=args.force,
              references_from=args.references_from)
    return 0


def _cmd_compare(args) -> int:
    from moe_theory.compare import compare_folders, differs, format_comparison
    from moe_theory.errors import EXIT_DIFFERENT, EXIT_OK

    check_number("--rtol", args.rtol)  # NaN compares false both ways: it would pass as >= 0
    table = compare_folders(args.a, args.b, rtol=args.rtol)
    if args.json:
        print(table.to_json(orient="records", indent=1))
    else:
        print(format_comparison(table, args.a, args.b, rtol=args.rtol))
    return EXIT_DIFFERENT if differs(table) else EXIT_OK


def _cmd_preflight(args) -> int:
    from moe_theory.config import load_config
    from moe_theory.outputs import default_folder
    from moe_theory.preflight import format_preflight, preflight

    # no name: the default preset's, as `moe-theory reproduce` runs it (DEFAULT_FIGURE)
    fast = args.fast or args.name is None
    config = load_config(args.name or DEFAULT_FIGURE, fast=fast)
    out = Path(args.out) if args.out else default_folder(config.name, fast)
    table = preflight(config, out, device=args.device, backend=args.backend, force=args.force,
                      log=log_stderr)
    if args.json:
        print(table.to_json(orient="records", indent=1))
    else:
        print(format_preflight(table, config))
        print(f"\nwritten to {out / 'preflight.txt'} (and .csv, .json); a sweep into {out} "
              f"on {args.device} reuses its references and certificates (on another device "
              "type G_bar is fitted on another design: the sweep refuses the folder unless "
              "--force, so give it another --out)")
    return 0


def _cmd_loss(args) -> int:
    from moe_theory.measure import MixingMeasure
    from moe_theory.voronoi import voronoi_loss

    def read(path: str, field: str) -> MixingMeasure:
        p = Path(path)
        if p.is_dir():  # not is_file(): a pipe (<(...), /dev/stdin) is a file to read
            raise ValueError(f"{field}: {path!r} is a folder, not a file")
        if not p.exists():
            raise ValueError(f"{field}: no file {path!r}")
        try:
            return MixingMeasure.from_json(p.read_text())
        except ValueError as err:
            raise ValueError(f"{field} ({path}): {err}") from None

    check_number("--r", args.r, 1)  # NaN passes r >= 1 as a comparison and prints NaN losses
    fitted, truth = read(args.fitted, "FITTED"), read(args.true, "TRUE")
    # strict JSON, as every other --json output: a loss that does not apply to the pair (NaN),
    # or one past float range, is null, not the non-standard NaN or Infinity token
    values = [v if math.isfinite(v) else None
              for v in voronoi_loss(fitted, truth, args.kind, r=args.r).tolist()]
    print(json.dumps(values[0] if len(values) == 1 else values, allow_nan=False))
    return 0


def _cmd_remeasure(args) -> int:
    import numpy as np

    from moe_theory.remeasure import remeasure

    table = remeasure(args.dir, write=args.write)
    old, new = table["old"].to_numpy(), table["new"].to_numpy()
    table = table.assign(change=np.abs(new - old) / np.maximum(np.abs(old), 1e-300))
    rows = []
    for (where, setting, gate, loss), g in table.groupby(
            ["table", "setting", "fit_gate", "loss_name"], sort=True):
        missing = int((~g["stored"]).sum())
        largest = g.loc[~g["same"] & ~g["added"], "change"].max()
        rows.append([where, setting, gate, loss, str(len(g)),
                     str(int((~g["same"] & ~g["added"]).sum())), str(int(g["added"].sum())),
                     "-" if np.isnan(largest) else f"{largest:.3g}", str(missing)])
    _print_table(["table", "setting", "fit", "loss", "values", "changed", "added",
                  "largest rel. change", "no estimate"], rows)
    added = int(table["added"].sum())
    changed = int((~table["same"]).sum()) - added
    print(f"{changed} of {len(table) - added} loss values differ from those measured again from "
          "the stored estimates" + (f"; {added} values of losses the tables lacked were measured"
                                    if added else "")
          + ("; the tables, the optimiser check, the rates and the figure were rewritten"
             if args.write and changed + added else ""))
    return 0


def _cmd_settings(args) -> int:
    from moe_theory.settings import get_setting, list_settings

    rows = [get_setting(name) for name in list_settings()]
    if args.json:
        print(json.dumps([s.to_dict() for s in rows], indent=1))
        return 0
    _print_table(["setting", "truth", "score", "expert", "regime", "d", "k*", "k", "description"],
                 [[s.name, s.truth_gate, s.score, s.expert, s.regime, str(s.d), str(s.k_true),
                   str(s.k_fit), s.description] for s in rows])
    return 0


def _cmd_theory(args) -> int:
    from moe_theory.theory import theory_table

    rows = theory_table()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    _print_table(["fit", "score", "regime", "expert", "loss", "exponent", "rate", "source"],
                 [[r["fit_gate"], r["score"], r["regime"], r["expert"], r["loss_name"],
                   f"{r['exponent']:+.2f}", r["label"], r["source"]] for r in rows])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moe-theory", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def device_args(p, default="cpu"):
        p.add_argument("--device", choices=DEVICES, default="cpu",
                       help=f"where the fits run: %(choices)s (default {default})")
        p.add_argument("--backend", choices=("auto", "torch", "triton"), default="auto",
                       help="the fits' loss/Jacobian pass: torch (PyTorch), triton (Triton "
                            "kernels), auto (default: Triton on a GPU for the shapes it "
                            "takes, else PyTorch)")

    p = sub.add_parser("sweep", help="run (or resume) a sweep from a TOML config")
    p.add_argument("config", help="path to a TOML config, or the name of one in simulations/configs")
    p.add_argument("--out", help="results folder (default results/NAME[-fast], as reproduce)")
    p.add_argument("--executor", choices=("local", "processes", "dask"), default="local",
                   help="local: in this process (default); processes: in --local-workers "
                        "processes of this machine, on the same device; dask: on a Dask cluster")
    p.add_argument("--scheduler", help="with --executor dask: address of a running scheduler")
    p.add_argument("--local-workers", type=int, metavar="N",
                   help="with --executor processes: N processes (default: one per core on cpu, "
                        "moe_theory.executors.GPU_PROCESSES on cuda); "
                        "with --executor dask: a LocalCluster of N worker processes")
    p.add_argument("--gpus", nargs="?", const="all", metavar="0,1",
                   help="with --executor dask: one worker per GPU (all visible ones by default)")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted sweep (always on: finished shards are never redone)")
    p.add_argument("--force", action="store_true",
                   help="set aside (into DIR/replaced-<time>/) another config's outputs, or recompute shards "
                        "measured against another G_bar")
    p.add_argument("--fast", action="store_true", help="apply the config's [fast] overrides")
    p.add_argument("--references-from", metavar="DIR",
                   help="fit against the G_bar references the folder DIR records for the same "
                        "settings, fitted on this device type, instead of fitting them again (a "
                        "committed figure re-run, or run further: docs/design.md#results-store)")
    # the default is cuda with --gpus (_cmd_sweep)
    device_args(p, default="cpu; cuda with --gpus")
    p.set_defaults(run=_cmd_sweep, device=None)

    p = sub.add_parser("merge", help="rebuild the tidy table of a results folder from its shards")
    p.add_argument("dir", help=DIR_HELP)
    p.set_defaults(run=_cmd_merge)

    p = sub.add_parser("rates", help="slope table of a results folder")
    p.add_argument("dir", help=DIR_HELP)
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(run=_cmd_rates)

    p = sub.add_parser("plot", help="log-log figures of a results folder")
    p.add_argument("dir", help=DIR_HELP)
    p.set_defaults(run=_cmd_plot)

    p = sub.add_parser("report", help="verdict report of a results folder (DIR/report.md)")
    p.add_argument("dir", help=DIR_HELP)
    p.add_argument("--html", action="store_true",
                   help="also DIR/report.html, one file with the figures embedded")
    p.set_defaults(run=_cmd_report)

    p = sub.add_parser("check", help="certify a finished sweep: reference certificates and the "
                       "optimiser check (refits under 10x max_iter and 10x jitter; DIR/check.json)")
    p.add_argument("dir", help=DIR_HELP)
    p.add_argument("--reps", type=_positive_int, metavar="M",
                   help="replications refitted per (setting, n), the first ones (default "
                        "moe_theory.certificates.CHECK_REPS)")
    p.add_argument("--stored", action="store_true",
                   help="no refit: judge the refits DIR keeps (check.parquet) again and rewrite "
                        "check.json, the rates table and the figure (a folder checked before "
                        "the check's evaluation changed)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="processes that share the device, one refit each (default: "
                        "moe_theory.executors.GPU_PROCESSES on cuda, 1 on cpu)")
    device_args(p)
    p.set_defaults(run=_cmd_check)

    p = sub.add_parser("certify", help="recompute the reference certificates of a finished "
                       "sweep against the G_bar its manifest records (no refit of G_bar, so a "
                       "GPU sweep is certified on a CPU against its own), then its rates and figure")
    p.add_argument("dir", help=DIR_HELP)
    p.add_argument("--design-size", type=_positive_int, metavar="N",
                   help="the design size the recorded G_bar was fitted on, for manifests that "
                        "do not record it (folders swept before it was); recorded in the manifest")
    p.add_argument("--rivals-from", action="append", default=[], metavar="OTHER_DIR",
                   help="another sweep folder whose G_bar of the same (setting, gate) the refits "
                        "of this folder's G_bar also start from (a basin found on another design "
                        "must not be deeper); recorded in the manifest for later certificates; "
                        "repeatable")
    device_args(p)
    p.set_defaults(run=_cmd_certify)

    p = sub.add_parser("reproduce", help=f"regenerate a paper figure (default: {DEFAULT_FIGURE} "
                                         "--fast --certify)")
    p.add_argument("name", nargs="?",
                   help=f"a config ({', '.join(named_configs())}), an experiment of "
                        "moe_theory.reproduce.EXPERIMENTS (attention-teacher, attention-regularity), "
                        f"or all (default: {DEFAULT_FIGURE} with --fast --certify, the "
                        "certified comparison on a small CPU preset)")
    p.add_argument("--fast", action="store_true", help="the config's small CPU preset")
    p.add_argument("--out", help="output folder (default results/NAME[-fast], which git ignores; "
                                 "the committed figures: --out paper_figures/NAME)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="processes that share the device, one shard each (default: "
                        "moe_theory.executors.GPU_PROCESSES on cuda, 1 on cpu, one per core "
                        "for the default preset)")
    p.add_argument("--certify", action=argparse.BooleanOptionalAction, default=None,
                   help="also run the optimiser check of `moe-theory check` before the report "
                        "(default off for a named figure: it refits a subsample twice, up to 10x "
                        "as long; on for the default preset)")
    p.add_argument("--gpus", nargs="?", const="all", metavar="0,1",
                   help="one Dask cluster with a worker per GPU (all visible ones by default) for "
                        "every figure, largest work first (docs/design.md#scheduling)")
    p.add_argument("--local-workers", type=int, metavar="N",
                   help="one Dask cluster of N local worker processes for every figure (the "
                        "--gpus path on this machine's device)")
    p.add_argument("--force", action="store_true",
                   help="set aside (into DIR/replaced-<time>/) another config's outputs, or recompute shards "
                        "measured against another G_bar")
    p.add_argument("--references-from", metavar="DIR",
                   help="fit against the G_bar references the folder DIR records for the same "
                        "settings, fitted on this device type, instead of fitting them again (a "
                        "committed figure re-run, or run further: docs/design.md#results-store)")
    device_args(p, default="cpu; cuda with --gpus")
    p.set_defaults(run=_cmd_reproduce, device=None)

    p = sub.add_parser("preflight", help="before a sweep: which plotted curves its grid and "
                       "replications can measure (the reference certificates and the CI their "
                       "normal limit predicts), into the folder the sweep will use")
    p.add_argument("name", nargs="?",
                   help=f"a config's name ({', '.join(named_configs())}) or TOML path (default: "
                        f"{DEFAULT_FIGURE} with --fast, what `moe-theory reproduce` runs)")
    p.add_argument("--fast", action="store_true", help="the config's small CPU preset")
    p.add_argument("--out", help="the sweep's folder (default results/NAME[-fast], as reproduce)")
    p.add_argument("--force", action="store_true",
                   help="set aside (into DIR/replaced-<time>/) another config's outputs, or recompute shards "
                        "measured against another G_bar")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    device_args(p)
    p.set_defaults(run=_cmd_preflight)

    p = sub.add_parser("loss", help="Voronoi loss between two measures in JSON")
    p.add_argument("fitted", help="JSON file of the fitted mixing measure")
    p.add_argument("true", help="JSON file of the true mixing measure")
    p.add_argument("--kind", choices=ALL_KINDS, default="D1", metavar="KIND",
                   help="Voronoi loss D1, D2 or D3, or a parameter error err_{eta,beta1,A}_"
                        "{exact,over}; one of: %(choices)s (default D1)")
    p.add_argument("--r", type=float, default=2.0, help="exponent r of D2 (default 2)")
    p.set_defaults(run=_cmd_loss)

    p = sub.add_parser("remeasure", help="measure a finished sweep's stored estimates again "
                       "against its references (a loss whose definition changed, or a check "
                       "that the tables are what the fits measure)")
    p.add_argument("dir", help=DIR_HELP)
    p.add_argument("--write", action="store_true",
                   help="put the new values in the folder's tables and redo the optimiser "
                        "check's comparison, the rates and the figure")
    p.set_defaults(run=_cmd_remeasure)

    p = sub.add_parser("compare", help="two results folders of one config, value by value: "
                       "the tidy table, the estimates, the check's refits and the rates (a "
                       "re-run against the committed folder; exit 1 where they differ)")
    p.add_argument("a", help="a results folder (e.g. a committed figure's)")
    p.add_argument("b", help="another folder of the same config (e.g. its re-run)")
    p.add_argument("--rtol", type=float, default=0.0,
                   help="relative tolerance: a number to itself, an estimate to its largest "
                        "parameter (default 0: bit for bit)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(run=_cmd_compare)

    p = sub.add_parser("settings", help="list the named settings")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(run=_cmd_settings)

    p = sub.add_parser("theory", help="print the theory table")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(run=_cmd_theory)
    return parser


_show_python_warning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The results store's warnings (an incomplete sweep, a damaged shard) as one plain line."""
    if issubclass(category, StoreWarning):
        print(f"moe-theory: warning: {message}", file=sys.stderr)
    else:
        _show_python_warning(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    # torch's thread count was set when moe_theory was imported (moe_theory.threads)
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.run(args)
    except ResourceError as err:
        print(f"moe-theory: error: {err}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except ValueError as err:
        print(f"moe-theory: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (MemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        # past what a config's bounds foresee (a G_bar design, a batch the device cannot hold)
        print(f"moe-theory: error: out of memory: {str(err).splitlines()[0][:300]}",
              file=sys.stderr)
        return EXIT_ENVIRONMENT
    except KeyboardInterrupt:
        print("moe-theory: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader stopped early (`moe-theory theory | head`): quiet the flush at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as err:
        # a file the command reads or writes outside the results store
        where = f"{err.filename}: " if err.filename else ""
        print(f"moe-theory: error: {where}{err.strerror or err}", file=sys.stderr)
        return EXIT_ENVIRONMENT


if __name__ == "__main__":
    sys.exit(main())
