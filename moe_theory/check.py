"""``moe-theory check DIR``: is a finished sweep's rate the estimator's or the optimiser's?
(docs/theory.md#certificates)

The check refits the first ``CHECK_REPS`` replications of every (setting, n) twice, with 10x
``max_iter`` and with 10x the start's jitter, through the sweep's own :func:`run_shard` (same
data, same seeds, same multi-start), and asks of every curve:

- is each sweep fit's sum of squared residuals within ``SSR_GAP_MAX`` noise variances of the
  best any refit found on the same data?
- does the mean loss at each n move by less than the half-width of its 95% CI?
- does the slope move by less than the half-width of its 95% CI?

A variant's estimate is its own fit unless that fit's SSR is worse than the sweep's by more than
``SSR_GAP_MAX`` noise variances (a worse local minimum is no evidence against the sweep's fit);
a fit the data cannot tell from the sweep's, far from it in the loss, moves the curve: the loss
is then not identified by the least-squares criterion.

Each refit is stored as it finishes (``DIR/check-refits/``: an interrupted check resumes), all
of them then go to ``DIR/check.parquet``, the per-curve outcome to ``DIR/check.json``, which
:class:`moe_theory.certificates.FolderCertificates` reads into the ``optimiser`` certificate.
The reference certificates are computed too when the sweep predates them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from moe_theory import sublevel
from moe_theory.certificates import (
    CHECK_JITTER_FACTOR,
    CHECK_MAX_ITER_FACTOR,
    CHECK_REPS,
    FAIL,
    NOT_RUN,
    OPTIMISER_SHARE_MIN,
    PASS,
    SSR_GAP_MAX,
    json_ready,
    load_check,
    noise_variance,
)
from moe_theory.config import SweepConfig
from moe_theory.executors import map_shards, shard_cost
from moe_theory.initialization import DEFAULT_JITTER
from moe_theory.kept_values import split_by_n, usable_mask
from moe_theory.layout import CHECK_FILE, CHECK_TABLE, REFIT_DIR
from moe_theory.measure import MixingMeasure
from moe_theory.provenance import code_version
from moe_theory.rates import CURVE_KEYS, curve_fit, log_mean_half_width, usable
from moe_theory.store import (
    Shard,
    atomic_write,
    load_results,
    read_manifest,
    read_manifest_config,
    shard_path,
    verified_shards,
    write_shard,
)
from moe_theory.sweep import certify, fit_in_blocks, recorded_references


def write_check_table(refits: pd.DataFrame, path: str | Path) -> None:
    """The refits as parquet, zstd-compressed: a figure folder keeps this table, and the refits'
    estimates (JSON text) take a third of snappy's bytes under zstd (1.3 MB against 3.1 MB for
    nguyen2024's 240 refits)."""
    refits.to_parquet(path, index=False, compression="zstd")


def variants(config: SweepConfig) -> dict[str, SweepConfig]:
    """The check's two refit configs: 10x the iteration budget, and 10x jitter of every start
    (of the default jitter when the sweep's is 0, which 10x would leave at 0).

    The budget is ``max_iter``, and for N24's SGD protocol also its epochs: ``sgd-paper`` runs
    a fixed number of epochs and never reads ``max_iter``, so scaling that alone would refit
    the sweep's own fits and call them a check."""
    jitter = config.jitter if config.jitter > 0 else DEFAULT_JITTER
    start_jitter = None if config.start_jitter is None else (
        config.start_jitter * CHECK_JITTER_FACTOR)
    budget = replace(config, max_iter=config.max_iter * CHECK_MAX_ITER_FACTOR)
    if config.algorithm == "sgd-paper":
        budget = replace(budget, sgd={
            **config.sgd, "epochs": config.sgd_protocol().epochs * CHECK_MAX_ITER_FACTOR})
    return {
        f"max_iter x{CHECK_MAX_ITER_FACTOR}": budget,
        f"jitter x{CHECK_JITTER_FACTOR}":
            replace(config, jitter=jitter * CHECK_JITTER_FACTOR, start_jitter=start_jitter),
    }


def refit(config: SweepConfig, reps: int, *, device: str = "cpu", backend: str = "auto",
          log: Callable[[str], None] | None = None, folder: str | Path | None = None,
          **executor) -> pd.DataFrame:
    """The check's refits: replications ``0..reps-1`` of every (setting, n) under each variant,
    with a ``variant`` column.

    A job is one fitted gate of one (variant, setting, n): half a shard of the sweep, so that
    the longest job, and what an interrupted check loses, is one gate's fit (an SGD refit of
    100 epochs at n = 10^5 runs for minutes). The table's rows come in the order of whole
    shards, whatever the jobs.
    ``executor``: where the refits run (:func:`moe_theory.executors.map_shards`' options;
    default here, one after the other), largest first; the table is the same wherever they run.
    ``folder``: the sweep's results folder; the refits then start near, and are measured
    against, the G_bar references its manifest records (those of the sweep's own fits, wherever
    the check runs: :func:`~moe_theory.sweep.run_shard`), each refit is stored there as it
    finishes (:func:`refit_store`), and a check that was interrupted resumes from the stored
    ones.
    """
    configs = variants(config)
    gates = {setting: config.gates_for(config.setting(setting)) for setting in config.settings}
    references = _recorded_references(Path(folder), config, gates) if folder is not None else None
    jobs = [(name, gate, Shard(setting, n, 0, min(reps, config.reps_of(gate))))
            for name in configs for setting in config.settings for n in config.n
            for gate in gates[setting]]
    stores = ({(name, gate): refit_store(Path(folder), configs[name], gate)
               for name, gate, _ in jobs} if folder is not None else {})
    frames = {}
    if stores:
        _remove_stale_refits(Path(folder), set(stores.values()))
        for (name, gate), store in stores.items():
            mine = [shard for *key, shard in jobs if tuple(key) == (name, gate)]
            for shard in verified_shards(store, mine, **({"report": log} if log else {})):
                frames[name, gate, shard] = pd.read_parquet(shard_path(store, shard))
    todo = [job for job in jobs if job not in frames]
    if log is not None and frames:
        log(f"check: {len(frames)} of {len(jobs)} refits stored by an earlier run, "
            f"{len(todo)} to go")
        mine = code_version()
        other = sum(1 for rows in frames.values()
                    if "code" not in rows or set(rows["code"]) != {mine})
        if todo and other:
            # as a resumed sweep says (moe_theory.sweep): the check would judge refits of two
            # versions of the code together
            log(f"warning: check: {other} of the {len(frames)} stored refits were computed by "
                f"other code than this process runs ({mine or 'no version'}): the check will "
                "hold refits of two versions; delete check-refits/ to refit them all")
    work = functools.partial(_refit_job, configs=configs, device=device, backend=backend,
                             references=references)
    started, done = time.perf_counter(), 0
    for name, gate, shard, rows, seconds in map_shards(
            work, todo, device=device,
            cost=lambda job: shard_cost(configs[job[0]], job[2], gates=[job[1]]), log=log,
            **executor):
        frames[name, gate, shard] = rows
        if (name, gate) in stores:
            write_shard(stores[name, gate], shard, rows)
        done += 1
        if log is not None:
            elapsed = time.perf_counter() - started
            log(f"[check {len(frames)}/{len(jobs)}] {name}: {shard.setting} {gate} n={shard.n} "
                f"({seconds:.1f} s; {elapsed:.0f} s elapsed, ETA "
                f"{elapsed / done * (len(todo) - done):.0f} s)")
    return pd.concat([frames[job].assign(variant=job[0]) for job in jobs], ignore_index=True)


def refit_store(folder: Path, variant: SweepConfig, gate: str) -> Path:
    """Where one variant's refits of one fitted gate of the sweep in ``folder`` are stored, as
    verified shards (moe_theory.store): ``check-refits/<key>/``, the key a hash of the variant's
    config, the gate and the G_bar references the sweep's manifest records, so that refits of
    another config or measured against another reference are never read back."""
    references = (read_manifest(folder) or {}).get("references", {})
    blob = json.dumps([variant.hash, gate, references], sort_keys=True)
    return folder / REFIT_DIR / hashlib.sha256(blob.encode()).hexdigest()[:16]


def _remove_stale_refits(folder: Path, keep: set[Path]) -> None:
    """Refits stored for another config or reference: never read again (:func:`refit_store`)."""
    root = folder / REFIT_DIR
    if root.is_dir():
        for path in root.iterdir():
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)


def _recorded_references(folder: Path, config: SweepConfig,
                         gates: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """The G_bar references (``"setting/gate"`` -> JSON) the sweep in ``folder`` recorded, one
    for each of its fits measured against a G_bar; a missing one is an error (the refits must
    compare with the sweep's own fits)."""
    recorded = recorded_references(folder)
    wanted = [f"{setting}/{gate}" for setting in config.settings for gate in gates[setting]
              if config.setting(setting).reference_kind(gate) == "G_bar"]
    missing = [key for key in wanted if key not in recorded]
    if missing:
        raise ValueError(
            f"references: {folder}/manifest.json records no G_bar for {', '.join(missing)}; the "
            f"check refits against the sweep's own G_bar (resume the sweep there to record it)")
    for key in wanted:
        # read here, before anything in the folder changes (the refits stored for other
        # references are removed next), not in a worker, whose error named no file or key
        try:
            MixingMeasure.from_json(recorded[key])
        except (ValueError, TypeError) as err:
            raise ValueError(f"references: {folder}/manifest.json's G_bar for {key} is no "
                             f"measure ({err})") from None
    return {key: recorded[key] for key in wanted}


def _refit_job(job: tuple[str, str, Shard], *, configs: dict[str, SweepConfig], device: str,
               backend: str, references: dict[str, str] | None = None
               ) -> tuple[str, str, Shard, pd.DataFrame, float]:
    """One refit (variant name, fitted gate, shard): its rows and seconds (a module-level
    function, so that a worker process can run it)."""
    name, gate, shard = job
    start = time.perf_counter()
    # in blocks that fit the device, as the sweep's shards: a GPU shared with other processes
    # may not hold a refit of every checked replication at once
    rows, _, _ = fit_in_blocks(shard, configs[name], device, backend, references, gates=[gate],
                               sort=False)
    return name, gate, shard, rows, time.perf_counter() - start


def _log_mean(values: np.ndarray) -> float:
    v = usable(values)
    return float(np.log(v.mean())) if v.size else math.nan


def curve_check(full: pd.DataFrame, base: pd.DataFrame, refits: pd.DataFrame,
                noise_var: float | None, expected: Sequence[str] = ()) -> dict:
    """The optimiser check of one curve.

    Parameters
    ----------
    full : the curve's rows in the sweep (every replication)
    base : the sweep's rows of the replications that were refitted
    refits : the refits' rows of this curve (column ``variant``)
    noise_var : nu, or None when unknown (the check is then not run: without it no refit can be
        judged better than the sweep's fit or a worse local minimum)
    expected : the variants the check ran; one without a refit of this curve leaves the check
        ``not run`` (a comparison with nothing is no evidence)

    Returns
    -------
    ``{"status", "reasons", "ssr_gap_max", "ssr_gap_share", "mean_shift", "mean_tolerance",
    "slope", "slope_shift", "slope_tolerance", "sublevel"}``: gaps in noise variances; ``mean_shift`` the
    largest |change of log-mean| over n per variant, ``mean_tolerance`` the smallest 95% CI
    half-width of a log-mean over n, ``slope_shift`` the slope's change per variant,
    ``sublevel`` the :func:`moe_theory.sublevel.check_entry` of the checked data sets (the
    sweep's fit and the refits, every start of each: evidence, not part of the status).
    """
    reasons: list[str] = []
    out: dict = {}
    keys = ["n", "rep"]
    base = base.drop_duplicates(keys).set_index(keys)
    seen = set(refits["variant"]) if "variant" in refits.columns else set()
    unrefitted = [name for name in expected if name not in seen]
    if refits.empty or unrefitted:
        what = ", ".join(unrefitted) if unrefitted else "any variant"
        return {**out, "status": NOT_RUN, "reasons": [f"no refit of this curve by {what}"]}
    # a variant without rows at an n the sweep's checked fits have compared nothing there (its
    # missing mean read as an infinite move, and failed); one whose rows lost the loss did
    # ... and so does one without a row of some checked fit: its mean at that n was taken over
    # other replications than the sweep's (a hole passed a moved fit unseen, or failed an
    # unmoved n on the replications' own spread)
    checked = set(base.index)
    partial = {name: checked - set(zip(rows["n"], rows["rep"], strict=True))
               for name, rows in refits.groupby("variant", sort=True)}
    partial = {name: missing for name, missing in partial.items() if missing}
    if partial:
        name, missing = next(iter(partial.items()))

        def where(m: float) -> str:
            reps = sorted(r for n_, r in missing if n_ == m)
            whole = len(reps) == sum(1 for n_, _ in checked if n_ == m)
            return f"{m:g}" if whole else f"{m:g} (rep {', '.join(map(str, reps))})"

        at = ", ".join(where(m) for m in sorted({m for m, _ in missing}))
        return {**out, "status": NOT_RUN,
                "reasons": [f"no refit of this curve by {name} at n = {at}"]}
    if noise_var is None:
        # without nu no refit can be told a better fit or a worse local minimum than the sweep's:
        # neither the SSR test nor the estimate the shifts compare stands
        return {**out, "status": NOT_RUN,
                "reasons": ["noise variance unknown: the refits' SSR cannot be judged"]}
    best = refits.groupby(keys)["fit_loss"].min()
    joined = base[["fit_loss"]].join(best.rename("best"), how="inner")
    n = joined.index.get_level_values("n").to_numpy(dtype=float)
    # a data set whose every refit diverged (no finite SSR) found nothing to beat the sweep's
    # fit with; a sweep fit without an SSR is beaten by any refit that has one
    gap = (n * (joined["fit_loss"] - np.fmin(joined["fit_loss"], joined["best"])) / noise_var
           ).where(np.isfinite(joined["best"]), 0.0)
    within = gap <= SSR_GAP_MAX
    out.update(ssr_gap_max=float(gap.max()), ssr_gap_share=float(within.mean()))
    # at each n, as the constant says: pooled over n, one fit beaten by any margin at an n
    # of two refitted fits would pass among twenty
    per_n = within.groupby(level="n").mean()
    short = per_n[per_n < OPTIMISER_SHARE_MIN]
    if not short.empty:
        m = short.idxmin()
        reasons.append(f"{int((~within).sum())} of {len(within)} refitted fits beaten by a "
                       f"refit by more than {SSR_GAP_MAX} nu (largest gap {gap.max():.3g} nu; "
                       f"{len(short)} n below {OPTIMISER_SHARE_MIN:.0%}, n={m}: "
                       f"{short[m]:.0%})")
    # every finite positive loss, box fits included: a refit that moves a fit onto the box (or
    # off it) moves the estimate, though the slope would drop the value; the slope's tolerance
    # is the rates table's own half-width (its bootstrap, its number of draws)
    # per n in replication order (split_by_n), as the rates table's intervals are drawn: the
    # bootstrap draws by position
    half = {m: log_mean_half_width(v) for m, v in zip(*split_by_n(full)[:2], strict=True)}
    full_fit = curve_fit(full)
    out.update(slope=full_fit.slope, slope_tolerance=full_fit.half_width, mean_shift={},
               slope_shift={},
               mean_tolerance=min((h for h in half.values() if np.isfinite(h)), default=math.nan))
    base_by_n = {m: g["loss_value"].to_numpy(float) for m, g in base.reset_index().groupby("n")}
    # only the n the curve's rate uses have a CI to compare with, and the slopes are compared
    # over those n alone, on both sides: at an n the rate drops a moved value moves nothing the
    # table reports, and a sweep's slope over more n than a variant's compared two lines
    judged = [m for m in base_by_n if np.isfinite(half.get(m, math.nan))]
    base_slope = _subsample_slope({m: base_by_n[m] for m in judged})
    for name, rows in refits.groupby("variant", sort=True):
        # in the sweep's order: _shift compares the two fit by fit
        chosen = _estimate(base, rows.drop_duplicates(keys).set_index(keys),
                           noise_var).reindex(base.index)
        by_n = {m: g.to_numpy(float) for m, g in chosen.groupby(level="n")}
        shifts = {m: _shift(by_n.get(m, np.array([])), base_by_n[m]) for m in judged}
        shifts = {m: s for m, s in shifts.items() if s is not None}
        moved = [m for m, s in shifts.items() if not s <= half.get(m, math.nan)]
        out["mean_shift"][name] = max(shifts.values(), default=math.nan)
        if moved:
            m = moved[0]
            reasons.append(f"{name}: the log-mean at {len(moved)} n moves by more than its 95% "
                           f"CI half-width (n={m}: {shifts[m]:.2f} against "
                           f"{half.get(m, math.nan):.2f})")
        variant_slope = _subsample_slope({m: by_n.get(m, np.array([])) for m in judged})
        shift = abs(variant_slope - base_slope)
        out["slope_shift"][name] = shift
        if math.isnan(variant_slope) and not math.isnan(base_slope):
            # the refits lost the losses the sweep's fits have (NaN or non-positive)
            reasons.append(f"{name}: its estimates have a usable loss at fewer than 2 n, the "
                           "sweep's at 2 or more: no slope left to compare")
        elif np.isfinite(full_fit.half_width) and np.isfinite(shift) and not (
                shift <= full_fit.half_width):
            reasons.append(f"{name}: the slope moves by {shift:.3f}, more than its 95% CI "
                           f"half-width {full_fit.half_width:.3f}")
    # evidence, not a test: how much the rate bound covers on the checked data sets
    out["sublevel"] = sublevel.check_entry(sublevel.data_set_ratios(base.reset_index(), refits,
                                                                    keys))
    usable_any = any(usable(v).size for m, v in base_by_n.items() if np.isfinite(half[m]))
    if reasons:
        # a test that ran and failed is evidence whatever could not be compared: sweep fits
        # beaten by a refit's SSR were "not run" where the checked fits had no usable loss
        out.update(status=FAIL, reasons=reasons)
    elif not usable_any:
        out.update(status=NOT_RUN, reasons=["no usable loss among the refitted fits"])
    elif not np.isfinite(full_fit.half_width):
        # a test that could not be run is no evidence the slope stays put
        out.update(status=NOT_RUN, reasons=[
            "the slope test was not run: the curve's slope has no finite 95% CI half-width"])
    elif math.isnan(base_slope):
        out.update(status=NOT_RUN, reasons=[
            "the slope test was not run: the checked fits have a usable loss at fewer than 2 n"])
    else:
        out.update(status=PASS, reasons=[])
    return out


def _estimate(base: pd.DataFrame, variant: pd.DataFrame, noise_var: float) -> pd.Series:
    """Per fit ``(n, rep)``, the loss of the estimate the variant protocol stands for: its own
    fit where its SSR is no more than SSR_GAP_MAX noise variances above the sweep's (a better
    fit, or one the data cannot tell from it), the sweep's fit where the variant only found a
    worse local minimum (which says nothing against the sweep's being the LSE)."""
    joined = base[["fit_loss", "loss_value"]].merge(
        variant[["fit_loss", "loss_value"]], left_index=True, right_index=True,
        suffixes=("", "_variant"))
    n = joined.index.get_level_values("n").to_numpy(dtype=float)
    # a refit without an SSR (diverged) is no estimate; a sweep fit without one is beaten by
    # any refit that has one
    worse = (joined["fit_loss_variant"].isna()
             | (n * (joined["fit_loss_variant"] - joined["fit_loss"]) / noise_var > SSR_GAP_MAX))
    return joined["loss_value_variant"].where(~worse, joined["loss_value"])


def _shift(variant: np.ndarray, base: np.ndarray) -> float | None:
    """|change of the log-mean| from ``base`` to ``variant``, the same fits in the same order;
    infinite when a fit has a usable value on one side only (the refit lost or created the
    loss, e.g. an over-specified cell: the two means would be taken over other fits, and a
    fit the variant moved out of the mean would pass unseen); None when neither has any."""
    a, b = usable_mask(variant), usable_mask(base)
    if not a.any() and not b.any():
        return None
    if a.shape != b.shape or (a != b).any():
        return math.inf
    return abs(_log_mean(usable(variant)) - _log_mean(usable(base)))


def _subsample_slope(by_n: dict) -> float:
    """OLS slope of the log-mean on log n of a few replications per n (no CI needed)."""
    n = sorted(m for m, v in by_n.items() if usable(v).size)
    if len(n) < 2:
        return math.nan
    return float(np.polyfit(np.log(n), [_log_mean(by_n[m]) for m in n], 1)[0])


def run_check(folder: str | Path, *, reps: int = CHECK_REPS, device: str = "cpu",
              backend: str = "auto", log: Callable[[str], None] | None = None,
              refits: pd.DataFrame | None = None, write_refits: bool = True,
              **executor) -> dict:
    """Run the optimiser check (and any missing reference certificate) on a finished sweep.

    Parameters
    ----------
    folder : the sweep's results folder (``manifest.json``, shards or ``results.parquet``)
    reps : replications refitted per (setting, n), the first ones (at most the sweep's)
    device, backend : where the refits run (the table's rows do not depend on it beyond
        rounding)
    log : receives one line per refitted shard
    executor : where the refits run (:func:`refit`); default here
    refits : the refits, computed beforehand by :func:`refit` with ``min(reps, sweep's reps)``
        (they do not depend on the sweep's fits, so they can run beside its shards); default:
        computed here
    write_refits : write the refits to ``DIR/check.parquet`` (False where they were read from
        it, as :func:`rejudge` does, so that its bytes stay as they are)

    Returns
    -------
    The content written to ``DIR/check.json``: ``{"config_hash", "reps", "variants", "wall_s",
    "refit_wall_s", "curves": {"setting/fit_gate/loss": curve_check(...)}}``; ``wall_s`` is this
    call's time (seconds where the refits are read back, as ``moe-theory remeasure`` does),
    ``refit_wall_s`` the refits' own fit time, read from their rows wherever they were computed.
    Where the refits are given and the folder's earlier check.json is of the same config, its
    ``wall_s`` is kept: the time the check took when it refitted, not that of reading it back.
    """
    folder = Path(folder)
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise ValueError(f"reps: must be a positive integer, got {reps!r}")
    config = read_manifest_config(folder)
    # a check of a sweep's first shards compares the refits with those fits alone, and nothing
    # marked its check.json stale once the sweep finished: its verdicts were read with the whole
    # table's
    results = load_results(folder, complete=True)
    start = time.perf_counter()
    certs = certify(config, folder, device=device, backend=backend, log=log)
    cert_by = {(c.setting, c.fit_gate): c for c in certs}
    reps = min(reps, config.reps)
    given = refits is not None
    if refits is None:
        refits = refit(config, reps, device=device, backend=backend, log=log, folder=folder,
                       **executor)
    else:
        expected = {(name, setting, n) for name in variants(config) for setting in config.settings
                    for n in config.n}
        got = set(zip(refits["variant"], refits["setting"], refits["n"], strict=True))
        if got != expected or set(refits["rep"]) != set(range(reps)):
            raise ValueError(f"refits: not the refits of {folder}'s config with reps = {reps} "
                             "(moe_theory.check.refit computes them)")
        if "config_hash" in refits.columns:
            # refits kept from before a sweep was rerun with --force: same grid, other fits
            for name, cfg in variants(config).items():
                hashes = set(refits.loc[refits["variant"] == name, "config_hash"].astype(str))
                if hashes != {cfg.hash}:
                    raise ValueError(
                        f"refits: the {name} refits are of config {', '.join(sorted(hashes))}, "
                        f"not of {folder}'s ({cfg.hash}); refit them (`moe-theory check DIR`)")
    if write_refits:
        atomic_write(folder / CHECK_TABLE, lambda tmp: write_check_table(refits, tmp))
    curves = {}
    for name, full in results.groupby(list(CURVE_KEYS), sort=True):
        base = full[full["rep"] < reps]
        mine = refits[(refits["setting"] == name[0]) & (refits["fit_gate"] == name[1])
                      & (refits["loss_name"] == name[2])]
        nu = noise_variance(full, cert_by.get(name[:2]))
        curves["/".join(map(str, name))] = curve_check(full, base, mine, nu,
                                                       expected=tuple(variants(config)))
    wall_s = round(time.perf_counter() - start, 2)
    earlier = load_check(folder) if given else None
    if earlier is not None and earlier.get("config_hash") == config.hash and "wall_s" in earlier:
        wall_s = earlier["wall_s"]
    report = {"config_hash": config.hash, "reps": reps,
              "variants": {name: {"max_iter": cfg.max_iter, "jitter": cfg.jitter,
                                  "start_jitter": cfg.start_jitter}
                           for name, cfg in variants(config).items()},
              "wall_s": wall_s,
              # each row carries its fit's share of its batch's time, repeated on its loss rows
              "refit_wall_s": round(float(refits.drop_duplicates(
                  ["variant", "setting", "fit_gate", "n", "rep"])["wall_s"].sum()), 2),
              "curves": curves}
    text = json.dumps(json_ready(report), indent=1)
    atomic_write(folder / CHECK_FILE, lambda tmp: Path(tmp).write_text(text))
    return report


def rejudge(folder: str | Path) -> dict:
    """The optimiser check of ``folder`` judged again from the refits it keeps
    (``DIR/check.parquet``), with no refit, and the folder's rates table and figure rewritten:
    for a folder checked before the check's evaluation changed (as when it began to report the
    sublevel ratios). Returns the new ``check.json`` content."""
    from moe_theory.outputs import write_report  # matplotlib loads only where it draws

    folder = Path(folder)
    path = folder / CHECK_TABLE
    if not path.exists():
        raise ValueError(f"DIR: {folder} keeps no {CHECK_TABLE} (run `moe-theory check DIR` to "
                         "refit)")
    refits = pd.read_parquet(path)
    report = run_check(folder, reps=int(refits["rep"].max()) + 1, refits=refits,
                       write_refits=False)
    write_report(load_results(folder), read_manifest_config(folder), folder)
    return report
